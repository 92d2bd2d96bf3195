"""Disk budget of training runs and studies, before anything is written.

A checkpoint holds the model, its EMA copies and AdamW's two moment buffers, all fp32, so its size follows
from the model config alone (the model is built on the ``meta`` device: no memory, no weights). A run keeps
at most ``keep_last`` + 1 (while the next one is being written) + its milestone checkpoints at once.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from ..errors import OutputError
from .checkpoint import DEFAULT_KEEP_LAST, default_ckpt_every
from .ema import training_only

#: bytes of the non-tensor part of a checkpoint (config, model args, pickle and zip headers); a round guess
CHECKPOINT_OVERHEAD = 1 << 20


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} PB"


def _meta_model(model: str, **model_args: Any) -> torch.nn.Module:
    """The named model built on the ``meta`` device (shapes and dtypes, no memory)."""
    from .models import build

    with torch.device("meta"):
        return build(model, **model_args)


def _state_bytes(m: torch.nn.Module) -> tuple[int, int, int]:
    """``(parameter bytes, buffer bytes, training-only bytes)`` of ``m``'s state dict."""
    params = sum(p.numel() * p.element_size() for p in m.parameters())
    state = m.state_dict()
    total = sum(v.numel() * v.element_size() for v in state.values())
    proj = sum(v.numel() * v.element_size() for k, v in state.items() if training_only(k))
    return int(params), int(total - params), int(proj)


def model_state_bytes(model: str, **model_args: Any) -> tuple[int, int]:
    """``(parameter bytes, buffer bytes)`` of a model's state dict, from its config (built on ``meta``)."""
    return _state_bytes(_meta_model(model, **model_args))[:2]


