"""Numbers a reader can trust: statistics that say when n is too small, tables checked for types and
units at the door (text cells, NaN/inf, empty tables, LP fractions beside percents), the official
collection's bad files, a reproducible `fid-ref` checksum, and figures whose labels do not overlap.

Each case was a silently wrong number, an empty result with exit 0 or a raw traceback before; each
is now a clear error (the input, what is wrong, the fix) or a value left out and named.
"""

from __future__ import annotations

import json
import logging
import shutil
import time

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from spatialprobe import reference
from spatialprobe.cli import app
from spatialprobe.stats import MIN_N_FOR_CI, SMALL_N_NOTE, correlation_table
from test_bad_inputs import assert_clean_error  # the one definition of "one clean error line"

pytestmark = pytest.mark.usefixtures("fresh_log_handler")


class _Runner:
    """CliRunner whose every invocation gets a fresh log handler (bound to that invocation's stderr)."""

    def invoke(self, *args, **kw):
        logging.getLogger("spatialprobe").handlers.clear()
        return CliRunner().invoke(*args, **kw)


runner = _Runner()


N3 = pd.DataFrame({"encoder": ["a", "b", "c"], "lds": [0.1, 0.2, 0.3], "gfid": [20.0, 15.2, 9.6]})


# ------------------------------------------------------------------------------- statistics and small n

def test_below_min_n_r_has_no_interval_and_says_why():
    """n = 3 printed a '95 % CI' [-1.000, -0.994] for r = -0.994; now r alone with the note."""
    t = correlation_table(N3, ["lds"], ["gfid"], n_resamples=1000)
    row = t.iloc[0]
    assert row["n"] == 3 and row["pearson_r"] == pytest.approx(np.corrcoef(N3.lds, N3.gfid)[0, 1])
    for col in ("pearson_ci_low", "pearson_ci_high", "pearson_p_perm", "pearson_p", "loo_min", "loo_max"):
        assert np.isnan(row[col]), col
    assert SMALL_N_NOTE in row["note"] and "n = 3" in row["note"]
    # from MIN_N_FOR_CI on, the interval and p are back and the note is empty
    rng = np.random.default_rng(0)
    x = rng.normal(size=MIN_N_FOR_CI)
    df5 = pd.DataFrame({"x": x, "y": -x + 0.3 * rng.normal(size=MIN_N_FOR_CI)})
    r5 = correlation_table(df5, ["x"], ["y"], n_resamples=1000).iloc[0]
    assert np.isfinite([r5.pearson_ci_low, r5.pearson_ci_high, r5.pearson_p_perm]).all() and r5.note == ""


def test_min_n_is_where_a_permutation_p_can_reach_005():
    """The reason for 5 (stats.py): the smallest two-sided permutation p is 2/n!."""
    from math import factorial

    from spatialprobe.stats import permutation_p

    for n, can in ((MIN_N_FOR_CI - 1, False), (MIN_N_FOR_CI, True)):
        x = np.arange(n, dtype=float)
        p = permutation_p(x, -x, n_resamples=1000)
        assert p == pytest.approx(2 / factorial(n)) and (p < 0.05) == can


def test_cli_correlate_small_n_prints_the_note_not_an_interval(tmp_path):
    N3.to_csv(tmp_path / "n3.csv", index=False)
    res = runner.invoke(app, ["correlate", "--table", str(tmp_path / "n3.csv"), "--x", "lds", "--out",
                              str(tmp_path / "o"), "--n-resamples", "1000"])
    assert res.exit_code == 0, res.output
    assert f"lds vs gfid: r = -0.999, {SMALL_N_NOTE}" in res.output
    t = pd.read_csv(tmp_path / "o" / "correlations.csv")
    assert t[["pearson_ci_low", "pearson_ci_high", "pearson_p_perm"]].isna().all().all()
    assert SMALL_N_NOTE in t.loc[0, "note"]


def test_figure_titles_carry_the_note_below_min_n():
    from spatialprobe.figures import correlation_grid, correlation_panel

    t = correlation_table(N3, ["lds"], ["gfid"], n_resamples=1000)
    fig = correlation_panel(N3, ["lds"], "gfid", t)
    title = fig.axes[0].get_title()
    assert SMALL_N_NOTE in title and "[" not in title
    fig = correlation_grid({"gfid": N3}, ["lds"], {"gfid": t})
    assert SMALL_N_NOTE in fig.axes[0].get_title() and "[" not in fig.axes[0].get_title()


