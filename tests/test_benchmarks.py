"""The one-command GPU benchmark runs end to end on the CPU at tiny sizes and writes its rows."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run_all_module():
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses resolve their module while the file executes
    try:
        spec.loader.exec_module(mod)
    finally:
        del sys.modules[spec.name]
    return mod


def test_run_all_dry_run_writes_rows_into_a_copy(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    shutil.copy(ROOT / "BENCHMARKS.md", out)
    before = out.read_text()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg")
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--dry-run", "--out", str(out)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    text = out.read_text()
    head = "## Dry run of `benchmarks/run_all.py` (CPU, tiny sizes: not a measurement)"
    assert text.count(head) == 1
    section = text[text.index(head):]
    section = section[:section.index("\n## ", 1)] if "\n## " in section[1:] else section
    # every step ran (ViT-L is the same path as ViT-B and says so) and left its table rows
    assert section.count("(ok, ") == 5, section
    assert "Skipped: same script and path as ViT-B" in section
    assert "| full pipeline (decode, crop, forward, store) |" in section
    assert "| sit-tiny | plain step (no alignment) | 8 |" in section
    assert "| sit-tiny | irepa step | 8 |" in section and "pixelrepa" in section
    assert "| 4 | " in section and "shared / floor" in section
    assert "| Inception features (pool, spatial, logits) | 2 | 2 |" in section
    assert "Command: `spatialprobe study run mini --device cpu --dry-run --out DIR` (ok, " in section
    # the rest of the file is kept: the section goes before the test-suite section
    assert text.index(head) < text.index("## Test suite")
    assert text.replace(section, "").split() == before.split()


def test_write_section_replaces_its_own_heading_only(tmp_path):
    mod = _run_all_module()
    f = tmp_path / "B.md"
    f.write_text("# Benchmarks\n\n## A\n\nold a\n\n## Test suite\n\nsuite\n")
    mod.write_section(f, "## GPU: X", "## GPU: X\n\nrow 1\n")
    mod.write_section(f, "## GPU: X", "## GPU: X\n\nrow 2\n")
    t = f.read_text()
    assert t.count("## GPU: X") == 1 and "row 2" in t and "row 1" not in t
    assert t.index("## A") < t.index("## GPU: X") < t.index("## Test suite") and "old a" in t and "suite" in t
