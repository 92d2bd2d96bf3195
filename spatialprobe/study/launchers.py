"""Launchers: ``local`` runs the nodes in this process, in plan order; ``submitit`` submits one job per
extraction, training run, sampling and scoring node (SLURM, or submitit's ``local`` executor) and runs
the quick nodes (metrics, probe, table, correlate) itself, submitting each wave once its inputs are done.

Either way a failing node is recorded (``nodes/<kind>/<key>.error.json``) and the nodes that need its
output are marked blocked; independent nodes go on.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from .nodes import run_job, run_node
from .plan import JOB_KINDS, Node
from .spec import StudySpec
from .state import error_file, node_state, record_failure

log = logging.getLogger("spatialprobe.study")


def _fmt(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


class Progress:
    """One line per node event, numbered against the plan, with elapsed time."""

    def __init__(self, nodes: list[Node]) -> None:
        self.n, self.k, self.t0 = len(nodes), 0, time.time()

    def event(self, node: Node, what: str) -> None:
        self.k += what != "started"
        log.info("[%d/%d %s] %-40s %s", self.k, self.n, _fmt(time.time() - self.t0), node.name, what)


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


def make_executor(spec: StudySpec, out: Path, gpus: int):
    import submitit

    ex = spec.executor
    folder = Path(ex.folder) if ex.folder else out / "submitit"
    executor = submitit.AutoExecutor(folder=folder, cluster=ex.cluster)
    params = dict(timeout_min=ex.timeout_min, nodes=ex.nodes, cpus_per_task=ex.cpus_per_task,
                  name=f"study-{spec.name}")
    if ex.cluster == "slurm":
        params.update(gpus_per_node=gpus, tasks_per_node=max(1, gpus), slurm_array_parallelism=ex.array_parallelism)
        if ex.partition:
            params["slurm_partition"] = ex.partition
        if ex.mem_gb:
            params["mem_gb"] = ex.mem_gb
        params.update({k if k.startswith("slurm_") else f"slurm_{k}": v for k, v in ex.slurm_extra.items()})
    elif ex.cluster == "local":
        params.update(tasks_per_node=1)
    executor.update_parameters(**params)
    return executor


def run_submitit(spec: StudySpec, nodes: list[Node], out: Path) -> dict[str, str]:
    """Submit ready job nodes as arrays, run quick nodes here, until nothing is left to start."""
    by_name = {n.name: n for n in nodes}
    # failures recorded by an earlier run are tried again
    states = {n.name: ("missing" if (s := node_state(out, n)) in ("failed", "blocked") else s) for n in nodes}
    prog = Progress(nodes)
    for n in nodes:
        if states[n.name] == "done":
            prog.event(n, "reused")
    running: dict[str, object] = {}
    executors: dict[int, object] = {}
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
        groups: dict[int, list[list[Node]]] = {}
        for n in jobs:
            gpus = spec.executor.gpus_per_node if n.kind == "train" else min(1, spec.executor.gpus_per_node)
            groups.setdefault(gpus, []).append(_chain(n, nodes, states))
        for gpus, chains in groups.items():
            ex = executors.get(gpus) or executors.setdefault(gpus, make_executor(spec, out, gpus))
            with ex.batch():  # one array per wave and GPU count
                submitted = [(c, ex.submit(run_job, str(out), [m.name for m in c])) for c in chains]
            for c, job in submitted:
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
        for name, job in list(running.items()):
            if not job.done():
                continue
            del running[name]
            progressed = True
            node = by_name[name]
            try:
                job.result()
            except Exception as exc:  # noqa: BLE001 - the job itself died (timeout, preemption, OOM)
                record_failure(out, node, f"job {job.job_id} did not finish: {exc}")
            states[name] = node_state(out, node)
            if states[name] == "done":
                prog.event(node, "done")
            else:
                if states[name] not in ("failed", "blocked"):
                    record_failure(out, node, f"job {job.job_id} ended without a done marker")
                    states[name] = "failed"
                err = error_file(out, node)
                prog.event(node, f"FAILED (see {err})")
        if not running and not progressed:
            break
        if running and not progressed:
            time.sleep(spec.executor.poll_s)
    return states


LAUNCHERS = {"local": run_local, "submitit": run_submitit}
