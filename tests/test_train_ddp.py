"""Training under torchrun on CPU (gloo, 2 ranks): it trains, only rank 0 prints and writes, --resume continues."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

import spatialprobe

ROOT = str(Path(spatialprobe.__file__).resolve().parent.parent)


def _torchrun(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_", "TORCHELASTIC"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "spatialprobe.cli", "train", "--model", "jit-tiny", "--method", "irepa", "--teacher", "pixels",
           "--images", "builtin:digits", "--max-images", "32", "--batch-size", "8", "--workers", "0",
           "--device", "cpu", "--steps", "4", "--ckpt-every", "2", "--log-every", "1", "--out", str(out), *extra]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    return r


def _steps(out: Path) -> list[int]:
    return [json.loads(ln)["step"] for ln in (out / "log.jsonl").read_text().splitlines()]


def test_two_rank_gloo_run_prints_once_and_resumes_to_the_same_weights(tmp_path):
    run = tmp_path / "run"
    r = _torchrun(run)
    # one summary, from rank 0, naming the real checkpoint (a second rank used to print "checkpoint None")
    assert r.stdout.count("wrote ") == 1 and r.stdout.count("step 4: loss") == 1, r.stdout
    assert "None" not in r.stdout and str(run / "checkpoints" / "0000004.pt") in r.stdout
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    assert _steps(run) == [1, 2, 3, 4]  # one log line per step: rank 0 alone writes
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["0000002.pt", "0000004.pt"]
    assert not list(run.rglob("*.tmp*"))
    full = torch.load(run / "checkpoints" / "0000004.pt", map_location="cpu", weights_only=True)

    # a crash after step 2: the step-4 checkpoint and log lines are gone; --resume continues from step 2
    cut = tmp_path / "cut"
    shutil.copytree(run, cut)
    (cut / "checkpoints" / "0000004.pt").unlink()
    lines = (cut / "log.jsonl").read_text().splitlines()
    (cut / "log.jsonl").write_text("\n".join(lines[:2]) + "\n")
    r = _torchrun(cut, "--resume")
    assert r.stdout.count("wrote ") == 1 and r.stderr.count("resumed") == 1, (r.stdout, r.stderr[-2000:])
    assert _steps(cut) == [1, 2, 3, 4]
    resumed = torch.load(cut / "checkpoints" / "0000004.pt", map_location="cpu", weights_only=True)
    assert resumed["step"] == 4
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    for a, b in zip(full["emas"], resumed["emas"]):
        assert all(torch.equal(a[k], b[k]) for k in a)
