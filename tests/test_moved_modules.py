"""Moved public modules keep an alias at the old path for one release: it warns and gives the same objects."""

from __future__ import annotations

import importlib
import inspect
import sys

import pytest

MOVED = [("spatialprobe.report.figures", "spatialprobe.figures"),
         ("spatialprobe.report.similarity", "spatialprobe.viz"),
         ("spatialprobe.study.images", "spatialprobe.data.cache")]


@pytest.mark.parametrize("old, new", MOVED, ids=[o for o, _ in MOVED])
def test_the_old_path_warns_and_reexports_the_new_module(old, new, monkeypatch):
    monkeypatch.delitem(sys.modules, old, raising=False)  # a fresh import, as in a new notebook
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        alias = importlib.import_module(old)
    target = importlib.import_module(new)
    # every public function and class the new module defines is reachable, and is the same object
    defined = [n for n, v in vars(target).items() if not n.startswith("_")
               and (inspect.isfunction(v) or inspect.isclass(v)) and v.__module__ == new]
    assert defined
    assert [n for n in defined if getattr(alias, n, None) is not getattr(target, n)] == []
    # and so is every public constant (upper-case names)
    consts = [n for n in vars(target) if n.isupper() and not n.startswith("_")]
    assert [n for n in consts if getattr(alias, n, None) is not getattr(target, n)] == []


def test_no_stage_imports_the_report_package():
    """Figures and viz left report/: a compute stage importing the report package would point upward."""
    import ast
    from pathlib import Path

    root = Path(importlib.import_module("spatialprobe").__file__).parent
    stages = [root / f"{m}.py" for m in ("correlation", "inject", "predict", "extract", "probe", "viz")]
    stages += sorted((root / "metrics").glob("*.py")) + sorted((root / "train").rglob("*.py"))
    stages += sorted((root / "fid").glob("*.py"))
    offenders = []
    for path in stages:
        pkg = ".".join(("spatialprobe",) + path.relative_to(root).parent.parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg if node.level else ""
                mod = f"{base}.{node.module}" if node.level and node.module else (node.module or base)
                names = [mod] + [f"{mod}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            if any(n == "spatialprobe.report" or n.startswith("spatialprobe.report.") for n in names):
                offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == []
