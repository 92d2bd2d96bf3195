"""Launchers: ``local`` runs the nodes in this process, in plan order; ``submitit`` submits one job per
extraction, training run, sampling and scoring node (SLURM, or submitit's ``local`` executor) and runs
the quick nodes (metrics, probe, table, correlate) itself, submitting each wave once its inputs are done.

Either way a failing node is recorded (``nodes/<kind>/<key>.error.json``) and the nodes that need its
output are marked blocked; independent nodes go on.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .nodes import run_job, run_node
from .plan import JOB_KINDS, Node
from .scheduler import LIVE, check_partitions, job_states
from .spec import StudySpec
from .state import claim_node, error_file, node_state, read_job, record_failure, record_job

log = logging.getLogger("spatialprobe.study")


def _fmt(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


class Progress:
    """One line per node event, numbered by the nodes finished so far (done, reused, failed or blocked;
    each node counts once, so the count never passes the plan's size), with elapsed time."""

    FINAL = ("reused", "done", "FAILED", "blocked")

    def __init__(self, nodes: list[Node]) -> None:
        self.n, self.t0 = len(nodes), time.time()
        self.finished: set[str] = set()

    def event(self, node: Node, what: str) -> None:
        if what.startswith(self.FINAL):
            self.finished.add(node.name)
        log.info("[%d/%d %s] %-40s %s", len(self.finished), self.n, _fmt(time.time() - self.t0), node.name, what)


def _blocked_by(node: Node, states: dict[str, str]) -> list[str]:
    return [d for d in node.deps if states.get(d) != "done"]


def run_local(spec: StudySpec, nodes: list[Node], out: Path) -> dict[str, str]:
    """Run every node that is not done, in plan order; returns the final state per node."""
    by_name = {n.name: n for n in nodes}
    states = {n.name: node_state(out, n) for n in nodes}
    prog = Progress(nodes)
    for n in nodes:
        if states[n.name] == "done":
            prog.event(n, "reused")
            continue
        bad = _blocked_by(n, states)
        if bad:
            record_failure(out, n, f"blocked: input {bad[0]} is not done", blocked=True)
            states[n.name] = "blocked"
            prog.event(n, f"blocked (needs {bad[0]})")
            continue
        t0 = time.time()
        prog.event(n, "started")
        try:
            run_node(spec, n, out, by_name)
            states[n.name] = "done"
            prog.event(n, f"done in {_fmt(time.time() - t0)}")
        except Exception as exc:  # noqa: BLE001 - recorded; independent nodes go on
            msg = record_failure(out, n, exc)
            states[n.name] = "failed"
            prog.event(n, f"FAILED: {msg}")
    return states


def _chain(first: Node, nodes: list[Node], states: dict[str, str]) -> list[Node]:
    """``first`` and the nodes that need only its output, in a row (train → sample → fid): one job."""
    chain = [first]
    while True:
        nxt = [n for n in nodes if n.deps == [chain[-1].name] and n.kind in JOB_KINDS and states[n.name] != "done"]
        if len(nxt) != 1 or chain[-1].kind not in ("train", "sample"):
            return chain
        chain.append(nxt[0])


def job_request(spec: StudySpec, kind: str) -> dict[str, Any]:
    """What one job of ``kind`` (extract | train | sample) asks the scheduler for. No GPU request at all
    with ``gpus_per_node: 0`` or ``device: cpu`` (a CPU partition refuses any gres request); training jobs
    get ``tasks_per_node`` ranks (default: one per GPU), which run DDP; the others one task."""
    ex = spec.executor
    gpus = 0 if spec.device == "cpu" else ex.gpus_per_node
    if kind == "train":
        tasks = ex.tasks_per_node or max(1, gpus)
    else:
        gpus, tasks = min(1, gpus), 1
    own = kind == "extract" and ex.extract_partition is not None
    return {"kind": kind, "partition": ex.extract_partition if own else ex.partition,
            "field": "executor.extract_partition" if own else "executor.partition", "gpus": gpus, "tasks": tasks,
            "cpus_per_task": ex.cpus_per_task, "mem_gb": ex.mem_gb}


def _job_kind(chain: list[Node]) -> str:
    return chain[0].kind if chain[0].kind in ("extract", "train") else "sample"


def make_executor(spec: StudySpec, out: Path, request: dict[str, Any]):
    import submitit

    ex = spec.executor
    folder = Path(ex.folder) if ex.folder else out / "submitit"
    executor = submitit.AutoExecutor(folder=folder, cluster=ex.cluster)
    params = dict(timeout_min=ex.timeout_min, nodes=ex.nodes, cpus_per_task=ex.cpus_per_task,
                  name=f"study-{spec.name}")
    if ex.cluster == "slurm":
        params.update(tasks_per_node=request["tasks"], slurm_array_parallelism=ex.array_parallelism)
        if request["gpus"]:
            params["gpus_per_node"] = request["gpus"]
        if request["partition"]:
            params["slurm_partition"] = request["partition"]
        if ex.mem_gb:
            params["mem_gb"] = ex.mem_gb
        params.update({k if k.startswith("slurm_") else f"slurm_{k}": v for k, v in ex.slurm_extra.items()})
    elif ex.cluster == "local":
        params.update(tasks_per_node=1)
    executor.update_parameters(**params)
    return executor


@dataclass(eq=False)
class _Job:
    """One submitted job: its id, the chain of nodes it runs, and (this controller's local/debug jobs) the
    submitit handle to poll; a SLURM job, or one reattached from an earlier controller, is polled by id."""

    job_id: str
    names: list[str]
    handle: Any = None


def _finished(cluster: str, jobs: list[_Job]) -> list[tuple[_Job, str]]:
    """The jobs that have left the scheduler's queue, with their final state."""
    ended = [(j, "COMPLETED" if j.handle.done() else "") for j in jobs if j.handle is not None]
    ended = [(j, st) for j, st in ended if st]
    by_id = [j for j in jobs if j.handle is None]
    states = job_states(cluster, [j.job_id for j in by_id])
    return ended + [(j, states[j.job_id]) for j in by_id if states[j.job_id] not in LIVE]


def _stderr_tail(spec: StudySpec, out: Path, job_id: str) -> str:
    folder = Path(spec.executor.folder) if spec.executor.folder else out / "submitit"
    try:
        lines = [ln for ln in (folder / f"{job_id}_0_log.err").read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return f"; its log ends: {lines[-1].split(chr(13))[-1].strip()[:200]}" if lines else ""  # after a progress bar's \r


def _collect(spec, out, job: _Job, sched_state: str, by_name, states, prog) -> None:
    """A job has ended: each node of its chain is done, or its failure is recorded (by the job, or here)."""
    err = None
    if job.handle is not None:
        try:
            job.handle.result()
        except Exception as exc:  # noqa: BLE001 - the job itself died (timeout, preemption, OOM)
            err = f"job {job.job_id} did not finish: {exc}"
    first_bad = None
    for name in job.names:
        node = by_name[name]
        states[name] = node_state(out, node)
        if states[name] == "done":
            prog.event(node, "done")
            continue
        if states[name] not in ("failed", "blocked"):
            if first_bad is None:
                record_failure(out, node, err or f"job {job.job_id} ended ({sched_state}) without a done marker"
                               f"{_stderr_tail(spec, out, job.job_id)}")
                states[name] = "failed"
            else:
                record_failure(out, node, f"blocked: input {first_bad} is not done", blocked=True)
                states[name] = "blocked"
        first_bad = first_bad or name
        prog.event(node, f"{'FAILED' if states[name] == 'failed' else 'blocked'} (see {error_file(out, node)})")


def _reattach(spec: StudySpec, nodes: list[Node], out: Path, states: dict[str, str], prog: Progress
              ) -> dict[str, _Job]:
    """Ask the scheduler about every job an earlier controller recorded for a node that is not done: a
    queued or running job is waited for (never submitted twice); a finished one left its node done (or
    not: then the node is submitted again), and so did one the scheduler has forgotten."""
    cluster = spec.executor.cluster
    recorded: dict[str, list[str]] = {}
    for n in nodes:
        if states[n.name] == "done" or n.kind not in JOB_KINDS:
            continue
        rec = read_job(out, n)
        if rec and rec.get("job_id") and rec.get("cluster") == cluster:
            recorded.setdefault(rec["job_id"], []).append(n.name)
    running: dict[str, _Job] = {}
    for jid, st in job_states(cluster, list(recorded)).items():
        if st not in LIVE:
            continue
        job = _Job(jid, recorded[jid])
        for name in job.names:
            running[name] = job
            states[name] = "missing"
        prog.event(next(n for n in nodes if n.name == job.names[0]),
                   f"reattached to job {jid} ({st.lower()}{', with ' + ', '.join(job.names[1:]) if job.names[1:] else ''})")
    return running


def _submit(spec: StudySpec, out: Path, executor, chains: list[list[Node]], request: dict[str, Any]
            ) -> list[tuple[list[Node], _Job]]:
    """Submit one array: each node is claimed (a fresh token) before, and its job id recorded the moment
    the scheduler returns it."""
    cluster = spec.executor.cluster
    tokens = [uuid.uuid4().hex for _ in chains]
    for c, tok in zip(chains, tokens):
        for m in c:
            claim_node(out, m, tok, cluster)
    try:
        with executor.batch():  # one array per wave and request
            handles = [executor.submit(run_job, str(out), [m.name for m in c], tok) for c, tok in zip(chains, tokens)]
    except Exception as exc:  # noqa: BLE001 - sbatch refused: one line, naming what was asked
        first = str(exc).strip().splitlines()
        raise ConfigError(f"the scheduler refused {len(chains)} {request['kind']} job(s) (partition "
                             f"{request['partition'] or 'default'}, {request['gpus']} GPU(s), {request['tasks']} "
                             f"task(s)): {first[-1] if first else type(exc).__name__}; check executor.*") from None
    submitted = []
    for c, tok, h in zip(chains, tokens, handles):
        for m in c:
            record_job(out, m, tok, h.job_id, cluster)
        submitted.append((c, _Job(str(h.job_id), [m.name for m in c], None if cluster == "slurm" else h)))
    return submitted


def run_submitit(spec: StudySpec, nodes: list[Node], out: Path) -> dict[str, str]:
    """Submit ready job nodes as arrays, run quick nodes here, until nothing is left to start.

    Every job node's job id is recorded (``<key>.job.json``) as it is submitted; a rerun after the
    controller died reattaches to the jobs still queued or running instead of submitting them again.
    """
    by_name = {n.name: n for n in nodes}
    cluster = spec.executor.cluster
    # failures recorded by an earlier run are tried again
    states = {n.name: ("missing" if (s := node_state(out, n)) in ("failed", "blocked") else s) for n in nodes}
    prog = Progress(nodes)
    for n in nodes:
        if states[n.name] == "done":
            prog.event(n, "reused")
    if cluster == "slurm":  # a wrong partition, gres, CPU or memory request: one error, before any submission
        kinds = sorted({_job_kind([n]) for n in nodes if n.kind in JOB_KINDS and states[n.name] != "done"})
        check_partitions([job_request(spec, k) for k in kinds])
    running = _reattach(spec, nodes, out, states, prog)
    executors: dict[tuple, Any] = {}
    while True:
        progressed = False
        for n in nodes:
            st = states[n.name]
            if st in ("done", "failed", "blocked") or n.name in running:
                continue
            bad = [d for d in n.deps if states[d] in ("failed", "blocked")]
            if bad:
                record_failure(out, n, f"blocked: input {bad[0]} is not done", blocked=True)
                states[n.name] = "blocked"
                prog.event(n, f"blocked (needs {bad[0]})")
                progressed = True
        ready = [n for n in nodes if states[n.name] not in ("done", "failed", "blocked")
                 and n.name not in running and all(states[d] == "done" for d in n.deps)]
        jobs = [n for n in ready if n.kind in JOB_KINDS]
        quick = [n for n in ready if n.kind not in JOB_KINDS]
        groups: dict[tuple, list[list[Node]]] = {}
        requests: dict[tuple, dict[str, Any]] = {}
        for n in jobs:
            chain = _chain(n, nodes, states)
            req = job_request(spec, _job_kind(chain))
            key = (req["partition"], req["gpus"], req["tasks"])
            requests[key] = req
            groups.setdefault(key, []).append(chain)
        for key, chains in groups.items():
            ex = executors.get(key) or executors.setdefault(key, make_executor(spec, out, requests[key]))
            for c, job in _submit(spec, out, ex, chains, requests[key]):
                for m in c:
                    running[m.name] = job
                prog.event(c[0], f"submitted (job {job.job_id}{', with ' + ', '.join(m.kind for m in c[1:]) if c[1:] else ''})")
            progressed = True
        for n in quick:
            t0 = time.time()
            try:
                run_node(spec, n, out, by_name)
                states[n.name] = "done"
                prog.event(n, f"done in {_fmt(time.time() - t0)}")
            except Exception as exc:  # noqa: BLE001
                states[n.name] = "failed"
                prog.event(n, f"FAILED: {record_failure(out, n, exc)}")
            progressed = True
        if running:
            live = list({id(j): j for j in running.values()}.values())
            for job, st in _finished(cluster, live):
                for name in job.names:
                    running.pop(name, None)
                _collect(spec, out, job, st, by_name, states, prog)
                progressed = True
        if not running and not progressed:
            break
        if running and not progressed:
            time.sleep(spec.executor.poll_s)
    return states


LAUNCHERS = {"local": run_local, "submitit": run_submitit}
