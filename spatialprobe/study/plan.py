"""The plan: the spec expanded to nodes, each keyed by a fingerprint of its own settings and its inputs'.

Nodes (``kind/key``):

- ``extract/<enc>`` → ``metrics/<enc>``, ``probe/<enc>``, ``inject/<enc>`` (properties of each encoder);
- ``train/<enc>.<method>.s<seed>`` → ``sample/…`` → ``fid/…`` (and ``train/none.none.s<seed>`` for the
  no-alignment baseline);
- ``table/results`` (every property and quality node) → ``correlate/<y>``.

A node's fingerprint covers its settings and its inputs' fingerprints, so a changed setting reruns the
node and everything downstream of it. Where a node's output lives and whether it is done: ``state.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .spec import PATH_KEYS, EncoderEntry, StudySpec, canonical_id, repa_differences

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




def content_digest(path: str | Path) -> str | None:
    """sha256 of a file's bytes, or of a folder's files (relative path + bytes, sorted); None when missing.

    The bytes are read once: digests are kept in the content-hash cache by (path, inode, size, mtime), so a
    rerun costs one ``stat`` per file."""
    from ..data.sources import content_hash_cache

    p = Path(path)
    if p.is_file():
        return content_hash_cache().digests([p], progress=False)[0]
    if not p.is_dir():
        return None
    files = sorted(f for f in p.rglob("*") if f.is_file() and not any(q.startswith(".") for q in
                                                                       f.relative_to(p).parts))
    h = hashlib.sha256()
    for f, d in zip(files, content_hash_cache().digests(files)):
        h.update(f"{f.relative_to(p).as_posix()}\0{d}\0".encode())
    return h.hexdigest()


def source_fingerprint(images: str, resolution: int = 256, limit: int | None = None) -> str:
    """The fingerprint of an image source (ids, labels and every image file's bytes; ``data.sources``), as
    ``extract`` records it in its store; an unreadable source gives its error (its node then fails with it).
    Files are re-read only when their (inode, size, mtime, ctime) changed: see ``content_digest``."""
    from ..data import open_source
    from ..errors import SpatialProbeError

    try:
        src = open_source(images, resolution=resolution)
        if limit is not None:
            src = src.subset(limit)
        return src.fingerprint()
    except (SpatialProbeError, OSError) as exc:
        return f"unreadable: {exc}"


def options_content(opts: dict[str, Any] | None) -> dict[str, str]:
    """Digest of each input file or folder an option mapping names (masks, labels, references, ...)."""
    out = {}
    for k, v in (opts or {}).items():
        if k in PATH_KEYS and isinstance(v, str) and not v.startswith("builtin") and Path(v).exists():
            out[k] = content_digest(v) or "missing"
    return out


def _weights_identity(e: EncoderEntry, cid: str, weights_dir: str | None) -> dict[str, Any]:
    """What identifies the weights: the checkpoint's path and the sha256 of its bytes (a checkpoint
    replaced in place, even with the same size and time, changes the fingerprint)."""
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
    return {"path": str(Path(loc.path).resolve()), "sha256": content_digest(loc.path)}


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
    images_fp = source_fingerprint(p.images, p.resolution, p.limit)
    for e in spec.encoders:
        cid = canonical_id(e.id)
        k = slug(cid)
        enc_rows.append((e, cid, k))
        ident = {"encoder": cid, "define": e.define, "weights": _weights_identity(e, cid, spec.weights_dir)}
        ex = Node("extract", k, {**ident, "images": p.images, "limit": p.limit, "resolution": p.resolution,
                                 "dtype": p.dtype, "images_content": images_fp}, encoder=cid)
        nodes.append(ex)
        for kind, opts in (("metrics", p.metrics), ("probe", p.probe), ("inject", p.inject)):
            if opts is not None:
                extra = {"content": c} if (c := options_content(opts)) else {}
                nodes.append(Node(kind, k, {"options": opts, **extra}, deps=[ex.name], encoder=cid))
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
        train_fp = source_fingerprint(t.images)
        train_content = options_content(t.options)
        sample_content, fid_content = options_content(t.sample), options_content(t.fid)
        for e, cid, m, s in runs:
            k = f"{slug(cid) if cid else 'none'}.{m}.s{s}"
            teacher = None if e is None else {"encoder": cid, "define": e.define,
                                              "weights": _weights_identity(e, cid, spec.weights_dir)}
            tr = Node("train", k, {"model": t.model, "method": m, "teacher": teacher, "steps": t.steps,
                                   "batch_size": t.batch_size, "seed": s, "images": t.images,
                                   "options": t.options, "images_content": train_fp,
                                   **({"content": train_content} if train_content else {})}, encoder=cid)
            sa = Node("sample", k, {"options": t.sample, **({"content": sample_content} if sample_content else {})},
                      deps=[tr.name], encoder=cid)
            fi = Node("fid", k, {"options": t.fid, **({"content": fid_content} if fid_content else {})},
                      deps=[sa.name], encoder=cid)
            nodes += [tr, sa, fi]
            quality_deps.append(fi.name)
    known = None
    if spec.known_gfid is not None:
        known = {"known_gfid": spec.known_gfid, "col": spec.known_gfid_col}
        if Path(spec.known_gfid).is_file():
            known["sha256"] = content_digest(spec.known_gfid)
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
    """The y columns: per method ``<q>_<method>``, plus ``<q>_repa_minus_<m>`` for iREPA and PixelREPA when
    each is trained together with REPA."""
    if spec.correlate.y is not None:
        return list(spec.correlate.y)
    if spec.training is None:
        return [spec.known_gfid_col] if spec.known_gfid else []
    q = spec.quality_col
    ys = [f"{q}_{m}" for m in spec.training.methods]
    ys += [f"{q}_repa_minus_{m}" for m in repa_differences(spec.training.methods)]
    return ys
