"""Results a reader can trust, the study and report half: fingerprints that cover input bytes, absolute
paths, withdrawn stale outputs, strict spec types, one-line errors everywhere, and a report (and a
`study run`) that leads with what was found."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from spatialprobe import errors
from spatialprobe.cli import app
from spatialprobe.errors import ConfigError, DataError, OutputError
from spatialprobe.report import findings as F
from spatialprobe.report import sections as S
from spatialprobe.study import build_plan, parse_spec, run_study
from spatialprobe.study.runner import StudyConfig, prepare, withdraw
from spatialprobe.study.state import node_dir, plan_record, record_failure, write_json_atomic

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def _one_clean_error(res, *needles: str) -> None:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit)
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("error: "), res.output
    for n in needles:
        assert n in res.output, (n, res.output)


def _spec_file(tmp_path: Path, spec: dict, name: str = "study.yaml") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(spec))
    return p


# ------------------------------------------------------------------------------ types at the door

@pytest.mark.parametrize("spec, needle", [
    ({"encoders": [{"id": "dinov2-vit-b", "random_init": "false"}]}, "encoders[0].random_init must be true or false"),
    ({"encoders": ["hog"], "correlate": {"n_resamples": "many"}}, "correlate.n_resamples must be an integer"),
    ({"encoders": ["hog"], "training": {"model": 5}}, "training.model must be a string"),
    ({"encoders": ["hog"], "training": {"model": "jit-huge"}}, "training.model 'jit-huge' is not a model"),
    ({"encoders": ["hog"], "training": {"baseline": "no"}}, "training.baseline must be true or false"),
    ({"encoders": ["hog"], "properties": {"decode_cache": "false"}}, "properties.decode_cache must be true or false"),
    ({"encoders": ["hog"], "properties": {"dtype": "fp8"}}, "properties.dtype 'fp8' is not valid"),
    ({"encoders": ["hog"], "properties": {"probe": {"min_steps": "lots"}}}, "properties.probe"),
    ({"encoders": ["hog"], "training": {"options": {"hflip": "false"}}}, "training.options"),
    ({"encoders": ["hog"], "correlate": {"confidence": 1.5}}, "correlate.confidence must lie in (0, 1)"),
    ({"encoders": ["hog"], "executor": {"gpus_per_node": "2"}}, "executor.gpus_per_node must be an integer"),
    ({"encoders": ["pixels@mix_mean=0.75", "pixels@mix_mean=.75"]}, "are one encoder"),
    ({"encoders": ["hog"], "training": {"methods": ["repa", "repa"]}}, "training.methods lists repa more than once"),
    ({"encoders": ["hog"], "training": {"seeds": [0, 1, 0]}}, "training.seeds lists 0 more than once"),
    ({"encoders": [{"id": "hog", "seeds": [3, 3]}]}, "encoders[0].seeds lists 3 more than once"),
    ({"encoders": ["hog"], "device": "tpu"}, "device 'tpu' is not a device"),
    ({"encoders": ["hog"], "device": 0}, "device must be a string"),
    ({"encoders": [{"id": "dinov2-vit-b", "random_init": True}], "known_gfid": "sit-xl-100k"},
     "known_gfid_random_init: true"),
])
def test_bad_spec_values_are_one_clear_error(tmp_path, spec, needle):
    with pytest.raises(ConfigError) as exc:
        parse_spec(spec)
    assert needle in str(exc.value)
    res = runner.invoke(app, ["study", "run", str(_spec_file(tmp_path, spec)), "--out", str(tmp_path / "o")])
    _one_clean_error(res, needle)
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_a_random_init_encoder_joins_published_numbers_only_when_asked(tmp_path):
    from spatialprobe.study.results import build_tables

    spec = parse_spec({"encoders": [{"id": "dinov2-vit-b", "random_init": True}, "hog", "pixels"],
                       "known_gfid": "sit-xl-100k", "known_gfid_random_init": True, "properties": {"probe": None}})
    nodes = build_plan(spec)
    by = {n.name: n for n in nodes}
    table = by["table/results"]
    work = tmp_path / "t"
    work.mkdir()
    build_tables(spec, table, work, tmp_path, by)
    df = pd.read_csv(work / "results.csv")
    row = df[df.encoder == "dinov2-vit-b"].iloc[0]
    assert "random-init dinov2-vit-b joined to the published gfid" in row["quality_note"]
    assert df[df.encoder != "dinov2-vit-b"]["quality_note"].isna().all()


# ------------------------------------------------------------------------------ devices and folders

@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_machine_is_refused_before_any_node(tmp_path):
    spec = _spec_file(tmp_path, {"encoders": ["hog"], "properties": {"limit": 4}})
    with pytest.raises(ConfigError, match="no CUDA device"):
        run_study(spec=str(spec), out=str(tmp_path / "o"), device="cuda")
    assert not (tmp_path / "o").exists()
    res = runner.invoke(app, ["study", "run", str(spec), "--out", str(tmp_path / "o"), "--device", "cuda"])
    _one_clean_error(res, "no CUDA device")


def test_study_init_into_a_missing_folder_and_run_into_a_file(tmp_path):
    res = runner.invoke(app, ["study", "init", str(tmp_path / "nowhere" / "study.yaml")])
    _one_clean_error(res, "does not exist", "mkdir -p")
    afile = tmp_path / "afile"
    afile.write_text("x")
    spec = _spec_file(tmp_path, {"encoders": ["hog"]})
    res = runner.invoke(app, ["study", "run", str(spec), "--out", str(afile)])
    _one_clean_error(res, "is a file")
    with pytest.raises(OutputError):
        run_study(spec=str(spec), out=str(afile))


# ------------------------------------------------------------------------------ one line, exit 2

def _all_error_types():
    seen, todo = [], [errors.SpatialProbeError]
    while todo:
        c = todo.pop()
        seen.append(c)
        todo += c.__subclasses__()
    return sorted(set(seen), key=lambda c: c.__name__)


def test_every_command_turns_spatialprobe_errors_into_one_line():
    from spatialprobe import cli

    def commands(t):
        yield from t.registered_commands
        for g in t.registered_groups:
            yield from commands(g.typer_instance)

    cmds = list(commands(cli.app))
    assert len(cmds) > 15 and all(getattr(c.callback, "_spatialprobe_errors", False) for c in cmds)


@pytest.mark.parametrize("exc_type", _all_error_types(), ids=lambda c: c.__name__)
def test_each_error_type_ends_in_one_line_and_exit_2(monkeypatch, tmp_path, exc_type):
    import spatialprobe.study.runner as R

    def boom(out):
        try:
            exc = exc_type("the input X is wrong; do Y")
        except TypeError:  # a subclass with its own fields (e.g. BadImageError(image_id, reason))
            exc = exc_type.__new__(exc_type)
            Exception.__init__(exc, "the input X is wrong; do Y")
        raise exc

    monkeypatch.setattr(R, "study_status", boom)
    res = runner.invoke(app, ["study", "status", str(tmp_path)])
    _one_clean_error(res, "the input X is wrong; do Y")


def test_an_error_whose_message_fails_to_format_is_still_one_line(monkeypatch, tmp_path):
    import spatialprobe.study.runner as R

    class Broken(errors.DataError):
        def __str__(self):
            raise TypeError("cannot format")

    def boom(out):
        raise Broken("empty.pt", 0)

    monkeypatch.setattr(R, "study_status", boom)
    res = runner.invoke(app, ["study", "status", str(tmp_path)])
    _one_clean_error(res, "Broken(", "empty.pt")


def test_the_console_entry_point_catches_errors_outside_commands(tmp_path):
    # an option callback runs while the command line is parsed, before any command's own error handling
    code = ("import typer, spatialprobe.cli as c, spatialprobe.errors as e\n"
            "def cb(value):\n    raise e.ConfigError('raised in a callback')\n"
            "@c.app.command('boom')\n"
            "def boom(x: str = typer.Option('', '--x', callback=cb)):\n    pass\n"
            "c.main()\n")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.run([sys.executable, "-c", code, "boom", "--x", "1"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip().splitlines()[-1] == "error: raised in a callback"


# ------------------------------------------------------------------------------ fingerprints of input bytes

def _same_stat_rewrite(path: Path, data: bytes) -> None:
    """New bytes, same size and mtime: only a content hash can see the change."""
    st = path.stat()
    assert len(data) == st.st_size
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _fps(spec: dict) -> dict[str, str]:
    return {n.name: n.fingerprint for n in build_plan(parse_spec(spec))}


def test_fingerprints_cover_the_bytes_of_images_masks_labels_tables_and_weights(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("SPATIALPROBE_CACHE", str(tmp_path / "cache"))
    imgs, masks = tmp_path / "imgs", tmp_path / "masks"
    imgs.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(imgs / f"im{i}.bmp")
        Image.fromarray((rng.random((8, 8)) > 0.5).astype(np.uint8) * 255).save(masks / f"im{i}.bmp")
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\nim0,0\nim1,1\nim2,0\n")
    known = tmp_path / "gfid.csv"
    known.write_text("encoder,gfid\nhog,20.0\npixels,30.0\n")
    from spatialprobe import encoders as E

    wdir = tmp_path / "weights"
    wdir.mkdir()
    wfile = wdir / E.spec("dinov2-vit-b").weights.files[0]
    wfile.write_bytes(b"A" * 64)
    spec = {"encoders": ["hog", "pixels", "dinov2-vit-b"], "weights_dir": str(wdir),
            "properties": {"images": str(imgs), "metrics": {"masks": str(masks)}, "probe": {"labels": str(labels)}},
            "known_gfid": str(known)}
    base = _fps(spec)

    def changed(after):
        return {k for k in base if base[k] != after[k]}

    im = imgs / "im1.bmp"
    raw = bytearray(im.read_bytes())
    raw[-1] ^= 0xFF
    _same_stat_rewrite(im, bytes(raw))
    assert {"extract/hog", "extract/pixels", "extract/dinov2-vit-b", "table/results"} <= changed(_fps(spec))
    base = _fps(spec)
    mk = masks / "im2.bmp"
    raw = bytearray(mk.read_bytes())
    raw[-1] ^= 0xFF
    _same_stat_rewrite(mk, bytes(raw))
    diff = changed(_fps(spec))
    assert "metrics/hog" in diff and not any(d.startswith(("extract/", "probe/")) for d in diff)
    base = _fps(spec)
    _same_stat_rewrite(labels, labels.read_bytes().replace(b"im2,0", b"im2,1"))
    diff = changed(_fps(spec))
    assert "probe/hog" in diff and not any(d.startswith(("extract/", "metrics/")) for d in diff)
    base = _fps(spec)
    _same_stat_rewrite(known, known.read_bytes().replace(b"20.0", b"21.0"))
    assert changed(_fps(spec)) >= {"table/results"} and not any(d.startswith("extract/") for d in changed(_fps(spec)))
    base = _fps(spec)
    _same_stat_rewrite(wfile, b"B" * 64)
    diff = changed(_fps(spec))
    assert "extract/dinov2-vit-b" in diff and "extract/hog" not in diff


def test_relative_input_paths_are_made_absolute(tmp_path, monkeypatch):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "imgs" / "a.png")
    (tmp_path / "masks").mkdir()
    (tmp_path / "gfid.csv").write_text("encoder,gfid\nhog,1\n")
    monkeypatch.chdir(tmp_path)
    _spec_file(tmp_path, {"encoders": ["hog"], "known_gfid": "gfid.csv",
                          "properties": {"images": "imgs", "metrics": {"masks": "masks"}}})
    spec, nodes, out = prepare(StudyConfig(spec="study.yaml", out="run"))
    assert out == tmp_path / "run"
    assert spec.properties.images == str(tmp_path / "imgs")
    assert spec.properties.metrics["masks"] == str(tmp_path / "masks")
    assert spec.known_gfid == str(tmp_path / "gfid.csv")
    ex = next(n for n in nodes if n.kind == "extract")
    assert Path(ex.settings["images"]).is_absolute()


# ------------------------------------------------------------------------------ withdrawn outputs

def _published_study(tmp_path: Path, spec: dict):
    """A study folder whose nodes are all 'done' and whose outputs are published, without running anything."""
    out = tmp_path / "run"
    nodes = build_plan(parse_spec(spec))
    for n in nodes:
        d = node_dir(out, n)
        write_json_atomic(d / "done.json", {"fingerprint": n.fingerprint, "summary": {}})
        if n.kind == "correlate":
            (d / "correlations.csv").write_text("x,y,n,pearson_r\nlds,%s,3,-0.9\n" % n.key)
            (out / "correlate" / n.key).mkdir(parents=True, exist_ok=True)
            (out / "correlate" / n.key / "correlations.csv").write_text("x,y,n,pearson_r\nlds,y,3,-0.9\n")
    (out / "results.csv").write_text("encoder\nhog\n")
    (out / "study.yaml").write_text("name: s\n")
    return out, nodes


def test_outputs_of_a_dropped_method_or_a_failed_node_are_withdrawn_with_a_note(tmp_path):
    spec = {"encoders": ["hog", "sift", "pixels"], "training": {"steps": 5}}
    out, nodes = _published_study(tmp_path, spec)
    assert (out / "correlate" / "fd_digits_irepa").is_dir()

    fewer = build_plan(parse_spec({**spec, "training": {"steps": 5, "methods": ["repa"]}}))
    states = {n.name: "done" for n in fewer}
    bad = next(n for n in fewer if n.name == "correlate/fd_digits_repa")
    record_failure(out, bad, DataError("boom in correlate"))
    states[bad.name] = "failed"
    w = withdraw(out, fewer, states)
    paths = {r["path"]: r["reason"] for r in w}
    assert set(paths) == {"correlate/fd_digits_irepa", "correlate/fd_digits_repa_minus_irepa",
                          "correlate/fd_digits_repa"}
    assert "no longer produces" in paths["correlate/fd_digits_irepa"]
    assert "failed" in paths["correlate/fd_digits_repa"] and "boom in correlate" in paths["correlate/fd_digits_repa"]
    assert not (out / "correlate" / "fd_digits_irepa").exists()
    moved = list((out / "withdrawn").glob("*/correlate/fd_digits_irepa/correlations.csv"))
    assert len(moved) == 1
    note = json.loads((moved[0].parents[2] / "withdrawn.json").read_text())
    assert {r["path"] for r in note["withdrawn"]} == set(paths)
    assert "no longer backed" in (moved[0].parents[2] / "README.txt").read_text()
    assert (out / "results.csv").is_file()  # the table node is done: its results stay

    # the report says so first, and shows none of the withdrawn panels
    write_json_atomic(out / "plan.json", plan_record(parse_spec(spec), fewer, out))
    ctx = S.load(out)
    notes = S.study_notes(ctx)
    assert any("failed" in n and "correlate/fd_digits_repa" in n for n in notes)
    assert any("Withdrawn" in n and "correlate/fd_digits_irepa" in n for n in notes)
    assert "withdrawn" not in " ".join(ctx.records)
    assert S._correlate_folders(ctx) == {}


def test_a_failed_table_withdraws_the_published_results(tmp_path):
    spec = {"encoders": ["hog", "sift", "pixels"], "known_gfid": "sit-xl-100k"}
    out, nodes = _published_study(tmp_path, spec)
    states = {n.name: "done" for n in nodes}
    states["table/results"] = "failed"
    record_failure(out, next(n for n in nodes if n.name == "table/results"), "table broke")
    withdraw(out, nodes, states)
    assert not (out / "results.csv").exists()
    write_json_atomic(out / "plan.json", plan_record(parse_spec(spec), nodes, out))
    with pytest.raises(DataError, match=r"unfinished study.*study status.*resume"):
        S.detect_kind(out)


def test_report_on_an_unfinished_study_says_how_to_resume(tmp_path):
    (tmp_path / "study.yaml").write_text("name: s\n")
    (tmp_path / "plan.json").write_text("{}")
    res = runner.invoke(app, ["report", str(tmp_path)])
    _one_clean_error(res, "unfinished study", f"spatialprobe study status {tmp_path}", "resume")
    assert "not a spatialprobe result folder" not in res.output


# ------------------------------------------------------------------------------ predict on a study folder

def test_predict_table_accepts_a_study_folder(tmp_path):
    study = tmp_path / "study"
    (study / "correlate").mkdir(parents=True)
    (study / "study.yaml").write_text("name: s\n")
    rows = [{"encoder": e, "method": m, "seed": 0, "lds": v, "fd_digits": 1.0}
            for e, v in (("a", 0.2), ("b", 0.3)) for m in ("repa", "irepa")]
    pd.DataFrame(rows).to_csv(study / "results.csv", index=False)
    pd.DataFrame({"encoder": ["a", "b"], "family": ["X", "Y"], "lds": [0.2, 0.3]}).to_csv(
        study / "correlate" / "table.csv", index=False)
    res = runner.invoke(app, ["predict", "--table", str(study), "--x", "lds", "--n-boot", "500", "--no-figure",
                              "--out", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    pred = pd.read_csv(tmp_path / "p" / "predictions.csv")
    assert sorted(pred.encoder) == ["a", "b"] and set(pred.x) == {"lds"}


# ------------------------------------------------------------------------------ the finding first

def test_small_n_prints_r_without_an_interval():
    small = pd.Series({"pearson_r": -0.994, "n": 3, "pearson_ci_low": -1.0, "pearson_ci_high": -0.994})
    text = F.r_text(small)
    assert "r = −0.99" in text and F.SMALL_N in text and "[" not in text
    big = pd.Series({"pearson_r": -0.85, "n": 27, "pearson_ci_low": -0.91, "pearson_ci_high": -0.76})
    assert F.r_text(big) == "r = −0.85, CI [−0.91, −0.76], n = 27"
    assert F.MIN_N_FOR_CI == 5


def test_best_predictor_per_method_and_repa_vs_irepa():
    stats = pd.DataFrame([
        {"x": "lp_acc", "y": "fd_digits_repa", "n": 8, "pearson_r": -0.2, "pearson_ci_low": -0.7,
         "pearson_ci_high": 0.4},
        {"x": "lds", "y": "fd_digits_repa", "n": 8, "pearson_r": -0.8, "pearson_ci_low": -0.95,
         "pearson_ci_high": -0.3},
        {"x": "lds", "y": "fd_digits_irepa", "n": 3, "pearson_r": 0.9, "pearson_ci_low": 0.1,
         "pearson_ci_high": 1.0}])
    best = F.best_predictors(stats)
    assert list(best.method) == ["REPA", "iREPA"] and list(best.x) == ["lds", "lds"]
    assert "better fd_digits" in best.direction[0] and "worse fd_digits" in best.direction[1]
    assert F.SMALL_N in best.text[1]
    res = pd.DataFrame([{"encoder": e, "method": m, "seed": s, "fd_digits": v + (2 if m == "repa" else 0)}
                        for e, v in (("a", 10), ("b", 20)) for m in ("repa", "irepa") for s in (0, 1)])
    cmp_ = F.repa_vs_irepa(res)
    assert list(cmp_["better"]) == ["iREPA", "iREPA"] and list(cmp_["REPA − iREPA"]) == [2, 2]
    lines = F.headline_lines(stats, res)
    assert lines[0].startswith("REPA: lds predicts fd_digits best, r = −0.80, CI")
    assert "iREPA beats REPA with 2 of 2 teacher(s)" in lines[-1]


def test_pixelrepa_and_its_gap_are_named_and_ordered_after_repa_and_irepa():
    assert [F.method_label(y) for y in ("gfid_pixelrepa", "gfid_repa_minus_pixelrepa", "gfid_irepa", "gfid_repa",
                                        "gfid_repa_minus_irepa", "gfid_none", "gfid")] == [
        "PixelREPA", "REPA − PixelREPA", "iREPA", "REPA", "REPA − iREPA", "no alignment", "gfid"]
    stats = pd.DataFrame([{"x": "lds", "y": y, "n": 8, "pearson_r": r, "pearson_ci_low": r - 0.1,
                           "pearson_ci_high": r + 0.1}
                          for y, r in (("fd_digits_repa_minus_pixelrepa", 0.6), ("fd_digits_pixelrepa", -0.5),
                                       ("fd_digits_repa_minus_irepa", -0.4), ("fd_digits_repa", -0.7))])
    best = F.best_predictors(stats)
    assert list(best.method) == ["REPA", "PixelREPA", "REPA − iREPA", "REPA − PixelREPA"]
    assert best.direction[3] == "higher lds goes with a larger REPA − PixelREPA gap"
    assert F.target_words("REPA − PixelREPA", "fd_digits_repa_minus_pixelrepa") == "the REPA − PixelREPA gap"
    res = pd.DataFrame([{"encoder": e, "method": m, "seed": 0, "fd_digits": v + {"repa": 0, "pixelrepa": 3}[m]}
                        for e, v in (("a", 10), ("b", 20)) for m in ("repa", "pixelrepa")])
    cmp_ = F.repa_vs(res, "pixelrepa")
    assert list(cmp_["better"]) == ["REPA", "REPA"] and list(cmp_["REPA − PixelREPA"]) == [-3, -3]
    assert F.repa_vs(res, "irepa") is None
    assert F.headline_lines(stats, res)[-1] == ("PixelREPA beats REPA with 0 of 2 teacher(s) on fd_digits "
                                                "(mean REPA − PixelREPA −3)")


def test_report_tables_have_no_index_and_a_dash_for_missing():
    df = pd.DataFrame({"encoder": ["a", "b"], "lds": [0.123456, np.nan], "note": [None, "x"]})
    html = S.table_html(df)
    assert "overflow-x:auto" in html and "<th>encoder</th>" in html
    assert "None" not in html and "NaN" not in html and html.count(">–<") == 2
    assert "<th></th>" not in html and ">0<" not in html  # no index column
    assert ">0.1235<" in html


def test_study_sections_lead_with_the_finding_and_say_what_was_run(tmp_path):
    from IPython.display import Markdown

    root = tmp_path / "s"
    root.mkdir()
    spec = {"name": "toy", "encoders": ["hog", {"id": "pixels", "random_init": False}],
            "properties": {"images": "builtin:digits", "limit": 200, "resolution": 256},
            "training": {"model": "jit-tiny", "methods": ["repa", "irepa"], "baseline": True, "steps": 6,
                         "batch_size": 16, "seeds": [0], "images": "builtin:digits", "sample": {"n": 100},
                         "fid": {"protocol": "digits"}},
            "correlate": {"x": ["lds"], "n_resamples": 2000, "confidence": 0.95}, "device": "cpu",
            "launcher": "local"}
    import yaml

    (root / "study.yaml").write_text(yaml.safe_dump(spec))
    (root / "plan.json").write_text(json.dumps({"smoke": True, "nodes": []}))
    rows = [{"encoder": e, "family": "F", "method": m, "seed": 0, "lds": l, "fd_digits": f + (1 if m == "repa" else 0),
             "protocol": "digits-cnn-fd-v1"} for e, l, f in (("hog", 0.1, 10), ("pixels", 0.3, 20), ("x", 0.2, 15))
            for m in ("repa", "irepa")]
    pd.DataFrame(rows).to_csv(root / "results.csv", index=False)
    (root / "correlate" / "fd_digits_repa").mkdir(parents=True)
    pd.DataFrame([{"x": "lds", "y": "fd_digits_repa", "n": 3, "pearson_r": 0.99, "pearson_ci_low": 0.9,
                   "pearson_ci_high": 0.99}]).to_csv(root / "correlate" / "fd_digits_repa" / "correlations.csv",
                                                     index=False)
    ctx = S.load(root)
    found = S.findings(ctx)
    text = " ".join(p.data for p in found if isinstance(p, Markdown))
    assert "**lds** predicts fd_digits best" in text and F.SMALL_N in text and "[0.90" not in text
    assert "REPA vs iREPA per teacher" in text and "iREPA beats REPA with 3 of 3 teacher(s)" in text
    assert "PixelREPA" not in text  # no PixelREPA runs in this folder, so no PixelREPA line
    run = S.what_was_run(ctx).data
    for needle in ("**smoke** run", "`jit-tiny`", "6 steps", "batch 16", "seeds 0", "`builtin:digits`",
                   "the first 200", "fd_digits", "digits-cnn-fd-v1", "Encoders (2)"):
        assert needle in run, needle
    assert S.SECTIONS[0] == "What was found" and S.SECTIONS[-1].startswith("Appendix")


def test_predict_report_carries_the_caveats_and_extrapolation(tmp_path):
    from IPython.display import Markdown

    from spatialprobe.predict import predict

    new = tmp_path / "new.csv"
    pd.DataFrame({"encoder": ["far", "near"], "lds": [5.0, 0.3]}).to_csv(new, index=False)
    predict(table=str(new), x=["lds"], n_boot=500, out=str(tmp_path / "p"), figure=False)
    ctx = S.load(tmp_path / "p")
    parts = S.results(ctx)
    notes = " ".join(p.data for p in parts if isinstance(p, Markdown))
    assert "**extrapolation:** far: lds = 5" in notes and "near:" not in notes
    assert "**caveat:**" in notes  # the protocol of new.csv is not recorded


def test_official_correlate_folder_gets_its_points(tmp_path):
    from spatialprobe.correlation import correlate

    d = tmp_path / "off"
    t = pd.DataFrame({"encoder": list("abcdef"), "family": list("xxyyzz"), "lds": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
                      "gfid": [30, 28, 25, 20, 18, 12.0]})
    correlate(t, x=["lds"], y=["gfid"], family_col="family", n_resamples=1000, out=str(d), figure=False)
    t.to_csv(d / "official_table.csv", index=False)
    rec = json.loads((d / "config.json").read_text())
    rec["input"] = {"official": "/data/irepa"}
    (d / "config.json").write_text(json.dumps(rec))
    pts, fam, note = S.correlate_points(d)
    assert pts is not None and len(pts) == 6 and "official" in note
    panels = S.correlations(S.load(d))
    assert not isinstance(panels, S.Absent) and (d / "figures" / "correlations_gfid.png").is_file()


def test_study_run_ends_with_the_results_and_the_finding(tmp_path, capsys):
    from spatialprobe.commands.study import _print_results

    root = tmp_path / "s"
    (root / "correlate" / "fd_digits_repa").mkdir(parents=True)
    pd.DataFrame([{"encoder": "hog", "method": "repa", "seed": 0, "lds": 0.1, "fd_digits": 3.0}]).to_csv(
        root / "results.csv", index=False)
    pd.DataFrame({"encoder": ["hog"], "family": ["C"], "lds": [0.1], "fd_digits_repa": [3.0],
                  "fd_digits_repa_sd": [np.nan], "fd_digits_repa_n": [1]}).to_csv(root / "correlate" / "table.csv", index=False)
    pd.DataFrame([{"x": "lds", "y": "fd_digits_repa", "n": 3, "pearson_r": -0.9}]).to_csv(
        root / "correlate" / "fd_digits_repa" / "correlations.csv", index=False)
    _print_results(root)
    out = capsys.readouterr().out
    assert "results (mean over seeds)" in out and "fd_digits_repa_sd" not in out and "hog" in out
    assert "what was found" in out and "REPA: lds predicts fd_digits best, r = −0.90" in out and F.SMALL_N in out


def test_what_was_run_leaves_out_empty_options(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"config": {"table": [None, ""], "out": "o", "x": ["a", None],
                                                                 "empty": {}, "none": None}}))
    (tmp_path / "correlations.csv").write_text("x,y,n,pearson_r\nlds,gfid,3,0.5\n")
    text = S.what_was_run(S.load(tmp_path)).data
    assert "`table`" not in text and "`empty`" not in text and "`none`" not in text, text
    assert "`out` = o" in text and "`x` = a." in text, text
