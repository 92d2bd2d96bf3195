"""Offline-first weights: find a checkpoint on disk, checksum it, load it strictly. Nothing is downloaded.

Search order for each accepted file name of an encoder (``encoders.yaml`` ``weights.files`` plus the
generic ``<id>.safetensors`` / ``<id>.pth``):

1. ``weights_dir`` (the ``--weights-dir`` option), flat or under ``<weights_dir>/<id>/``;
2. ``$SPATIALPROBE_WEIGHTS``, same layout;
3. the Hugging Face hub cache (``$HF_HUB_CACHE`` / ``$HF_HOME/hub`` / ``~/.cache/huggingface/hub``) for the
   yaml's ``hf_repos`` and, for timm models, timm's own hub repo (``model.safetensors``);
4. the torch hub cache (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/hub/checkpoints``);
5. the folders where a layout's own tools cache it (``openai-clip``: ``~/.cache/clip``).

A name ending in '/' is a transformers folder (it must hold ``config.json``); any other name is a file.
"""

from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SpatialProbeError, WeightsMismatchError, WeightsNotFoundError
from ..io import sha256  # noqa: F401 - re-exported (cached by the one hash cache under $SPATIALPROBE_CACHE)
from . import backends
from .layouts import LAYOUTS, folder_layout, open_checkpoint, read_file
from .loading import assert_complete, record_loads  # noqa: F401 - part of this module's public API
from .spec import EncoderSpec

log = logging.getLogger(__name__)


@dataclass
class WeightsLocation:
    """Where an encoder's checkpoint was (or would be) found."""

    id: str
    path: Path | None  #: found file or folder, None if missing
    expected: list[str]  #: every place that was searched
    source: str

    @property
    def present(self) -> bool:
        return self.path is not None


def _hf_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def _torch_hub_checkpoints() -> Path:
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "torch")
    return Path(home) / "hub" / "checkpoints"


def _timm_hub_repo(spec: EncoderSpec) -> str | None:
    if not backends.timm_model(spec.backend) or "." not in spec.model:
        return None
    try:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(spec.model)
    except Exception:  # unknown tag: nothing to add
        return None
    if cfg is None or not cfg.hf_hub_id:
        return None
    return f"{cfg.hf_hub_id}:{cfg.hf_hub_filename or 'model.safetensors'}"


def _candidates(spec: EncoderSpec, weights_dir: str | os.PathLike | None = None) -> list[tuple[Path, bool]]:
    """(path, is_folder) for every place searched, in priority order (HF snapshot paths contain '*')."""
    names = list(spec.weights.files) + ([f"{spec.id}/"] if backends.folder_checkpoint(spec.backend)
                                        else [f"{spec.id}.safetensors", f"{spec.id}.pth"])
    out: list[tuple[Path, bool]] = []
    for root in (weights_dir, os.environ.get("SPATIALPROBE_WEIGHTS")):
        if root:
            for n in names:
                folder = n.endswith("/")
                out.append((Path(root) / n, folder))
                if not n.startswith(spec.id):
                    out.append((Path(root) / spec.id / n, folder))
    repos = list(spec.weights.hf_repos)
    timm_repo = _timm_hub_repo(spec)
    if timm_repo:
        repos.append(timm_repo)
    for r in repos:
        repo, _, fname = r.partition(":")
        snap = _hf_cache() / f"models--{repo.replace('/', '--')}" / "snapshots" / "*"
        out.append((snap / fname if fname else snap, not fname))
    files = [n for n in spec.weights.files if not n.endswith("/")]
    for n in files:
        out.append((_torch_hub_checkpoints() / n, False))
    for fmt in spec.weights.format:  # where the publisher's own tools cache the file (e.g. ~/.cache/clip)
        for d in LAYOUTS[fmt].cache_dirs:
            for n in files:
                out.append((Path(os.path.expanduser(d)) / n, False))
    return out


def candidate_paths(spec: EncoderSpec, weights_dir: str | os.PathLike | None = None) -> list[Path]:
    """Every path searched for ``spec``'s checkpoint, in priority order (folders end with '/')."""
    return [Path(str(p) + "/") if folder else p for p, folder in _candidates(spec, weights_dir)]


def _fmt(p: Path, folder: bool) -> str:
    return str(p) + ("/" if folder else "")


def locate(spec: EncoderSpec, weights_dir: str | os.PathLike | None = None) -> WeightsLocation:
    """Find ``spec``'s checkpoint (a file, or a transformers folder with config.json) without loading it."""
    cands = _candidates(spec, weights_dir)
    expected = [_fmt(p, f) for p, f in cands]
    for c, folder in cands:
        if "*" in str(c):
            parts = c.parts
            star = parts.index("*")
            base, rest = Path(*parts[:star]), parts[star + 1:]
            matches = [Path(m, *rest) for m in sorted(base.glob("*"))]
        else:
            matches = [c]
        for m in matches:
            if folder and m.is_dir() and (m / "config.json").is_file():
                return WeightsLocation(spec.id, m, expected, spec.weights.source)
            if not folder and m.is_file():
                return WeightsLocation(spec.id, m, expected, spec.weights.source)
    return WeightsLocation(spec.id, None, expected, spec.weights.source)


