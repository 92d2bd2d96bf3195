"""`study` on a real SLURM scheduler (``scripts/slurm-up.sh``: munge + slurmctld + slurmd on this machine,
a CPU-only node with partitions ``cpu`` and ``extract``). Skipped when no scheduler answers ``sinfo``;
``.ci/run`` starts one, so CI runs them.

What they pin: a wrong partition / gres / CPU request is one error before any submission; the smoke study
through SLURM gives the local launcher's results byte for byte, even when its controller is SIGKILLed
with training jobs queued and running (the rerun reattaches: one allocation per job in the scheduler's
log over both controllers); a second controller on the same folder refuses in one line; status and
cancel see the jobs; a 2-task training job runs DDP (gloo) and resumes after its job is killed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from spatialprobe.errors import ConfigError
from spatialprobe.study import run_study
from spatialprobe.study.scheduler import slurm_available
from spatialprobe.study.spec import read_spec_data
from study_copies import TEACHER, copy_without_teacher

pytestmark = [pytest.mark.slurm,
              pytest.mark.skipif(not slurm_available(), reason="no SLURM scheduler answers sinfo "
                                 "(scripts/slurm-up.sh starts one)")]

REPO = Path(__file__).resolve().parents[1]
EXECUTOR = {"cluster": "slurm", "partition": "cpu", "extract_partition": "extract", "gpus_per_node": 0,
            "cpus_per_task": 1, "mem_gb": 2, "timeout_min": 60, "poll_s": 1}


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "MPLBACKEND": "Agg"}


def _mini_spec(path: Path, **executor) -> Path:
    data, _ = read_spec_data("mini")
    data["launcher"] = "submitit"
    data["executor"] = {**EXECUTOR, **executor}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _study(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "spatialprobe.cli", "study", *args], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _ctld_log() -> Path:
    conf = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    return Path(re.search(r"SlurmctldLogFile\s*=\s*(\S+)", conf).group(1))


def _allocations(log: Path, offset: int) -> list[str]:
    """Job ids (``<array>_<task>`` or plain) the scheduler started since ``offset`` in its log: the main
    scheduler logs ``sched: Allocate JobId=…``, the backfill scheduler ``sched/backfill: _start_job: Started
    JobId=…``."""
    with open(log, "rb") as fh:
        fh.seek(offset)
        text = fh.read().decode(errors="replace")
    return re.findall(r"(?:sched: Allocate|sched/backfill: _start_job: Started) JobId=(\d+(?:_\d+)?)", text)


def _recorded(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out / "nodes")): json.loads(p.read_text())["job_id"]
            for p in (out / "nodes").glob("*/*.job.json")}


def _squeue() -> dict[str, str]:
    r = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True)
    return dict(line.split() for line in r.stdout.splitlines() if line.strip())


def test_a_wrong_partition_or_gres_is_one_error_before_anything_is_submitted(tmp_path):
    before = _squeue()
    cases = [({"partition": "nope"}, r"executor.partition 'nope': no such partition.*sinfo lists: cpu"),
             ({"extract_partition": "nope"}, r"executor.extract_partition 'nope'"),
             ({"gpus_per_node": 1}, r"executor.gpus_per_node 1: partition '(cpu|extract)' .*has no GPU"),
             ({"cpus_per_task": 64}, r"executor.cpus_per_task 64"),
             ({"mem_gb": 4096}, r"executor.mem_gb 4096")]
    for i, (change, msg) in enumerate(cases):
        spec = _mini_spec(tmp_path / f"s{i}.yaml", **change)
        spec_data = yaml.safe_load(spec.read_text())
        spec_data["device"] = "auto"  # device: cpu would drop the GPU request by itself
        spec.write_text(yaml.safe_dump(spec_data))
        with pytest.raises(ConfigError, match=msg):
            run_study(spec=str(spec), smoke=True, out=str(tmp_path / f"o{i}"))
        assert not list((tmp_path / f"o{i}").glob("nodes/*/*.job.json"))  # no node was claimed
    assert _squeue() == before  # nothing reached the scheduler


@pytest.mark.slow
def test_smoke_through_slurm_survives_a_killed_controller_without_duplicate_jobs(smoke, tmp_path):
    # the smoke study with one teacher's pipeline left to do (study_copies): 1 extraction + 3 training jobs
    spec = _mini_spec(tmp_path / "study.yaml")
    out = tmp_path / "run"
    copy_without_teacher(smoke, out)
    log = _ctld_log()
    offset = log.stat().st_size
    first = _study("run", str(spec), "--smoke", "--out", str(out), start_new_session=True)
    try:
        deadline = time.time() + 900
        while True:  # kill once training jobs are queued and at least one runs
            assert first.poll() is None and time.time() < deadline, first.stdout.read()[-3000:] \
                if first.poll() is not None else "timed out"
            rec = _recorded(out) if (out / "nodes").is_dir() else {}
            train_ids = {v for k, v in rec.items() if k.startswith("train/") and v}
            q = _squeue()
            if len(train_ids) == 3 and any(q.get(i) == "RUNNING" for i in train_ids) \
                    and any(q.get(i) == "PENDING" for i in train_ids):
                break
            time.sleep(0.5)
        # a second controller on the same folder refuses at once, in one line
        second = _study("run", str(spec), "--smoke", "--out", str(out))
        text, _ = second.communicate(timeout=120)
        assert second.returncode == 2, text
        err = [ln for ln in text.splitlines() if ln.startswith("error:")]
        assert len(err) == 1 and f"is being run by pid {first.pid} on host " in err[0], text
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    first_log = first.stdout.read()
    live = {i: s for i, s in _squeue().items() if i in set(_recorded(out).values())}
    assert live, "the killed controller's jobs should go on"

    rerun = _study("run", str(spec), "--smoke", "--out", str(out))
    text, _ = rerun.communicate(timeout=1500)
    assert rerun.returncode == 0, text[-4000:]
    assert "reattached to job" in text

    # one allocation per job-node over both controllers: the teacher's extraction job + its REPA, iREPA and
    # PixelREPA training chains
    allocs = _allocations(log, offset)
    recorded = set(_recorded(out).values())
    assert len(recorded) == 1 + 3, recorded
    assert sorted(allocs) == sorted(recorded), (allocs, recorded)
    assert (out / "results.csv").read_bytes() == (smoke / "results.csv").read_bytes()
    for y in ("fd_digits_repa", "fd_digits_irepa", "fd_digits_pixelrepa", "fd_digits_repa_minus_irepa",
              "fd_digits_repa_minus_pixelrepa"):
        assert (out / "correlate" / y / "correlations.csv").read_bytes() == \
            (smoke / "correlate" / y / "correlations.csv").read_bytes(), y

    # honest progress: the count never passes the plan's size; no log line or published record names
    # a .partial folder; no sacct warning per poll on a cluster without accounting
    for lines in (first_log, text):
        for k, n in re.findall(r"\[(\d+)/(\d+) ", lines):
            assert int(k) <= int(n), lines
        assert ".partial" not in lines
    assert text.count("sacct") <= 1 and "Bypassing" not in text
    for p in list((out / "nodes").glob("*/*/config.json")) + list((out / "nodes").glob("*/*/*/*/manifest.json")):
        assert ".partial" not in p.read_text(), p

    # status: each job node with its job id; cancel finds nothing left to cancel
    st = _study("status", str(out))
    table, _ = st.communicate(timeout=120)
    assert st.returncode == 0, table
    row = next(ln for ln in table.splitlines() if ln.strip().startswith(f"train/{TEACHER}.repa.s0"))
    assert _recorded(out)[f"train/{TEACHER}.repa.s0.job.json"] in row.split() and " done " in row
    cancel = _study("cancel", str(out))
    assert cancel.communicate(timeout=120)[0].strip() == "cancelled 0 job(s)"


def _ddp_spec(path: Path) -> Path:
    spec = {
        "name": "ddp", "encoders": ["pixels"], "device": "cpu", "threads": 1,
        "properties": {"limit": 32, "metrics": None, "probe": None},
        "training": {"model": "jit-tiny", "methods": ["repa"], "baseline": False, "steps": 20, "batch_size": 8,
                     "options": {"hflip": False, "workers": 0, "max_images": 32, "ckpt_every": 2, "log_every": 1},
                     "sample": {"n": 20, "steps": 2, "batch_size": 20, "weights": "model"},
                     "fid": {"protocol": "digits"}},
        "launcher": "submitit",
        "executor": {**EXECUTOR, "tasks_per_node": 2},
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.slow
def test_a_two_task_training_job_runs_ddp_and_resumes_after_its_job_is_killed(tmp_path):
    spec, out = _ddp_spec(tmp_path / "ddp.yaml"), tmp_path / "ddp"
    work = out / "nodes" / "train" / "pixels.repa.s0.partial"
    first = _study("run", str(spec), "--out", str(out), start_new_session=True)
    try:
        deadline = time.time() + 900
        while not (work / "checkpoints" / "0000002.pt").is_file():
            assert first.poll() is None and time.time() < deadline, "training did not reach its first checkpoint"
            time.sleep(0.1)
        job = _recorded(out)["train/pixels.repa.s0.job.json"]
        # the job's training ranks die mid-training (as in a node crash or an OOM kill). Not scancel: a
        # submitit job ignores SIGTERM, so a cancelled job runs on for KillWait (30 s) and may finish
        listed = subprocess.run(["scontrol", "listpids", job], capture_output=True, text=True).stdout
        ranks = [int(ln.split()[0]) for ln in listed.splitlines()[1:] if ln.split()[2:3] == ["0"]]
        assert len(ranks) == 2, listed
        for pid in ranks:
            os.kill(pid, signal.SIGKILL)
        text, _ = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 1 and "train/pixels.repa.s0" in text, text[-3000:]
    assert (work / "checkpoints").is_dir()  # kept for the resume

    rerun = _study("run", str(spec), "--out", str(out))
    text, _ = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, text[-4000:]
    new_job = _recorded(out)["train/pixels.repa.s0.job.json"]
    assert new_job != job
    run = out / "nodes" / "train" / "pixels.repa.s0"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["world_size"] == 2 and ".partial" not in json.dumps(cfg)
    steps = [json.loads(ln)["step"] for ln in (run / "log.jsonl").read_text().splitlines()]
    assert steps[-1] == 20 and sorted(set(steps)) == list(range(1, 21))
    err = (out / "submitit" / f"{new_job}_0_log.err").read_text()
    assert "resumed" in err, err[-2000:]  # continued from the killed job's checkpoint, not from step 0
