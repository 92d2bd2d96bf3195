"""The official iREPA collection reader on a replica of its layout: id join vs the official positional
join, `correlate --official` == `correlate --table` on the same numbers, `metrics`/`--images official:`,
and one clear error per bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from spatialprobe.cli import app
from spatialprobe.errors import DataError, InputFileError, UnknownNameError
from spatialprobe.metrics import spatial_metrics
from spatialprobe.official import Collection, fid_file_name, official_fid_files

runner = CliRunner()
N, D, SIDE = 20, 8, 16
ENCODERS = {  # encoder: (structure strength, LP acc, gFID at 100K)
    "dinov2-vit-b": (2.5, 71.7, 19.3),
    "pe-vit-g": (0.6, 82.8, 32.35),
    "mae-vit-l": (0.2, 56.9, 41.5),
    "langpe-vit-l": (1.2, 75.0, 22.04),
    "spatialpe-vit-l": (1.8, 70.0, 99.0),  # its own file; the official names read LangPE-L's instead
}
FILTERED = {3, 12, 17}  # fewer than 64 FG patches: dropped by the official filter


def _fg(i: int) -> np.ndarray:
    """Patch-level FG of image i: a block whose size and place depend on i."""
    m = np.zeros((SIDE, SIDE), bool)
    h = 4 if i in FILTERED else 8 + i % 5
    r0, c0 = i % 4, (3 * i) % 5
    m[r0:r0 + h, c0:c0 + 8 + i % 3] = True
    return m


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    root = tmp_path_factory.mktemp("coll") / "spatial-metrics-data"
    data = root / "data"
    for sub in ("images", "masks", "features", "stats/fid", "stats/lp"):
        (data / sub).mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    fg = np.stack([_fg(i) for i in range(N)])
    for i in range(N):
        Image.fromarray((fg[i].repeat(16, 0).repeat(16, 1) * 255).astype(np.uint8)).save(data / "masks" / f"{i}.png")
        Image.fromarray((np.random.default_rng(i).random((32, 32, 3)) * 255).astype(np.uint8)).save(
            data / "images" / f"{i}.png")
    names = official_fid_files()
    feats = {}
    for enc, (strength, lp, gfid) in ENCODERS.items():
        base = torch.randn(N, SIDE * SIDE, D, generator=gen)
        fg_dir = torch.randn(N, 1, D, generator=gen)
        base = base + strength * torch.from_numpy(fg.reshape(N, -1, 1)).float() * fg_dir
        feats[enc] = base
        torch.save(base, data / "features" / f"{enc}.pt")
        (data / "stats" / "lp" / f"{enc}-none-mean").mkdir()
        (data / "stats" / "lp" / f"{enc}-none-mean" / "metrics.json").write_text(json.dumps({"best_val_acc": lp}))
        fid_name = names[enc] if enc != "spatialpe-vit-l" else fid_file_name(enc, corrected=True)
        pd.DataFrame({"Steps": [50_000, 100_000], "FID": [gfid + 5, gfid]}).to_csv(
            data / "stats" / "fid" / fid_name, index=False)
    return root, feats, fg


def _expected_table(feats, fg) -> pd.DataFrame:
    """The id join computed here from the known tokens and masks (row i <-> mask i)."""
    keep = [i for i in range(N) if i not in FILTERED]
    assert all((fg[i].sum() >= 64 and (~fg[i]).sum() >= 64) == (i in keep) for i in range(N))
    rows = []
    for enc, (_, lp, gfid) in ENCODERS.items():
        m = spatial_metrics(feats[enc][keep], (SIDE, SIDE), torch.from_numpy(fg[keep].reshape(len(keep), -1)))
        gf = ENCODERS["langpe-vit-l"][2] if enc == "spatialpe-vit-l" else gfid  # the official mix-up
        rows.append({"encoder": enc, "lp_acc": lp, "gfid": gf, **{k: float(v.double().nanmean()) for k, v in m.items()}})
    return pd.DataFrame(rows)


def test_layout_facts(replica):
    root, _, _ = replica
    col = Collection(root)
    assert col.encoders == sorted(ENCODERS)
    assert list(col.mask_files)[:3] == ["0", "1", "2"]  # numeric order
    ids, _ = col.patch_masks((SIDE, SIDE), lexicographic=True)
    assert ids[:4] == ["0", "1", "10", "11"]  # what sorted(glob) gives the official script
    assert fid_file_name("spatialpe-vit-l") == fid_file_name("langpe-vit-l")  # the official mix-up
    assert "-sdvae-dinov2-vit-b-enc8-coeff0.5-loss-cosine-projlayer-mlp-100000-v1_cfg1.0" in fid_file_name(
        "dinov2-vit-b", "sit-b-2")


def test_correlate_official_equals_correlate_table(replica, tmp_path):
    root, feats, fg = replica
    res = runner.invoke(app, ["correlate", "--official", str(root), "--steps", "100000", "--out",
                              str(tmp_path / "off"), "--n-resamples", "2000", "--no-figure"])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(tmp_path / "off" / "official_table.csv")
    exp = _expected_table(feats, fg)
    cols = ["lp_acc", "gfid", "lds", "cds", "srss", "rmsc"]
    pd.testing.assert_frame_equal(table.set_index("encoder").loc[exp["encoder"], cols].reset_index(drop=True),
                                  exp[cols], rtol=1e-5, atol=1e-7)
    assert (table["n_images"] == N - len(FILTERED)).all()
    # the same numbers through the generic path
    exp.assign(family=table.set_index("encoder").loc[exp["encoder"], "family"].to_numpy()).to_csv(
        tmp_path / "t.csv", index=False)
    res2 = runner.invoke(app, ["correlate", "--table", str(tmp_path / "t.csv"), "--family-col", "family",
                               "--n-resamples", "2000", "--no-figure", "--out", str(tmp_path / "tab")])
    assert res2.exit_code == 0, res2.output
    a = pd.read_csv(tmp_path / "off" / "correlations.csv")
    b = pd.read_csv(tmp_path / "tab" / "correlations.csv")
    num = a.select_dtypes("number").columns
    np.testing.assert_allclose(a[num].to_numpy(float), b[num].to_numpy(float), rtol=1e-6, atol=1e-9)
    # the positional join of the official script is reported, and it changes the numbers here
    pos = pd.read_csv(tmp_path / "off" / "positional_join.csv")
    assert set(pos["x"]) == set(cols) - {"gfid"}
    assert pos.loc[pos.x == "lp_acc", "difference"].abs().max() == 0
    assert pos.loc[pos.x == "srss", "difference"].abs().max() > 1e-4
    vals = pd.read_csv(tmp_path / "off" / "positional_values.csv")
    assert (vals.loc[vals.metric == "srss", "difference"].abs() > 1e-6).all()
    assert "positional" in res.output and "lexicographically" in res.output
    cfg = json.loads((tmp_path / "off" / "config.json").read_text())
    assert cfg["input"]["official"] == str(root) and cfg["protocol"]["images"] == "irepa-collection"
    # the recomputed collection serves as a predict reference with its protocol recorded
    from spatialprobe.predict import predict

    pr = predict(exp[["encoder", "lds"]].iloc[:1], reference=str(tmp_path / "off"), x=["lds"], n_boot=500)
    assert pr.protocol_reference["images"] == "irepa-collection" and pr.predictions["n_ref"].iloc[0] == 5


def test_metrics_and_images_official(replica, tmp_path):
    root, feats, fg = replica
    res = runner.invoke(app, ["metrics", "--features", f"official:{root}", "--encoder", "mae-vit-l",
                              "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    s = pd.read_csv(tmp_path / "m" / "summary.csv")
    exp = _expected_table(feats, fg).set_index("encoder")
    assert s["encoder"].tolist() == ["mae-vit-l"]
    assert s["lds"].iloc[0] == pytest.approx(exp.loc["mae-vit-l", "lds"], rel=1e-5)
    assert s["srss"].iloc[0] == pytest.approx(exp.loc["mae-vit-l", "srss"], rel=1e-5)
    per = pd.read_csv(tmp_path / "m" / "per_image.csv")
    assert sorted(per["id"].astype(int)) == [i for i in range(N) if i not in FILTERED]
    # the recorded protocol matches the packaged reference, so predict raises no protocol caveat
    from spatialprobe.predict import predict

    pr = predict(str(tmp_path / "m"), x=["lds", "cds", "srss", "rmsc"], n_boot=500, figure=False)
    assert pr.caveats == [] and len(pr.predictions) == 4
    from spatialprobe.data import open_source

    src = open_source(f"official:{root}")
    assert src.ids == [str(i) for i in range(N)] and src.kind == "irepa-collection"
    assert tuple(src.load(10).shape) == (3, 256, 256)


def test_bad_inputs_give_one_clear_error(replica, tmp_path):
    root, feats, _ = replica
    res = runner.invoke(app, ["correlate", "--official", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "does not exist" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["metrics", "--features", f"official:{root}:dinov2-vit-x", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "not in the official collection" in res.output and "dinov2-vit-b" in res.output
    with pytest.raises(UnknownNameError, match="Did you mean"):
        Collection(root).select(["mae-vit-h"])
    # a copy with a non-tensor .pt and with a mismatched row count
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(root, bad)
    torch.save({"patch": feats["mae-vit-l"]}, bad / "data" / "features" / "mae-vit-l.pt")
    torch.save(feats["pe-vit-g"][:N - 1], bad / "data" / "features" / "pe-vit-g.pt")
    res = runner.invoke(app, ["metrics", "--features", f"official:{bad}:mae-vit-l", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "hold a dict, not a tensor" in res.output
    res = runner.invoke(app, ["metrics", "--features", f"official:{bad}:pe-vit-g", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "19 feature rows in data/features/pe-vit-g.pt but 20 masks" in res.output
    assert "Traceback" not in res.output
    (bad / "data" / "masks" / "3.png").rename(bad / "data" / "masks" / "x3.png")
    with pytest.raises(DataError, match="not an image index"):
        Collection(bad).mask_files
    with pytest.raises(InputFileError, match="not an official collection"):
        Collection(tmp_path)


def test_official_inputs_stay_above_the_stages(replica, tmp_path):
    """data/ opens official:DIR images and metrics/ runs without importing the official analysis; official:
    feature inputs go to compute_official_metrics (what the CLI runs), not through compute_metrics."""
    import subprocess
    import sys

    from spatialprobe.errors import ConfigError
    from spatialprobe.metrics import compute_metrics
    from spatialprobe.official import compute_official_metrics

    root, _, _ = replica
    code = ("import sys; from spatialprobe.data import open_source; import spatialprobe.metrics; "
            "src = open_source(sys.argv[1]); assert src.kind == 'irepa-collection', src.kind; "
            "up = [m for m in sys.modules if m.startswith('spatialprobe.official')]; assert not up, up")
    res = subprocess.run([sys.executable, "-c", code, f"official:{root}"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    with pytest.raises(ConfigError, match="compute_official_metrics"):
        compute_metrics(features=[f"official:{root}"], out=str(tmp_path / "m"))
    r = compute_official_metrics(features=[f"official:{root}:mae-vit-l"], metrics=["lds"], out=str(tmp_path / "o"))
    assert r.summary["encoder"].tolist() == ["mae-vit-l"] and r.summary["n_images"].iloc[0] == N - len(FILTERED)
    assert json.loads((tmp_path / "o" / "config.json").read_text())["protocol"]["images"] == "irepa-collection"


def test_help_has_examples():
    res = runner.invoke(app, ["correlate", "--help"])
    assert res.exit_code == 0 and "--official" in res.output and "spatialprobe correlate --official" in res.output
    res = runner.invoke(app, ["metrics", "--help"])
    assert "official:DIR" in res.output
