"""One readable training loop for SiT (latent) and JiT (pixel) with REPA/iREPA alignment.

AdamW with a constant learning rate (optional linear warm-up), gradient clipping, EMA(s), bf16 autocast on
CUDA, DDP under ``torchrun``, optional torch.compile, checkpoints (cadence and retention in
:mod:`.checkpoint`, the disk budget in :mod:`.budget`) and ``--resume``. Every random draw of a step comes
from a generator seeded by (seed, step, rank) and the data order is a pure function of (seed, step), so a run
that is killed and resumed ends with exactly the weights of an uninterrupted run.

:func:`train` reads top to bottom as setup (processes, data, teachers, latents, disk budget, model, resume,
records), data (one batch of positions per step), step (:func:`_forward_backward`, :func:`_update`) and
checkpoint (:class:`~.checkpoint.CheckpointPolicy`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from .. import runtime
from ..config import comma_list
from ..errors import ConfigError, DataError, InputFileError
from ..runtime import resolve_device  # (train.loop.resolve_device stays importable)
from ..schema import CONFIG_JSON
from . import pixelrepa, presets, repa
from .checkpoint import (CHECKPOINT_KEYS, CheckpointPolicy, checkpoint_files, latest_checkpoint,  # noqa: F401
                         newest_intact_checkpoint, read_checkpoint)
from .checkpoint import default_ckpt_every
from .ema import DenoiserEMA, with_projectors
from .config import TrainConfig, check_resume, finalize, steps_for_epochs
from .models import build as build_model
from .models import canonical
from .models import family as model_family
from .models import module_for
from .recipes import recipe_record, resolve_train
from .resolution import teacher_overrides, teacher_record

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished (or resumed-and-finished) run left behind."""

    out: Path
    step: int
    loss: float | None
    log_path: Path
    checkpoint: Path | None
    config: dict[str, Any]
    rank: int = 0  #: this process's rank under torchrun (only rank 0 writes files and prints)
    world_size: int = 1


# ---------------------------------------------------------------- helpers


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The generator of one step on one rank (noise, t, label dropout, flips, posterior samples)."""
    g = torch.Generator(device=device)
    g.manual_seed(((seed * 1_000_003 + step) * 4096 + rank) % (2 ** 63))
    return g


def dropout_seed(g: torch.Generator) -> int:
    """Seed of the global RNG (dropout) for the step of generator ``g``: a pure function of (seed, step, rank)
    whose stream differs from ``g``'s."""
    return (g.initial_seed() * 6364136223846793005 + 1442695040888963407) % (2 ** 63)


class EpochPermutations:
    """The data order of a run: epoch ``e`` is ``randperm(n)`` drawn with seed ``seed * 100003 + e``.

    A pure function of (seed, epoch), so resume needs no sampler state; each permutation is drawn once and
    cached (the current and the next epoch), so a step costs O(batch), not O(n)."""

    def __init__(self, n: int, seed: int, keep: int = 2):
        self.n, self.seed, self.keep = int(n), int(seed), int(keep)
        self._cache: dict[int, torch.Tensor] = {}

    def __call__(self, epoch: int) -> torch.Tensor:
        perm = self._cache.get(epoch)
        if perm is None:
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            self._cache[epoch] = perm
            while len(self._cache) > self.keep:
                del self._cache[min(self._cache)]
        return perm


def batch_positions(step: int, global_batch: int, n: int, seed: int, rank: int = 0, world: int = 1,
                    perms: EpochPermutations | None = None) -> list[int]:
    """Dataset positions of ``rank``'s share of the global batch at ``step``: consecutive slices of a stream of
    per-epoch permutations (epoch e shuffled with seed (seed, e)); stateless, so resume needs no sampler state.
    Pass ``perms`` (an :class:`EpochPermutations` of the same n and seed) to reuse its drawn permutations."""
    if perms is None:
        perms = EpochPermutations(n, seed)
    per = global_batch // world
    pos = step * global_batch + rank * per
    stop = pos + per
    out: list[int] = []
    while pos < stop:
        e, j = divmod(pos, n)
        take = min(stop - pos, n - j)
        out.extend(perms(e)[j:j + take].tolist())
        pos += take
    return out


