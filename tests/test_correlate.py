"""`spatialprobe correlate` and the packaged reference data."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import spatialprobe
from spatialprobe import reference
from spatialprobe.cli import app

runner = CliRunner()

EXPECTED_COLUMNS = ("x,y,n,pearson_r,pearson_ci_low,pearson_ci_high,pearson_p_perm,spearman_rho,"
                    "kendall_tau,loo_min,loo_max,lofo_min,lofo_max").split(",")


def test_reference_tables_load_and_list():
    df = reference.load("sit-xl-100k")
    assert len(df) == 27
    for col in ("encoder", "family", "lp_acc", "gfid", "lds", "cds", "srss", "rmsc"):
        assert col in df.columns
    fam = dict(zip(df["encoder"], df["family"]))
    assert fam["dinov2-vit-b"] == "DINOv2" and fam["pe-vit-g"] == "PE-Core"
    assert pd.isna(fam["mocov3-vit-l|mae-vit-l"])  # ambiguous across families -> unknown
    for t in reference.tables():
        assert len(reference.load(t.name)) > 0
    res = runner.invoke(app, ["ls", "references"])
    assert res.exit_code == 0
    for name in reference.names():
        assert name in res.output


def test_family_of_ambiguous_within_one_family():
    fams = {"a": "F", "b": "F", "c": "G"}
    assert reference.family_of("a|b", fams) == "F"
    assert reference.family_of("a|c", fams) is None
    assert reference.family_of(float("nan"), fams) is None


def test_unknown_reference_lists_known():
    res = runner.invoke(app, ["correlate", "--reference", "sit-xl-10k", "--out", "x"])
    assert res.exit_code == 2
    assert "sit-xl-100k" in res.output and "Did you mean" in res.output
    assert "Traceback" not in res.output


def test_reference_reproduces_paper(tmp_path):
    res = runner.invoke(app, ["correlate", "--reference", "sit-xl-100k", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    out = pd.read_csv(tmp_path / "correlations.csv")
    assert list(out.columns[:13]) == EXPECTED_COLUMNS
    r = dict(zip(out["x"], out["pearson_r"]))
    for name, expected in {"lp_acc": -0.260, "lds": -0.852, "cds": -0.847, "srss": -0.886, "rmsc": -0.889}.items():
        assert r[name] == pytest.approx(expected, abs=0.002)
    assert (out["n"] == 27).all()
    assert (out["pearson_ci_low"] <= out["pearson_r"]).all() and (out["pearson_r"] <= out["pearson_ci_high"]).all()
    assert out["lofo_min"].notna().all()
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["config"]["reference"] == "sit-xl-100k" and cfg["environment"]["spatialprobe"] == spatialprobe.__version__
    for ext in ("png", "pdf"):
        assert (tmp_path / f"correlation_panel.{ext}").stat().st_size > 10_000


def test_own_table_csv_and_parquet_with_sha(tmp_path):
    rng = np.random.default_rng(0)
    n = 12
    lds = rng.uniform(0, 0.5, n)
    df = pd.DataFrame({"encoder": [f"e{i}" for i in range(n)], "family": ["A", "B", "C"] * 4,
                       "lds": lds, "lp_acc": rng.uniform(50, 80, n), "gfid": 40 - 50 * lds + rng.normal(0, 1, n)})
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_parquet(tmp_path / "t.parquet")
    for f in ("t.csv", "t.parquet"):
        out = tmp_path / f"o_{f}"
        res = runner.invoke(app, ["correlate", "--table", str(tmp_path / f), "--x", "lds,lp_acc", "--y", "gfid",
                                  "--family-col", "family", "--control", "lp_acc", "--out", str(out),
                                  "--n-resamples", "2000", "--no-figure"])
        assert res.exit_code == 0, res.output
        got = pd.read_csv(out / "correlations.csv")
        assert got["x"].tolist() == ["lds", "lp_acc"]
        assert got.loc[0, "pearson_r"] == pytest.approx(np.corrcoef(df["lds"], df["gfid"])[0, 1])
        cfg = json.loads((out / "config.json").read_text())
        assert len(cfg["input"]["sha256"]) == 64


def test_python_api_matches_cli():
    df = spatialprobe.correlate(reference="sit-xl-100k", x=["lds"], n_resamples=2000)
    assert df.loc[0, "pearson_r"] == pytest.approx(-0.852, abs=0.002)


@pytest.mark.parametrize("make, args, words", [
    (None, ["--table", "does-not-exist.csv"], "does not exist"),
    ("ok", ["--x", "nope"], "'nope' is not in the table"),
    ("text", ["--x", "lds"], "not numeric"),
    ("short", ["--x", "lds"], "at least 3"),
    ("const", ["--x", "lds"], "constant"),
    (None, [], "exactly one input"),
])
def test_bad_input_one_clear_message(tmp_path, make, args, words):
    frames = {
        "ok": pd.DataFrame({"lds": [0.1, 0.2, 0.3, 0.4], "gfid": [30, 25, 22, 20]}),
        "text": pd.DataFrame({"lds": ["0.1", "high", "0.3", "0.4"], "gfid": [30, 25, 22, 20]}),
        "short": pd.DataFrame({"lds": [0.1, 0.2], "gfid": [30, 25]}),
        "const": pd.DataFrame({"lds": [0.2, 0.2, 0.2, 0.2], "gfid": [30, 25, 22, 20]}),
    }
    if make:
        frames[make].to_csv(tmp_path / "t.csv", index=False)
        args = ["--table", str(tmp_path / "t.csv"), *args]
    res = runner.invoke(app, ["correlate", *args, "--out", str(tmp_path / "o"), "--no-figure"])
    assert res.exit_code == 2
    assert words in res.output
    assert "Traceback" not in res.output


def test_nan_rows_warned_with_names(tmp_path):
    pd.DataFrame({"encoder": ["a", "b", "c", "d", "e"], "lds": [0.1, None, 0.3, 0.4, 0.5],
                  "gfid": [30, 25, 22, 20, 18]}).to_csv(tmp_path / "t.csv", index=False)
    proc = subprocess.run([sys.executable, "-m", "spatialprobe.cli", "correlate", "--table", str(tmp_path / "t.csv"),
                           "--x", "lds", "--out", str(tmp_path / "o"), "--no-figure", "--n-resamples", "1000"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "dropped 1 row(s) with NaN or inf: b" in proc.stderr
    assert pd.read_csv(tmp_path / "o" / "correlations.csv").loc[0, "n"] == 4


def test_version_and_help():
    assert spatialprobe.__version__ in runner.invoke(app, ["--version"]).output
    res = runner.invoke(app, ["correlate", "--help"])
    assert res.exit_code == 0 and "--reference" in res.output
