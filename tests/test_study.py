"""`spatialprobe study`: spec validation, the fingerprinted plan, the packaged mini study (smoke size),
resume after SIGKILL, the submitit launcher, properties-only studies and the up-front weights check."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from spatialprobe.cli import app
from spatialprobe.errors import ConfigError
from spatialprobe.study import TEMPLATE, build_plan, load_spec, node_state, parse_spec, run_study
from spatialprobe.study.state import node_dir, write_json_atomic
from study_copies import TEACHER, copy_without_teacher

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
TINY_VIT = {"family": "Baseline", "backend": "timm", "model": "vit_tiny_patch16_224", "kwargs": {"img_size": 256},
            "input_res": 256, "prefix_tokens": 1, "cls_tokens": 1, "embed_dim": 192,
            "weights": {"source": "none: random init only"}}


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


# ------------------------------------------------------------------------------------ spec + plan

def test_spec_errors_name_the_field():
    with pytest.raises(ConfigError, match="training.stepz"):
        parse_spec({"encoders": ["hog"], "training": {"stepz": 3}})
    with pytest.raises(ConfigError, match="training.steps must be a positive integer"):
        parse_spec({"encoders": ["hog"], "training": {"steps": 0}})
    with pytest.raises(ConfigError, match="encoders must be a non-empty list"):
        parse_spec({"encoders": []})
    with pytest.raises(ConfigError, match="properties.probe.lrz"):
        parse_spec({"encoders": ["hog"], "properties": {"probe": {"lrz": [1]}}})
    with pytest.raises(ConfigError, match="training.options.teacher"):
        parse_spec({"encoders": ["hog"], "training": {"options": {"teacher": "sift"}}})
    with pytest.raises(ConfigError, match="either training"):
        parse_spec({"encoders": ["hog"], "training": {}, "known_gfid": "sit-xl-100k"})


def test_init_writes_a_template_that_parses(tmp_path):
    p = tmp_path / "study.yaml"
    res = runner.invoke(app, ["study", "init", str(p)])
    assert res.exit_code == 0, res.output
    assert p.read_text() == TEMPLATE
    spec = load_spec(p)
    assert [e.id for e in spec.encoders][:3] == ["hog", "sift", "pixels"]
    assert spec.training.methods == ["repa", "irepa", "pixelrepa"] and spec.launcher == "local"
    assert runner.invoke(app, ["study", "init", str(p)]).exit_code == 2  # no silent overwrite


def _fake_done(out: Path, nodes) -> None:
    for n in nodes:
        write_json_atomic(node_dir(out, n) / "done.json", {"fingerprint": n.fingerprint, "summary": {}})


def test_changing_one_encoder_reruns_only_its_nodes(tmp_path):
    base = {"encoders": ["hog", "sift", "pixels"], "training": {"steps": 5, "seeds": [0, 1]},
            "properties": {"inject": {"alphas": [0, 0.5]}}}
    nodes = build_plan(parse_spec(base))
    _fake_done(tmp_path, nodes)
    assert all(node_state(tmp_path, n) == "done" for n in build_plan(parse_spec(base)))

    changed = dict(base, encoders=["hog", "sift@mix_mean=0.5", "pixels"])
    todo = {n.name for n in build_plan(parse_spec(changed)) if node_state(tmp_path, n) != "done"}
    enc = "sift@mix_mean=0.5"
    expected = {f"{k}/{enc}" for k in ("extract", "metrics", "probe", "inject")}
    expected |= {f"{k}/{enc}.{m}.s{s}" for k in ("train", "sample", "fid") for m in ("repa", "irepa") for s in (0, 1)}
    expected |= {"table/results", "correlate/fd_digits_repa", "correlate/fd_digits_irepa",
                 "correlate/fd_digits_repa_minus_irepa"}
    assert todo == expected

    # a training setting touches every run and nothing upstream of it
    longer = dict(base, training={"steps": 6, "seeds": [0, 1]})
    todo = {n.name for n in build_plan(parse_spec(longer)) if node_state(tmp_path, n) != "done"}
    assert {t.split("/")[0] for t in todo} == {"train", "sample", "fid", "table", "correlate"}
    assert len([t for t in todo if t.startswith("train/")]) == 3 * 2 * 2 + 2  # + the baseline per seed


# ------------------------------------------------------------------------------- the mini study

# the `smoke` fixture (the mini study at smoke size, local launcher) lives in conftest.py: the SLURM
# tests compare their results with the same run


@pytest.mark.slow
def test_mini_smoke_runs_the_whole_study(smoke):
    df = pd.read_csv(smoke / "results.csv")
    assert sorted(zip(df.encoder, df.method)) == sorted(
        [(e, m) for e in ("hog", "pixels", "pixels@mix_mean=0.75") for m in ("repa", "irepa", "pixelrepa")]
        + [("none", "none")])
    assert df["fd_digits"].notna().all() and (df["fd_digits"] > 0).all()
    assert df["protocol"].str.startswith("digits-cnn-fd").all()
    assert df.loc[df.encoder == "hog", "lp_acc"].iloc[0] > 30  # HOG on digits: far above 10 % chance
    assert {"fp_extract", "fp_train", "fp_fid", "lds", "cds", "rmsc", "lds_nan"} <= set(df.columns)
    assert pd.read_parquet(smoke / "results.parquet").shape == df.shape
    plan = json.loads((smoke / "plan.json").read_text())
    assert all(n["state"] == "done" for n in plan["nodes"])
    ys = ("fd_digits_repa", "fd_digits_irepa", "fd_digits_pixelrepa", "fd_digits_repa_minus_irepa",
          "fd_digits_repa_minus_pixelrepa")
    assert sorted(p.name for p in (smoke / "correlate").iterdir() if p.is_dir()) == sorted(ys)
    for y in ys:
        corr = pd.read_csv(smoke / "correlate" / y / "correlations.csv")
        assert (corr.n == 3).all() and corr.pearson_r.notna().all(), y
    st = runner.invoke(app, ["study", "status", str(smoke)])
    assert st.exit_code == 0 and "failed" not in st.output
    # an unchanged rerun reuses every node
    before = {p: p.stat().st_mtime_ns for p in (smoke / "nodes").glob("*/*/done.json")}
    res = runner.invoke(app, ["study", "run", "mini", "--smoke", "--out", str(smoke)])
    assert res.exit_code == 0
    assert {p: p.stat().st_mtime_ns for p in (smoke / "nodes").glob("*/*/done.json")} == before


@pytest.mark.slow
def test_sigkill_mid_training_then_rerun_reuses_finished_nodes(smoke, tmp_path):
    # the smoke study with one teacher left to do (study_copies): kill it inside that teacher's training
    out = tmp_path / "run"
    copy_without_teacher(smoke, out)
    victim = out / "nodes" / "train" / f"{TEACHER}.repa.s0.partial"
    cmd = [sys.executable, "-m", "spatialprobe.cli", "study", "run", "mini", "--smoke", "--out", str(out)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while not (victim / "config.json").is_file():  # the training loop has started
            assert proc.poll() is None and time.time() < deadline, "the study ended before the kill point"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert victim.is_dir() and not (victim / "done.json").exists()  # killed inside the node
    finished = {p: json.loads(p.read_text())["finished"] for p in (out / "nodes").glob("*/*/done.json")}
    assert len(finished) >= 27  # the other teachers' nodes and this one's properties
    res = runner.invoke(app, ["study", "run", "mini", "--smoke", "--out", str(out)])
    assert res.exit_code == 0, res.output
    for p, when in finished.items():  # every finished node was reused, not recomputed
        assert json.loads(p.read_text())["finished"] == when, p
    assert not victim.exists()
    assert (out / "results.csv").read_text() == (smoke / "results.csv").read_text()
    for y in ("fd_digits_repa", "fd_digits_repa_minus_pixelrepa"):
        assert (out / "correlate" / y / "correlations.csv").read_bytes() == \
            (smoke / "correlate" / y / "correlations.csv").read_bytes(), y


@pytest.mark.slow
def test_submitit_local_executor_gives_the_same_results(smoke, tmp_path):
    # one teacher's whole pipeline through submitit's local executor, the rest reused (study_copies)
    out = tmp_path / "run"
    removed = copy_without_teacher(smoke, out)
    res = run_study(spec="mini", smoke=True, out=str(out), launcher="submitit", cluster="local")
    assert not res.failed, res.failed
    jobs = list((out / "submitit").glob("*_result.pkl"))
    # one job per extraction and per training run (with its sampling and scoring)
    assert len(jobs) == 1 + 3 and len([n for n in removed if n.startswith("train/")]) == 3
    assert (out / "results.csv").read_text() == (smoke / "results.csv").read_text()
    for y in ("fd_digits_irepa", "fd_digits_repa_minus_pixelrepa"):
        assert (out / "correlate" / y / "correlations.csv").read_bytes() == \
            (smoke / "correlate" / y / "correlations.csv").read_bytes(), y


# ------------------------------------------------------------------------------- properties only

def test_properties_only_study_correlates_against_a_csv(tmp_path):
    from spatialprobe.correlation import correlate

    gfid = {"hog": 20.0, "sift": 25.0, "pixels": 40.0, "pixels@mix_mean=0.5": 45.0, "vit-tiny-rand": 60.0}
    csv = tmp_path / "gfid.csv"
    pd.DataFrame({"encoder": list(gfid), "gfid": list(gfid.values())}).to_csv(csv, index=False)
    spec = {"name": "props", "encoders": ["hog", "sift", "pixels", "pixels@mix_mean=0.5",
                                          {"id": "vit-tiny-rand", "random_init": True, "define": TINY_VIT}],
            "properties": {"limit": 60, "probe": {"min_steps": 50}},
            "known_gfid": str(csv), "threads": 1,
            "correlate": {"x": ["lp_acc", "lds", "cds", "rmsc"], "n_resamples": 1000}}
    (tmp_path / "study.yaml").write_text(json.dumps(spec))
    out = tmp_path / "run"
    res = runner.invoke(app, ["study", "run", str(tmp_path / "study.yaml"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out / "results.csv")
    assert dict(zip(df.encoder, df.gfid)) == gfid
    assert df[["lp_acc", "lds", "cds", "rmsc"]].notna().all().all()
    corr = pd.read_csv(out / "correlate" / "gfid" / "correlations.csv")
    assert list(corr.x) == ["lp_acc", "lds", "cds", "rmsc"] and (corr.n == 5).all()
    assert (out / "correlate" / "gfid" / "correlation_panel.png").is_file()
    direct = correlate(str(out / "correlate" / "table.csv"), x=["lp_acc", "lds", "cds", "rmsc"], y=["gfid"],
                       n_resamples=1000, family_col="family", id_col="encoder")
    assert corr.pearson_r.tolist() == pytest.approx(direct.pearson_r.tolist())


def test_two_encoders_are_too_few_for_a_correlation_and_it_is_skipped_not_failed(tmp_path):
    csv = tmp_path / "gfid.csv"
    pd.DataFrame({"encoder": ["hog", "pixels"], "gfid": [20.0, 40.0]}).to_csv(csv, index=False)
    spec = {"encoders": ["hog", "pixels"], "properties": {"limit": 20, "probe": None}, "known_gfid": str(csv),
            "threads": 1, "correlate": {"x": ["lds"]}}
    res = run_study(spec=_write(tmp_path, spec), out=str(tmp_path / "run"))
    assert not res.failed
    st = runner.invoke(app, ["study", "status", str(tmp_path / "run")])
    assert st.exit_code == 0 and "skipped" in st.output and "failed" not in st.output
    assert (tmp_path / "run" / "results.csv").is_file()


def test_failing_node_is_recorded_and_independent_nodes_go_on(tmp_path):
    bad = {**TINY_VIT, "model": "vit_no_such_model"}
    spec = {"encoders": ["pixels", {"id": "broken-vit", "random_init": True, "define": bad}],
            "properties": {"limit": 30, "probe": None}, "threads": 1}
    res = run_study(spec=_write(tmp_path, spec), out=str(tmp_path / "run"))
    assert res.states["extract/pixels"] == "done" and res.states["metrics/pixels"] == "done"
    assert res.states["extract/broken-vit"] == "failed"
    assert res.states["metrics/broken-vit"] == "blocked" and res.states["table/results"] == "blocked"
    err = json.loads((tmp_path / "run" / "nodes" / "extract" / "broken-vit.error.json").read_text())
    assert "vit_no_such_model" in err["error"]


def _write(tmp_path: Path, spec: dict) -> str:
    p = tmp_path / "study.yaml"
    p.write_text(json.dumps(spec))
    return str(p)


def test_dry_run_over_the_paper_27_names_every_missing_file(tmp_path, monkeypatch):
    from spatialprobe import encoders as E

    empty = tmp_path / "weights"
    empty.mkdir()
    for var in ("SPATIALPROBE_WEIGHTS", "HF_HOME", "HF_HUB_CACHE", "TORCH_HOME"):
        monkeypatch.setenv(var, str(empty))
    paper = E.list_specs(paper27=True)
    assert len(paper) == 27
    spec = {"name": "paper27", "encoders": [s.id for s in paper], "known_gfid": "sit-xl-100k"}
    path = _write(tmp_path, spec)
    out = tmp_path / "run"
    res = runner.invoke(app, ["study", "run", path, "--out", str(out), "--dry-run"], terminal_width=200)
    assert res.exit_code == 1
    for s in paper:
        assert f"extract/{s.id}" in res.output and f"probe/{s.id}" in res.output
        assert s.weights.files[0] in res.output, s.id  # the exact file to fetch
    assert "27 encoder(s) lack weights" in res.output
    assert not out.exists()  # nothing ran, nothing was written
    res = runner.invoke(app, ["study", "run", path, "--out", str(out)])  # a real run refuses up front
    assert res.exit_code == 2 and "27 encoder(s) lack weights" in res.output and not out.exists()


# ------------------------------------------------------------------------------- decode once

def test_decoded_cache_decodes_each_image_once_and_gives_the_same_store(tmp_path):
    import numpy as np
    from PIL import Image

    from spatialprobe.data import BadImageError, folder_source
    from spatialprobe.extract import ExtractConfig, extract_many
    from spatialprobe.data.cache import DecodedCache

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (70 + 9 * i, 90, 3), dtype=np.uint8)).save(photos / f"im{i}.png")
    (photos / "broken.png").write_bytes(b"not a png")
    base = folder_source(photos, resolution=32)
    calls = []
    load = base.load
    base.load = lambda i: calls.append(i) or load(i)

    first = DecodedCache(base, tmp_path / "cache", num_workers=0)
    first.ensure()
    second = DecodedCache(base, tmp_path / "cache", num_workers=0)  # another node, another process
    second.ensure()
    assert sorted(calls) == list(range(6)) and first.decoded == 6 and second.decoded == 0
    assert second.fingerprint() == base.fingerprint()
    bad = base.ids.index("broken")
    with pytest.raises(BadImageError):
        second.load(bad)
    for i in range(6):
        if i != bad:
            assert (second.load(i) == load(i)).all()

    cfg = ExtractConfig(resolution=32, num_workers=0, skip_bad=True, dtype="fp32")
    plain = next(iter(extract_many(["pixels"], folder_source(photos, resolution=32), tmp_path / "a", cfg).values()))
    cached = next(iter(extract_many(["pixels"], second, tmp_path / "b", cfg).values()))
    assert plain.path.name == cached.path.name  # the same fingerprint
    a, b = plain.open(), cached.open()
    assert a.ids == b.ids and len(a.ids) == 5
    assert np.array_equal(np.asarray(a.load("patch")), np.asarray(b.load("patch")))


def test_concurrent_jobs_wait_for_one_decoded_cache_build(tmp_path):
    # a submitit wave starts every extraction job at once: the others must wait, not decode again
    import threading

    from spatialprobe.data import open_source
    from spatialprobe.store import StoreLock
    from spatialprobe.data.cache import DecodedCache

    src = open_source("builtin:digits", resolution=16).subset(8)
    folder = tmp_path / "cache"
    waiter = DecodedCache(src, folder, num_workers=0)
    with StoreLock(folder, blocking=True):  # a first job, still decoding
        t = threading.Thread(target=waiter.ensure)
        t.start()
        t.join(0.5)
        assert t.is_alive() and not waiter.path.exists()  # waits on the lock
        DecodedCache(src, folder, num_workers=0)._build()  # the first job finishes its build
    t.join(30)
    assert not t.is_alive() and waiter.decoded == 0 and waiter.path.is_file()


# ------------------------------------------------------------------------------- one writer per folder / node

def test_a_second_controller_on_the_same_folder_refuses_naming_the_first(tmp_path):
    from spatialprobe.errors import OutputError
    from spatialprobe.study.runner import controller_lock

    out = tmp_path / "run"
    out.mkdir()
    lock = controller_lock(out)  # held as a running `study run` holds it
    try:
        spec = {"encoders": ["hog"], "properties": {"limit": 4, "probe": None}, "threads": 1}
        with pytest.raises(OutputError, match=rf"is being run by pid {os.getpid()} on host \S+ \(since "):
            run_study(spec=_write(tmp_path, spec), out=str(out))
        assert not (out / "nodes").exists()  # it touched nothing
    finally:
        lock.release()
    # the lock dies with its holder: the next controller takes it over
    controller_lock(out).release()


def test_a_job_whose_node_was_given_to_another_job_neither_runs_nor_publishes_it(tmp_path):
    from spatialprobe.study.nodes import Superseded, run_node
    from spatialprobe.study.state import claim_node, owns, record_job

    spec = parse_spec({"encoders": ["hog"], "properties": {"limit": 4, "probe": None}, "threads": 1})
    nodes = build_plan(spec)
    by_name = {n.name: n for n in nodes}
    ext = by_name["extract/hog"]
    claim_node(tmp_path, ext, "old", "slurm")
    record_job(tmp_path, ext, "old", "12_0", "slurm")
    claim_node(tmp_path, ext, "new", "slurm")  # a rerun gave the node to a new job
    assert owns(tmp_path, ext, "new") and not owns(tmp_path, ext, "old") and owns(tmp_path, ext, None)
    with pytest.raises(Superseded):
        run_node(spec, ext, tmp_path, by_name, token="old")
    assert node_state(tmp_path, ext) == "missing"