def _num_classes(source) -> int:
    names = getattr(source, "label_names", None)
    labels = getattr(source, "labels", None)
    if names:
        return len(names)
    if labels:
        return int(max(labels)) + 1
    return 1


class _Items(torch.utils.data.Dataset):
    """Dataset positions -> uint8 image (teacher/model resolution), label, latent moments."""

    def __init__(self, source, indices: list[int], image_res: int | None, latents=None):
        self.source, self.indices, self.image_res, self.latents = source, indices, image_res, latents
        self.labels = getattr(source, "labels", None)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        from .vae import resize_uint8

        i = self.indices[k]
        item = {"label": torch.tensor(int(self.labels[i]) if self.labels else 0)}
        if self.image_res is not None:
            img = self.source.load(i)
            if img.dtype != torch.uint8 or img.dim() != 3 or img.shape[0] != 3:
                raise DataError(f"Image source returned {tuple(img.shape)} {img.dtype} for item {i}; "
                                "expected uint8 [3, R, R].")
            item["image"] = resize_uint8(img, self.image_res)
        if self.latents is not None:
            item["mean"], item["std"] = self.latents.moments(k)
        return item


class _StepBatches(torch.utils.data.Sampler):
    def __init__(self, start: int, stop: int, global_batch: int, n: int, seed: int, rank: int, world: int):
        self.args = (start, stop, global_batch, n, seed, rank, world)

    def __iter__(self):
        start, stop, gb, n, seed, rank, world = self.args
        perms = EpochPermutations(n, seed)
        for s in range(start, stop):
            yield batch_positions(s, gb, n, seed, rank, world, perms)

    def __len__(self) -> int:
        return max(0, self.args[1] - self.args[0])


def step_losses(net: nn.Module, family: str, x: torch.Tensor, y: torch.Tensor, *, teachers: Sequence,
                teacher_images: torch.Tensor | None, grid: tuple[int, int], spnorm: bool, gamma: float,
                proj_coeff: float, generator: torch.Generator, null_class: int, label_dropout: float,
                autocast_dtype: torch.dtype | None = None, method: str = "",
                noise_scale: float | None = None) -> dict[str, torch.Tensor]:
    """Losses of one step: ``denoise``, ``proj`` (None without teachers) and ``loss`` = denoise + coeff·proj.

    Teacher targets are computed first, under no_grad; the denoising objective draws its noise from
    ``generator``. ``method="pixelrepa"``: ``net`` is a :class:`~.pixelrepa.PixelREPANet` that draws its
    token mask from ``generator`` too, and ``proj`` is its 1 − cos alignment loss. ``noise_scale``: JiT's
    noise std, passed on only when set.
    """
    targets = [repa.teacher_targets(t, teacher_images, grid, spnorm=spnorm, gamma=gamma,
                                    autocast_dtype=autocast_dtype) for t in teachers]
    mod = module_for(family)
    ctx = torch.autocast(x.device.type, dtype=autocast_dtype) if autocast_dtype else _null()
    pix = method == pixelrepa.METHOD
    extra: dict[str, Any] = {"mask_generator": generator} if pix else {}
    if noise_scale is not None:  # JiT's noise std
        extra["noise_scale"] = noise_scale
    with ctx:
        denoise, zs = mod.training_loss(net, x, y, generator, label_dropout, null_class, **extra)
    align_loss = pixelrepa.alignment_loss if pix else repa.projection_loss
    proj = align_loss(zs, targets) if teachers else None
    return {"loss": repa.total_loss(denoise, proj, proj_coeff), "denoise": denoise, "proj": proj}


def _mean_over_ranks(x: torch.Tensor, world: int) -> torch.Tensor:
    """The mean of ``x`` over the torchrun ranks (``x`` itself in a single process); for logging only."""
    if world <= 1:
        return x
    import torch.distributed as dist

    x = x.clone()
    dist.all_reduce(x)
    return x / world


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def load_teachers(names: str, *, weights_dir: str | None, device: torch.device, pretrained: bool,
                  resolution: int | None = None) -> list:
    """Zoo encoders for a comma-separated list of ids, frozen and on ``device``; above 256 px each is built
    at its own input side for a ``resolution``-px image (:func:`spatialprobe.train.resolution.teacher_overrides`)."""
    from .. import encoders

    out = []
    for name in comma_list(names):
        enc = encoders.get(name, weights_dir=weights_dir, device=str(device), pretrained=pretrained,
                           **teacher_overrides(name, resolution))
        repa.freeze(enc)
        out.append(enc)
    return out