def default_model_args(model: str, *, num_classes: int = 1000, teacher_dims: Iterable[int] = (768,),
                       resolution: int | None = None) -> dict[str, Any]:
    """The model args of a typical run (ImageNet classes, one 768-d teacher, SD-VAE latents for SiT)."""
    from .config import MODEL_DEFAULTS
    from .models import canonical, family

    key = canonical(model)
    fam = family(key)
    res = resolution or {**MODEL_DEFAULTS[fam], **MODEL_DEFAULTS.get(key, {})}["resolution"]
    args: dict[str, Any] = dict(num_classes=num_classes, z_dims=[int(d) for d in teacher_dims])
    if fam == "sit":
        args.update(input_size=res // 8, in_channels=4)  # the SD-VAE (and the tiny test VAE) downsample by 8
    else:
        args.update(input_size=res)
    return args


def adapter_bytes(model: str, *, out_dim: int, depth: int, **model_args: Any) -> int:
    """Bytes of PixelREPA's Masked Transformer Adapter for ``model`` aligned to ``out_dim``-wide teacher tokens
    (built on the meta device, as :func:`spatialprobe.train.pixelrepa.attach` builds it)."""
    from .pixelrepa import build_adapter

    net = _meta_model(model, **model_args)
    with torch.device("meta"):
        a = build_adapter(net, out_dim, depth=depth, num_classes=net.cfg.num_classes)
    return int(sum(v.numel() * v.element_size() for v in a.state_dict().values()))


def checkpoint_bytes(model: str, *, n_emas: int = 1, extra_bytes: int = 0, **model_args: Any) -> int:
    """Bytes of one training checkpoint: model + ``n_emas`` EMA copies (parameters and buffers, without the
    projectors) + AdamW's ``exp_avg`` and ``exp_avg_sq`` (one parameter-sized buffer each) + a small overhead.
    ``extra_bytes``: trained parameters outside the model (PixelREPA's adapter, :func:`adapter_bytes`), saved
    with their two AdamW buffers and in no EMA."""
    params, buffers, proj = _state_bytes(_meta_model(model, **model_args))  # one meta build
    ema = params + buffers - proj
    return params + buffers + n_emas * ema + 2 * params + 3 * extra_bytes + CHECKPOINT_OVERHEAD


def checkpoints_on_disk(steps: int, every: int, keep_last: int = DEFAULT_KEEP_LAST,
                        keep_steps: Iterable[int] = (), start: int = 0) -> int:
    """The most checkpoints a run of ``steps`` steps (from ``start``) has on disk at once: all of them
    without retention (``keep_last`` 0), else the newest ``keep_last``, the one being written and the
    milestones."""
    written = set(range(((start // every) + 1) * every, steps + 1, every)) | {steps}
    milestones = {s for s in keep_steps if 0 < s <= steps}
    written |= {s for s in milestones if s > start}
    if keep_last <= 0:
        return len(written)
    return min(len(written | milestones), keep_last + 1 + len(milestones))


@dataclass
class DiskEstimate:
    """Expected disk use, item by item: ``(what, count, bytes each)``."""

    items: list[tuple[str, int, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, what: str, count: int, each: int) -> "DiskEstimate":
        if count and each:
            self.items.append((what, int(count), int(each)))
        return self

    @property
    def total(self) -> int:
        return sum(c * b for _, c, b in self.items)

    def format(self) -> str:
        parts = [f"{what} {c} x {format_bytes(b)}" for what, c, b in self.items]
        text = f"disk estimate: {format_bytes(self.total)}" + (f" ({'; '.join(parts)})" if parts else "")
        return text + "".join(f"; {n}" for n in self.notes)


def run_disk_estimate(model: str, *, steps: int, ckpt_every: int | None = None, keep_last: int = DEFAULT_KEEP_LAST,
                      keep_steps: Iterable[int] = (), n_emas: int = 1, model_args: dict[str, Any] | None = None,
                      start: int = 0, latent_bytes: int = 0, extra_bytes: int = 0) -> DiskEstimate:
    """Disk one training run needs at its peak: its checkpoints (and a latent cache it will write);
    ``extra_bytes`` as in :func:`checkpoint_bytes`."""
    every = ckpt_every or default_ckpt_every(steps)
    args = model_args if model_args is not None else default_model_args(model)
    est = DiskEstimate()
    est.add("checkpoints", checkpoints_on_disk(steps, every, keep_last, keep_steps, start),
            checkpoint_bytes(model, n_emas=n_emas, extra_bytes=extra_bytes, **args))
    est.add("latent cache", 1, latent_bytes)
    return est


def check_disk(out: str | Path, need: int, estimate: DiskEstimate) -> None:
    """Raise :class:`~spatialprobe.errors.OutputError`, naming the fixes, when the filesystem of ``out`` has
    less than ``need`` bytes free."""
    try:
        free = shutil.disk_usage(out).free
    except OSError:
        return
    if need > free:
        raise OutputError(
            f"--out {str(out)!r}: this run needs about {format_bytes(need)} more on disk ({estimate.format()}) but "
            f"the filesystem has {format_bytes(free)} free. Keep fewer checkpoints (--keep-last 1, fewer "
            "--keep-steps), checkpoint less often (--ckpt-every N), or choose another --out on a larger disk.")


def study_disk_estimate(*, runs: int, model: str | None, steps: int = 0, ckpt_every: int | None = None,
                        keep_last: int = DEFAULT_KEEP_LAST, keep_steps: Iterable[int] = (), n_emas: int | None = None,
                        samples_per_run: int = 0, sample_side: int | None = None, stores: int = 0,
                        store_images: int | None = None, store_tokens: int = 257, store_dim: int = 1024,
                        store_dtype_bytes: int = 2, teacher_dim: int = 768) -> DiskEstimate:
    """Disk a study needs, from plain numbers: ``runs`` training runs of ``model`` (checkpoints at their
    peak, see :func:`checkpoints_on_disk`), ``samples_per_run`` uint8 samples each (samples.npz), and
    ``stores`` feature stores of ``store_images`` images x ``store_tokens`` x ``store_dim`` values."""
    from .config import MODEL_DEFAULTS
    from .models import canonical, family

    est = DiskEstimate()
    if runs and model:
        key = canonical(model)
        d = {**MODEL_DEFAULTS[family(key)], **MODEL_DEFAULTS.get(key, {})}
        emas = n_emas if n_emas is not None else len(d.get("ema_decays") or MODEL_DEFAULTS[family(key)]["ema_decays"])
        every = ckpt_every or default_ckpt_every(steps)
        per_run = checkpoints_on_disk(steps, every, keep_last, keep_steps)
        est.add("checkpoints", runs * per_run,
                checkpoint_bytes(key, n_emas=emas, **default_model_args(key, teacher_dims=(teacher_dim,))))
        side = sample_side or d["resolution"]
        est.add("samples", runs, samples_per_run * side * side * 3)
        est.notes.append(f"{runs} runs x {per_run} checkpoints at the peak (every {every} steps, keep "
                         f"{'all' if keep_last <= 0 else keep_last})")
    if stores:
        if store_images:
            est.add("feature stores", stores, store_images * store_tokens * store_dim * store_dtype_bytes)
        else:
            est.notes.append("feature stores not estimated (set properties.limit)")
    return est


def latent_cache_bytes(n_images: int, channels: int, side: int) -> int:
    """Bytes of a latent cache: fp32 posterior mean and std per image."""
    return int(n_images) * 2 * int(channels) * int(side) ** 2 * 4


__all__ = ["DiskEstimate", "adapter_bytes", "check_disk", "checkpoint_bytes", "checkpoints_on_disk", "default_model_args",
           "format_bytes", "latent_cache_bytes", "model_state_bytes", "run_disk_estimate", "study_disk_estimate"]