# ------------------------------------------------------------------------------- correlate: types at the door

def test_correlate_text_cell_names_value_and_row(tmp_path):
    (tmp_path / "t.csv").write_text("encoder,lds,gfid\na,0.1,20\nb,0.3O,15\nc,0.3,10\nd,0.4,8\n")
    res = runner.invoke(app, ["correlate", "--table", str(tmp_path / "t.csv"), "--x", "lds", "--out",
                              str(tmp_path / "o")])
    assert_clean_error(res, "'0.3O'", "encoder b", "lds", "t.csv")


def test_correlate_header_only_table_names_the_file(tmp_path):
    (tmp_path / "h.csv").write_text("encoder,lds,gfid\n")
    res = runner.invoke(app, ["correlate", "--table", str(tmp_path / "h.csv"), "--x", "lds", "--out",
                              str(tmp_path / "o")])
    assert_clean_error(res, "h.csv", "no rows")
    assert not (tmp_path / "o" / "correlations.csv").exists()


def test_correlate_lp_fraction_among_percents_is_an_error(tmp_path):
    ref = reference.load("sit-xl-100k")
    ref.loc[ref["point_id"] == "P03", "lp_acc"] = 0.8281
    ref.to_csv(tmp_path / "t.csv", index=False)
    res = runner.invoke(app, ["correlate", "--table", str(tmp_path / "t.csv"), "--x", "lp_acc", "--out",
                              str(tmp_path / "o")])
    assert_clean_error(res, "lp_acc", "fractions", "P03", "percents")


def test_correlate_zero_byte_table_is_a_clear_error(tmp_path):
    (tmp_path / "z.csv").write_bytes(b"")
    res = runner.invoke(app, ["correlate", "--table", str(tmp_path / "z.csv"), "--x", "lds", "--out",
                              str(tmp_path / "o")])
    assert_clean_error(res, "z.csv", "empty (0 bytes)")


def test_correlate_drops_and_names_inf():
    df = reference.load("sit-xl-100k")
    df.loc[df["point_id"] == "P03", "lds"] = np.inf
    from spatialprobe.stats import correlate_pair

    res = correlate_pair(df, "lds", "gfid", id_col="point_id", n_resamples=1000)
    assert res.dropped == ["P03"] and res.row["n"] == 26 and np.isfinite(res.row["pearson_r"])


# ------------------------------------------------------------------------------- predict: types and units

NEW = "encoder,lp_acc,lds,cds\nmine,72.0,0.30,0.04\nother,65.0,0.20,0.03\n"


