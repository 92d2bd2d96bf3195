"""``run_study`` / ``study_status``: resolve the spec, write the plan, run what is missing, publish the
results table and the correlations."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checks import check_device, prepare_out_dir
from ..config import resolve
from ..errors import ConfigError, InputFileError, OutputError, StoreError
from ..io import LOCK_NAME, FileLock, atomic_write
from ..schema import CORRELATIONS_CSV, DONE_JSON, PLAN_JSON, RESULTS_CSV, RESULTS_PARQUET, WIDE_CSV
from .launchers import LAUNCHERS
from .plan import JOB_KINDS, Node, build_plan, canonical_id, register_defined
from .scheduler import LIVE, UNKNOWN, cancel, job_states, slurm_available
from .spec import StudySpec, absolute_paths, check_device_name, load_spec
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
    withdrawn: list[dict[str, str]] = field(default_factory=list)  #: outputs moved to OUT/withdrawn/ (path, reason)

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
        done = read_json(node_dir(out, n) / DONE_JSON) if st == "done" else None
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


TABLE_FILES = (RESULTS_CSV, RESULTS_PARQUET, "summary.json")
WITHDRAWN = "withdrawn"


def _node_reason(out: Path, node: Node | None, state: str | None) -> str:
    if node is None:
        return "the current plan no longer produces it (the spec changed)"
    if state in ("failed", "blocked"):
        err = read_json(error_file(out, node)) or {}
        return f"its node {node.name} {state} in this run: {(err.get('error') or '?')[:300]}"
    done = read_json(node_dir(out, node) / "done.json") or {}
    skipped = (done.get("summary") or {}).get("skipped")
    if skipped:
        return f"its node {node.name} was skipped in this run: {skipped}"
    return f"its node {node.name} is {state or 'not done'}"


def withdraw(out: Path, nodes: list[Node], states: dict[str, str]) -> list[dict[str, str]]:
    """Move aside every published output that the current plan does not back with a done node: the
    results table when the table node is not done, ``correlate/<y>/`` of a y that is no longer planned,
    failed, blocked or skipped. They go to ``OUT/withdrawn/<time>/`` with ``withdrawn.json`` and a
    ``README.txt`` saying why; nothing stale stays where a reader (or ``report``) would take it as current."""
    by = {n.name: n for n in nodes}
    table = by.get("table/results")
    moves: list[tuple[Path, str]] = []
    if table is None or states.get(table.name) != "done":
        why = _node_reason(out, table, states.get("table/results"))
        moves += [(out / f, why) for f in TABLE_FILES if (out / f).is_file()]
        if (out / "correlate" / "table.csv").is_file():
            moves.append((out / "correlate" / "table.csv", why))
    cdir = out / "correlate"
    if cdir.is_dir():
        for d in sorted(p for p in cdir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            n = by.get(f"correlate/{d.name}")
            st = states.get(n.name) if n is not None else None
            ok = n is not None and st == "done" and (node_dir(out, n) / CORRELATIONS_CSV).is_file()
            if not ok:
                moves.append((d, _node_reason(out, n, st)))
    if not moves:
        return []
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = out / WITHDRAWN / stamp
    k = 1
    while dest.exists():
        k += 1
        dest = out / WITHDRAWN / f"{stamp}-{k}"
    dest.mkdir(parents=True)
    record = []
    for src, why in moves:
        rel = src.relative_to(out)
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), str(dest / rel))
        record.append({"path": rel.as_posix(), "reason": why})
        log.warning("withdrew %s (moved to %s): %s", rel, dest / rel, why)
    meta = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "withdrawn": record}
    write_json_atomic(dest / "withdrawn.json", meta)
    (dest / "README.txt").write_text(
        "These outputs were published by an earlier run of this study and are no longer backed by the current "
        "spec and inputs, so they were moved here instead of being shown as current:\n\n"
        + "\n".join(f"- {r['path']}: {r['reason']}" for r in record) + "\n", encoding="utf-8")
    return record


def _publish(out: Path, nodes: list[Node], states: dict[str, str]) -> None:
    """Copy the table node's results.csv/.parquet to OUT/ and each correlate node to OUT/correlate/<y>/."""
    for n in nodes:
        if states.get(n.name) != "done":
            continue
        src = node_dir(out, n)
        if n.kind == "table":
            for f in (RESULTS_CSV, RESULTS_PARQUET, "summary.json"):
                if (src / f).is_file():
                    atomic_write(out / f, lambda tmp: shutil.copy2(src / f, tmp))
            if (src / WIDE_CSV).is_file():
                (out / "correlate").mkdir(exist_ok=True)
                shutil.copy2(src / WIDE_CSV, out / "correlate" / "table.csv")
        elif n.kind == "correlate" and (src / CORRELATIONS_CSV).is_file():
            dst = out / "correlate" / n.key
            tmp = out / "correlate" / f".{n.key}.tmp"
            if tmp.exists():
                shutil.rmtree(tmp)
            shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(DONE_JSON, ".fingerprint"))
            if dst.exists():
                shutil.rmtree(dst)
            tmp.replace(dst)


