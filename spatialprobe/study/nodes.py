"""What each node does: thin calls into the public functions (extract, compute_metrics, probe, inject,
train, sample, digits_fd / evaluate, correlate), with atomic outputs and a done marker.

A node works in ``nodes/<kind>/<key>.partial/`` (kept across a crash when its fingerprint is the same,
so an extraction resumes its shards and a training run its newest checkpoint), then writes
``done.json`` there and renames the folder to ``nodes/<kind>/<key>/``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from .. import store
from ..errors import DataError, InputFileError
from ..io import atomic_write_bytes
from ..runtime import is_rank0, local_rank, resolve_device, world_size
from ..schema import DONE_JSON, FD_DIGITS, FID_JSON, GFID, SAMPLES_NPZ, SPATIAL_METRICS
from .plan import Node, build_plan, register_defined
from .results import build_tables, run_correlate
from .spec import StudySpec
from .state import error_file, load_resolved, node_dir, owns, partial_dir, record_failure, write_json_atomic

log = logging.getLogger("spatialprobe.study")


# ------------------------------------------------------------------------------------ helpers

def _device(spec: StudySpec) -> str:
    """The spec's device; under torchrun a bare ``cuda`` is this rank's GPU."""
    return str(resolve_device(spec.device, local_rank() if world_size() > 1 else None))


def build_encoder(spec: StudySpec, settings: dict[str, Any], device: str):
    from .. import encoders as E

    register_defined(spec)
    w = settings.get("weights") or {}
    return E.get(settings["encoder"], pretrained=not w.get("random_init", False), seed=int(w.get("seed", 0)),
                 weights_dir=spec.weights_dir, device=device)


def find_store(folder: Path) -> Path:
    found = store.find_stores(folder)
    if not found:
        raise InputFileError(f"No feature store (manifest.json) under {str(folder)!r}; rerun its extract node.")
    return found[0]


def _dep_dir(out: Path, by_name: dict[str, Node], node: Node, kind: str) -> Path:
    dep = next(by_name[d] for d in node.deps if d.startswith(kind + "/"))
    return node_dir(out, dep)


def _num(v: Any) -> Any:
    try:
        import math

        f = float(v)
        return None if math.isnan(f) else f
    except (TypeError, ValueError):
        return v


# ------------------------------------------------------------------------------------ node kinds

def _run_extract(spec, node, work, out, by_name):
    from ..data import open_source
    from ..extract import extract

    s = node.settings
    enc = build_encoder(spec, s, _device(spec))
    source = open_source(s["images"], resolution=s["resolution"])
    if s["limit"] is not None:
        source = source.subset(s["limit"])
    workers = -1
    if spec.properties.decode_cache:  # every extraction node reads one decoded copy (see data/cache.py)
        from ..data.cache import DecodedCache

        source = DecodedCache(source, out / "cache" / "images")
        source.ensure()
        workers = 0  # a memory map needs no decode workers (their start-up cost more than they saved)
    res = extract(encoder_objects=[enc], source=source, resolution=s["resolution"], dtype=s["dtype"],
                  out=str(work), device=spec.device, batch_size=spec.properties.batch_size,
                  num_workers=workers, weights_dir=spec.weights_dir)[0]
    if res.error:
        raise DataError(f"extraction of {s['encoder']} failed: {res.error}")
    return {"n_images": res.n_images, "store": str(Path(res.path).relative_to(work)), "seconds": res.seconds,
            "bad": len(res.bad)}


def _store(out, by_name, node) -> Path:
    return find_store(_dep_dir(out, by_name, node, "extract"))


def _run_metrics(spec, node, work, out, by_name):
    from ..metrics.run import compute_metrics

    res = compute_metrics(features=[str(_store(out, by_name, node))], out=str(work), device="cpu",
                          **node.settings["options"])
    summ = res.summary
    props: dict[str, Any] = {}
    many = len(summ) > 1
    for _, row in summ.iterrows():
        for m in SPATIAL_METRICS:
            if m in row:
                col = m if not many else f"{m}[{row['setting']}]"
                props[col] = _num(row[m])
                props[f"{col}_nan"] = int(row[f"{m}_nan"])
    if many:  # the first setting is also the plain column
        first = summ.iloc[0]
        for m in SPATIAL_METRICS:
            if m in first:
                props[m], props[f"{m}_nan"] = _num(first[m]), int(first[f"{m}_nan"])
    return {"properties": props}


def _run_probe(spec, node, work, out, by_name):
    from ..probe import probe, write_result

    opts = dict(node.settings["options"])
    opts.setdefault("device", "cpu" if spec.device == "auto" else spec.device)
    res = probe(features=str(_store(out, by_name, node)), **opts)
    write_result(res, work)
    return {"properties": {"lp_acc": 100.0 * res.best_val_acc}, "best": res.best, "n_train": res.n_train,
            "n_val": res.n_val}


def _run_inject(spec, node, work, out, by_name):
    from ..inject import inject

    opts = dict(node.settings["options"])
    opts.setdefault("device", "cpu" if spec.device == "auto" else spec.device)
    table = inject(features=str(_store(out, by_name, node)), out=str(work), **opts)
    props = {}
    for _, row in table.iterrows():
        a = f"{float(row['alpha']):g}"
        props[f"lp_acc[alpha={a}]"] = 100.0 * float(row["lp_acc"])
        for m in SPATIAL_METRICS:
            props[f"{m}[alpha={a}]"] = _num(row[m])
    return {"properties": props}


def _run_train(spec, node, work, out, by_name):
    from ..train.loop import train
    from ..train.teacher_cache import cached_teacher

    s = node.settings
    device = _device(spec)
    teachers = None
    if s["teacher"] is not None:
        enc = build_encoder(spec, s["teacher"], device)
        ckey = json.dumps(s["teacher"], sort_keys=True, default=str)
        teachers = [cached_teacher(enc, ckey, spec.training.teacher_cache_mb)]
    opts = dict(s["options"])
    if s["teacher"] is not None and s["teacher"]["weights"].get("random_init"):
        opts.setdefault("teacher_pretrained", False)
    res = train(model=s["model"], method=s["method"], teacher=None if s["teacher"] is None else s["teacher"]["encoder"],
                images=s["images"], out=str(work), steps=s["steps"], batch_size=s["batch_size"], seed=s["seed"],
                device=spec.device, resume=True, teachers=teachers, weights_dir=spec.weights_dir, **opts)
    return {"step": res.step, "loss": res.loss, "checkpoint": str(Path(res.checkpoint).relative_to(work))
            if res.checkpoint else None}


def _run_sample(spec, node, work, out, by_name):
    from ..train.sample import sample

    opts = {"png": False, **node.settings["options"]}
    path = sample(run=str(_dep_dir(out, by_name, node, "train")), out=str(work), device=spec.device, **opts)
    import numpy as np

    with np.load(path / SAMPLES_NPZ) as z:
        n = int(z["arr_0"].shape[0])
    return {"n_samples": n}


def _run_fid(spec, node, work, out, by_name):
    opts = dict(node.settings["options"])
    proto = opts.pop("protocol", "digits")
    samples = _dep_dir(out, by_name, node, "sample") / SAMPLES_NPZ
    if proto == "digits":
        from ..fid.digits import digits_fd

        r = digits_fd(str(samples), **opts)
        (work / FID_JSON).write_text(json.dumps(r, indent=2, default=str) + "\n", encoding="utf-8")
        return {"quality": {FD_DIGITS: float(r["fd"])}, "protocol": r["protocol"], "n_samples": r["n_samples"],
                "classifier_acc": r.get("classifier_acc"), "classifier_sha256": r.get("classifier_sha256")}
    from ..fid.evaluator import evaluate

    ref = opts.pop("ref")
    opts.setdefault("device", spec.device)
    r = evaluate(str(samples), ref, out=str(work), **opts)
    q = {(GFID if k == "fid" else k): float(v) for k, v in r["metrics"].items()}
    return {"quality": q, "protocol": r["protocol"], "n_samples": r.get("num_samples")}


RUNNERS = {"extract": _run_extract, "metrics": _run_metrics, "probe": _run_probe, "inject": _run_inject,
           "train": _run_train, "sample": _run_sample, "fid": _run_fid, "table": build_tables,
           "correlate": run_correlate}


# ------------------------------------------------------------------------------------ execution

class Superseded(RuntimeError):
    """This job no longer owns its node (the controller gave the node to a newer job): it must not write it."""


def _published_paths(work: Path, final: Path) -> None:
    """Name the published folder, not the ``.partial`` one, in the JSON records the stages wrote
    (``config.json``, a store's ``manifest.json``): those paths stop existing at the rename."""
    old, new = json.dumps(str(work))[1:-1], json.dumps(str(final))[1:-1]  # as the JSON text spells them
    for p in list(work.rglob("config.json")) + list(work.rglob("manifest.json")):
        try:
            text = p.read_text(encoding="utf-8")
        except OSError:
            continue
        if old not in text:
            continue
        atomic_write_bytes(p, text.replace(old, new).encode("utf-8"))


class _PublishedName(logging.Filter):
    """Log lines written while a node runs name its published folder, not the ``.partial`` one."""

    def __init__(self, work: Path, final: Path) -> None:
        super().__init__()
        self.old, self.new = str(work), str(final)

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if self.old in msg:
            record.msg, record.args = msg.replace(self.old, self.new), None
        return True


@contextlib.contextmanager
def _log_published_name(work: Path, final: Path):
    flt = _PublishedName(work, final)
    loggers = [logging.getLogger()] + [lg for name, lg in logging.Logger.manager.loggerDict.items()
                                       if name.startswith("spatialprobe") and isinstance(lg, logging.Logger)]
    handlers = {id(h): h for lg in loggers for h in lg.handlers}.values()
    for h in handlers:
        h.addFilter(flt)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(flt)


def apply_threads(spec: StudySpec) -> None:
    if spec.threads:
        import torch

        torch.set_num_threads(spec.threads)


def run_node(spec: StudySpec, node: Node, out: Path, by_name: dict[str, Node], token: str | None = None
             ) -> dict[str, Any]:
    """Run one node to completion: its outputs land in ``nodes/<kind>/<key>/`` with ``done.json``.

    Raises whatever the stage raises; the caller records it (:func:`record_failure`). A cluster job passes
    its ``token``: the node is run and published only while the token still owns it (:class:`Superseded`).
    """
    apply_threads(spec)
    out = Path(out)
    final, work = node_dir(out, node), partial_dir(out, node)
    if not owns(out, node, token):
        raise Superseded(f"{node.name} now belongs to another job; this one leaves it alone")
    fp_file = work / ".fingerprint"
    if work.is_dir() and (not fp_file.is_file() or fp_file.read_text().strip() != node.fingerprint):
        if is_rank0():
            shutil.rmtree(work)
    if is_rank0():
        work.mkdir(parents=True, exist_ok=True)
        fp_file.write_text(node.fingerprint + "\n")
        error_file(out, node).unlink(missing_ok=True)
    t0 = time.time()
    with _log_published_name(work, final):
        summary = RUNNERS[node.kind](spec, node, work, out, by_name)
    seconds = time.time() - t0
    if not is_rank0():
        return summary
    record = {"fingerprint": node.fingerprint, "name": node.name, "kind": node.kind, "encoder": node.encoder,
              "seconds": round(seconds, 2), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "settings": node.settings, "deps": {d: by_name[d].fingerprint for d in node.deps},
              "summary": summary}
    if not owns(out, node, token):  # given to another job while this one ran: that job publishes it
        raise Superseded(f"{node.name} was given to another job while this one ran; not published")
    _published_paths(work, final)
    write_json_atomic(work / DONE_JSON, record)
    if final.exists():
        shutil.rmtree(final)
    os.replace(work, final)
    return record


def run_job(out: str, node_names: list[str], token: str | None = None) -> str:
    """Entry point of one cluster job: run ``node_names`` of the study in ``out`` in order (reads
    ``out/study.yaml``); a failure is recorded and the rest of the chain is marked blocked. ``token`` is
    the owner the controller recorded for these nodes before submitting (``<key>.job.json``): a job whose
    nodes were given to a newer job stops without writing them.

    With several tasks per job (DDP training), the scheduler's rank variables are mapped to the
    ``torchrun`` ones (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) first.
    """
    import submitit

    try:
        ntasks = submitit.JobEnvironment().num_tasks
    except RuntimeError:  # not inside a submitit job
        ntasks = 1
    if ntasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    logger = logging.getLogger("spatialprobe")
    if not logger.handlers:  # the job's log (submitit/<job>_<task>_log.err) shows the stages' progress
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    outp = Path(out)
    spec = load_resolved(outp)
    nodes = build_plan(spec)
    by_name = {n.name: n for n in nodes}
    for i, name in enumerate(node_names):
        node = by_name[name]
        if i and node.kind != "train":  # DDP is for training; the rest of the chain runs on rank 0
            if not is_rank0():
                return "done"
        try:
            run_node(spec, node, outp, by_name, token)
        except Superseded as exc:
            log.warning("%s", exc)
            return f"superseded: {exc}"
        except Exception as exc:  # noqa: BLE001 - recorded for the controller and the status table
            if is_rank0() and owns(outp, node, token):
                record_failure(outp, node, exc)
                for rest in node_names[i + 1:]:
                    record_failure(outp, by_name[rest], f"blocked: input {name} is not done", blocked=True)
            return f"failed: {exc}"
    return "done"
