"""`spatialprobe metrics` end to end: token files, feature stores, masks joined by id, sweeps, outputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from spatialprobe.cli import app
from spatialprobe.metrics import compute_metrics, parse_sweeps, spatial_metrics
from spatialprobe.errors import ConfigError

runner = CliRunner()
N, GRID, D = 12, (4, 6), 10


@pytest.fixture()
def data(tmp_path):
    gen = torch.Generator().manual_seed(0)
    tok = torch.randn(N, GRID[0] * GRID[1], D, generator=gen)
    tok[:, :12] += 2 * torch.randn(N, 1, D, generator=gen)  # top half shares a direction: structure
    ids = [f"im{i:02d}" for i in range(N)]
    fg = torch.zeros(N, 24, dtype=torch.bool)
    fg[:, :12] = True
    fg[0] = False  # empty foreground: SRSS NaN for this image
    mdir = tmp_path / "masks"
    mdir.mkdir()
    for i, m in zip(ids, fg):
        px = m.reshape(4, 6).numpy().astype(np.uint8).repeat(8, 0).repeat(8, 1) * 255  # 32x48 px
        Image.fromarray(px).save(mdir / f"{i}.png")
    return tok, ids, fg, mdir


def run(*args):
    res = runner.invoke(app, ["metrics", *map(str, args)])
    return res


def test_help_has_example():
    res = run("--help")
    assert res.exit_code == 0 and "spatialprobe metrics" in res.output and "--sweep" in res.output


@pytest.mark.parametrize("kind", ["pt", "npz", "safetensors"])
def test_token_files_with_masks(tmp_path, data, kind):
    tok, ids, fg, mdir = data
    f = tmp_path / f"tok.{kind}"
    if kind == "pt":
        torch.save({"ids": ids, "patch": tok, "grid": GRID, "encoder": "enc"}, f)
    elif kind == "npz":
        np.savez(f, ids=np.array(ids), patch=tok.numpy(), grid=np.array(GRID), encoder=np.array("enc"))
    else:
        from safetensors.torch import save_file

        save_file({"patch": tok}, str(f), metadata={"ids": json.dumps(ids), "grid": "4,6", "encoder": "enc"})
    out = tmp_path / "out"
    res = run("--features", f, "--masks", mdir, "--mask-resolution", 48, "--srss-neg", 2, "--out", out)
    assert res.exit_code == 0, res.output
    per = pd.read_csv(out / "per_image.csv")
    assert list(per.columns) == ["encoder", "id", "lds", "cds", "srss", "rmsc"]
    assert per["id"].tolist() == ids and (per["encoder"] == "enc").all()
    expect = spatial_metrics(tok, GRID, fg, srss_neg=2)
    for k in ("lds", "cds", "srss", "rmsc"):
        np.testing.assert_allclose(per[k].to_numpy(), expect[k].numpy(), atol=1e-6)
    assert math.isnan(per["srss"][0]) and per["srss"][1:].notna().all()
    pq = pd.read_parquet(out / "per_image.parquet")
    assert pq["id"].tolist() == ids
    summ = pd.read_csv(out / "summary.csv")
    row = summ.iloc[0]
    assert row["srss_nan"] == 1 and row["srss_n"] == N - 1 and row["lds_nan"] == 0
    assert row["srss"] == pytest.approx(float(np.nanmean(per["srss"])), abs=1e-7)
    assert row["lds_std"] == pytest.approx(float(per["lds"].std()), abs=1e-7)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["srss_neg"] == 2 and cfg["inputs"][0]["grid"] == [4, 6]


def test_feature_store_streamed_and_sweep(tmp_path, data):
    from spatialprobe.store import write_store

    tok, ids, fg, mdir = data
    # shuffled store order and small shards: results must follow ids, not positions
    order = torch.randperm(N, generator=torch.Generator().manual_seed(3))
    write_store(tmp_path / "store" / "enc-s", [ids[i] for i in order], patch=tok[order], grid=GRID,
                encoder="enc-s", shard_size=5)
    out = tmp_path / "out"
    res = run("-f", tmp_path / "store", "--masks", mdir, "--mask-resolution", 48, "--sweep", "lds_far=2:4",
              "--chunk-size", 4, "--out", out)
    assert res.exit_code == 0, res.output
    summ = pd.read_csv(out / "summary.csv")
    assert summ["lds_far"].tolist() == [2, 3, 4] and summ["setting"].tolist() == ["lds_far=2", "lds_far=3", "lds_far=4"]
    per = pd.read_csv(out / "per_image.csv")
    assert len(per) == 3 * N
    for far in (2, 3, 4):
        p = per[per["setting"] == f"lds_far={far}"].set_index("id").loc[ids]
        expect = spatial_metrics(tok, GRID, fg, lds_far=far)
        np.testing.assert_allclose(p["lds"].to_numpy(), expect["lds"].numpy(), atol=1e-6)
        np.testing.assert_allclose(p["srss"].to_numpy(), expect["srss"].numpy(), atol=1e-6)
    assert json.loads((out / "config.json").read_text())["inputs"][0]["store"] is True


def test_masks_join_by_id_errors_and_allow_missing(tmp_path, data):
    tok, ids, fg, mdir = data
    torch.save({"ids": ids, "patch": tok, "grid": GRID}, tmp_path / "t.pt")
    (mdir / "im03.png").unlink()
    Image.fromarray(np.zeros((32, 48), np.uint8)).save(mdir / "stray.png")
    res = run("-f", tmp_path / "t.pt", "--masks", mdir, "--out", tmp_path / "o")
    assert res.exit_code == 2
    assert "im03" in res.output and "stray" in res.output and "--allow-missing" in res.output
    res = run("-f", tmp_path / "t.pt", "--masks", mdir, "--mask-resolution", 48, "--allow-missing",
              "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    per = pd.read_csv(tmp_path / "o" / "per_image.csv")
    assert "im03" not in per["id"].tolist() and len(per) == N - 1
    assert per["encoder"].iloc[0] == "t"  # file stem when the file names no encoder


def test_mask_filter_and_paper_radii(tmp_path, data):
    tok, ids, fg, mdir = data
    torch.save({"ids": ids, "patch": tok, "grid": GRID, "encoder": "e"}, tmp_path / "t.pt")
    r = compute_metrics(features=[str(tmp_path / "t.pt")], masks=str(mdir), mask_resolution=48, mask_filter=True,
                        radii="paper", metrics=["lds", "srss"])
    s = r.summary.iloc[0]
    assert s["n_mask_filtered"] == 1  # the empty-FG image; the half masks keep 12 of 24 >= 6
    assert (s["lds_near"], s["lds_far"], s["srss_pos"], s["srss_neg"]) == (1, 2, 2, 2)
    assert list(r.per_image.columns) == ["encoder", "id", "lds", "srss"]


def test_input_errors(tmp_path, data):
    tok, ids, fg, mdir = data
    torch.save(tok, tmp_path / "bare.pt")
    res = run("-f", tmp_path / "bare.pt", "--out", tmp_path / "o")
    assert res.exit_code == 2 and "ids" in res.output
    torch.save({"ids": ids, "patch": tok}, tmp_path / "nosq.pt")  # T = 24 is not square and no grid
    res = run("-f", tmp_path / "nosq.pt", "--out", tmp_path / "o")
    assert res.exit_code == 2 and "grid" in res.output
    res = run("-f", tmp_path / "missing.pt", "--out", tmp_path / "o")
    assert res.exit_code == 2 and "missing.pt" in res.output
    res = run("-f", tmp_path / "nosq.pt", "--sweep", "lds_fur=2:3", "--out", tmp_path / "o")
    assert res.exit_code == 2 and "lds_far" in res.output


def test_parse_sweeps():
    assert parse_sweeps([]) == [{}]
    assert parse_sweeps(["lds_far=2:8:3"]) == [{"lds_far": 2}, {"lds_far": 5}, {"lds_far": 8}]
    assert parse_sweeps(["lds_far=2,4", "srss-neg=3:4"]) == [
        {"lds_far": 2, "srss_neg": 3}, {"lds_far": 2, "srss_neg": 4},
        {"lds_far": 4, "srss_neg": 3}, {"lds_far": 4, "srss_neg": 4}]
    for bad in (["lds_far=a:b"], ["lds_far"], ["lds_far=1", "lds_far=2"], ["lds_far=3:1"]):
        with pytest.raises(ConfigError):
            parse_sweeps(bad)
