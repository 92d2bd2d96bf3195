"""The plan: the spec expanded to nodes, each keyed by a fingerprint of its own settings and its inputs'.

Nodes (``kind/key``):

- ``extract/<enc>`` → ``metrics/<enc>``, ``probe/<enc>``, ``inject/<enc>`` (properties of each encoder);
- ``train/<enc>.<method>.s<seed>`` → ``sample/…`` → ``fid/…`` (and ``train/none.none.s<seed>`` for the
  no-alignment baseline);
- ``table/results`` (every property and quality node) → ``correlate/<y>``.

A node's output lives in ``OUT/nodes/<kind>/<key>/`` with ``done.json`` (its fingerprint, timing and the
summary the table reads). A node is *done* when ``done.json`` holds the node's current fingerprint;
anything else (missing, another fingerprint, a partial folder, a recorded failure) makes it run again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import atomic_write_json, read_json  # noqa: F401 - read_json re-exported for the study modules
from ..schema import DONE_JSON
from .spec import EncoderEntry, StudySpec

PLAN_VERSION = 1
KINDS = ("extract", "metrics", "probe", "inject", "train", "sample", "fid", "table", "correlate")
#: kinds a cluster launcher submits as jobs (the rest are quick and run in the controller)
JOB_KINDS = ("extract", "inject", "train", "sample", "fid")


@dataclass
class Node:
    kind: str
    key: str
    settings: dict[str, Any]
    deps: list[str] = field(default_factory=list)
    encoder: str | None = None  #: the encoder (canonical id) this node belongs to, if any
    fingerprint: str = ""

    @property
    def name(self) -> str:
        return f"{self.kind}/{self.key}"


def canonical_id(name: str) -> str:
    """The canonical id of an encoder or variant (aliases resolved; variants in their fixed order)."""
    from .. import encoders as E

    if "@" in name:
        parse = getattr(E, "parse_variant", None)
        if parse is None:
            from ..errors import ConfigError

            raise ConfigError(f"encoder {name!r}: variants (ID@transform=value) need spatialprobe.encoders."
                              "parse_variant, which this installation lacks.")
        return parse(name).id
    try:
        return E.spec(name).id
    except Exception:  # noqa: BLE001 - unknown ids fail later with did-you-mean, in their node
        return name


def slug(name: str) -> str:
    return name.replace("/", "_").replace(os.sep, "_")


def register_defined(spec: StudySpec) -> None:
    """Register the spec's ``define:`` encoders (idempotent within a process)."""
    from .. import encoders as E

    for e in spec.encoders:
        if e.define is not None:
            try:
                E.spec(e.id)
                continue
            except Exception:  # noqa: BLE001 - not registered yet
                pass
            E.add_encoder(e.id, **e.define)


def _weights_identity(e: EncoderEntry, cid: str, weights_dir: str | None) -> dict[str, Any]:
    """What identifies the weights cheaply (path, size, mtime): a new checkpoint changes the fingerprint."""
    if e.random_init:
        return {"random_init": True, "seed": e.seed}
    try:
        from .. import encoders as E
        from ..encoders.weights import locate

        s = E.spec(cid.split("@")[0])
        if s.weight_free:
            return {"weight_free": True}
        loc = locate(s, weights_dir)
    except Exception:  # noqa: BLE001 - unknown ids fail in their node with did-you-mean
        return {"unknown": True}
    if loc.path is None:
        return {"missing": True}
    st = loc.path.stat()
    return {"path": str(loc.path), "size": st.st_size, "mtime": int(st.st_mtime)}


def family_of(e: EncoderEntry, cid: str) -> str:
    if e.family:
        return e.family
    if e.define and e.define.get("family"):
        return str(e.define["family"])
    try:
        from .. import encoders as E

        return E.spec(cid.split("@")[0]).family
    except Exception:  # noqa: BLE001
        return "unknown"