def test_predict_inf_value_is_left_out_and_named(tmp_path):
    """An infinite LDS gave pred_gfid inf with rank 1."""
    (tmp_path / "n.csv").write_text("encoder,lds,cds\nmine,inf,0.04\nother,0.2,0.03\n")
    res = runner.invoke(app, ["predict", "--table", str(tmp_path / "n.csv"), "--x", "lds,cds", "--n-boot", "500",
                              "--no-figure", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    p = pd.read_csv(tmp_path / "o" / "predictions.csv")
    assert np.isfinite(p[["value", "pred_gfid", "pi_low", "pi_high"]].to_numpy(float)).all()
    assert not ((p.encoder == "mine") & (p.x == "lds")).any() and len(p) == 3
    assert "note: 'n.csv': lds is inf for encoder mine: left out".replace("'n.csv'", repr(str(tmp_path / "n.csv"))) \
        in res.output
    assert json.loads((tmp_path / "o" / "config.json").read_text())["dropped"]


@pytest.mark.parametrize("body, names", [
    ("encoder,lds,cds\n", ("h.csv", "no rows")),
    ("encoder,lds\nmine,0.3O\n", ("h.csv", "'0.3O'", "encoder mine", "lds")),
    ("encoder,lds\nmine,\nother,nan\n", ("h.csv", "no finite value", "lds")),
])
def test_predict_empty_or_text_input_is_an_error_not_an_empty_result(tmp_path, body, names):
    (tmp_path / "h.csv").write_text(body)
    res = runner.invoke(app, ["predict", "--table", str(tmp_path / "h.csv"), "--x", "lds", "--n-boot", "500",
                              "--out", str(tmp_path / "o")])
    assert_clean_error(res, *names)
    assert not (tmp_path / "o" / "predictions.csv").exists()
    assert not (tmp_path / "o" / "prediction_panel.png").exists()


def test_predict_lp_fraction_among_percents_is_an_error(tmp_path):
    """0.70 beside percents was used as 0.7 %."""
    (tmp_path / "n.csv").write_text("encoder,lp_acc\nmine,0.70\nother,69.0\n")
    res = runner.invoke(app, ["predict", "--table", str(tmp_path / "n.csv"), "--x", "lp_acc", "--n-boot", "500",
                              "--out", str(tmp_path / "o")])
    assert_clean_error(res, "lp_acc", "fractions encoder mine (0.7)", "percents encoder other (69)", "one scale")


def test_predict_reference_inf_is_left_out_and_named(tmp_path):
    ref = reference.load("sit-xl-100k")
    ref.loc[ref["point_id"] == "P03", "lds"] = np.inf
    ref.to_csv(tmp_path / "r.csv", index=False)
    from spatialprobe.predict import predict

    res = predict(pd.DataFrame({"encoder": ["m"], "lds": [0.3]}), reference=str(tmp_path / "r.csv"), x=["lds"],
                  n_boot=500, figure=False)
    assert res.predictions["n_ref"].iloc[0] == 26 and np.isfinite(res.predictions["pred_gfid"]).all()
    assert any("lds is inf for point_id P03" in d for d in res.dropped)


def test_predict_from_a_study_folder_uses_one_row_per_encoder(tmp_path):
    """Documented, but a study's results.csv (encoder × method × seed) always failed with 'lists encoder(s)
    ... more than once'."""
    rows = []
    for enc, lds, cds in (("hog", 0.23, 0.027), ("sift", 0.44, 0.052), ("pixels", 0.28, 0.025)):
        for method in ("repa", "irepa"):
            for seed in (0, 1):
                rows.append({"encoder": enc, "family": "Classical", "method": method, "seed": seed, "lds": lds,
                             "cds": cds, "fd_digits": 800.0 + seed})
    rows.append({"encoder": "none", "family": "Baseline", "method": "none", "seed": 0, "fd_digits": 1000.0})
    (tmp_path / "study").mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / "study" / "results.csv", index=False)
    res = runner.invoke(app, ["predict", "--table", str(tmp_path / "study"), "--x", "lds,cds", "--n-boot", "500",
                              "--no-figure", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    p = pd.read_csv(tmp_path / "o" / "predictions.csv")
    assert sorted(p["encoder"].unique()) == ["hog", "pixels", "sift"] and len(p) == 6
    # properties that differ between one encoder's rows have no one value: an error naming the encoder
    bad = pd.DataFrame(rows)
    bad.loc[(bad.encoder == "sift") & (bad.seed == 1), "lds"] = 0.5
    bad.to_csv(tmp_path / "study" / "results.csv", index=False)
    res = runner.invoke(app, ["predict", "--table", str(tmp_path / "study"), "--x", "lds", "--n-boot", "500",
                              "--no-figure", "--out", str(tmp_path / "o2")])
    assert_clean_error(res, "results.csv", "sift", "differ")


def test_predict_lp_fractions_alone_are_rescaled_to_the_reference():
    from spatialprobe.predict import predict

    frac = predict(pd.DataFrame({"encoder": ["m"], "lp_acc": [0.72]}), x=["lp_acc"], n_boot=500, figure=False)
    pct = predict(pd.DataFrame({"encoder": ["m"], "lp_acc": [72.0]}), x=["lp_acc"], n_boot=500, figure=False)
    pd.testing.assert_frame_equal(frac.predictions, pct.predictions)


# ------------------------------------------------------------------------------- the official collection

N_IMG, SIDE, D = 12, 16, 8


def _fg(i: int) -> np.ndarray:
    m = np.zeros((SIDE, SIDE), bool)
    m[i % 3:i % 3 + 8 + i % 4, (2 * i) % 5:(2 * i) % 5 + 8] = True
    return m


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """A small replica of the official layout: 12 images/masks, 5 encoders, LP in percent."""
    from spatialprobe.official import official_fid_files

    root = tmp_path_factory.mktemp("coll") / "spatial-metrics-data"
    data = root / "data"
    for sub in ("images", "masks", "features", "stats/fid", "stats/lp"):
        (data / sub).mkdir(parents=True)
    for i in range(N_IMG):
        Image.fromarray((_fg(i).repeat(16, 0).repeat(16, 1) * 255).astype(np.uint8)).save(data / "masks" / f"{i}.png")
        Image.fromarray(np.full((256, 256, 3), 10 * i, np.uint8)).save(data / "images" / f"{i}.png")
    names = official_fid_files()
    gen = torch.Generator().manual_seed(0)
    fg = torch.from_numpy(np.stack([_fg(i) for i in range(N_IMG)]).reshape(N_IMG, -1, 1)).float()
    encs = {"dinov2-vit-b": (2.5, 71.7, 19.3), "pe-vit-g": (0.6, 82.8, 32.4), "mae-vit-l": (0.2, 56.9, 41.5),
            "langpe-vit-l": (1.2, 75.0, 22.0), "clip-vit-L": (1.0, 78.0, 25.0)}
    for enc, (strength, lp, gfid) in encs.items():
        x = torch.randn(N_IMG, SIDE * SIDE, D, generator=gen) + strength * fg * torch.randn(N_IMG, 1, D, generator=gen)
        torch.save(x, data / "features" / f"{enc}.pt")
        (data / "stats" / "lp" / f"{enc}-none-mean").mkdir()
        (data / "stats" / "lp" / f"{enc}-none-mean" / "metrics.json").write_text(json.dumps({"best_val_acc": lp}))
        pd.DataFrame({"Steps": [100_000], "FID": [gfid]}).to_csv(data / "stats" / "fid" / names[enc], index=False)
    return root


def _copy(root, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(root, dst)
    return dst


def test_official_collection_runs_clean(collection, tmp_path):
    res = runner.invoke(app, ["correlate", "--official", str(collection), "--x", "lp_acc,lds,srss",
                              "--n-resamples", "1000", "--no-figure", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(tmp_path / "o" / "official_table.csv")) == 5


def test_official_non_square_mask_is_refused_not_stretched(collection, tmp_path):
    """A 256x128 mask was resized onto the square image (SRSS 0.51 instead of 0.81)."""
    root = _copy(collection, tmp_path)
    m = np.zeros((128, 256), np.uint8)
    m[:, :128] = 255
    Image.fromarray(m).save(root / "data" / "masks" / "4.png")
    res = runner.invoke(app, ["metrics", "--features", f"official:{root}:mae-vit-l", "--metrics", "srss",
                              "--out", str(tmp_path / "o")])
    assert_clean_error(res, "4.png", "256x128", "not square", "4.png is 256x256")


def test_official_empty_pt_is_a_clear_error(collection, tmp_path):
    """A 0-byte .pt raised a traceback while the error message was being formatted."""
    root = _copy(collection, tmp_path)
    (root / "data" / "features" / "pe-vit-g.pt").write_bytes(b"")
    res = runner.invoke(app, ["metrics", "--features", f"official:{root}:pe-vit-g", "--out", str(tmp_path / "o")])
    assert_clean_error(res, "pe-vit-g.pt", "empty (0-byte)", "download")
    res = runner.invoke(app, ["correlate", "--official", str(root), "--out", str(tmp_path / "o2")])
    assert_clean_error(res, "pe-vit-g.pt", "empty (0-byte)")


def test_official_truncated_pt_is_a_clear_error(collection, tmp_path):
    root = _copy(collection, tmp_path)
    p = root / "data" / "features" / "pe-vit-g.pt"
    p.write_bytes(p.read_bytes()[:100])
    res = runner.invoke(app, ["metrics", "--features", f"official:{root}:pe-vit-g", "--out", str(tmp_path / "o")])
    assert_clean_error(res, "pe-vit-g.pt", "could not be loaded safely", "download the file again")


def test_official_nan_features_name_file_and_image_ids(collection, tmp_path):
    """The error named batch positions (index within a chunk), not the images."""
    root = _copy(collection, tmp_path)
    p = root / "data" / "features" / "mae-vit-l.pt"
    x = torch.load(p, weights_only=True)
    x[7, 3, 0] = float("nan")
    x[9, 0, 1] = float("inf")
    torch.save(x, p)
    res = runner.invoke(app, ["metrics", "--features", f"official:{root}:mae-vit-l", "--chunk-size", "4",
                              "--out", str(tmp_path / "o")])
    line = assert_clean_error(res, "mae-vit-l.pt", "image id(s) 7, 9", "non-finite")
    assert "batch index" not in line


def test_official_lp_fraction_among_percents_is_an_error(collection, tmp_path):
    """One best_val_acc stored as 0.717 among percents was used as 0.7 %."""
    root = _copy(collection, tmp_path)
    (root / "data" / "stats" / "lp" / "dinov2-vit-b-none-mean" / "metrics.json").write_text('{"best_val_acc": 0.717}')
    res = runner.invoke(app, ["correlate", "--official", str(root), "--x", "lp_acc", "--n-resamples", "1000",
                              "--out", str(tmp_path / "o")])
    assert_clean_error(res, "best_val_acc", "dinov2-vit-b", "metrics.json", "0.717", "fractions", "percents")


def test_official_fid_text_cell_is_a_clear_error(collection, tmp_path):
    """A text FID ('3x.2') ended in a raw ValueError traceback."""
    from spatialprobe.official import fid_file_name

    root = _copy(collection, tmp_path)
    (root / "data" / "stats" / "fid" / fid_file_name("pe-vit-g")).write_text("Steps,FID\n100000,3x.2\n")
    res = runner.invoke(app, ["correlate", "--official", str(root), "--x", "lds", "--n-resamples", "1000",
                              "--out", str(tmp_path / "o")])
    assert_clean_error(res, fid_file_name("pe-vit-g"), "'3x.2'", "not a number")


def test_official_relative_path_from_another_folder(collection, tmp_path, monkeypatch):
    import os

    monkeypatch.chdir(tmp_path)
    rel = os.path.relpath(collection, tmp_path)
    res = runner.invoke(app, ["metrics", "--features", f"official:{rel}:mae-vit-l", "--metrics", "lds",
                              "--out", "m"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m" / "summary.csv").is_file()


# ------------------------------------------------------------------------------- metrics on token files

@pytest.mark.parametrize("name, make, names", [
    ("z.npz", lambda p: p.write_bytes(b""), ("z.npz", "empty (0-byte)")),
    ("z.pt", lambda p: p.write_bytes(b""), ("z.pt", "empty (0-byte)")),
    ("t.npz", lambda p: p.write_text("hello"), ("t.npz", "could not be read as an .npz")),
    ("t.safetensors", lambda p: p.write_text("hello"), ("t.safetensors", "could not be read as safetensors")),
    ("s.npz", lambda p: np.savez(p, ids=np.array(["a", "b"]), patch=np.full((2, 16, 4), "x"), grid=np.array([4, 4])),
     ("s.npz", "not numbers")),
    ("e.npz", lambda p: np.savez(p, ids=np.array([], dtype=str), patch=np.zeros((0, 16, 4), np.float32),
                                 grid=np.array([4, 4])), ("e.npz", "no images")),
])
def test_metrics_broken_token_files_are_clear_errors(tmp_path, name, make, names):
    """Each was a raw traceback, click's bare 'Aborted.' or 'No image ... has a mask in None'."""
    make(tmp_path / name)
    res = runner.invoke(app, ["metrics", "--features", str(tmp_path / name), "--out", str(tmp_path / "o")])
    assert_clean_error(res, *names)


# ------------------------------------------------------------------------------- fid-ref reproducible

def test_fid_ref_undecodable_image_names_the_file(tmp_path):
    """'error: a: not a recognised image format' named neither the folder nor the file."""
    (tmp_path / "imgs").mkdir()
    for n in ("a", "b"):
        (tmp_path / "imgs" / f"{n}.png").write_text("not a png")
    res = runner.invoke(app, ["fid-ref", str(tmp_path / "imgs"), "--random-init", "--pr-images", "2",
                              "--resolution", "64", "--no-progress", "--out", str(tmp_path / "r.npz")])
    assert_clean_error(res, str(tmp_path / "imgs" / "a.png"), "could not be decoded")


def test_fid_ref_sha256_identifies_the_statistics(tmp_path):
    """Two identical builds differed (the build's seconds were in the file, and the zip entries' times)."""
    from spatialprobe import fid
    from spatialprobe.config import sha256_file

    model = fid.build_inception(pretrained=False, seed=0)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "real.npz", arr_0=rng.integers(0, 255, (5, 64, 64, 3), dtype=np.uint8))
    metas = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        metas.append(fid.build_reference(str(tmp_path / "real.npz"), tmp_path / name / "ref.npz", model=model,
                                         pr_images=3, progress=False))
        time.sleep(2.1)  # zip entry times have a 2 s resolution
    a, b = (sha256_file(tmp_path / n / "ref.npz") for n in ("a", "b"))
    assert a == b == metas[0]["sha256"] == metas[1]["sha256"]
    assert "seconds" in metas[0]  # still reported, outside the hashed file
    with np.load(tmp_path / "a" / "ref.npz") as z:
        assert "seconds" not in json.loads(str(z["spatialprobe_meta"]))


# ------------------------------------------------------------------------------- figures

def label_overlaps(fig) -> list[tuple[str, str]]:
    """Pairs of point labels inside one axis of ``fig`` whose drawn boxes overlap."""
    fig.canvas.draw()
    rend = fig.canvas.get_renderer()
    out = []
    for ax in fig.axes:
        boxes = [(t.get_text(), t.get_window_extent(rend)) for t in ax.texts if t.get_text() and t.get_visible()]
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                if boxes[i][1].overlaps(boxes[j][1]):
                    out.append((boxes[i][0], boxes[j][0]))
    return out


def test_correlation_panel_labels_every_point_without_overlaps():
    from spatialprobe.figures import correlation_panel

    ref = reference.load("sit-xl-100k")
    xs = ["lp_acc", "lds", "cds", "srss", "rmsc"]
    st = correlation_table(ref, xs, ["gfid"], family_col="family", n_resamples=1000)
    fig = correlation_panel(ref, xs, "gfid", st, family_col="family")
    for ax in fig.axes:
        labels = [t.get_text() for t in ax.texts]
        assert len(labels) == len(ref) and "dinov2-vit-b" in labels and "P06" in labels  # id where unnamed
        inside = ax.get_window_extent()
        assert all(inside.contains(*t.get_window_extent().get_points().mean(0)) for t in ax.texts)
    assert label_overlaps(fig) == []


def test_prediction_panel_labels_reference_and_new_points_without_overlaps():
    from spatialprobe.figures import prediction_panel
    from spatialprobe.predict import predict

    new = pd.DataFrame({"encoder": ["mine", "other"], "lds": [0.30, 0.20], "cds": [0.04, 0.03]})
    res = predict(new, x=["lds", "cds"], n_boot=500, figure=False)
    ref = reference.load("sit-xl-100k")
    fig = prediction_panel(ref, ["lds", "cds"], "gfid", res.predictions, family_col="family")
    for ax in fig.axes:
        labels = [t.get_text() for t in ax.texts]
        assert sum(lab.startswith("mine\n") for lab in labels) == 1 and "pe-vit-g" in labels
        assert len(labels) == len(ref) + 2
    assert label_overlaps(fig) == []


def test_classical_is_not_the_unidentified_grey_and_unidentified_is_in_the_legend():
    from matplotlib.colors import to_rgb

    from spatialprobe.figures import FAMILY_ORDER, UNKNOWN_COLOUR, correlation_grid, correlation_panel, family_colours

    colours = family_colours(["Classical"])
    for fam in FAMILY_ORDER:
        r, g, b = to_rgb(colours[fam])
        assert max(r, g, b) - min(r, g, b) > 0.1, (fam, colours[fam])  # no family is drawn grey
    assert colours["Classical"] != UNKNOWN_COLOUR
    df = pd.DataFrame({"encoder": ["hog", "sift", "x", "y", "z"], "family": ["Classical", "Classical", None, "DINOv2", None],
                       "lds": [0.1, 0.2, 0.3, 0.4, 0.5], "gfid": [30.0, 28.0, 25.0, 20.0, 19.0]})
    st = correlation_table(df, ["lds"], ["gfid"], family_col="family", n_resamples=1000)
    for fig in (correlation_panel(df, ["lds"], "gfid", st, family_col="family"),
                correlation_grid({"gfid": df}, ["lds"], {"gfid": st})):
        names = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
        assert {"Classical", "DINOv2", "unidentified"} <= set(names), names
