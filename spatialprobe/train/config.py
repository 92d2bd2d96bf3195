"""Training and sampling configs. Precedence: defaults < recipe < YAML/JSON file < CLI flags
(``spatialprobe.config.resolve``, then :func:`spatialprobe.train.recipes.resolve_train`).

Fields left ``None`` take the per-model defaults in :data:`MODEL_DEFAULTS` and the alignment preset of
``method`` (:mod:`spatialprobe.train.presets`); :func:`finalize` fills them, and the filled-in config is what
every checkpoint and ``config.json`` records.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..config import comma_list
from ..errors import ConfigError
from . import presets
from .checkpoint import default_ckpt_every
from .models import canonical, family, variant

#: per-model training defaults (the paper's recipe for full models; CPU-sized values for the tiny ones)
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    # SiT (REPA/iREPA LDM recipe): AdamW 1e-4 constant, betas (0.9, 0.999), clip 1.0, EMA 0.9999, batch 256,
    # SD-VAE ft-MSE latents at 256 px, no flips, encoder depth 8 (the study's enc8 runs)
    "sit": dict(batch_size=256, lr=1e-4, betas=[0.9, 0.999], grad_clip=1.0, ema_decays=[0.9999], hflip=False,
                warmup_epochs=0.0, vae="sd-vae-ft-mse", resolution=256),
    # JiT (iREPA jit/ recipe): lr = 5e-5·batch/256, betas (0.9, 0.95), no clip, two EMAs, 5 warm-up epochs, flips
    "jit": dict(batch_size=256, lr=None, betas=[0.9, 0.95], grad_clip=0.0, ema_decays=[0.9999, 0.9996], hflip=True,
                warmup_epochs=5.0, vae=None, resolution=256),
    "sit-tiny": dict(batch_size=16, lr=1e-3, warmup_epochs=0.0, vae="tiny-random", resolution=64),
    # JiT's 512-px models (JiT-{B,L,H}/32): 32x32 px patches on 512-px images, the same 16x16 token grid
    "jit-b/32": dict(resolution=512),
    "jit-l/32": dict(resolution=512),
    "jit-h/32": dict(resolution=512),
    "jit-tiny": dict(batch_size=16, lr=1e-3, warmup_epochs=0.0, resolution=32),
}
JIT_BLR = 5e-5
#: JiT's noise scale by image side (JiT README: 1.0 at 256 px, 2.0 at 512 px), where none is given
JIT_NOISE_SCALE = {256: 1.0, 512: 2.0}
#: the teacher sees the image at max(this, --resolution) px unless --teacher-resolution says otherwise
TEACHER_MIN_SIDE = 256


@dataclass
class TrainConfig:
    """Options of one REPA/iREPA training run (``spatialprobe train``)."""

    model: str = "jit-tiny"              #: sit-b/2, sit-l/2, sit-xl/2, sit-tiny, jit-b/16, jit-l/16, jit-h/16, jit-b/32, jit-l/32, jit-h/32, jit-tiny
    recipe: str | None = None            #: an official recipe (see `spatialprobe ls recipes`); fields given here win
    method: str = "irepa"                #: alignment preset (see `spatialprobe ls presets`)
    teacher: str | None = None           #: zoo encoder id(s), comma-separated; required unless method is none
    images: str = "builtin:digits"       #: image source spec (folder, ImageNet tree, list file, builtin[:name])
    out: str = "runs/train"              #: run folder: config.json, log.jsonl, checkpoints/
    steps: int = 80
    epochs: float | None = None          #: train for this many passes over the images instead of --steps
    batch_size: int | None = None        #: global batch
    lr: float | None = None
    betas: list[float] | None = None
    weight_decay: float = 0.0
    grad_clip: float | None = None       #: max grad norm; 0 = off
    warmup_epochs: float | None = None   #: linear lr warm-up, then constant
    ema_decays: list[float] | None = None
    label_dropout: float = 0.1
    encoder_depth: int | None = None     #: align after this block (1-indexed)
    projector: str | None = None         #: override the preset: mlp | linear | conv
    kernel_size: int | None = None
    spnorm: bool | None = None
    gamma: float | None = None
    proj_coeff: float | None = None
    mask_ratio: float | None = None      #: PixelREPA: share of adapter input tokens masked [preset: 0.2]
    adapter_depth: int | None = None     #: PixelREPA: Masked Transformer Adapter blocks [preset: 2]
    proj_dropout: float | None = None    #: JiT: dropout in the middle half of the blocks [default: 0; H recipe 0.2]
    resolution: int | None = None        #: image side fed to the model (SiT: before the VAE)
    teacher_resolution: int | None = None  #: image side of the teacher's copy [default: max(256, resolution)]
    noise_scale: float | None = None     #: JiT noise std (training and sampling) [default: 1.0 at 256 px, 2.0 at 512 px]
    teacher_pretrained: bool = True      #: False: the teacher's architecture with random init (smoke tests)
    weights_dir: str | None = None
    hflip: bool | None = None
    vae: str | None = None               #: sd-vae-ft-mse | tiny-random[:seed] | a diffusers folder
    latent_norm: str = "channel"         #: channel: per-channel mean/std of the cached latents; scalar: vae scaling_factor
    latents_dir: str | None = None       #: latent cache root [default: <out>/latents]
    num_classes: int | None = None       #: default: from the image source labels
    max_images: int | None = None        #: use only the first N images of the source
    seed: int = 0
    device: str = "auto"                 #: auto | cpu | cuda | cuda:N
    precision: str = "auto"              #: auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp32
    compile: bool | None = None          #: torch.compile the model [default: on for the full models on CUDA, off on CPU and for the tiny ones]
    log_every: int = 10
    ckpt_every: int | None = None        #: checkpoint every N steps [default: 1000, or a tenth of a long run, at most 50,000]
    keep_last: int = 2                   #: keep the newest N checkpoints (plus keep_steps and the last); 0 = keep all
    keep_steps: list[int] | None = None  #: milestone steps: always checkpointed and never deleted
    ckpt_minutes: float = 30.0           #: also checkpoint when this much wall time passed since the last one; 0 = off
    workers: int = 2
    resume: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: fields that may differ between a run and its --resume (everything else must match the checkpoint)
RESUMABLE_CHANGES = {"steps", "epochs", "log_every", "ckpt_every", "workers", "resume", "device", "out", "weights_dir",
                     "latents_dir", "compile", "keep_last", "keep_steps", "ckpt_minutes"}


def finalize(cfg: TrainConfig, num_images: int | None = None) -> TrainConfig:
    """Fill every ``None`` field from the model defaults and the method preset; validate."""
    c = dataclasses.replace(cfg)
    c.model = canonical(c.model)
    fam = family(c.model)
    pre = presets.get(c.method, fam)
    c.method = pre.method
    d = {**MODEL_DEFAULTS[fam], **MODEL_DEFAULTS.get(c.model, {})}
    lr_by_rule = c.lr is None and c.recipe is not None and fam == "jit"  # a JiT recipe's lr rule beats a model's lr
    for k, v in d.items():
        if getattr(c, k) is None:
            setattr(c, k, v)
    if c.lr is None or lr_by_rule:  # JiT: blr scaled by the global batch
        c.lr = JIT_BLR * c.batch_size / 256
    if c.teacher_resolution is None:
        c.teacher_resolution = max(TEACHER_MIN_SIDE, int(c.resolution))
    if fam == "jit" and c.noise_scale is None:
        c.noise_scale = JIT_NOISE_SCALE.get(int(c.resolution), JIT_NOISE_SCALE[512 if c.resolution > 256 else 256])
    if fam == "sit" and c.noise_scale is not None:
        raise ConfigError(f"noise_scale={c.noise_scale} is a JiT option (pixel noise std); SiT models have no noise "
                          "scale: leave it out.")
    if fam == "sit" and c.hflip:
        raise ConfigError("hflip with a SiT model: the latents are cached unflipped, so a flip would mirror the "
                          "teacher's image but not the model's input. Use --no-hflip (the REPA/iREPA LDM recipe "
                          "has no flips).")
    if c.epochs is not None and c.epochs <= 0:
        raise ConfigError(f"epochs={c.epochs} must be positive, or leave it out and give --steps.")
    for k in ("projector", "kernel_size", "spnorm", "gamma", "proj_coeff"):
        if getattr(c, k) is None:
            setattr(c, k, getattr(pre, k))
    _fill_pixelrepa(c, pre, fam)
    if pre.align and not c.teacher:
        raise ConfigError(f"Method {c.method!r} aligns to a teacher: pass --teacher (e.g. dinov2-vit-b, or hog "
                          "for a weight-free one), or use --method none.")
    if not pre.align:
        c.teacher = None
    if pre.align and c.spnorm:
        _check_single_spnorm(c.teacher, c.method)
    if c.steps < 1 or c.batch_size < 1:
        raise ConfigError(f"steps ({c.steps}) and batch_size ({c.batch_size}) must be positive.")
    if c.ckpt_every is None:
        c.ckpt_every = default_ckpt_every(c.steps)
    c.keep_steps = sorted({int(s) for s in c.keep_steps or []}) or None
    _check_ranges(c, fam)
    if c.latent_norm not in ("channel", "scalar"):
        raise ConfigError(f"latent_norm {c.latent_norm!r} must be 'channel' or 'scalar'.")
    if c.precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"precision {c.precision!r} must be auto, bf16 or fp32.")
    if c.projector not in ("mlp", "linear", "conv") and not (c.method == "pixelrepa" and c.projector == "mta"):
        raise ConfigError(f"projector {c.projector!r} must be mlp, linear or conv.")
    if fam == "jit":
        c.vae = None
    return c


def _fill_pixelrepa(c: TrainConfig, pre: presets.AlignPreset, fam: str) -> None:
    """PixelREPA's fields from its preset; each one an error with any other method (and the reverse)."""
    pix = c.method == "pixelrepa"
    for k in ("mask_ratio", "adapter_depth"):
        if getattr(c, k) is None:
            setattr(c, k, getattr(pre, k))
        elif not pix:
            raise ConfigError(f"{k} applies to --method pixelrepa only (this run uses {c.method!r}); leave it out.")
    if c.proj_dropout is not None and fam != "jit":
        raise ConfigError(f"proj_dropout applies to JiT models only ({c.model} has no dropout); leave it out.")
    if not pix:
        return
    if c.projector != "mta" or c.spnorm:
        raise ConfigError("PixelREPA aligns its Masked Transformer Adapter to the raw teacher tokens: --projector "
                          "and --spnorm do not apply (leave them out; --mask-ratio, --adapter-depth and "
                          "--proj-coeff tune it).")
    if c.teacher and len(comma_list(c.teacher)) > 1:
        raise ConfigError(f"PixelREPA aligns to one teacher; got --teacher {c.teacher!r}. Pass a single encoder id.")
    split = int(variant(c.model).get("in_context_start", 4))
    if c.encoder_depth is None:
        c.encoder_depth = split
    elif c.encoder_depth != split:
        raise ConfigError(f"PixelREPA aligns after {c.model}'s {split} encoder blocks (before its in-context "
                          f"tokens); --encoder-depth {c.encoder_depth} does not apply. Leave it out.")


