"""What the scheduler says about a study's jobs, asked with its own commands (no submitit, no sacct warnings).

* :func:`job_states` maps job ids to the scheduler's state (``PENDING``, ``RUNNING``, ``COMPLETED``,
  ``FAILED``, ``CANCELLED``, ``TIMEOUT``, …, or ``UNKNOWN`` once the scheduler has forgotten the job):
  ``squeue`` for live jobs, then ``sacct`` where the cluster keeps accounting, else ``scontrol show job``
  (finished jobs stay there for ``MinJobAge``, 300 s by default). For submitit's ``local`` executor a job
  id is a process id and a job is ``RUNNING`` while the process lives.
* :func:`check_partitions` asks ``sinfo`` whether the partitions, GPUs, CPUs and memory the executor
  will request exist, before anything is submitted, and names the field to change.
* :func:`cancel` cancels jobs (``scancel``; a signal for local jobs).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass

from ..errors import ConfigError

log = logging.getLogger("spatialprobe.study")

#: states in which a job may still write its nodes: wait for it, never submit the node again
LIVE = frozenset({"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
                  "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "STOPPED"})
UNKNOWN = "UNKNOWN"
_TIMEOUT_S = 60
_sacct_ok: bool | None = None  # asked once per process: does this cluster keep accounting?


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S)


def slurm_available() -> bool:
    """True when ``sinfo`` answers (a SLURM controller is reachable from here)."""
    if shutil.which("sinfo") is None:
        return False
    try:
        return _run(["sinfo", "-h", "-o", "%P"]).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


# ------------------------------------------------------------------------------------ job states

def _base(job_id: str) -> str:
    return job_id.split("_", 1)[0]


def _squeue(ids: list[str]) -> dict[str, str]:
    bases = sorted({_base(i) for i in ids})
    out: dict[str, str] = {}
    for k in range(0, len(bases), 200):  # squeue -j takes a comma list; keep command lines short
        r = _run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(bases[k:k + 200])])
        # squeue exits 1 ("Invalid job id specified") when none of the ids is known any more
        for line in r.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2:
                out[parts[0]] = parts[1]
    return out


def _sacct(ids: list[str]) -> dict[str, str] | None:
    global _sacct_ok
    if _sacct_ok is False or shutil.which("sacct") is None:
        return None
    r = _run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(ids)])
    if r.returncode != 0:  # e.g. "Slurm accounting storage is disabled": use scontrol from now on
        if _sacct_ok is None:
            log.debug("sacct is unavailable here (%s): job states come from squeue and scontrol",
                     (r.stderr.strip() or f"exit {r.returncode}").splitlines()[0])
        _sacct_ok = False
        return None
    _sacct_ok = True
    out = {}
    for line in r.stdout.splitlines():
        jid, _, st = line.partition("|")
        if st:
            out[jid] = st.split()[0]  # "CANCELLED by 0" -> CANCELLED
    return out


def _scontrol(job_id: str) -> str:
    r = _run(["scontrol", "-o", "show", "job", job_id])
    m = re.search(r"\bJobState=(\S+)", r.stdout) if r.returncode == 0 else None
    return m.group(1) if m else UNKNOWN


def _pid_alive(job_id: str) -> str:
    try:
        os.kill(int(job_id), 0)
    except (ValueError, ProcessLookupError):
        return UNKNOWN
    except PermissionError:
        return "RUNNING"
    return "RUNNING"


def job_states(cluster: str, ids: list[str]) -> dict[str, str]:
    """The scheduler's state of each job id (``UNKNOWN`` for a job it no longer knows)."""
    ids = [str(i) for i in ids if i]
    if not ids:
        return {}
    if cluster != "slurm":
        return {i: _pid_alive(i) for i in ids}
    states = _squeue(ids)
    rest = [i for i in ids if i not in states]
    if rest:
        acct = _sacct(rest)
        if acct is not None:
            states.update({i: acct[i] for i in rest if i in acct})
        for i in rest:
            if i not in states:
                states[i] = _scontrol(i)
    return {i: states.get(i, UNKNOWN) for i in ids}


