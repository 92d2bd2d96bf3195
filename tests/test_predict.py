"""`spatialprobe predict`: OLS prediction intervals, ranks, leave-one-out coverage, protocol caveats, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from spatialprobe import reference
from spatialprobe.cli import app
from spatialprobe.errors import ColumnError, InputFileError, UnknownNameError
from spatialprobe.predict import (COLUMNS, bootstrap_interval, leave_one_out, ols_fit, predict, protocol_caveats,
                                  rank_among, t_interval)

runner = CliRunner()
PROPS = ("lp_acc", "lds", "cds", "srss", "rmsc")


def test_t_interval_matches_textbook_formula():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, 15)
    y = 3 - 2 * x + rng.normal(0, 0.3, 15)
    fit = ols_fit(x, y)
    b, a = np.polyfit(x, y, 1)
    assert fit["slope"] == pytest.approx(b) and fit["intercept"] == pytest.approx(a)
    yhat, lo, hi = t_interval(fit, np.array([0.2, 1.5]), 0.95)
    # hand computation with scipy's t quantile for 13 degrees of freedom
    from scipy import stats

    s = np.sqrt(((y - (a + b * x)) ** 2).sum() / 13)
    for x0, yh, l, h in zip([0.2, 1.5], yhat, lo, hi):
        half = stats.t.ppf(0.975, 13) * s * np.sqrt(1 + 1 / 15 + (x0 - x.mean()) ** 2 / ((x - x.mean()) ** 2).sum())
        assert yh == pytest.approx(a + b * x0)
        assert (l, h) == pytest.approx((yh - half, yh + half))
    assert hi[1] - lo[1] > hi[0] - lo[0]  # extrapolation widens the interval


def test_intervals_cover_new_draws_at_nominal_rate():
    """Both intervals, on repeated draws from a known line, contain a fresh observation ~95 % of the time."""
    rng = np.random.default_rng(0)
    hits_t = hits_b = 0
    trials = 200
    for k in range(trials):
        x = rng.uniform(0, 1, 27)
        y = 30 - 20 * x + rng.normal(0, 2, 27)
        x0 = rng.uniform(0, 1, 1)
        y0 = 30 - 20 * x0 + rng.normal(0, 2, 1)
        _, lo, hi = t_interval(ols_fit(x, y), x0)
        blo, bhi = bootstrap_interval(x, y, x0, n_boot=600, seed=k)
        hits_t += int(lo[0] <= y0[0] <= hi[0])
        hits_b += int(blo[0] <= y0[0] <= bhi[0])
    assert 0.88 <= hits_t / trials <= 0.99
    assert 0.85 <= hits_b / trials <= 0.99


def test_rank_among_reference():
    ref = np.array([10.0, 20.0, 30.0])
    assert rank_among(ref, np.array([5.0, 15.0, 35.0])).tolist() == [1, 2, 4]


@pytest.mark.parametrize("prop", PROPS)
def test_leave_one_out_contains_published_gfid(prop):
    """Predicting each of the 27 reference points from the other 26: the 95 % PI holds its gFID >= 90 %."""
    loo = leave_one_out("sit-xl-100k", x=prop, n_boot=800)
    assert len(loo) == 27
    assert loo["in_pi"].mean() >= 0.90, loo[~loo["in_pi"]]
    assert loo["in_boot"].mean() >= 0.90, loo[~loo["in_boot"]]


def test_reference_point_predicts_itself_closely():
    ref = reference.load("sit-xl-100k")
    row = ref[ref["encoder"] == "dinov2-vit-b"]
    res = predict(row[["encoder", *PROPS]].rename(columns=lambda c: c), n_boot=500)
    p = res.predictions
    assert list(p.columns[:7]) == list(COLUMNS)
    assert set(p["x"]) == set(PROPS)
    gfid = float(row["gfid"].iloc[0])
    for _, r in p.iterrows():
        assert r.pi_low < r.pred_gfid < r.pi_high
        assert r.boot_low < r.pred_gfid < r.boot_high
        if r.x != "lp_acc":  # the spatial metrics place DINOv2-B near the best encoders
            assert r.pi_low <= gfid <= r.pi_high and r["rank"] <= 14


def test_cli_writes_outputs_and_caveats(tmp_path):
    new = pd.DataFrame({"encoder": ["enc-a", "enc-b"], "lds": [0.30, 0.10], "srss": [0.40, 0.15],
                        "lp_acc": [0.65, 0.80]})  # LP as a fraction, as `probe` writes it
    new.to_csv(tmp_path / "new.csv", index=False)
    out = tmp_path / "pred"
    res = runner.invoke(app, ["predict", "--table", str(tmp_path / "new.csv"), "--out", str(out), "--n-boot", "600"])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out / "predictions.csv")
    assert list(df.columns[:7]) == list(COLUMNS)
    assert len(df) == 6 and set(df["x"]) == {"lds", "srss", "lp_acc"}
    lp = df[df["x"] == "lp_acc"]
    assert lp["value"].tolist() == pytest.approx([65.0, 80.0])  # rescaled to the reference's percent
    a, b = df[(df.x == "lds") & (df.encoder == "enc-a")].iloc[0], df[(df.x == "lds") & (df.encoder == "enc-b")].iloc[0]
    assert a.pred_gfid < b.pred_gfid and a["rank"] < b["rank"]  # higher LDS -> lower predicted gFID
    assert (out / "prediction_panel.png").stat().st_size > 10_000 and (out / "prediction_panel.pdf").is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["protocol_reference"]["radii"].startswith("lds_near=1,lds_far=6")
    assert "caveat" in res.output and "not recorded for the new encoders" in res.output


def test_protocol_caveats_name_differences():
    ref = {"images": "irepa-collection", "resolution": "256", "radii": "r1", "masks": "m"}
    assert protocol_caveats(dict(ref), ref) == []
    cav = protocol_caveats({**ref, "resolution": "512", "radii": "r2"}, ref)
    assert len(cav) == 2 and "resolution differ: new encoders 512, reference 256" in cav[0] and "radii" in cav[1]


def test_metrics_folder_input_records_protocol(tmp_path):
    from spatialprobe.metrics import compute_metrics
    from spatialprobe.store import write_store

    gen = torch.Generator().manual_seed(0)
    ids = [f"im{i}" for i in range(6)]
    for name in ("enc-x", "enc-y"):
        tok = torch.randn(6, 16, 8, generator=gen)
        write_store(tmp_path / "st" / name, ids, patch=tok, grid=(4, 4), encoder=name)
    stores = sorted(str(p) for p in (tmp_path / "st").iterdir())
    compute_metrics(features=stores, out=str(tmp_path / "m"), metrics=["lds", "cds", "rmsc"], lds_far=3)
    res = predict(str(tmp_path / "m"), n_boot=500, figure=False)
    assert set(res.predictions["encoder"]) == {"enc-x", "enc-y"}
    assert set(res.predictions["x"]) == {"lds", "cds", "rmsc"}
    assert res.protocol_new["radii"] == "lds_near=1,lds_far=3,cds_dmax=8,srss_pos=1,srss_neg=6"
    assert res.protocol_new["masks"] == "none"
    assert any(c.startswith("radii differ") for c in res.caveats)
    assert not any(c.startswith("masks") for c in res.caveats)  # no SRSS predicted: masks are irrelevant


def test_user_reference_table(tmp_path):
    ref = reference.load("sit-xl-100k")
    ref[["encoder", "lds", "gfid"]].iloc[:20].to_csv(tmp_path / "ref.csv", index=False)
    held = ref.iloc[20:][["encoder", "lds"]]
    res = predict(held, reference=str(tmp_path / "ref.csv"), x=["lds"], n_boot=500)
    p = res.predictions
    assert len(p) == 7 and (p["n_ref"] == 20).all() and p["rank"].between(1, 21).all()
    assert res.caveats and all("recorded for neither" in c for c in res.caveats)
    with pytest.raises(ColumnError, match="lacks"):
        predict(held, reference=str(tmp_path / "ref.csv"), x=["lds", "cds"])


def test_bad_inputs_give_one_clear_error(tmp_path):
    res = runner.invoke(app, ["predict", "--table", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "does not exist" in res.output and "Traceback" not in res.output
    (tmp_path / "t.csv").write_text("name,lds\na,0.2\n")
    res = runner.invoke(app, ["predict", "--table", str(tmp_path / "t.csv"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "no 'encoder' column" in res.output
    (tmp_path / "u.csv").write_text("encoder,foo\na,0.2\n")
    with pytest.raises(ColumnError, match="none of the properties"):
        predict(str(tmp_path / "u.csv"))
    with pytest.raises(UnknownNameError, match="sit-xl-100k"):
        predict(str(tmp_path / "t.csv").replace("t.csv", "u.csv"), reference="sit-xl-10k")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match="summary.csv"):
        predict(str(tmp_path / "empty"))


def test_help_has_example():
    res = runner.invoke(app, ["predict", "--help"])
    assert res.exit_code == 0 and "spatialprobe predict --table" in res.output


def test_protocol_ids_come_from_the_extraction_record(tmp_path):
    """images and resolution are read from the stores' manifests behind a metrics folder."""
    from spatialprobe.extract import extract
    from spatialprobe.metrics import compute_metrics

    extract(encoder="pixels", images="builtin", limit=4, out=str(tmp_path / "st"), device="cpu")
    stores = [str(p.parent) for p in (tmp_path / "st").rglob("manifest.json")]
    compute_metrics(features=stores, metrics=["lds", "rmsc"], out=str(tmp_path / "m"))
    proto = predict(str(tmp_path / "m"), x=["lds", "rmsc"], n_boot=500, figure=False)
    assert proto.protocol_new["images"].startswith("builtin:") and proto.protocol_new["resolution"] == "256"
    assert proto.protocol_new["radii"] == "lds_near=1,lds_far=6,cds_dmax=8,srss_pos=1,srss_neg=6"
    assert [c.split(" ")[0] for c in proto.caveats] == ["images"]  # builtin photos vs the iREPA collection


def test_bootstrap_interval_of_one_encoder_does_not_depend_on_the_others():
    from spatialprobe.predict import bootstrap_interval

    rng = np.random.default_rng(3)
    x = rng.normal(size=27)
    y = 2 * x + rng.normal(size=27)
    lo1, hi1 = bootstrap_interval(x, y, np.array([0.3]), n_boot=500, seed=1)
    lo3, hi3 = bootstrap_interval(x, y, np.array([0.3, -1.0, 2.0]), n_boot=500, seed=1)
    assert lo1[0] == lo3[0] and hi1[0] == hi3[0]
    assert lo3[1] < lo3[0] < lo3[2]
