"""``run_study`` / ``study_status``: resolve the spec, write the plan, run what is missing, publish the
results table and the correlations."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import resolve
from ..errors import ConfigError, InputFileError, OutputError, StoreError
from ..store import StoreLock
from .launchers import LAUNCHERS
from .plan import JOB_KINDS, Node, build_plan, canonical_id, register_defined
from .scheduler import LIVE, UNKNOWN, cancel, job_states, slurm_available
from .spec import StudySpec, load_spec
from .state import (error_file, load_resolved, node_dir, node_state, plan_record, read_job, read_json,
                    write_json_atomic, write_resolved)

log = logging.getLogger("spatialprobe.study")


@dataclass
class StudyConfig:
    """Options of :func:`run_study` (and ``spatialprobe study run``)."""

    spec: str = "mini"  #: study.yaml path or a packaged spec name (mini)
    out: str = "runs/study"
    smoke: bool = False  #: apply the spec's ``smoke:`` overrides (a quick run of the same code path)
    dry_run: bool = False  #: print the plan and the missing weights; run nothing
    launcher: str | None = None  #: override the spec's launcher (local | submitit)
    cluster: str | None = None  #: override executor.cluster (slurm | local | debug)
    device: str | None = None  #: override the spec's device


@dataclass
class StudyResult:
    out: Path
    nodes: list[Node]
    states: dict[str, str]
    missing_weights: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[str]:
        return [k for k, v in self.states.items() if v in ("failed", "blocked")]


def missing_weights(spec: StudySpec) -> list[dict[str, Any]]:
    """Every encoder whose checkpoint is not on disk: id, expected files, where searched, source."""
    from .. import encoders as E
    from ..encoders.weights import locate

    register_defined(spec)
    out = []
    for e in spec.encoders:
        if e.random_init:
            continue
        cid = canonical_id(e.id)
        try:
            s = E.spec(cid.split("@")[0])
        except Exception as exc:  # noqa: BLE001 - an unknown id is reported up front too
            out.append({"encoder": e.id, "error": str(exc)})
            continue
        if s.weight_free:
            continue
        loc = locate(s, spec.weights_dir)
        if loc.path is None:
            out.append({"encoder": cid, "files": list(s.weights.files) or [f"{s.id}.safetensors"],
                        "searched": loc.expected[:3], "source": s.weights.source, "gated": s.weights.gated})
    return out


def format_missing(miss: list[dict[str, Any]]) -> str:
    lines = [f"{len(miss)} encoder(s) lack weights (nothing is downloaded; put the files in --weights-dir / "
             "$SPATIALPROBE_WEIGHTS, or set random_init: true):"]
    for m in miss:
        if "error" in m:
            lines.append(f"  {m['encoder']:<34} {m['error']}")
        else:
            lines.append(f"  {m['encoder']:<34} {', '.join(m['files'])}{'  [gated]' if m['gated'] else ''}"
                         f"\n  {'':<34} get: {m['source']}")
    return "\n".join(lines)


def _job_records(out: Path, nodes: list[Node]) -> dict[str, dict[str, Any]]:
    """node name -> its recorded cluster job (for the node's current fingerprint), where it has one."""
    return {n.name: rec for n in nodes if n.kind in JOB_KINDS and (rec := read_job(out, n)) and rec.get("job_id")}


def _scheduler_states(recs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """job id -> the scheduler's state ("?" where the scheduler cannot be asked from here)."""
    out: dict[str, str] = {}
    for cluster in {r["cluster"] for r in recs.values()}:
        ids = sorted({r["job_id"] for r in recs.values() if r["cluster"] == cluster})
        if cluster == "slurm" and not slurm_available():
            out.update({i: "?" for i in ids})
        else:
            out.update(job_states(cluster, ids))
    return out


def status_table(out: Path, nodes: list[Node]) -> "Any":
    """One row per node: node, state, seconds, output (``pandas.DataFrame``); with ``job`` (the job id
    that ran or runs it) and ``scheduler`` (that job's state now) when the study submitted jobs."""
    import pandas as pd

    recs = _job_records(out, nodes)
    sched = _scheduler_states(recs) if recs else {}
    rows = []
    for n in nodes:
        st = node_state(out, n)
        done = read_json(node_dir(out, n) / "done.json") if st == "done" else None
        err = read_json(error_file(out, n)) if st in ("failed", "blocked") else None
        summ = (done or {}).get("summary") or {}
        row = {"node": n.name, "state": "skipped" if summ.get("skipped") else st,
               "seconds": (done or {}).get("seconds")}
        if recs:
            jid = recs.get(n.name, {}).get("job_id")
            word = sched.get(jid, UNKNOWN) if jid else None
            row["job"] = jid or "-"
            row["scheduler"] = "-" if word is None or (word == UNKNOWN and st == "done") else \
                ("gone" if word == UNKNOWN else word.lower())
            if word in LIVE and st not in ("done",):
                row["state"] = "running" if word != "PENDING" else "queued"
        row["output"] = str(node_dir(out, n)) if st == "done" else ((err or {}).get("error", "")[:100] if err else "")
        rows.append(row)
    return pd.DataFrame(rows)


def _publish(out: Path, nodes: list[Node], states: dict[str, str]) -> None:
    """Copy the table node's results.csv/.parquet to OUT/ and each correlate node to OUT/correlate/<y>/."""
    for n in nodes:
        if states.get(n.name) != "done":
            continue
        src = node_dir(out, n)
        if n.kind == "table":
            for f in ("results.csv", "results.parquet", "summary.json"):
                if (src / f).is_file():
                    shutil.copy2(src / f, out / f".{f}.tmp")
                    (out / f".{f}.tmp").replace(out / f)
            if (src / "wide.csv").is_file():
                (out / "correlate").mkdir(exist_ok=True)
                shutil.copy2(src / "wide.csv", out / "correlate" / "table.csv")
        elif n.kind == "correlate" and (src / "correlations.csv").is_file():
            dst = out / "correlate" / n.key
            tmp = out / "correlate" / f".{n.key}.tmp"
            if tmp.exists():
                shutil.rmtree(tmp)
            shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("done.json", ".fingerprint"))
            if dst.exists():
                shutil.rmtree(dst)
            tmp.replace(dst)


def controller_lock(out: Path) -> StoreLock:
    """The study folder's lock (``OUT/.lock``), held by the one controller that runs it. The kernel drops
    it when the controller dies, even by SIGKILL, so a rerun takes a dead controller's lock over."""
    try:
        return StoreLock(out).acquire()
    except StoreError:
        who = read_json(out / ".lock") or {}
        raise OutputError(f"{str(out)!r} is being run by pid {who.get('pid', '?')} on host {who.get('host', '?')} "
                          f"(since {who.get('since', '?')}); wait for it to finish (`spatialprobe study status "
                          f"{out}`), or choose another --out.") from None


def prepare(config: StudyConfig) -> tuple[StudySpec, list[Node], Path]:
    spec = load_spec(config.spec, smoke=config.smoke)
    if config.launcher:
        if config.launcher not in ("local", "submitit"):
            raise ConfigError(f"--launcher {config.launcher!r}: use local or submitit.")
        spec.launcher = config.launcher
    if config.cluster:
        spec.executor.cluster = config.cluster
    if config.device:
        spec.device = config.device
    nodes = build_plan(spec)
    return spec, nodes, Path(config.out)


def run_study(config: StudyConfig | None = None, **options: Any) -> StudyResult:
    """Run a study: every node that is not done with its current fingerprint, then publish the results.

    ``OUT/study.yaml`` (resolved spec), ``OUT/plan.json``, ``OUT/nodes/<kind>/<key>/``, ``OUT/results.csv``
    (+ ``.parquet``), ``OUT/summary.json`` and ``OUT/correlate/<y>/``. With ``dry_run`` nothing runs:
    the result lists the plan with each node's state and the encoders whose weights are missing.
    """
    cfg = resolve(StudyConfig, config, **options)
    spec, nodes, out = prepare(cfg)
    miss = missing_weights(spec)
    if cfg.dry_run:
        states = {n.name: node_state(out, n) for n in nodes}
        return StudyResult(out, nodes, states, miss)
    if miss:
        raise InputFileError(format_missing(miss) + "\n(`--dry-run` lists the plan without running.)")
    out.mkdir(parents=True, exist_ok=True)
    lock = controller_lock(out)
    try:
        write_resolved(spec, out)
        write_json_atomic(out / "plan.json", plan_record(spec, nodes, out))
        t0 = time.time()
        log.info("study %s: %d nodes, launcher %s, output %s", spec.name, len(nodes), spec.launcher, out)
        states = LAUNCHERS[spec.launcher](spec, nodes, out)
        _publish(out, nodes, states)
        write_json_atomic(out / "plan.json", plan_record(spec, nodes, out))
    finally:
        lock.release()
    res = StudyResult(out, nodes, states, miss, time.time() - t0)
    n_done = sum(v == "done" for v in states.values())
    log.info("study %s: %d/%d nodes done, %d failed or blocked, %.0f s", spec.name, n_done, len(nodes),
             len(res.failed), res.seconds)
    return res


def study_cancel(out: str | Path) -> list[str]:
    """Cancel the study's queued and running jobs (those recorded for nodes that are not done); returns
    their ids. A later ``study run`` submits those nodes again."""
    outp = Path(out)
    nodes = build_plan(load_resolved(outp))
    recs = {k: r for k, r in _job_records(outp, nodes).items()
            if node_state(outp, next(n for n in nodes if n.name == k)) != "done"}
    sched = _scheduler_states(recs)
    done: list[str] = []
    for cluster in {r["cluster"] for r in recs.values()}:
        ids = sorted({r["job_id"] for r in recs.values() if r["cluster"] == cluster and sched.get(r["job_id"]) in LIVE})
        cancel(cluster, ids)
        done += ids
    return done


def study_status(out: str | Path) -> "Any":
    """The status table of a study folder (reads its resolved spec; nothing runs)."""
    outp = Path(out)
    spec = load_resolved(outp)
    return status_table(outp, build_plan(spec))