def _open_source(spec: str, resolution: int):
    from .. import data

    return data.open_source(spec, resolution=resolution)


# ---------------------------------------------------------------- setup


@dataclass
class _Dist:
    """torchrun's view of this process (one process: world 1, rank 0)."""

    world: int
    rank: int
    device: torch.device
    own_group: bool  #: this call created the process group (and destroys it at the end)


def _init_distributed(device_name: str) -> _Dist:
    """The device of this rank and, under torchrun (WORLD_SIZE/RANK/LOCAL_RANK), the process group."""
    world = runtime.world_size()
    rank = runtime.rank()
    device = resolve_device(device_name)
    own_group = False
    if world > 1:
        import torch.distributed as dist

        if device.type == "cuda":
            device = torch.device("cuda", runtime.local_rank())
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            own_group = True
    return _Dist(world, rank, device, own_group)


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


#: models torch.compile pays off for (the official code compiles SiT under the LDM recipe's --compile and
#: JiT's blocks); the tiny test models compile slower than they train
def default_compile(model: str, device: torch.device) -> bool:
    """``compile`` when the config leaves it unset: on for the full-size models on CUDA, off otherwise."""
    return device.type == "cuda" and not canonical(model).endswith("-tiny")


def _data(config: TrainConfig, source, world: int, device: torch.device):
    """The finalized config, the family, whether it aligns, the image side fed to teacher/model, the
    image source and the dataset positions used."""
    fam = model_family(config.model)
    cfg = finalize(config)  # validates names early; data-dependent fields below
    align = presets.get(cfg.method, fam).align
    # one decoded, cropped image per item at the larger side; the model's and the teacher's copies are resized
    # from it after the flip (the model always sees --resolution, the teacher its own side)
    image_res = max(cfg.teacher_resolution, cfg.resolution) if align else (cfg.resolution if fam == "jit" else None)
    if source is None:
        source = _open_source(cfg.images, max(cfg.teacher_resolution, cfg.resolution) if align else cfg.resolution)
    n_all = len(source)
    indices = list(range(min(n_all, cfg.max_images) if cfg.max_images else n_all))
    if not indices:
        raise DataError(f"Image source {cfg.images!r} has no images.")
    if cfg.epochs is not None:
        cfg.steps = steps_for_epochs(cfg.epochs, len(indices), cfg.batch_size)
        if config.ckpt_every is None:  # the default cadence follows the run's length
            cfg.ckpt_every = default_ckpt_every(cfg.steps)
    if cfg.num_classes is None:
        cfg.num_classes = _num_classes(source)
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size {cfg.batch_size} must be divisible by the world size {world}.")
    if cfg.compile is None:
        cfg.compile = default_compile(cfg.model, device)
    return cfg, fam, align, image_res, source, indices


def _teachers(cfg: TrainConfig, align: bool, teachers: Sequence | None, device: torch.device) -> list:
    if not align:
        return []
    if teachers is None:
        teachers = load_teachers(cfg.teacher, weights_dir=cfg.weights_dir, device=device,
                                 pretrained=cfg.teacher_pretrained, resolution=cfg.teacher_resolution)
    for t in teachers:
        repa.freeze(t)
    return list(teachers)


@dataclass
class _Latents:
    """SiT: the VAE, its latent shape, and (once cached) the per-image moments and the normaliser."""

    vae: Any
    vae_id: str
    channels: int
    side: int
    root: str
    cache: Any = None
    info: dict[str, Any] = field(default_factory=dict)
    scale: torch.Tensor | None = None  #: [1, C, 1, 1] on the device
    bias: torch.Tensor | None = None


def _open_vae(cfg: TrainConfig, vae_model, out: Path, device: torch.device) -> _Latents:
    from .vae import load_vae

    vae = vae_model
    vae_id = getattr(vae, "_spatialprobe_id", None)
    if vae is None:
        vae, vae_id = load_vae(cfg.vae, weights_dir=cfg.weights_dir, device=device)
    return _Latents(vae, vae_id or "custom", int(vae.config.latent_channels),
                    cfg.resolution // (2 ** (len(vae.config.block_out_channels) - 1)),
                    cfg.latents_dir or str(out / "latents"))


