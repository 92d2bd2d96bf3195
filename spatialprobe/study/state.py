"""Where a study keeps its state on disk: node folders, done markers, recorded failures, the plan record
and the resolved spec (``OUT/study.yaml``) a cluster job reads back.

A node's output lives in ``OUT/nodes/<kind>/<key>/`` with ``done.json`` (its fingerprint, timing and the
summary the table reads); it is built in ``OUT/nodes/<kind>/<key>.partial/``; a failure is recorded in
``OUT/nodes/<kind>/<key>.error.json``; the cluster job that owns a node in ``OUT/nodes/<kind>/<key>.job.json``
(its token, written before submission, and its job id, written the moment it is submitted). A node is *done* when ``done.json`` holds the node's current
fingerprint; anything else (missing, another fingerprint, a partial folder, a recorded failure) makes it
run again.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from pathlib import Path
from typing import Any

from ..errors import InputFileError
from ..io import atomic_write_bytes, atomic_write_json, read_json  # noqa: F401 - read_json re-exported
from ..schema import DONE_JSON, STUDY_YAML
from .plan import PLAN_VERSION, Node
from .spec import StudySpec, parse_spec


# ------------------------------------------------------------------------------------ node folders

def node_dir(out: Path, node: Node) -> Path:
    return Path(out) / "nodes" / node.kind / node.key


def partial_dir(out: Path, node: Node) -> Path:
    return Path(out) / "nodes" / node.kind / f"{node.key}.partial"


def error_file(out: Path, node: Node) -> Path:
    return Path(out) / "nodes" / node.kind / f"{node.key}.error.json"


def job_file(out: Path, node: Node) -> Path:
    return Path(out) / "nodes" / node.kind / f"{node.key}.job.json"


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
            d["job"] = (read_job(out, n) or {}).get("job_id")
        rec["nodes"].append(d)
    return rec


def write_json_atomic(path: Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, obj, indent=2, default=str)


def record_failure(out: Path, node: Node, exc: BaseException | str, *, blocked: bool = False) -> str:
    msg = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    rec = {"fingerprint": node.fingerprint, "name": node.name, "error": msg, "blocked": blocked,
           "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if not isinstance(exc, str):
        rec["traceback"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    write_json_atomic(error_file(out, node), rec)
    return msg


# ------------------------------------------------------------------------------------ job records

def claim_node(out: Path, node: Node, token: str, cluster: str) -> None:
    """Make ``token`` the node's owner, before its job is submitted: an older job of the node then finds
    another owner and neither runs nor publishes it."""
    write_json_atomic(job_file(out, node), {"fingerprint": node.fingerprint, "token": token, "job_id": None,
                                            "cluster": cluster, "submitted": None})


def record_job(out: Path, node: Node, token: str, job_id: str, cluster: str) -> None:
    write_json_atomic(job_file(out, node), {"fingerprint": node.fingerprint, "token": token, "job_id": str(job_id),
                                            "cluster": cluster,
                                            "submitted": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


def read_job(out: Path, node: Node) -> dict[str, Any] | None:
    """The node's job record, when it is for the node's current fingerprint."""
    rec = read_json(job_file(out, node))
    return rec if rec is not None and rec.get("fingerprint") == node.fingerprint else None


def owns(out: Path, node: Node, token: str | None) -> bool:
    """True when ``token`` still owns the node (always, for a run outside a cluster job: token None)."""
    if token is None:
        return True
    rec = read_job(out, node)
    return rec is not None and rec.get("token") == token


def done_summary(out: Path, node: Node) -> dict[str, Any] | None:
    d = read_json(node_dir(out, node) / DONE_JSON)
    return d.get("summary") if d and d.get("fingerprint") == node.fingerprint else None


# ------------------------------------------------------------------------------- the resolved spec

def load_resolved(out: Path) -> StudySpec:
    """The resolved spec a study folder was run with (``OUT/study.yaml``)."""
    import yaml

    p = Path(out) / STUDY_YAML
    if not p.is_file():
        raise InputFileError(f"{str(out)!r} is not a study folder (no study.yaml); run `spatialprobe study run "
                             "SPEC --out DIR` first.")
    return parse_spec(yaml.safe_load(p.read_text(encoding="utf-8")))


def write_resolved(spec: StudySpec, out: Path) -> None:
    import yaml

    d = spec.to_dict()
    d.pop("smoke", None)
    text = "# resolved study spec (defaults filled in); `spatialprobe study run` reads it back\n" + \
        yaml.safe_dump(d, sort_keys=False)
    atomic_write_bytes(out / STUDY_YAML, text.encode("utf-8"))
