"""One readable training loop for SiT (latent) and JiT (pixel) with REPA/iREPA alignment.

AdamW with a constant learning rate (optional linear warm-up), gradient clipping, EMA(s), bf16 autocast on
CUDA, DDP under ``torchrun``, checkpoints every N steps and ``--resume``. Every random draw of a step comes
from a generator seeded by (seed, step, rank) and the data order is a pure function of (seed, step), so a run
that is killed and resumed ends with exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from ..config import comma_list
from ..errors import ConfigError, DataError
from . import presets, repa
from .config import TrainConfig, check_resume, finalize
from .models import build as build_model
from .models import family as model_family
from .models import module_for

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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The generator of one step on one rank (noise, t, label dropout, flips, posterior samples)."""
    g = torch.Generator(device=device)
    g.manual_seed(((seed * 1_000_003 + step) * 4096 + rank) % (2 ** 63))
    return g


def batch_positions(step: int, global_batch: int, n: int, seed: int, rank: int = 0, world: int = 1) -> list[int]:
    """Dataset positions of ``rank``'s share of the global batch at ``step``: consecutive slices of a stream of
    per-epoch permutations (epoch e shuffled with seed (seed, e)); stateless, so resume needs no sampler state."""
    per = global_batch // world
    start = step * global_batch + rank * per
    out: list[int] = []
    perms: dict[int, torch.Tensor] = {}
    for pos in range(start, start + per):
        e, j = divmod(pos, n)
        if e not in perms:
            perms[e] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + e))
        out.append(int(perms[e][j]))
    return out


def latest_checkpoint(out: str | Path) -> Path | None:
    """The highest-step ``checkpoints/NNNNNNN.pt`` file of a run folder (intact or not), or None."""
    ck = checkpoint_files(out)
    return ck[-1] if ck else None


def checkpoint_files(out: str | Path) -> list[Path]:
    """Every ``checkpoints/NNNNNNN.pt`` of a run folder, oldest first."""
    return sorted((Path(out) / "checkpoints").glob("[0-9]*.pt"))