def cancel(cluster: str, ids: list[str]) -> None:
    ids = [str(i) for i in ids if i]
    if not ids:
        return
    if cluster == "slurm":
        r = _run(["scancel", *ids])
        if r.returncode != 0:
            log.warning("scancel %s: %s", " ".join(ids), r.stderr.strip())
        return
    for i in ids:
        try:
            os.kill(int(i), signal.SIGTERM)
        except (ValueError, OSError):
            pass


# ------------------------------------------------------------------------------------ partitions

@dataclass
class Partition:
    name: str
    default: bool
    cpus: int
    mem_mb: int
    gpus: int


def partitions() -> dict[str, Partition]:
    """``sinfo``'s partitions: the most CPUs, memory and GPUs one of their nodes has."""
    r = _run(["sinfo", "-h", "-N", "-o", "%P|%c|%m|%G"])
    if r.returncode != 0:
        raise ConfigError("executor.cluster slurm: `sinfo` fails here "
                          f"({(r.stderr.strip() or 'exit ' + str(r.returncode)).splitlines()[0]}); run the study "
                          "on a SLURM login node, or use executor.cluster: local.")
    out: dict[str, Partition] = {}
    for line in r.stdout.splitlines():
        name, cpus, mem, gres = (line.split("|") + ["", "", "", ""])[:4]
        default = name.endswith("*")
        name = name.rstrip("*")
        gpus = sum(int(m.group(1)) for m in re.finditer(r"gpu(?::[^:(,]+)?:(\d+)", gres))
        p = out.setdefault(name, Partition(name, default, 0, 0, 0))
        p.cpus = max(p.cpus, int(re.sub(r"\D.*", "", cpus) or 0))
        p.mem_mb = max(p.mem_mb, int(re.sub(r"\D.*", "", mem) or 0))
        p.gpus = max(p.gpus, gpus)
    return out


def check_partitions(requests: list[dict]) -> None:
    """Each request (``field``, ``partition``, ``gpus``, ``tasks``, ``cpus_per_task``, ``mem_gb``, ``kind``)
    must fit a node of its partition; else one :class:`ConfigError` naming the field (nothing submitted)."""
    parts = partitions()
    names = ", ".join(f"{p.name}{' (default)' if p.default else ''} [{p.cpus} CPUs, {p.mem_mb} MB, {p.gpus} GPUs]"
                      for p in parts.values()) or "none"
    for q in requests:
        name = q["partition"]
        if name is None:
            p = next((p for p in parts.values() if p.default), None)
            if p is None:
                raise ConfigError(f"{q['field']}: the cluster has no default partition; set {q['field']} "
                                  f"(sinfo lists: {names}).")
        else:
            p = parts.get(name)
            if p is None:
                raise ConfigError(f"{q['field']} {name!r}: no such partition on this cluster (sinfo lists: {names}).")
        where = f"partition {p.name!r} ({q['kind']} jobs)"
        if q["gpus"] > p.gpus:
            raise ConfigError(
                f"executor.gpus_per_node {q['gpus']}: {where} has {p.gpus or 'no'} GPU(s) per node "
                f"(sinfo gres); use gpus_per_node: 0 (or device: cpu) for a CPU partition, or a GPU partition "
                f"(sinfo lists: {names}).")
        if q["tasks"] * q["cpus_per_task"] > p.cpus:
            raise ConfigError(f"executor.cpus_per_task {q['cpus_per_task']} x {q['tasks']} task(s): {where} has "
                              f"{p.cpus} CPUs per node; lower executor.cpus_per_task.")
        if q["mem_gb"] and q["mem_gb"] * 1024 > p.mem_mb:
            raise ConfigError(f"executor.mem_gb {q['mem_gb']}: {where} has {p.mem_mb} MB per node; lower "
                              "executor.mem_gb (or null for the partition's default).")
