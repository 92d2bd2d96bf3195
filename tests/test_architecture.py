"""The house stands: imports run only downward (the import-linter contracts in pyproject.toml), there is
no import cycle among spatialprobe modules (grimp's graph, every import statement counted, including
those inside functions), and no module imports another module's ``_private`` name.

Each check is also shown to fail: a copy of the package with one deliberate back-import (the data layer's
preprocessing importing the study harness) breaks the contract and closes a cycle.
"""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "spatialprobe"


def _lint(pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, no_cache=True, no_logo=True))")
    # the interpreter puts its working folder first on sys.path: run where the package under test lies
    return subprocess.run([sys.executable, "-c", code], cwd=pythonpath or ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def _cycles(pythonpath: Path | None = None) -> list[list[str]]:
    """Strongly connected components of more than one module in a fresh interpreter's grimp graph."""
    code = textwrap.dedent("""
        import json, sys, grimp
        sys.setrecursionlimit(100000)
        g = grimp.build_graph("spatialprobe")
        adj = {m: sorted(g.find_modules_directly_imported_by(m)) for m in sorted(g.modules)}
        index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
        def visit(v):
            index[v] = low[v] = counter[0]; counter[0] += 1; stack.append(v); on.add(v)
            for w in adj[v]:
                if w not in index:
                    visit(w); low[v] = min(low[v], low[w])
                elif w in on:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop(); on.discard(w); comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
        for m in adj:
            if m not in index:
                visit(m)
        print(json.dumps(out))
    """)
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    res = subprocess.run([sys.executable, "-c", code], cwd=pythonpath or ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    import json
    return json.loads(res.stdout.strip().splitlines()[-1])


def _private_imports(package: Path) -> list[str]:
    """``from spatialprobe.x import _name`` (or a relative form) in any module other than x itself."""
    found = []
    for path in sorted(package.rglob("*.py")):
        module = ".".join(path.relative_to(package.parent).with_suffix("").parts)
        if module.endswith(".__init__"):
            module = module[: -len(".__init__")]
        pkg = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("spatialprobe"):
                continue
            for alias in node.names:
                name = alias.name
                if name.startswith("_") and not name.startswith("__") and target != module:
                    found.append(f"{module} imports {target}.{name} ({path.relative_to(package.parent)}:{node.lineno})")
    return found


@pytest.fixture(scope="module")
def broken_copy(tmp_path_factory) -> Path:
    """A copy of the package where the data layer imports the study harness (a deliberate back-import)."""
    root = tmp_path_factory.mktemp("broken")
    shutil.copytree(PACKAGE, root / "spatialprobe", ignore=shutil.ignore_patterns("__pycache__"))
    target = root / "spatialprobe" / "data" / "preprocess.py"
    target.write_text(target.read_text() + "\nfrom ..study import runner  # noqa: E402,F401\n")
    return root


def test_import_contracts_hold():
    res = _lint()
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout


def test_import_contracts_catch_a_back_import(broken_copy):
    res = _lint(broken_copy)
    assert res.returncode != 0
    assert "spatialprobe.data.preprocess -> spatialprobe.study.runner" in res.stdout


def test_no_import_cycles():
    assert _cycles() == []


def test_cycle_check_catches_a_cycle(broken_copy):
    cycles = _cycles(broken_copy)
    assert any("spatialprobe.data.preprocess" in comp and "spatialprobe.study.runner" in comp for comp in cycles)


def test_no_cross_module_private_imports():
    assert _private_imports(PACKAGE) == []


def test_private_import_check_catches_one(tmp_path):
    pkg = tmp_path / "spatialprobe"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("_hidden = 1\n")
    (pkg / "a" / "y.py").write_text("from .x import _hidden\nfrom . import x\n")
    assert _private_imports(pkg) == ["spatialprobe.a.y imports spatialprobe.a.x._hidden (spatialprobe/a/y.py:1)"]