def _cache_latents(lat: _Latents, cfg: TrainConfig, source, indices: list[int], d: _Dist) -> None:
    """Encode the images once (rank 0 first, the other ranks then open the finished cache)."""
    from .vae import cache_latents

    if d.rank == 0:
        lat.cache = cache_latents(source, indices, lat.vae, lat.vae_id, cfg.resolution, lat.root, device=d.device)
    if d.world > 1:
        _barrier(d.world)
        lat.cache = cache_latents(source, indices, lat.vae, lat.vae_id, cfg.resolution, lat.root, device=d.device)
    scale, bias = lat.cache.normalizer(cfg.latent_norm)
    lat.info = {"vae": cfg.vae, "vae_id": lat.vae_id, "scale": scale.tolist(), "bias": bias.tolist(),
                "channels": lat.channels, "side": lat.side}
    lat.scale, lat.bias = scale.to(d.device).view(1, -1, 1, 1), bias.to(d.device).view(1, -1, 1, 1)
    lat.vae = None


def _model_args(cfg: TrainConfig, lat: _Latents | None, teachers: list) -> dict[str, Any]:
    args: dict[str, Any] = (dict(input_size=lat.side, in_channels=lat.channels) if lat is not None
                            else dict(input_size=cfg.resolution))
    args.update(num_classes=cfg.num_classes, z_dims=[int(t.embed_dim) for t in teachers],
                projector=cfg.projector, kernel_size=cfg.kernel_size)
    if cfg.encoder_depth is not None:
        args["encoder_depth"] = cfg.encoder_depth
    if cfg.proj_dropout is not None:
        args["proj_drop"] = cfg.proj_dropout
    if cfg.method == pixelrepa.METHOD:  # the adapter replaces the projectors; the JiT net gains the mask token
        args.update(z_dims=[], mask_token=True)
    return args


def _check_disk_budget(cfg: TrainConfig, out: Path, model_args: dict[str, Any], lat: _Latents | None,
                       ids: list[str], rank: int, teachers: list) -> None:
    """Estimate the disk the run needs (checkpoints at their peak with PixelREPA's adapter, a latent cache
    still to write), log it, and refuse before any training when the output filesystem lacks the space."""
    from .budget import adapter_bytes, check_disk, latent_cache_bytes, run_disk_estimate
    from .vae import latent_cache_dir

    existing = checkpoint_files(out)
    start = max((int(p.stem) for p in existing), default=0) if cfg.resume else 0
    lat_bytes = 0
    if lat is not None and not (latent_cache_dir(ids, lat.vae_id, cfg.resolution, lat.root) / "manifest.json").is_file():
        lat_bytes = latent_cache_bytes(len(ids), lat.channels, lat.side)
    extra = (adapter_bytes(cfg.model, out_dim=int(teachers[0].embed_dim), depth=cfg.adapter_depth, **model_args)
             if cfg.method == pixelrepa.METHOD and teachers else 0)
    est = run_disk_estimate(cfg.model, steps=cfg.steps, ckpt_every=cfg.ckpt_every, keep_last=cfg.keep_last,
                            keep_steps=cfg.keep_steps or (), n_emas=len(cfg.ema_decays), model_args=model_args,
                            start=min(start, cfg.steps), latent_bytes=lat_bytes, extra_bytes=extra)
    if rank == 0:
        log.info("%s", est.format())
    have = sum(p.stat().st_size for p in existing if p.is_file())
    check_disk(out, max(0, est.total - have), est)


