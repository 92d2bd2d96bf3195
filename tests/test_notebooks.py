"""Notebooks run top to bottom in a real Jupyter kernel (nbclient + ipykernel), once each per session,
and are stored with their outputs so that they read on GitHub."""

import shutil
from pathlib import Path

import nbformat
import pytest

from spatialprobe.report.build import execute_notebook

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
#: stored notebooks stay small enough to review and to render on GitHub
MAX_BYTES = 1_500_000


def _code(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_there_are_four_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["01_paper_correlations.ipynb", "02_spatial_structure_demo.ipynb",
                                           "03_is_my_encoder_a_good_teacher.ipynb", "04_mini_study.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_notebook_shows_its_outputs(path):
    nb = nbformat.read(path, as_version=4)
    code = _code(nb)
    assert code, f"{path.name} has no code"
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), \
        f"{path.name} is not stored executed top to bottom; refresh it with spatialprobe.report.build.run_notebook"
    assert all(c.outputs for c in code), f"{path.name} has a code cell without output"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs), f"{path.name} shows no figure"
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size} bytes; lower the figure dpi"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes_in_a_kernel(path, tmp_path, monkeypatch, request):
    # 04 runs the mini study into tmp_path/runs/mini at its smoke size. The session's smoke study (conftest)
    # is copied there first, so the notebook's run_study call finds every node done and reuses it (the
    # resume path; the run itself is tested in test_study.py)
    monkeypatch.setenv("SPATIALPROBE_NOTEBOOK_SMOKE", "1")
    monkeypatch.delenv("SPATIALPROBE_MINI_STUDY", raising=False)
    if path.name == "04_mini_study.ipynb":
        shutil.copytree(request.getfixturevalue("smoke"), tmp_path / "runs" / "mini", symlinks=True)
    nb = nbformat.read(path, as_version=4)
    for c in _code(nb):
        c.outputs, c.execution_count = [], None
    execute_notebook(nb, cwd=tmp_path, timeout=600)  # a failing cell raises ReportError naming it
    code = _code(nb)
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    assert all(c.outputs for c in code)
    figures = sum("image/png" in o.get("data", {}) for c in code for o in c.outputs)
    stored = sum("image/png" in o.get("data", {}) for c in _code(nbformat.read(path, as_version=4)) for o in c.outputs)
    assert figures == stored, f"{path.name}: {figures} figures now, {stored} in the stored notebook"