def _check_single_spnorm(teacher: str, method: str) -> None:
    """A teacher variant that already normalises (``X@spnorm=γ``) under a method that normalises again."""
    from ..encoders.variants import is_variant, parse_variant

    for name in comma_list(teacher):
        if is_variant(name) and parse_variant(name).get("spnorm") is not None:
            raise ConfigError(f"Teacher {name!r} is spatially normalised by its spnorm transform and method "
                              f"{method!r} normalises the target again: use the plain teacher "
                              f"{parse_variant(name).base!r} with --gamma, or keep the variant and pass --no-spnorm.")


def steps_for_epochs(epochs: float, num_images: int, batch_size: int) -> int:
    """Optimizer steps of ``epochs`` passes: whole batches per epoch (a partial last batch is dropped, as a
    drop_last loader does), at least one step."""
    return max(1, round(epochs * max(1, num_images // batch_size)))


def _check_ranges(c: TrainConfig, fam: str) -> None:
    """Every numeric option in its valid range, with the range in the message (before any work is done)."""
    from ..checks import check_device, check_range

    check_range("lr", c.lr, 0, lo_open=True, hint="e.g. 1e-4.")
    for d in c.ema_decays or []:
        check_range("ema_decays", d, 0, 1, lo_open=True, hi_open=True, hint="e.g. 0.9999 (or 0.999 for short runs).")
    if c.betas is not None:
        if len(c.betas) != 2:
            raise ConfigError(f"betas={c.betas!r} needs two numbers, e.g. 0.9,0.999.")
        for b in c.betas:
            check_range("betas", b, 0, 1, hi_open=True)
    check_range("weight_decay", c.weight_decay, 0)
    check_range("grad_clip", c.grad_clip, 0, hint="0 turns clipping off.")
    check_range("warmup_epochs", c.warmup_epochs, 0)
    check_range("label_dropout", c.label_dropout, 0, 1, hi_open=True)
    check_range("gamma", c.gamma, 0, 1, hint="gamma scales the removed token mean (paper: 0.6 to 0.8).")
    check_range("proj_coeff", c.proj_coeff, 0)
    check_range("mask_ratio", c.mask_ratio, 0, 1, hi_open=True, hint="PixelREPA masks 0.2 of the tokens.")
    check_range("adapter_depth", c.adapter_depth, 1, hint="PixelREPA's adapter has 2 blocks.")
    check_range("proj_dropout", c.proj_dropout, 0, 1, hi_open=True, hint="JiT-H uses 0.2.")
    check_range("max_images", c.max_images, 1, hint="leave it out to use every image.")
    check_range("num_classes", c.num_classes, 1)
    check_range("log_every", c.log_every, 1)
    check_range("ckpt_every", c.ckpt_every, 1)
    check_range("keep_last", c.keep_last, 0, hint="0 keeps every checkpoint.")
    check_range("ckpt_minutes", c.ckpt_minutes, 0, hint="0 turns the wall-time checkpoints off.")
    for s in c.keep_steps or []:
        check_range("keep_steps", s, 1, hint="milestone steps are positive step numbers.")
    check_range("workers", c.workers, 0)
    check_range("teacher_resolution", c.teacher_resolution, 16)
    if c.encoder_depth is not None:
        from .models import variant

        depth = variant(c.model).get("depth")
        check_range("encoder_depth", c.encoder_depth, 1, depth, hint=f"{c.model} has {depth} blocks.")
    if c.kernel_size is not None and c.projector == "conv" and (c.kernel_size < 1 or c.kernel_size % 2 == 0):
        raise ConfigError(f"kernel_size={c.kernel_size} must be a positive odd number (1, 3, 5, ...).")
    if c.resolution is not None:
        from .models import variant

        patch = int(variant(c.model).get("patch", 1))
        step = patch * (8 if fam == "sit" and c.vae == "sd-vae-ft-mse" else 1)
        if fam == "sit" and c.vae != "sd-vae-ft-mse":
            step = 2 * patch  # the VAE's own factor is checked once it is loaded
        if c.resolution < step or c.resolution % step:
            what = f"the {c.model} patch size {patch}" + (" times the VAE factor 8" if step != patch and fam == "sit"
                                                        and c.vae == "sd-vae-ft-mse" else "")
            raise ConfigError(f"resolution={c.resolution} must be a positive multiple of {step} ({what}), "
                              f"e.g. {max(step, round(c.resolution / step) * step)}.")
    check_device(c.device)


def check_resume(saved: dict[str, Any], now: TrainConfig) -> None:
    """Fail when a resumed run would silently change something that changes the numbers."""
    diff = [k for k, v in now.as_dict().items()
            if k not in RESUMABLE_CHANGES and k in saved and _norm(saved[k]) != _norm(v)]
    if diff:
        detail = ", ".join(f"{k}: checkpoint {saved[k]!r} vs now {getattr(now, k)!r}" for k in diff)
        raise ConfigError(f"--resume with different settings ({detail}). Use the run's config.json "
                          "(--config OUT/config.json) or a new --out.")


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


#: what `spatialprobe sample` uses where neither a flag nor the run's recipe sets it: the official label
#: distribution of each family's evaluation (REPA's generate.py draws random labels, JiT's evaluation is
#: class-balanced), fp32 sampling and ADM's uint8 truncation
SAMPLE_LABELS = {"sit": "random", "jit": "balanced"}
SAMPLE_PRECISION = "fp32"
SAMPLE_UINT8 = "truncate"


@dataclass
class SampleConfig:
    """Options of ``spatialprobe sample``."""

    run: str = "runs/train"            #: run folder (uses the newest checkpoint) or a checkpoint file
    out: str | None = None             #: default: <run>/samples-<step>
    n: int = 64
    batch_size: int = 64
    sampler: str | None = None         #: sde | ode-euler | ode-heun (SiT), heun | euler (JiT)
    steps: int | None = None           #: default: 250 (sde), 50 (ode, JiT)
    cfg: float = 1.0
    interval: list[float] | None = None  #: guidance interval in the family's own time [default: SiT 0,1; JiT 0.1,1]
    weights: str = "auto"              #: auto (the first EMA, or the raw model when the run is too short for it) | ema | ema2 | model
    labels: str | None = None          #: balanced (i mod C) | random (uniform, seeded) [default: the run's recipe, else SiT random, JiT balanced]
    precision: str | None = None       #: fp32 | bf16 (autocast, as JiT's evaluation) [default: the run's recipe, else fp32]
    uint8: str | None = None           #: truncate (ADM) | round (JiT) [default: the run's recipe, else truncate]
    seed: int = 0
    device: str = "auto"
    png: bool = True
    weights_dir: str | None = None

    def __post_init__(self) -> None:
        from ..checks import check_range

        check_range("n", self.n, 1, hint="the number of images to generate.")
        check_range("batch_size", self.batch_size, 1)
        check_range("steps", self.steps, 1, hint="leave it out for the sampler's default (250 sde, else 50).")
        check_range("cfg", self.cfg, 0, hint="1.0 turns guidance off.")
        if self.weights not in SAMPLE_WEIGHTS:
            raise ConfigError(f"weights={self.weights!r} must be one of {', '.join(SAMPLE_WEIGHTS)}.")
        for name, allowed in (("labels", ("balanced", "random")), ("precision", ("fp32", "bf16")),
                              ("uint8", ("truncate", "round"))):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ConfigError(f"{name}={value!r} must be {' or '.join(allowed)}.")
        if self.interval is not None:
            if len(self.interval) != 2:
                raise ConfigError(f"interval {self.interval!r} needs two numbers: low,high.")
            lo, hi = self.interval
            check_range("interval low", lo, 0, 1)
            check_range("interval high", hi, lo, 1, hint="low <= high.")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: the weights ``sample`` can use
SAMPLE_WEIGHTS = ("auto", "ema", "ema1", "ema2", "model")