def _build(cfg: TrainConfig, model_args: dict[str, Any], teachers: list, device: torch.device):
    """Model (seeded), the EMA copies of its denoiser (one per decay; no projectors), the module trained (the
    model, or PixelREPA's model + adapter), the adapter (None unless PixelREPA) and AdamW over the trained
    module (:func:`make_optimizer`)."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, **model_args).to(device)
    cfg.encoder_depth = model.cfg.encoder_depth
    emas = DenoiserEMA(model, cfg.ema_decays)
    trainee, adapter = pixelrepa.attach(model, cfg, teachers)  # (model, None) unless PixelREPA; EMA: model only
    opt = make_optimizer(trainee, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return model, emas, trainee, adapter, opt


def make_optimizer(trainee: nn.Module, *, lr: float, betas: Sequence[float], weight_decay: float):
    """AdamW over ``trainee``'s parameters: ``weight_decay`` on the weights, none on biases and 1-d
    parameters. The loop's optimizer, shared with the benchmark.

    The fused implementation where the device has it (CPU and CUDA): torch's default on CPU is a Python loop
    over the parameters (one small op per tensor and moment), which on jit-tiny REPA took 30 ms per step
    against 7 ms fused (4.9 M parameters, 1 thread; the foreach variant 23 ms); on CUDA fused is one kernel
    launch per parameter group instead of foreach's several. Same update up to float rounding (≤ 2e-8 after
    17 steps there); a given run is still bit-reproducible, and --resume bit-exact."""
    decay, no_decay = [], []
    for n_, p in trainee.named_parameters():
        (no_decay if p.ndim < 2 or n_.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=True)
    except RuntimeError:  # a device without the fused kernel: torch's default (foreach where supported)
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a saved optimizer state into ``opt`` and keep ``opt``'s own implementation (fused / foreach):
    ``load_state_dict`` would take the saved groups' choice, so a checkpoint written by an earlier version
    (or on another device) would silently switch the run back to the per-parameter loop."""
    impl = {k: opt.defaults.get(k) for k in ("fused", "foreach")}
    opt.load_state_dict(state)
    for group in opt.param_groups:
        group.update(impl)
        if impl["fused"]:  # the fused kernel keeps each step counter as a float32 tensor on the parameter's device
            for p in group["params"]:
                st = opt.state.get(p)
                if st and torch.is_tensor(st.get("step")):
                    st["step"] = st["step"].to(dtype=torch.float32, device=p.device)


def _resume(cfg: TrainConfig, out: Path, model: nn.Module, emas: DenoiserEMA, adapter: nn.Module | None, opt,
            device: torch.device, rank: int) -> tuple[int, Path | None]:
    """Load the newest intact checkpoint when ``cfg.resume``; returns ``(start step, its path)``.
    A folder that holds checkpoints is never overwritten without ``--resume``."""
    ckpt = latest_checkpoint(out)
    if ckpt is not None and not cfg.resume:
        raise ConfigError(f"{out} already holds checkpoints ({ckpt.name}); pass --resume to continue it, "
                          "or choose another --out.")
    if cfg.resume and ckpt is not None:
        ckpt, state = newest_intact_checkpoint(out, map_location=device)
        check_resume(state["config"], cfg)
        model.load_state_dict(state["model"])
        emas.load_state_dicts(state["emas"])  # projector keys of an older checkpoint's EMAs are dropped
        if adapter is not None:
            adapter.load_state_dict(state["adapter"])
        load_optimizer_state(opt, state["opt"])
        start = int(state["step"])
        if rank == 0:
            log.info("resumed %s at step %d", ckpt, start)
        return start, ckpt
    if cfg.resume and rank == 0:
        log.info("--resume: no checkpoint in %s yet, starting at step 0", out)
    return 0, None


def _wrap(trainee: nn.Module, cfg: TrainConfig, d: _Dist) -> nn.Module:
    """The module the step calls: ``trainee`` (the model, or PixelREPA's model + adapter), DDP-wrapped under
    torchrun and compiled when ``cfg.compile``."""
    net: nn.Module = trainee
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(trainee, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    return net


# ---------------------------------------------------------------- logging


class _RunLog:
    """log.jsonl (cut back to the resumed step), TensorBoard when installed, and the progress bar (rank 0)."""

    def __init__(self, out: Path, cfg: TrainConfig, start: int, rank: int):
        from tqdm.auto import tqdm

        self.path, self.rank = out / "log.jsonl", rank
        self.writer = None
        if rank == 0:
            kept = []
            if start and self.path.is_file():
                kept = [ln for ln in self.path.read_text().splitlines()
                        if ln.strip() and json.loads(ln)["step"] <= start]
            self.path.write_text("".join(k + "\n" for k in kept))
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out / "tb"))
            except Exception:  # noqa: BLE001 - TensorBoard is optional
                self.writer = None
        self.bar = tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.model} {cfg.method}", unit="step",
                        disable=rank != 0, dynamic_ncols=True)
        self.t_last, self.s_last = time.perf_counter(), start

    def record(self, step: int, vals: torch.Tensor, has_proj: bool, grad_norm: torch.Tensor, lr: float) -> None:
        """One logged step: ``vals`` = (loss, denoise[, proj]) averaged over the ranks."""
        now = time.perf_counter()
        rec = {"step": step, "loss": float(vals[0]), "denoise_loss": float(vals[1]),
               "proj_loss": float(vals[2]) if has_proj else None,
               "grad_norm": float(grad_norm), "lr": lr, "steps_per_s": (step - self.s_last) / max(now - self.t_last, 1e-9)}
        self.t_last, self.s_last = now, step
        with self.path.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")
        self.bar.set_postfix(loss=f"{rec['loss']:.4f}", it_s=f"{rec['steps_per_s']:.2f}")
        if self.writer is not None:
            for k, v in rec.items():
                if k != "step" and v is not None:
                    self.writer.add_scalar(f"train/{k}", v, step)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