def _fp(node: Node, deps: dict[str, Node]) -> str:
    payload = {"v": PLAN_VERSION, "kind": node.kind, "settings": node.settings,
               "inputs": sorted(deps[d].fingerprint for d in node.deps)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_plan(spec: StudySpec) -> list[Node]:
    """Expand ``spec`` into nodes in a valid run order, with fingerprints."""
    register_defined(spec)
    nodes: list[Node] = []
    p = spec.properties
    quality_deps: list[str] = []
    enc_rows = []
    for e in spec.encoders:
        cid = canonical_id(e.id)
        k = slug(cid)
        enc_rows.append((e, cid, k))
        ident = {"encoder": cid, "define": e.define, "weights": _weights_identity(e, cid, spec.weights_dir)}
        ex = Node("extract", k, {**ident, "images": p.images, "limit": p.limit, "resolution": p.resolution,
                                 "dtype": p.dtype}, encoder=cid)
        nodes.append(ex)
        for kind, opts in (("metrics", p.metrics), ("probe", p.probe), ("inject", p.inject)):
            if opts is not None:
                nodes.append(Node(kind, k, {"options": opts}, deps=[ex.name], encoder=cid))
                quality_deps.append(f"{kind}/{k}")
    t = spec.training
    if t is not None:
        runs: list[tuple[EncoderEntry | None, str | None, str, int]] = []
        for e, cid, k in enc_rows:
            for m in t.methods:
                for s in (e.seeds or t.seeds):
                    runs.append((e, cid, m, s))
        if t.baseline:
            for s in (t.baseline_seeds or t.seeds):
                runs.append((None, None, "none", s))
        for e, cid, m, s in runs:
            k = f"{slug(cid) if cid else 'none'}.{m}.s{s}"
            teacher = None if e is None else {"encoder": cid, "define": e.define,
                                              "weights": _weights_identity(e, cid, spec.weights_dir)}
            tr = Node("train", k, {"model": t.model, "method": m, "teacher": teacher, "steps": t.steps,
                                   "batch_size": t.batch_size, "seed": s, "images": t.images,
                                   "options": t.options}, encoder=cid)
            sa = Node("sample", k, {"options": t.sample}, deps=[tr.name], encoder=cid)
            fi = Node("fid", k, {"options": t.fid}, deps=[sa.name], encoder=cid)
            nodes += [tr, sa, fi]
            quality_deps.append(fi.name)
    known = None
    if spec.known_gfid is not None:
        known = {"known_gfid": spec.known_gfid, "col": spec.known_gfid_col}
        if Path(spec.known_gfid).is_file():
            from ..config import sha256_file

            known["sha256"] = sha256_file(spec.known_gfid)
    table = Node("table", "results", {"known": known, "encoders": [
        {"encoder": cid, "family": family_of(e, cid)} for e, cid, _ in enc_rows],
        "quality": spec.quality_col}, deps=list(quality_deps))
    nodes.append(table)
    for y in correlate_targets(spec):
        c = spec.correlate
        nodes.append(Node("correlate", y, {"x": c.x, "y": y, "family_col": c.family_col, "control": c.control,
                                           "n_resamples": c.n_resamples, "confidence": c.confidence,
                                           "seed": c.seed}, deps=[table.name]))
    by = {}
    for n in nodes:
        n.fingerprint = _fp(n, by)
        by[n.name] = n
    return nodes


def correlate_targets(spec: StudySpec) -> list[str]:
    """The y columns: per method ``<q>_<method>``, plus ``<q>_repa_minus_irepa`` when both are trained."""
    if spec.correlate.y is not None:
        return list(spec.correlate.y)
    if spec.training is None:
        return [spec.known_gfid_col] if spec.known_gfid else []
    q = spec.quality_col
    ys = [f"{q}_{m}" for m in spec.training.methods]
    if "repa" in spec.training.methods and "irepa" in spec.training.methods:
        ys.append(f"{q}_repa_minus_irepa")
    return ys


# ------------------------------------------------------------------------------------- node state

def node_dir(out: Path, node: Node) -> Path:
    return Path(out) / "nodes" / node.kind / node.key


def partial_dir(out: Path, node: Node) -> Path:
    return Path(out) / "nodes" / node.kind / f"{node.key}.partial"


def error_file(out: Path, node: Node) -> Path:
    return Path(out) / "nodes" / node.kind / f"{node.key}.error.json"


def node_state(out: Path, node: Node) -> str:
    """done | stale (done with another fingerprint) | partial | failed | blocked | missing."""
    done = read_json(node_dir(out, node) / DONE_JSON)
    if done is not None and done.get("fingerprint") == node.fingerprint:
        return "done"
    err = read_json(error_file(out, node))
    if err is not None and err.get("fingerprint") == node.fingerprint:
        return "blocked" if err.get("blocked") else "failed"
    if partial_dir(out, node).is_dir():
        return "partial"
    if done is not None:
        return "stale"
    return "missing"


def plan_record(spec: StudySpec, nodes: list[Node], out: Path | None = None) -> dict[str, Any]:
    rec = {"name": spec.name, "version": PLAN_VERSION, "nodes": []}
    for n in nodes:
        d = dataclasses.asdict(n)
        d["name"] = n.name
        if out is not None:
            d["state"] = node_state(out, n)
            d["output"] = str(node_dir(out, n))
        rec["nodes"].append(d)
    return rec


def write_json_atomic(path: Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, obj, indent=2, default=str)