#: keys every training checkpoint holds
CHECKPOINT_KEYS = ("step", "model", "emas", "config", "model_args", "family")


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load one training checkpoint safely (``torch.load(weights_only=True)``: tensors and plain
    containers only, never arbitrary pickled objects).

    Raises :class:`~spatialprobe.errors.InputFileError` saying "not a checkpoint" and why (empty,
    truncated or corrupt, foreign bytes, a torch file that is not a training checkpoint)."""
    import pickle
    import zipfile

    from ..errors import InputFileError

    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise InputFileError(f"Checkpoint {str(p)!r} cannot be read ({exc.strerror or exc}).") from None
    if size == 0:
        raise InputFileError(f"{str(p)!r} is not a checkpoint: the file is empty (0 bytes).")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError, AttributeError,
            ImportError, IndexError, KeyError, TypeError) as exc:
        if zipfile.is_zipfile(p):
            why = "the file is truncated or corrupt (a torch archive that cannot be read to the end)"
        elif isinstance(exc, pickle.UnpicklingError) and "Weights only" in str(exc):
            why = ("it holds pickled objects other than tensors and plain containers; spatialprobe only loads "
                   "checkpoints it wrote")
        else:
            why = "its bytes are not a torch checkpoint (random, truncated or another format)"
        raise InputFileError(f"{str(p)!r} is not a checkpoint: {why}.") from None
    if not isinstance(state, dict) or any(k not in state for k in CHECKPOINT_KEYS):
        have = ", ".join(sorted(map(str, state))[:6]) if isinstance(state, dict) else type(state).__name__
        raise InputFileError(f"{str(p)!r} is not a spatialprobe training checkpoint (it holds {have}; expected "
                             f"{', '.join(CHECKPOINT_KEYS)}).")
    return state


def newest_intact_checkpoint(out: str | Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict] | None:
    """``(path, state)`` of the newest checkpoint of a run folder that loads, or None when there is none.

    A newer file that does not load (a truncated copy, a full disk) is skipped with a warning naming it;
    when every file is unusable the error lists them."""
    from ..errors import InputFileError

    files = checkpoint_files(out)
    problems = []
    for ck in reversed(files):
        try:
            state = read_checkpoint(ck, map_location)
        except InputFileError as exc:
            problems.append(str(exc))
            continue
        for msg in problems:
            log.warning("%s; using the newest intact checkpoint, %s (step %d), instead", msg, ck.name,
                        int(state["step"]))
        return ck, state
    if problems:
        raise InputFileError(f"No intact checkpoint in {str(Path(out) / 'checkpoints')!r}: " + " ".join(problems)
                             + " Delete the unusable files to start the run afresh.")
    return None


def _atomic_save(obj: Any, path: Path) -> None:
    from ..checks import writing

    tmp = path.with_suffix(path.suffix + ".tmp")
    with writing(path, tmp, what="checkpoint"):
        torch.save(obj, tmp)
        os.replace(tmp, path)


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
        for s in range(start, stop):
            yield batch_positions(s, gb, n, seed, rank, world)

    def __len__(self) -> int:
        return max(0, self.args[1] - self.args[0])


def step_losses(net: nn.Module, family: str, x: torch.Tensor, y: torch.Tensor, *, teachers: Sequence,
                teacher_images: torch.Tensor | None, grid: tuple[int, int], spnorm: bool, gamma: float,
                proj_coeff: float, generator: torch.Generator, null_class: int, label_dropout: float,
                autocast_dtype: torch.dtype | None = None, noise_scale: float | None = None) -> dict[str, torch.Tensor]:
    """Losses of one step: ``denoise``, ``proj`` (None without teachers) and ``loss`` = denoise + coeff·proj.

    Teacher targets are computed first, under no_grad; the denoising objective draws its noise from
    ``generator``.
    """
    targets = [repa.teacher_targets(t, teacher_images, grid, spnorm=spnorm, gamma=gamma,
                                    autocast_dtype=autocast_dtype) for t in teachers]
    mod = module_for(family)
    ctx = torch.autocast(x.device.type, dtype=autocast_dtype) if autocast_dtype else _null()
    extra = {"noise_scale": noise_scale} if noise_scale is not None else {}  # JiT's noise std
    with ctx:
        denoise, zs = mod.training_loss(net, x, y, generator, label_dropout, null_class, **extra)
    proj = repa.projection_loss(zs, targets) if teachers else None
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
    from .resolution import teacher_overrides

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


# ---------------------------------------------------------------- main entry


def train(config: TrainConfig | None = None, *, config_file: str | Path | None = None, source=None,
          teachers: Sequence | None = None, vae_model=None, callback: Callable[[int, dict], None] | None = None,
          **overrides: Any) -> TrainResult:
    """Train a SiT/JiT model with the chosen alignment method; see :class:`TrainConfig`.

    ``config``, or ``config_file`` + ``overrides`` (defaults < file < overrides). ``source``, ``teachers``
    and ``vae_model`` (a diffusers AutoencoderKL) may be passed as objects (tests, notebooks) instead of being opened from the config.
    ``callback(step, record)`` runs after every optimizer step (rank 0).
    """
    from ..config import write_config
    from .recipes import recipe_record, resolve_train

    config = resolve_train(config, config_file, overrides)  # defaults < recipe < file < overrides

    # distributed (torchrun sets WORLD_SIZE/RANK/LOCAL_RANK)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = resolve_device(config.device)
    own_group = False
    if world > 1:
        import torch.distributed as dist

        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            own_group = True

    fam = model_family(config.model)
    pre_cfg = finalize(config)  # validates names early; data-dependent fields below
    align = presets.get(pre_cfg.method, fam).align
    # one decoded, cropped image per item at the larger side; the model's and the teacher's copies are resized
    # from it after the flip (the model always sees --resolution, the teacher its own side)
    image_res = (max(pre_cfg.teacher_resolution, pre_cfg.resolution) if align
                 else (pre_cfg.resolution if fam == "jit" else None))
    if source is None:
        source = _open_source(pre_cfg.images, max(pre_cfg.teacher_resolution, pre_cfg.resolution) if align
                              else pre_cfg.resolution)
    n_all = len(source)
    indices = list(range(min(n_all, pre_cfg.max_images) if pre_cfg.max_images else n_all))
    if not indices:
        raise DataError(f"Image source {pre_cfg.images!r} has no images.")
    cfg = pre_cfg
    if cfg.epochs is not None:
        from .config import steps_for_epochs

        cfg.steps = steps_for_epochs(cfg.epochs, len(indices), cfg.batch_size)
    if cfg.num_classes is None:
        cfg.num_classes = _num_classes(source)
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size {cfg.batch_size} must be divisible by the world size {world}.")
    from ..checks import prepare_out_dir

    out = prepare_out_dir(cfg.out)
    (out / "checkpoints").mkdir(exist_ok=True)

    # teacher(s)
    if align:
        if teachers is None:
            teachers = load_teachers(cfg.teacher, weights_dir=cfg.weights_dir, device=device,
                                     pretrained=cfg.teacher_pretrained, resolution=cfg.teacher_resolution)
        for t in teachers:
            repa.freeze(t)
    else:
        teachers = []
    teachers = list(teachers)

    # latents (SiT)
    latents = None
    latent_info: dict[str, Any] = {}
    if fam == "sit":
        from .vae import cache_latents, load_vae

        vae = vae_model
        vae_id = getattr(vae, "_spatialprobe_id", None)
        if vae is None:
            vae, vae_id = load_vae(cfg.vae, weights_dir=cfg.weights_dir, device=device)
        vae_id = vae_id or "custom"
        root = cfg.latents_dir or str(out / "latents")
        if rank == 0:
            latents = cache_latents(source, indices, vae, vae_id, cfg.resolution, root, device=device)
        if world > 1:
            import torch.distributed as dist

            dist.barrier()
            latents = cache_latents(source, indices, vae, vae_id, cfg.resolution, root, device=device)
        scale, bias = latents.normalizer(cfg.latent_norm)
        lat_c = int(vae.config.latent_channels)
        lat_side = cfg.resolution // (2 ** (len(vae.config.block_out_channels) - 1))
        latent_info = {"vae": cfg.vae, "vae_id": vae_id, "scale": scale.tolist(), "bias": bias.tolist(),
                       "channels": lat_c, "side": lat_side}
        model_args = dict(input_size=lat_side, in_channels=lat_c)
        scale_d, bias_d = scale.to(device).view(1, -1, 1, 1), bias.to(device).view(1, -1, 1, 1)
        del vae
    else:
        model_args = dict(input_size=cfg.resolution)

    model_args.update(num_classes=cfg.num_classes, z_dims=[int(t.embed_dim) for t in teachers],
                      projector=cfg.projector, kernel_size=cfg.kernel_size)
    if cfg.encoder_depth is not None:
        model_args["encoder_depth"] = cfg.encoder_depth
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, **model_args).to(device)
    cfg.encoder_depth = model.cfg.encoder_depth
    from .resolution import teacher_record

    teacher_info = [teacher_record(t, cfg.teacher_resolution, model.grid) for t in teachers]
    emas = [copy.deepcopy(model).eval().requires_grad_(False) for _ in cfg.ema_decays]
    decay, no_decay = [], []
    for n_, p in model.named_parameters():
        (no_decay if p.ndim < 2 or n_.endswith(".bias") else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=tuple(cfg.betas))

    # resume
    start = 0
    ckpt = latest_checkpoint(out)
    if ckpt is not None and not cfg.resume:
        raise ConfigError(f"{out} already holds checkpoints ({ckpt.name}); pass --resume to continue it, "
                          "or choose another --out.")
    if cfg.resume and ckpt is not None:
        ckpt, state = newest_intact_checkpoint(out, map_location=device)
        check_resume(state["config"], cfg)
        model.load_state_dict(state["model"])
        for e, sd in zip(emas, state["emas"]):
            e.load_state_dict(sd)
        opt.load_state_dict(state["opt"])
        start = int(state["step"])
        if rank == 0:
            log.info("resumed %s at step %d", ckpt, start)
    elif cfg.resume and rank == 0:
        log.info("--resume: no checkpoint in %s yet, starting at step 0", out)

    log_path = out / "log.jsonl"
    if rank == 0:
        write_config(out / "config.json", cfg, model_args=model_args, latent=latent_info,
                     teachers=teacher_info, world_size=world, num_images=len(indices),
                     recipe=recipe_record(cfg.recipe))
        kept = []
        if start and log_path.is_file():
            kept = [ln for ln in log_path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= start]
        log_path.write_text("".join(k + "\n" for k in kept))

    net: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)

    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    ac_dtype = torch.bfloat16 if precision == "bf16" else None
    warmup = int(cfg.warmup_epochs * len(indices) / cfg.batch_size) if cfg.warmup_epochs else 0

    dataset = _Items(source, indices, image_res, latents)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=_StepBatches(start, cfg.steps, cfg.batch_size, len(indices), cfg.seed, rank, world),
        num_workers=cfg.workers, pin_memory=device.type == "cuda", persistent_workers=False)

    writer = None
    if rank == 0:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tb"))
        except Exception:  # noqa: BLE001 - TensorBoard is optional
            writer = None

    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.model} {cfg.method}", unit="step",
               disable=rank != 0, dynamic_ncols=True)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    last_loss, last_ckpt = None, ckpt if start else None
    t_last, s_last = time.perf_counter(), start
    step = start
    for batch in loader:
        g = step_generator(cfg.seed, step, rank, device)
        y = batch["label"].to(device, non_blocking=True)
        imgs = batch["image"].to(device, non_blocking=True) if "image" in batch else None
        if cfg.hflip and imgs is not None:
            flip = (torch.rand(imgs.shape[0], generator=g, device=device) < 0.5).view(-1, 1, 1, 1)
            imgs = torch.where(flip, imgs.flip(-1), imgs)
        from .vae import images_to_vae_input, resize_uint8

        teacher_imgs = resize_uint8(imgs, cfg.teacher_resolution) if teachers else None
        if fam == "sit":
            mean = batch["mean"].to(device, non_blocking=True)
            std = batch["std"].to(device, non_blocking=True)
            z = mean + std * torch.randn(mean.shape, generator=g, device=device)
            x = (z - bias_d) * scale_d
        else:
            x = images_to_vae_input(resize_uint8(imgs, cfg.resolution))
        lr = cfg.lr * min(1.0, (step + 1) / warmup) if warmup else cfg.lr
        for grp in opt.param_groups:
            grp["lr"] = lr
        losses = step_losses(net, fam, x, y, teachers=teachers, teacher_images=teacher_imgs, grid=model.grid,
                             spnorm=cfg.spnorm, gamma=cfg.gamma, proj_coeff=cfg.proj_coeff, generator=g,
                             null_class=model.null_class, label_dropout=cfg.label_dropout,
                             autocast_dtype=ac_dtype, noise_scale=cfg.noise_scale)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        gn = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip else math.inf)
        opt.step()
        with torch.no_grad():
            for e, d in zip(emas, cfg.ema_decays):
                for pe, pm in zip(e.parameters(), model.parameters()):
                    pe.lerp_(pm.detach(), 1.0 - d)
        step += 1
        last_loss = float(losses["loss"].detach())
        bar.update(1)
        log_now = step % cfg.log_every == 0 or step == cfg.steps or step == 1
        if log_now:
            parts = [losses["loss"], losses["denoise"]] + ([losses["proj"]] if losses["proj"] is not None else [])
            vals = _mean_over_ranks(torch.stack([v.detach().float() for v in parts]), world)
            last_loss = float(vals[0])
        if rank == 0 and log_now:
            now = time.perf_counter()
            rec = {"step": step, "loss": last_loss, "denoise_loss": float(vals[1]),
                   "proj_loss": None if losses["proj"] is None else float(vals[2]),
                   "grad_norm": float(gn), "lr": lr, "steps_per_s": (step - s_last) / max(now - t_last, 1e-9)}
            t_last, s_last = now, step
            with log_path.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")
            bar.set_postfix(loss=f"{last_loss:.4f}", it_s=f"{rec['steps_per_s']:.2f}")
            if writer is not None:
                for k, v in rec.items():
                    if k != "step" and v is not None:
                        writer.add_scalar(f"train/{k}", v, step)
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            last_ckpt = out / "checkpoints" / f"{step:07d}.pt"  # every rank returns the path rank 0 writes
            if rank == 0:
                _atomic_save({"step": step, "model": model.state_dict(), "emas": [e.state_dict() for e in emas],
                              "opt": opt.state_dict(), "config": cfg.as_dict(), "model_args": model_args,
                              "family": fam, "latent": latent_info}, last_ckpt)
            if world > 1:
                import torch.distributed as dist

                dist.barrier()
        if callback is not None and rank == 0:
            callback(step, {"loss": last_loss})
    bar.close()
    if writer is not None:
        writer.close()
    if own_group:
        import torch.distributed as dist

        dist.destroy_process_group()
    return TrainResult(out=out, step=step, loss=last_loss, log_path=log_path, checkpoint=last_ckpt,
                       config=cfg.as_dict(), rank=rank, world_size=world)


def load_run(path: str | Path, *, weights: str = "ema", device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model of a checkpoint (or the newest one of a run folder) with ``weights`` = ema | ema2 | model.

    Returns ``(model in eval mode, checkpoint dict without the tensors of the optimizer)``. For a run
    folder the newest checkpoint that loads is used (a truncated newer one is skipped with a warning);
    a checkpoint file named explicitly must load.
    """
    from ..errors import InputFileError

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
        sd = state["emas"][k]
    model.load_state_dict(sd)
    state.pop("opt", None)
    state["path"] = str(ck)
    return model.to(device).eval(), state
