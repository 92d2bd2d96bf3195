"""Checkpoint loading: a truncated newest checkpoint falls back to the newest intact one (train --resume,
sample), and empty or random-byte files are "not a checkpoint" (never a hint to unpickle them)."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from spatialprobe.errors import InputFileError
from spatialprobe.train.loop import load_run, read_checkpoint, train
from train_stubs import PatchTeacher, digits_source

KW = dict(model="jit-tiny", method="irepa", teacher="stub", images="x", steps=4, ckpt_every=2, log_every=1,
          workers=0, teacher_resolution=64, batch_size=4)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ck")
    src, t = digits_source(64, 96), PatchTeacher(16, input_res=64, patch=8)
    full = train(out=str(root / "full"), source=src, teachers=[t], **KW)
    return root, src, t, full


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_newest_checkpoint_falls_back_on_resume_and_sample(runs, tmp_path, caplog):
    import shutil

    root, src, t, full = runs
    run = tmp_path / "run"
    shutil.copytree(root / "full", run)
    _truncate(run / "checkpoints" / "0000004.pt")
    with caplog.at_level(logging.WARNING, logger="spatialprobe"):
        model, state = load_run(run)
    assert state["step"] == 2 and state["path"].endswith("0000002.pt")
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "0000004.pt" in warned and "truncated" in warned and "0000002.pt" in warned
    assert "weights_only" not in warned
    # --resume continues from step 2 and ends bit-identical to the uninterrupted run
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="spatialprobe"):
        resumed = train(out=str(run), source=src, teachers=[t], resume=True, **KW)
    assert "0000004.pt" in " ".join(r.getMessage() for r in caplog.records)
    a, b = read_checkpoint(full.checkpoint), read_checkpoint(resumed.checkpoint)
    assert b["step"] == 4 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a["emas"], b["emas"]) for k in x)


@pytest.mark.parametrize("content", [b"", os.urandom(4096), b"PK\x03\x04" + os.urandom(300)],
                         ids=["empty", "random", "zip-header"])
def test_unusable_files_are_not_a_checkpoint(tmp_path, content):
    bad = tmp_path / "0000010.pt"
    bad.write_bytes(content)
    with pytest.raises(InputFileError, match="is not a checkpoint") as e:
        load_run(bad)
    assert "weights_only" not in str(e.value) and "0000010.pt" in str(e.value)
    # a run folder whose only checkpoint is unusable names it instead of starting afresh silently
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / bad.name).write_bytes(content)
    with pytest.raises(InputFileError, match="No intact checkpoint.*0000010.pt"):
        load_run(tmp_path / "run")


def test_foreign_torch_file_and_cli_message(tmp_path):
    from typer.testing import CliRunner

    from spatialprobe.cli import app

    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(InputFileError, match="not a spatialprobe training checkpoint"):
        read_checkpoint(tmp_path / "other.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    r = CliRunner().invoke(app, ["sample", str(tmp_path / "empty.pt"), "--n", "2"])
    assert r.exit_code == 2 and "error:" in r.output and "not a checkpoint" in r.output
    assert "Traceback" not in r.output and "weights_only" not in r.output