def check_devices(spec: StudySpec) -> None:
    """The spec's device exists here before any node runs (``cuda`` on a CPU machine fails in a second, not
    after the extractions). Jobs on a SLURM cluster run elsewhere: only the spelling is checked then."""
    check_device_name(spec.device)
    if spec.launcher == "submitit" and spec.executor.cluster == "slurm":
        return
    try:
        check_device(spec.device, "device")
    except ConfigError as exc:
        raise ConfigError(f"study spec / --device: {exc}") from None


def controller_lock(out: Path) -> FileLock:
    """The study folder's lock (``OUT/.lock``), held by the one controller that runs it. The kernel drops
    it when the controller dies, even by SIGKILL, so a rerun takes a dead controller's lock over."""
    try:
        return FileLock(out).acquire()
    except StoreError:
        who = read_json(out / LOCK_NAME) or {}
        raise OutputError(f"{str(out)!r} is being run by pid {who.get('pid', '?')} on host {who.get('host', '?')} "
                          f"(since {who.get('since', '?')}); wait for it to finish (`spatialprobe study status "
                          f"{out}`), or choose another --out.") from None


def prepare(config: StudyConfig) -> tuple[StudySpec, list[Node], Path]:
    out = Path(config.out).expanduser()
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {str(out)!r} is a file; a study writes a folder (it is created when missing), "
                          "so choose another path.")
    spec = load_spec(config.spec, smoke=config.smoke)
    if config.launcher:
        if config.launcher not in LAUNCHERS:
            raise ConfigError(f"--launcher {config.launcher!r}: use {' or '.join(LAUNCHERS)}.")
        spec.launcher = config.launcher
    if config.cluster:
        spec.executor.cluster = config.cluster
    if config.device:
        spec.device = config.device
    check_devices(spec)
    absolute_paths(spec)
    nodes = build_plan(spec)
    return spec, nodes, out.resolve()


def disk_estimate(spec: StudySpec, nodes: list[Node]) -> Any:
    """The disk the study's runs (checkpoints, samples) and feature stores need (:mod:`spatialprobe.train.budget`)."""
    from ..train.budget import study_disk_estimate

    t, p = spec.training, spec.properties
    opts = t.options if t else {}
    return study_disk_estimate(
        runs=sum(n.kind == "train" for n in nodes), model=t.model if t else None, steps=t.steps if t else 0,
        ckpt_every=opts.get("ckpt_every"), keep_last=opts.get("keep_last", 2), keep_steps=opts.get("keep_steps") or (),
        samples_per_run=int(t.sample.get("n", 64)) if t else 0, stores=sum(n.kind == "extract" for n in nodes),
        store_images=p.limit, store_dtype_bytes=2 if p.dtype in ("fp16", "bf16") else 4)


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
        log.info("%s", disk_estimate(spec, nodes).format())
        return StudyResult(out, nodes, states, miss)
    if miss:
        raise InputFileError(format_missing(miss) + "\n(`--dry-run` lists the plan without running.)")
    prepare_out_dir(out)
    lock = controller_lock(out)
    try:
        write_resolved(spec, out)
        run_info = {"smoke": bool(cfg.smoke), "spec_source": str(cfg.spec)}  # what the report says was run
        write_json_atomic(out / PLAN_JSON, {**plan_record(spec, nodes, out), **run_info})
        t0 = time.time()
        log.info("study %s: %d nodes, launcher %s, output %s", spec.name, len(nodes), spec.launcher, out)
        states = LAUNCHERS[spec.launcher](spec, nodes, out)
        _publish(out, nodes, states)
        withdrawn = withdraw(out, nodes, states)
        write_json_atomic(out / PLAN_JSON, {**plan_record(spec, nodes, out), **run_info})
    finally:
        lock.release()
    res = StudyResult(out, nodes, states, miss, time.time() - t0, withdrawn)
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