# ---------------------------------------------------------------- one step


@dataclass
class _Run:
    """Everything a training step needs, set up once."""

    cfg: TrainConfig
    fam: str
    d: _Dist
    model: nn.Module
    net: nn.Module
    emas: DenoiserEMA
    opt: Any
    teachers: list
    lat: _Latents | None
    ac_dtype: torch.dtype | None
    warmup: int
    params: list
    adapter: nn.Module | None = None  #: PixelREPA's adapter (trained and checkpointed beside the model)


def _forward_backward(run: _Run, batch: dict[str, torch.Tensor], step: int) -> tuple[dict[str, torch.Tensor], float]:
    """Inputs of ``step`` (flips, posterior sample, all drawn from the step's generator), the losses, and
    the gradients; returns ``(losses, lr)``. Touches no optimizer state, so a failed call can be redone."""
    cfg, device = run.cfg, run.d.device
    g = step_generator(cfg.seed, step, run.d.rank, device)
    if cfg.proj_dropout:  # dropout draws from the global RNG: seed it per step too, so --resume stays exact
        torch.manual_seed(dropout_seed(g))
    from .vae import images_to_vae_input, resize_uint8

    y = batch["label"].to(device, non_blocking=True)
    imgs = batch["image"].to(device, non_blocking=True) if "image" in batch else None
    if cfg.hflip and imgs is not None:
        flip = (torch.rand(imgs.shape[0], generator=g, device=device) < 0.5).view(-1, 1, 1, 1)
        imgs = torch.where(flip, imgs.flip(-1), imgs)
    teacher_imgs = resize_uint8(imgs, cfg.teacher_resolution) if run.teachers else None
    if run.fam == "sit":
        mean = batch["mean"].to(device, non_blocking=True)
        std = batch["std"].to(device, non_blocking=True)
        z = mean + std * torch.randn(mean.shape, generator=g, device=device)
        x = (z - run.lat.bias) * run.lat.scale
    else:
        x = images_to_vae_input(resize_uint8(imgs, cfg.resolution))
    lr = cfg.lr * min(1.0, (step + 1) / run.warmup) if run.warmup else cfg.lr
    for grp in run.opt.param_groups:
        grp["lr"] = lr
    losses = step_losses(run.net, run.fam, x, y, teachers=run.teachers, teacher_images=teacher_imgs, grid=run.model.grid,
                         spnorm=cfg.spnorm, gamma=cfg.gamma, proj_coeff=cfg.proj_coeff, generator=g,
                         null_class=run.model.null_class, label_dropout=cfg.label_dropout,
                         autocast_dtype=run.ac_dtype, method=cfg.method, noise_scale=cfg.noise_scale)
    run.opt.zero_grad(set_to_none=True)
    losses["loss"].backward()
    return losses, lr


def apply_update(params: list, opt, grad_clip: float, emas: DenoiserEMA,
                 need_norm: bool = False) -> torch.Tensor | None:
    """Clip ``params``' gradients (when ``grad_clip`` is set), step ``opt`` and move the EMA copies of the
    denoiser towards the model; returns the gradient norm before clipping, computed only when
    clipping or ``need_norm`` (a logged step) asks for it. The loop's update, shared with the benchmark."""
    gn = None
    if grad_clip or need_norm:
        # with clipping off, max_norm inf scales by exactly 1.0: only the norm is wanted
        gn = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip else math.inf)
    opt.step()
    emas.update()
    return gn