def require(spec: EncoderSpec, weights_dir: str | os.PathLike | None = None) -> Path:
    """The checkpoint path, or :class:`WeightsNotFoundError` naming the expected files and their source."""
    loc = locate(spec, weights_dir)
    if loc.path is not None:
        return loc.path
    files = ", ".join(spec.weights.files) or f"{spec.id}.safetensors"
    gated = " (gated: accept the licence first)" if spec.weights.gated else ""
    where = "\n  ".join(loc.expected[:8]) + ("\n  ..." if len(loc.expected) > 8 else "")
    raise WeightsNotFoundError(
        f"no weights for encoder {spec.id!r}: expected {files} in --weights-dir or $SPATIALPROBE_WEIGHTS "
        f"(flat or under {spec.id}/), or in the Hugging Face / torch hub caches. Get them from "
        f"{spec.weights.source}{gated}; nothing is downloaded at run time. Use pretrained=False "
        f"(--random-init) for a random-init model. Searched:\n  {where}")


def check_sha(spec: EncoderSpec, path: Path, digest: str) -> None:
    """Fail if the yaml pins a (prefix of a) sha256 and the file does not match it."""
    want = spec.weights.sha256
    if want and not digest.startswith(str(want).lower()):
        raise WeightsMismatchError(f"{path}: sha256 {digest[:12]}... does not match {want} for encoder "
                                   f"{spec.id!r}; the file is corrupt or a different checkpoint. "
                                   f"Re-fetch it from {spec.weights.source}.")


def read_checkpoint(path: str | os.PathLike, *, meta: bool = False) -> dict[str, Any]:
    """A raw checkpoint (.safetensors, ``torch.load(weights_only=True)``, or TorchScript) on CPU (or meta).

    See :func:`spatialprobe.encoders.layouts.read_file`; nothing is ever unpickled beyond tensors (and
    ``argparse.Namespace`` for RADIO hub files).
    """
    return read_file(path, meta=meta)[0]


def unwrap(ckpt: dict[str, Any]) -> dict[str, Any]:
    """Take the state dict out of the usual wrappers ('state_dict', 'model', 'encoder', ...)."""
    for k in ("state_dict", "model", "encoder", "module"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(k), dict) and ckpt[k]:
            return unwrap(ckpt[k])
    return ckpt


@dataclass
class FileCheck:
    """What ``spatialprobe weights --check/--verify`` found for one encoder's file."""

    id: str
    path: Path
    ok: bool
    layout: str | None = None
    problem: str = ""
    sha256: str | None = None
    sha_status: str = ""  #: "" (not verified) | "ok" | "mismatch" | "not pinned"


def check_file(spec: EncoderSpec, path: str | os.PathLike) -> FileCheck:
    """Open ``path`` for ``spec`` without reading its values: recognise the layout, convert it and run the
    strict key/shape check of the real load against the architecture built on the meta device."""
    import torch

    path = Path(path)
    layout = None
    try:
        layout = folder_layout(path) if path.is_dir() else open_checkpoint(
            path, spec.weights.format, eid=spec.id, meta=True).layout
        build, _ = backends.load(spec.backend)
        if build is None:
            raise WeightsMismatchError(f"encoder {spec.id!r} is weight-free ({spec.backend}); "
                                       "it has no checkpoint.")
        if "meta" not in inspect.signature(build).parameters:  # a backend added with register_backend
            return FileCheck(spec.id, path, True, layout, "layout recognised; backend "
                             f"{spec.backend!r} has no meta-device check, so keys were not compared")
        with torch.device("meta"):
            build(spec, path=path, overrides={}, meta=True)
    except SpatialProbeError as exc:
        return FileCheck(spec.id, path, False, layout, str(exc))
    except Exception as exc:  # noqa: BLE001 - any failure is a problem with this file, reported, not raised
        return FileCheck(spec.id, path, False, layout, f"{type(exc).__name__}: {exc}")
    assert layout in LAYOUTS
    return FileCheck(spec.id, path, True, layout)


def verify_sha(spec: EncoderSpec, path: Path, res: FileCheck | None = None) -> FileCheck:
    """Compare the file's sha256 with the digest pinned in encoders.yaml (full or prefix)."""
    res = res or FileCheck(spec.id, path, True)
    res.sha256 = sha256(path)
    want = spec.weights.sha256
    if not want:
        res.sha_status = "not pinned"
    elif res.sha256.startswith(str(want).lower()):
        res.sha_status = "ok"
    else:
        res.sha_status = "mismatch"
        res.ok = False
        res.problem = (res.problem + "; " if res.problem else "") + (
            f"sha256 {res.sha256[:16]}... does not match the pinned {want}: corrupt or a different file")
    return res


def check_all(specs: list[EncoderSpec], weights_dir: str | os.PathLike | None = None, *, check: bool = True,
              verify: bool = False) -> tuple[list[FileCheck], list[EncoderSpec]]:
    """(results for every file found, specs whose file is missing) for ``weights --check/--verify``."""
    from tqdm import tqdm

    found, missing = [], []
    for s in specs:
        if s.weight_free:
            continue
        loc = locate(s, weights_dir)
        (found if loc.present else missing).append((s, loc.path))
    out = []
    for s, path in tqdm(found, desc="checking weights", unit="file", disable=None if len(found) > 1 else True):
        res = check_file(s, path) if check else FileCheck(s.id, path, True)
        out.append(verify_sha(s, path, res) if verify else res)
    return out, [s for s, _ in missing]
