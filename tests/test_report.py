"""Similarity maps (`viz`) and the executed-notebook report (`report`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from spatialprobe.cli import app
from spatialprobe.errors import ConfigError, DataError, InputFileError
from spatialprobe.metrics import spatial_norm
from spatialprobe.report import sections as S
from spatialprobe.viz import (cosine_maps, load_maps, maps_for_tokens, parse_tokens, reference_points,
                             to_grid, viz)

runner = CliRunner()


# ------------------------------------------------------------------------------------------ similarity maps


def test_reference_points_follow_the_official_rule():
    pts = reference_points(4, seed=42)
    assert pts[0] == (0.5, 0.5)
    assert len(pts) == 4 and pts == reference_points(4, seed=42)
    for i, a in enumerate(pts):
        for b in pts[:i]:
            assert max(abs(a[0] - b[0]), abs(a[1] - b[1])) >= 0.15
    assert reference_points(4, seed=1) != pts
    # round(y·(H−1)): the centre of a 16×16 grid is round(7.5) = 8
    assert to_grid([(0.5, 0.5), (0.0, 1.0)], (16, 16)) == [(8, 8), (0, 15)]
    with pytest.raises(ConfigError, match="fewer"):
        reference_points(500, min_sep=0.3)


def test_parse_tokens_accepts_cells_and_flat_indices_and_rejects_the_rest():
    assert parse_tokens("8:8, 136,0", (16, 16)) == [(8, 8), (8, 8), (0, 0)]
    assert parse_tokens(None, (16, 16)) is None
    with pytest.raises(ConfigError, match="outside the 16x16 grid"):
        parse_tokens("16:0", (16, 16))
    with pytest.raises(ConfigError, match="outside"):
        parse_tokens("256", (16, 16))
    with pytest.raises(ConfigError, match="ROW:COL"):
        parse_tokens("a:b", (16, 16))


def test_cosine_maps_match_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    tok = torch.randn(12, 5, generator=g) + 2.0  # a shared offset: raw cosines are high everywhere
    refs = [(1, 2), (0, 0)]
    maps = cosine_maps(tok, (3, 4), refs)
    u = tok / tok.norm(dim=1, keepdim=True)
    want = np.stack([(u @ u[1 * 4 + 2]).reshape(3, 4).numpy(), (u @ u[0]).reshape(3, 4).numpy()])
    np.testing.assert_allclose(maps, want, atol=1e-6)
    assert maps[0, 1, 2] == pytest.approx(1.0) and maps[1, 0, 0] == pytest.approx(1.0)
    m = maps_for_tokens(tok, (3, 4), refs, gamma=0.6)
    np.testing.assert_allclose(m.normed, cosine_maps(spatial_norm(tok[None], 0.6), (3, 4), refs), atol=1e-6)
    # removing the shared component spreads the map: it reaches lower cosines than the raw one
    assert m.normed.min() < m.raw.min() - 0.2
    with pytest.raises(DataError, match="do not fit"):
        cosine_maps(tok, (4, 4), refs)


def test_viz_writes_figure_and_maps_that_read_back(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    out = tmp_path / "viz"
    res = viz(encoder=["pixels"], image=str(tmp_path / "photo.png"), tokens="8:8,2:13", out=str(out), dpi=60)
    assert [m.encoder for m in res] == ["pixels"] and res[0].refs == [(8, 8), (2, 13)]
    for name in ("similarity.png", "similarity.pdf", "similarity_maps.npz", "config.json"):
        assert (out / name).is_file(), name
    back = load_maps(out / "similarity_maps.npz")
    np.testing.assert_array_equal(back[0].raw, res[0].raw)
    np.testing.assert_array_equal(back[0].normed, res[0].normed)
    assert back[0].refs == res[0].refs and back[0].image.shape == (256, 256, 3)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["image_id"] == "photo" and cfg["weights"] == {"pixels": "none"}


def test_viz_cli_help_and_errors(tmp_path):
    r = runner.invoke(app, ["viz", "--help"])
    assert r.exit_code == 0 and "Examples" in r.output and "--tokens" in r.output
    r = runner.invoke(app, ["viz", "--encoder", "pixels", "--image", "no-such-image", "--out", str(tmp_path)])
    assert r.exit_code == 2 and r.output.count("error:") == 1 and "no-such-image" in r.output
    r = runner.invoke(app, ["viz", "--encoder", "pixels", "--image", "astronaut", "--tokens", "99:0",
                            "--out", str(tmp_path)])
    assert r.exit_code == 2 and "outside the 16x16 grid" in r.output


def test_load_maps_rejects_other_files(tmp_path):
    with pytest.raises(InputFileError, match="spatialprobe viz"):
        load_maps(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(DataError, match="not a similarity-maps file"):
        load_maps(tmp_path / "other.npz")


# ------------------------------------------------------------------------------------------ folder kinds


@pytest.mark.parametrize("kind", S.KINDS)
def test_detect_kind_from_marker_files(tmp_path, kind):
    for f in S.MARKERS[kind]:
        (tmp_path / f).write_text("x")
    assert S.detect_kind(tmp_path) == kind


def test_bad_folders_give_one_clear_error(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        S.detect_kind(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="not a spatialprobe result folder"):
        S.detect_kind(tmp_path)
    with pytest.raises(InputFileError, match="is a file"):
        S.detect_kind(tmp_path / "notes.txt")
    for args in (["report", str(tmp_path / "nope")], ["report", str(tmp_path)]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and r.output.count("error:") == 1 and "Traceback" not in r.output


def test_report_help_has_examples():
    r = runner.invoke(app, ["report", "--help"])
    assert r.exit_code == 0 and "Examples" in r.output and "report.html" in r.output


def test_inject_parameters_goes_after_the_parameters_cell():
    import nbformat

    from spatialprobe.report.build import inject_parameters

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("t"),
                                         nbformat.v4.new_code_cell("a = 1", metadata={"tags": ["parameters"]}),
                                         nbformat.v4.new_code_cell("print(a)")])
    inject_parameters(nb, {"a": 2, "b": "x"})
    inject_parameters(nb, {"a": 3})  # a second injection replaces the first
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    assert tags[2] == ["injected-parameters"] and len(nb.cells) == 4
    assert "a = 3" in nb.cells[2].source and "b" not in nb.cells[2].source


# ------------------------------------------------------------------------------------------ sections, no kernel


def _study_like(root, methods=(("repa", 6.0), ("irepa", 3.0))):
    """A folder with the study layout: study.yaml, results.csv, correlate/<y>/ for REPA and iREPA (each method
    shifts the toy FD by its offset)."""
    from spatialprobe.correlation import correlate

    rng = np.random.default_rng(0)
    encs = [f"enc{i}" for i in range(8)]
    fams = ["DINOv2", "DINOv2", "MAE", "MAE", "CLIP", "CLIP", "Classical", "Classical"]
    lds = rng.uniform(0.05, 0.5, len(encs))
    rows = []
    for e, f, l in zip(encs, fams, lds):
        for method, off in methods:
            for seed in (0, 1):
                rows.append({"encoder": e, "family": f, "method": method, "seed": seed, "lds": l,
                             "lp_acc": rng.uniform(50, 80), "fd_digits": 30 - 20 * l + off + rng.normal(0, 0.5)})
    res = pd.DataFrame(rows)
    root.mkdir(parents=True, exist_ok=True)
    (root / "study.yaml").write_text("name: toy\n")
    res.to_csv(root / "results.csv", index=False)
    wide = res.pivot_table(index=["encoder", "family"], columns="method", values="fd_digits").reset_index()
    wide = wide.rename(columns={m: f"fd_digits_{m}" for m, _ in methods})
    wide = wide.merge(res.groupby("encoder")[["lds", "lp_acc"]].mean().reset_index(), on="encoder")
    wide.to_csv(root / "table.csv", index=False)
    for y in (f"fd_digits_{m}" for m, _ in methods):
        correlate(table=str(root / "table.csv"), x=["lp_acc", "lds"], y=[y], n_resamples=1000,
                  out=str(root / "correlate" / y), figure=False)
    inj = root / "nodes" / "inject" / "k1"
    inj.mkdir(parents=True)
    pd.DataFrame({"encoder": "enc0", "alpha": [0, 0.25, 0.5], "lp_acc": [0.5, 0.6, 0.7],
                  "lds": [0.3, 0.2, 0.1]}).to_csv(inj / "injection.csv", index=False)
    return root


def test_sections_of_a_study_folder(tmp_path):
    from IPython.display import Image

    root = _study_like(tmp_path / "study")
    ctx = S.load(root)
    assert ctx.kind == "study" and "correlate/fd_digits_repa/config.json" in ctx.records
    prov = S.provenance(ctx)
    assert {"versions", "inputs"} <= set(prov["section"]) and "sha256" in set(prov["item"])
    table = S.results(ctx)[1]
    assert len(table) == 16 and set(table["n_seeds"]) == {2}
    corr = S.correlations(ctx)
    assert len(corr) == 1 and isinstance(corr[0], Image)  # REPA and iREPA in one figure
    assert (root / "figures" / "correlations_fd_digits_repa_vs_fd_digits_irepa.pdf").is_file()
    fig, diff = S.methods_per_encoder(ctx)
    col = "fd_digits_repa − fd_digits_irepa"
    assert len(diff) == 8 and diff[col].between(1.0, 5.0).all()  # the toy offset is 3
    assert isinstance(S.injection(ctx), Image) and (root / "figures" / "injection_curves.png").is_file()
    assert isinstance(S.similarity(ctx), S.Absent)
    fig, rob = S.robustness(ctx)
    assert len(rob) == 4 and rob["most_influential"].str.startswith("enc").all()


def test_three_methods_side_by_side(tmp_path):
    """A study with REPA, iREPA and PixelREPA: one correlation figure holds the three methods, each of iREPA and
    PixelREPA gets its own REPA − X bars and column, and the finding counts the teachers each method wins."""
    from IPython.display import Image

    root = _study_like(tmp_path / "study", methods=(("repa", 6.0), ("irepa", 3.0), ("pixelrepa", 1.0)))
    ctx = S.load(root)
    corr = S.correlations(ctx)
    assert len(corr) == 1 and isinstance(corr[0], Image)
    assert (root / "figures" / "correlations_fd_digits_repa_vs_fd_digits_irepa_vs_fd_digits_pixelrepa.png").is_file()
    *figs, tab = S.methods_per_encoder(ctx)
    assert len(figs) == 2 and all(isinstance(f, Image) for f in figs)
    assert {(root / "figures" / f"repa_minus_{m}.png").is_file() for m in ("irepa", "pixelrepa")} == {True}
    assert tab["fd_digits_repa − fd_digits_irepa"].between(1.0, 5.0).all()  # toy offsets 6 − 3
    assert tab["fd_digits_repa − fd_digits_pixelrepa"].between(3.0, 7.0).all()  # 6 − 1
    text = " ".join(p.data for p in S.findings(ctx) if hasattr(p, "data") and isinstance(p.data, str))
    assert "REPA vs PixelREPA per teacher" in text and "PixelREPA beats REPA with 8 of 8 teacher(s)" in text
    assert "iREPA beats REPA with 8 of 8 teacher(s)" in text


def test_sections_say_when_data_are_absent(tmp_path):
    (tmp_path / "summary.csv").write_text("encoder,setting,n_images,lds\nhog,default,3,0.1\n")
    (tmp_path / "per_image.csv").write_text("encoder,id,lds\nhog,a,0.1\n")
    ctx = S.load(tmp_path)
    assert ctx.kind == "metrics"
    for fn in (S.provenance, S.correlations, S.methods_per_encoder, S.injection, S.similarity, S.robustness):
        out = fn(ctx)
        assert isinstance(out, S.Absent), fn.__name__
        assert out._repr_markdown_().startswith("*Not in this folder:*") and "\n" not in out.message


def test_influence_finds_the_outlier():
    pts = pd.DataFrame({"encoder": list("abcdef"), "x": [1, 2, 3, 4, 5, 20.0], "y": [2, 1, 3, 2, 3, 30.0]})
    inf = S.influence(pts, "x", "y", "encoder")
    assert inf["most_influential"] == "f" and inf["r_without_it"] < 0.8


# ------------------------------------------------------------------------------------------ executed report


@pytest.fixture(scope="module")
def correlate_report(tmp_path_factory):
    """`correlate --reference sit-xl-100k` + `viz`, reported once (one kernel start for the module)."""
    from spatialprobe.correlation import correlate
    from spatialprobe.report.build import report

    d = tmp_path_factory.mktemp("corr")
    correlate(reference="sit-xl-100k", n_resamples=1000, out=str(d))
    res = report(d, viz_encoders=["pixels"], viz_image="astronaut")
    return d, res


def test_report_html_holds_every_section_and_figure(correlate_report):
    d, res = correlate_report
    assert res.kind == "correlate" and res.html == d / "report.html"
    html = res.html.read_text(encoding="utf-8")
    at = []
    for i, title in enumerate(S.SECTIONS, 1):
        heading = title if title.startswith("Appendix") else f"{i}. {title}"
        assert heading in html, title
        at.append(html.index(heading))
    assert at == sorted(at)  # in report order: the finding first, checksums last
    pngs = sorted(p.stem for p in (d / "figures").glob("*.png"))
    assert pngs == ["correlations_gfid", "robustness", "similarity"]
    assert sorted(p.stem for p in (d / "figures").glob("*.pdf")) == pngs
    assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', html)) == len(pngs)
    assert html.count("Not in this folder:") == 2  # REPA − iREPA and injection curves
    assert not re.search(r'<script[^>]+src="https?:', html)  # nothing fetched: reads offline
    assert "r = -0.852" in html or "−0.852" in html or "-0.852" in html  # the LDS r of the 27 points


def test_report_notebook_is_executed_without_errors(correlate_report):
    import nbformat

    d, res = correlate_report
    nb = nbformat.read(res.notebook, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert "injected-parameters" in code[1].metadata.get("tags", [])
    assert nb.metadata["spatialprobe"]["parameters"]["kind"] == "correlate"


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no `chromium` on PATH: the headless screenshot "
                                                                "check needs Debian's chromium package")
def test_report_renders_in_headless_chromium(correlate_report, tmp_path):
    from PIL import Image

    d, res = correlate_report
    shot = tmp_path / "report.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1280,4000", f"--screenshot={shot}", res.html.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert img.shape == (4000, 1280)
    # a rendered page: white background with text and figures, not a blank or error page
    assert 0.5 < (img > 250).mean() < 0.99 and img.std() > 20


def test_a_failing_template_cell_gives_one_clear_error(tmp_path):
    import nbformat

    from spatialprobe.errors import ReportError
    from spatialprobe.report.build import report

    (tmp_path / "injection.csv").write_text("encoder,alpha,lp_acc,lds\nhog,0,0.5,0.1\nhog,0.5,0.6,0.05\n")
    tpl = tmp_path / "mine.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("report_dir = None", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("assert report_dir.endswith('%s')" % tmp_path.name),
        nbformat.v4.new_code_cell("raise ValueError('boom')")]), tpl)
    with pytest.raises(ReportError, match=r"ValueError: boom \(cell: raise ValueError\('boom'\)\).*report.ipynb"):
        report(tmp_path, template=str(tpl), html=False)
    nb = nbformat.read(tmp_path / "report.ipynb", as_version=4)
    assert nb.cells[1].metadata["tags"] == ["injected-parameters"]
    assert nb.cells[2].execution_count == 3 and not nb.cells[2].outputs  # the injected report_dir was used
    assert nb.cells[3].outputs[0].output_type == "error"
    with pytest.raises(DataError, match="not a probe folder"):
        report(tmp_path, kind="probe")  # checked before a kernel starts
    with pytest.raises(InputFileError, match="template"):
        report(tmp_path, template=str(tmp_path / "missing.ipynb"))


def test_correlate_points_found_from_a_relative_path_or_the_study_table(tmp_path):
    from spatialprobe.report.sections import _find_table

    folder = tmp_path / "runs" / "mini" / "correlate" / "lds"
    folder.mkdir(parents=True)
    (tmp_path / "runs" / "mini" / "nodes").mkdir()
    t = tmp_path / "runs" / "mini" / "nodes" / "wide.csv"
    t.write_text("encoder,lds\n")
    # recorded relative to where the study ran (here: tmp_path), read from anywhere
    assert _find_table(Path("runs/mini/nodes/wide.csv"), folder) == t
    assert _find_table(Path("elsewhere/wide.csv"), folder) is None
    (folder.parent / "table.csv").write_text("encoder,lds\n")
    assert _find_table(Path("elsewhere/wide.csv"), folder) == folder.parent / "table.csv"


def test_the_report_kernel_is_shut_down_when_the_notebook_is_done(monkeypatch):
    # nbclient leaves a kernel manager it is handed running; the kernel would outlive the command
    import nbformat

    import spatialprobe.report.build as B

    made = []
    real = B.kernel_manager
    monkeypatch.setattr(B, "kernel_manager", lambda w: made.append(real(w)) or made[-1])
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell("print(6 * 7)"))
    B.execute_notebook(nb, cwd=".")
    assert nb.cells[0].outputs[0]["text"].strip() == "42"
    assert len(made) == 1 and not made[0].has_kernel


def test_header_lists_the_folder_files_but_not_hidden_ones_or_the_report(tmp_path):
    root = _study_like(tmp_path / "study")
    for name in (".lock", "report.html"):
        (root / name).write_text("x")
    text = S.header(S.load(root)).data
    assert "`results.csv`" in text and "`study.yaml`" in text
    assert ".lock" not in text and "report.html" not in text