def _update(run: _Run, need_norm: bool) -> torch.Tensor | None:
    """:func:`apply_update` with the run's parameters, optimizer, clipping and EMAs."""
    return apply_update(run.params, run.opt, run.cfg.grad_clip, run.emas, need_norm)


def _compile_failed(run: _Run, exc: Exception) -> None:
    """Fall back to the eager model after torch.compile failed (one warning line)."""
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    log.warning("torch.compile failed (%s: %s); training eager instead", type(exc).__name__, first)
    run.net = getattr(run.net, "_orig_mod", run.net)
    run.cfg.compile = False


def _checkpoint_state(run: _Run, step: int, model_args: dict[str, Any]) -> dict[str, Any]:
    return {"step": step, "model": run.model.state_dict(), "emas": run.emas.state_dicts(),
            "opt": run.opt.state_dict(), "config": run.cfg.as_dict(), "model_args": model_args,
            "family": run.fam, "latent": run.lat.info if run.lat is not None else {},
            **({"adapter": run.adapter.state_dict()} if run.adapter is not None else {})}


def _clock_due(policy: CheckpointPolicy, d: _Dist) -> bool:
    """Rank 0's wall-time checkpoint decision, shared with every rank (one broadcast)."""
    due = policy.due_by_clock()
    if d.world > 1:
        import torch.distributed as dist

        flag = torch.tensor([1.0 if due else 0.0], device=d.device)
        dist.broadcast(flag, 0)
        due = bool(flag.item())
    return due


# ---------------------------------------------------------------- main entry


def train(config: TrainConfig | None = None, *, config_file: str | Path | None = None, source=None,
          teachers: Sequence | None = None, vae_model=None, callback: Callable[[int, dict], None] | None = None,
          **overrides: Any) -> TrainResult:
    """Train a SiT/JiT model with the chosen alignment method; see :class:`TrainConfig`.

    ``config``, or ``config_file`` + ``overrides`` (defaults < file < overrides). ``source``, ``teachers``
    and ``vae_model`` (a diffusers AutoencoderKL) may be passed as objects (tests, notebooks) instead of being opened from the config.
    ``callback(step, record)`` runs after every optimizer step (rank 0).
    """
    from ..checks import prepare_out_dir
    from ..config import write_config

    config = resolve_train(config, config_file, overrides)  # defaults < recipe < file < overrides

    # setup: processes, data, teachers, latent shape, disk budget, latents, model, resume, records
    d = _init_distributed(config.device)
    cfg, fam, align, image_res, source, indices = _data(config, source, d.world, d.device)
    out = prepare_out_dir(cfg.out)
    (out / "checkpoints").mkdir(exist_ok=True)
    teachers = _teachers(cfg, align, teachers, d.device)
    lat = _open_vae(cfg, vae_model, out, d.device) if fam == "sit" else None
    model_args = _model_args(cfg, lat, teachers)
    _check_disk_budget(cfg, out, model_args, lat, [source.ids[i] for i in indices] if lat is not None else [], d.rank,
                       teachers)
    if lat is not None:
        _cache_latents(lat, cfg, source, indices, d)
    model, emas, trainee, adapter, opt = _build(cfg, model_args, teachers, d.device)
    start, ckpt = _resume(cfg, out, model, emas, adapter, opt, d.device, d.rank)

    records = dict(model_args=model_args, latent=lat.info if lat is not None else {},
                   teachers=[teacher_record(t, cfg.teacher_resolution, model.grid) for t in teachers],
                   world_size=d.world, num_images=len(indices), recipe=recipe_record(cfg.recipe))
    if d.rank == 0:
        write_config(out / CONFIG_JSON, cfg, **records)
    runlog = _RunLog(out, cfg, start, d.rank)

    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if d.device.type == "cuda" else "fp32")
    run = _Run(cfg=cfg, fam=fam, d=d, model=model, net=_wrap(trainee, cfg, d), emas=emas, opt=opt,
               teachers=teachers, lat=lat, ac_dtype=torch.bfloat16 if precision == "bf16" else None,
               warmup=int(cfg.warmup_epochs * len(indices) / cfg.batch_size) if cfg.warmup_epochs else 0,
               params=[], adapter=adapter)

    # data: one batch of dataset positions per step, a pure function of (seed, step)
    loader = torch.utils.data.DataLoader(
        _Items(source, indices, image_res, lat.cache if lat is not None else None),
        batch_sampler=_StepBatches(start, cfg.steps, cfg.batch_size, len(indices), cfg.seed, d.rank, d.world),
        num_workers=cfg.workers, pin_memory=d.device.type == "cuda", persistent_workers=False)
    policy = CheckpointPolicy(out, steps=cfg.steps, every=cfg.ckpt_every, keep_last=cfg.keep_last,
                              keep_steps=cfg.keep_steps or (), minutes=cfg.ckpt_minutes)
    if d.rank == 0:
        log.info("%s", policy.describe())

    trainee.train()
    run.params = [p for p in trainee.parameters() if p.requires_grad]
    last_loss, last_ckpt = None, ckpt if start else None
    step = start
    for batch in loader:
        # step: forward + backward (redone eagerly once if the compiled model fails), update, EMAs
        log_now = (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps or step == 0
        if cfg.compile and step == start:
            try:
                losses, lr = _forward_backward(run, batch, step)
            except Exception as exc:  # noqa: BLE001 - any compiler failure: the eager model is the fallback
                _compile_failed(run, exc)
                if d.rank == 0:
                    write_config(out / CONFIG_JSON, cfg, **records)
                losses, lr = _forward_backward(run, batch, step)
        else:
            losses, lr = _forward_backward(run, batch, step)
        gn = _update(run, need_norm=log_now)
        step += 1
        runlog.bar.update(1)
        if log_now:
            parts = [losses["loss"], losses["denoise"]] + ([losses["proj"]] if losses["proj"] is not None else [])
            vals = _mean_over_ranks(torch.stack([v.detach().float() for v in parts]), d.world)
            last_loss = float(vals[0])
            if d.rank == 0:
                runlog.record(step, vals, losses["proj"] is not None, gn, lr)
        elif callback is not None:
            last_loss = float(losses["loss"].detach())

        # checkpoint: on the step cadence, at milestones, at the end, and on the wall-time clock
        if policy.due_by_step(step) or ((d.world == 1 or log_now) and _clock_due(policy, d)):
            last_ckpt = policy.path(step)  # every rank returns the path rank 0 writes
            if d.rank == 0:
                policy.save(_checkpoint_state(run, step, model_args), step)
            else:
                policy.saved()
            _barrier(d.world)
        if callback is not None and d.rank == 0:
            callback(step, {"loss": last_loss})
    runlog.close()
    if d.own_group:
        import torch.distributed as dist

        dist.destroy_process_group()
    return TrainResult(out=out, step=step, loss=last_loss, log_path=runlog.path, checkpoint=last_ckpt,
                       config=cfg.as_dict(), rank=d.rank, world_size=d.world)

def load_run(path: str | Path, *, weights: str = "ema", device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model of a checkpoint (or the newest one of a run folder) with ``weights`` = ema | ema2 | model.
    With EMA weights the training-only projectors (not averaged) are the raw model's.

    Returns ``(model in eval mode, checkpoint dict without the tensors of the optimizer)``. For a run
    folder the newest checkpoint that loads is used (a truncated newer one is skipped with a warning);
    a checkpoint file named explicitly must load.
    """
    p = Path(path)
    found = newest_intact_checkpoint(p) if p.is_dir() else ((p, read_checkpoint(p)) if p.is_file() else None)
    if found is None:
        raise InputFileError(f"No checkpoint at {str(path)!r}; pass a run folder holding checkpoints/NNNNNNN.pt "
                             "or a checkpoint file.")
    ck, state = found
    model = build_model(state["config"]["model"], **state["model_args"])
    if weights == "model":
        sd = state["model"]
    else:
        k = {"ema": 0, "ema1": 0, "ema2": 1}.get(weights)
        if k is None or k >= len(state["emas"]):
            raise ConfigError(f"weights {weights!r} not in this checkpoint; use model"
                              + "".join(f", ema{i + 1}" for i in range(len(state["emas"]))) + ".")
        sd = with_projectors(state["emas"][k], state["model"])  # the EMAs hold the denoiser only
    model.load_state_dict(sd)
    state.pop("opt", None)
    state["path"] = str(ck)
    return model.to(device).eval(), state
