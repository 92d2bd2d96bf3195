"""`spatialprobe train`, `spatialprobe sample`, `spatialprobe ls presets` and `spatialprobe ls recipes`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import typer

from ._common import cli_errors, split_list, config_option, device_option, default_of, help_default, help_derived, show_value

TRAIN = "spatialprobe.train.config:TrainConfig"
SAMPLE = "spatialprobe.train.config:SampleConfig"
BACKBONE = "spatialprobe.train.models.common:BackboneConfig"


def _floats(value: str | None, name: str) -> list[float] | None:
    from ..errors import ConfigError

    items = split_list(value)
    if items is None:
        return None
    try:
        return [float(v) for v in items]
    except ValueError:
        raise ConfigError(f"--{name} {value!r}: expected comma-separated numbers, e.g. 0.9,0.95.") from None


def _ints(value: str | None, name: str) -> list[int] | None:
    from ..errors import ConfigError

    items = split_list(value)
    if items is None:
        return None
    try:
        return [int(v) for v in items]
    except ValueError:
        raise ConfigError(f"--{name} {value!r}: expected comma-separated step numbers, e.g. 50000,100000.") from None


def _per_model(name: str, text: str) -> str:
    """Help whose default is the per-model value of ``name`` in ``train.config.MODEL_DEFAULTS``."""

    def render() -> str:
        from ..train.config import JIT_BLR, MODEL_DEFAULTS

        parts = []
        for model, values in MODEL_DEFAULTS.items():
            if name in values:
                value = values[name]
                if value is None and name == "lr":  # JiT: the base lr scaled by the global batch
                    parts.append(f"{model} {show_value(JIT_BLR)}*batch/256")
                elif value is not None:
                    parts.append(f"{model} {show_value(value)}")
        return ", ".join(parts)

    return help_derived(f"spatialprobe.train.config:MODEL_DEFAULTS.{name}", text, render)


def _encoder_depth() -> str:
    """The backbone's alignment block, and the models whose variant sets another (``8; sit-tiny 2, ...``)."""
    from ..train.models import names, variant

    base = default_of(BACKBONE, "encoder_depth")
    other = [f"{m} {variant(m)['encoder_depth']}" for m in names()
             if variant(m).get("encoder_depth", base) != base]
    return "; ".join([show_value(base), ", ".join(other)] if other else [show_value(base)])


def _ckpt_every() -> str:
    """The cadence a run gets without --ckpt-every, with its bounds read from ``default_ckpt_every``."""
    from ..train.checkpoint import default_ckpt_every

    least, most = default_ckpt_every(1), default_ckpt_every(10 ** 12)
    return f"{show_value(least)}, or a tenth of --steps when that is more, at most {show_value(most)}"


def _teacher_side() -> str:
    from ..train.config import TEACHER_MIN_SIDE

    return f"max({show_value(TEACHER_MIN_SIDE)}, --resolution)"


def _pixelrepa_preset(name: str) -> str:
    """A field of the ``pixelrepa`` preset, as ``spatialprobe ls presets`` lists it."""
    from ..train.presets import get

    return f"{show_value(getattr(get('pixelrepa', 'jit'), name))} (the pixelrepa preset)"


def _noise_scale() -> str:
    """JiT's noise std by image side, as ``train.config.JIT_NOISE_SCALE`` holds it."""
    from ..train.config import JIT_NOISE_SCALE

    return ", ".join(f"{show_value(v)} at {side} px" for side, v in JIT_NOISE_SCALE.items())


def _sample_fallback(name: str) -> Callable[[], str]:
    """What ``sample`` uses for ``name`` without a flag: the run's recipe, else ``train.config``'s value."""

    def render() -> str:
        from ..train import config

        value = getattr(config, name)
        shown = (", ".join(f"{fam} {v}" for fam, v in value.items()) if isinstance(value, dict)
                 else show_value(value))
        return f"the run's recipe, else {shown}"

    return render


def _train_help() -> str:
    from ..train.presets import format_table
    from ..train.recipes import names as recipe_names

    return f"""Train a SiT (latent) or JiT (pixel) model with REPA / iREPA alignment to a zoo encoder.

Writes OUT/config.json (the resolved config and recipe), OUT/log.jsonl (one JSON object per logged step: step, loss, denoise_loss, proj_loss, grad_norm, lr, steps_per_s) and OUT/checkpoints/NNNNNNN.pt (model, EMAs, optimizer, config). Checkpoints: written every --ckpt-every steps, at each --keep-steps milestone, at the end and at least every --ckpt-minutes; kept: the newest --keep-last, the milestones and the last (older ones are deleted only after a newer one is written and read back). The expected disk use is printed first, and the run refuses to start when the output disk lacks it. Options: defaults, then --recipe, then --config FILE, then flags (flags win). --resume continues the newest checkpoint in OUT and ends with the same weights as an uninterrupted run.

Models: sit-b/2, sit-l/2, sit-xl/2, sit-tiny (SD-VAE latents; sit-tiny uses a tiny random VAE) and jit-b/16, jit-l/16, jit-h/16, jit-b/32, jit-l/32, jit-h/32 (512 px), jit-tiny (pixels).

Recipes (--recipe; fields and official commands: spatialprobe ls recipes): {", ".join(recipe_names())}.

Methods (--method) are presets, per family (notes: spatialprobe ls presets); --projector, --kernel-size, --spnorm/--no-spnorm, --gamma and --proj-coeff override single fields:

{format_table(notes=False)}

Examples:

  spatialprobe train --model jit-tiny --method irepa --teacher hog --images builtin:digits --steps 80 --out runs/demo

  spatialprobe train --model sit-xl/2 --method irepa --teacher dinov2-vit-b --images /data/imagenet/train --steps 100000 --ckpt-every 50000 --weights-dir /weights --out runs/sitxl

  torchrun --nproc-per-node 8 -m spatialprobe.cli train --config runs/sitxl/config.json --resume
"""


def register(app: typer.Typer, ls_app: typer.Typer) -> None:
    @app.command("train", help=_train_help())
    @cli_errors
    def train_cmd(
        model: Optional[str] = typer.Option(None, "--model", "-m", help=help_default(TRAIN, "model", "Model name")),
        recipe: Optional[str] = typer.Option(None, "--recipe", help="An official recipe (spatialprobe ls recipes); "
                                             "options given here win over its fields."),
        method: Optional[str] = typer.Option(None, "--method", help=help_default(TRAIN, "method", "Alignment preset: repa, irepa, "
                                                               "irepa-official-ldm, conv-only, norm-only, pixelrepa (JiT), none")),
        teacher: Optional[str] = typer.Option(None, "--teacher", "-t", help="Zoo encoder id(s), comma-separated "
                                              "(see `spatialprobe ls encoders`)."),
        images: Optional[str] = typer.Option(None, "--images", "-i", help="Image source: builtin:digits, a "
                                             "folder, an ImageNet-style tree or a list file."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help=help_default(TRAIN, "out", "Run folder")),
        steps: Optional[int] = typer.Option(None, "--steps", help=help_default(TRAIN, "steps", "Optimizer steps")),
        epochs: Optional[float] = typer.Option(None, "--epochs", help="Passes over the images instead of --steps "
                                               "(whole batches per epoch)."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help=_per_model("batch_size", "Global batch")),
        lr: Optional[float] = typer.Option(None, "--lr", help=_per_model("lr", "Learning rate")),
        betas: Optional[str] = typer.Option(None, "--betas", help="AdamW betas, e.g. 0.9,0.95."),
        weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help=help_default(TRAIN, "weight_decay", "AdamW weight decay")),
        grad_clip: Optional[float] = typer.Option(None, "--grad-clip", help=_per_model("grad_clip", "Max grad norm, 0 = off")),
        warmup_epochs: Optional[float] = typer.Option(None, "--warmup-epochs", help=_per_model("warmup_epochs", "Linear lr warm-up")),
        ema_decays: Optional[str] = typer.Option(None, "--ema-decays", help="EMA decays, e.g. 0.9999,0.9996."),
        encoder_depth: Optional[int] = typer.Option(None, "--encoder-depth", help=help_derived(
            f"{BACKBONE}.encoder_depth", "Align after this block", _encoder_depth)),
        projector: Optional[str] = typer.Option(None, "--projector", help="Override: mlp, linear or conv."),
        kernel_size: Optional[int] = typer.Option(None, "--kernel-size", help="Override the conv kernel (odd)."),
        spnorm: Optional[bool] = typer.Option(None, "--spnorm/--no-spnorm", help="Override the target spatial norm."),
        gamma: Optional[float] = typer.Option(None, "--gamma", help="Override the spatial-norm gamma."),
        proj_coeff: Optional[float] = typer.Option(None, "--proj-coeff", help="Override the projection-loss weight."),
        mask_ratio: Optional[float] = typer.Option(None, "--mask-ratio", help=help_derived(
            "spatialprobe.train.presets:PIXELREPA_MASK_RATIO", "PixelREPA: share of the adapter's input tokens masked",
            lambda: _pixelrepa_preset("mask_ratio"))),
        adapter_depth: Optional[int] = typer.Option(None, "--adapter-depth", help=help_derived(
            "spatialprobe.train.presets:PIXELREPA_DEPTH", "PixelREPA: blocks of the Masked Transformer Adapter",
            lambda: _pixelrepa_preset("adapter_depth"))),
        proj_dropout: Optional[float] = typer.Option(None, "--proj-dropout", help="JiT: dropout in the middle half "
                                                     "of the blocks (none when unset; the JiT-H recipe uses 0.2)."),
        resolution: Optional[int] = typer.Option(None, "--resolution", help="Image side fed to the model (SiT: to the VAE)."),
        teacher_resolution: Optional[int] = typer.Option(None, "--teacher-resolution", help=help_derived(
            "spatialprobe.train.config:TEACHER_MIN_SIDE", "Image side of the teacher's copy of each image; above "
            "256 each encoder's input grows with it (DINOv2 448 px at 512)", _teacher_side)),
        noise_scale: Optional[float] = typer.Option(None, "--noise-scale", help=help_derived(
            "spatialprobe.train.config:JIT_NOISE_SCALE", "JiT noise std, for training and sampling, by "
            "--resolution", _noise_scale)),
        random_teacher: bool = typer.Option(False, "--random-teacher", help="Teacher architecture with random init (smoke tests)."),
        weights_dir: Optional[str] = typer.Option(None, "--weights-dir", help="Folder with encoder and VAE weights."),
        hflip: Optional[bool] = typer.Option(None, "--hflip/--no-hflip", help=_per_model("hflip", "Random horizontal flips")),
        vae: Optional[str] = typer.Option(None, "--vae", help="SiT VAE: sd-vae-ft-mse, tiny-random or a diffusers folder."),
        latent_norm: Optional[str] = typer.Option(None, "--latent-norm", help=help_default(TRAIN, "latent_norm", "channel (per-channel stats) or scalar (0.18215)")),
        latents_dir: Optional[str] = typer.Option(None, "--latents-dir", help="Latent cache root (default OUT/latents)."),
        num_classes: Optional[int] = typer.Option(None, "--num-classes", help="Classes (default: from the labels)."),
        max_images: Optional[int] = typer.Option(None, "--max-images", help="Use only the first N images."),
        seed: Optional[int] = typer.Option(None, "--seed", help=help_default(TRAIN, "seed", "Seed")),
        device: Optional[str] = device_option(TRAIN),
        precision: Optional[str] = typer.Option(None, "--precision", help=help_default(TRAIN, "precision", "auto (bf16 on CUDA), bf16 or fp32")),
        compile_: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the model; "
                                                "falls back to eager with a warning if it fails "
                                                "[default: on for the full-size models on CUDA, off on CPU and for "
                                                "the tiny ones]."),
        log_every: Optional[int] = typer.Option(None, "--log-every", help=help_default(TRAIN, "log_every", "Log every N steps")),
        ckpt_every: Optional[int] = typer.Option(None, "--ckpt-every", help=help_derived(
            f"{TRAIN}.ckpt_every", "Checkpoint every N steps (always at the end too)", _ckpt_every)),
        keep_last: Optional[int] = typer.Option(None, "--keep-last", help=help_default(
            TRAIN, "keep_last", "Keep the newest N checkpoints, plus the --keep-steps ones and the last; 0 = keep all")),
        keep_steps: Optional[str] = typer.Option(None, "--keep-steps", help="Milestone steps, comma-separated: "
                                                 "always checkpointed and never deleted (e.g. 50000,100000)."),
        ckpt_minutes: Optional[float] = typer.Option(None, "--ckpt-minutes", help=help_default(
            TRAIN, "ckpt_minutes", "Also checkpoint when this many minutes passed since the last one; 0 = off")),
        workers: Optional[int] = typer.Option(None, "--workers", help=help_default(TRAIN, "workers", "DataLoader workers")),
        resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in OUT."),
        config: Optional[Path] = config_option(),
    ) -> None:
        from ..config import load_config_file
        import logging

        from ..runtime import is_rank0
        from ..train.loop import train

        if not is_rank0():  # torchrun: the other ranks report only warnings and errors
            logging.getLogger("spatialprobe").setLevel(logging.WARNING)

        cfg_file = config
        if config is not None and config.suffix == ".json":
            data = load_config_file(config)
            if "config" in data and isinstance(data["config"], dict):  # a run's config.json record
                import json
                import tempfile

                tmp = Path(tempfile.mkdtemp()) / "config.json"
                tmp.write_text(json.dumps(data["config"]))
                cfg_file = tmp
        res = train(config_file=cfg_file, model=model, recipe=recipe, epochs=epochs, noise_scale=noise_scale,
                    method=method, teacher=teacher, images=images,
                    out=str(out) if out else None, steps=steps, batch_size=batch_size, lr=lr,
                    betas=_floats(betas, "betas"), weight_decay=weight_decay, grad_clip=grad_clip,
                    warmup_epochs=warmup_epochs, ema_decays=_floats(ema_decays, "ema-decays"),
                    encoder_depth=encoder_depth, projector=projector, kernel_size=kernel_size, spnorm=spnorm,
                    gamma=gamma, proj_coeff=proj_coeff, mask_ratio=mask_ratio, adapter_depth=adapter_depth,
                    proj_dropout=proj_dropout, resolution=resolution,
                    teacher_resolution=teacher_resolution, teacher_pretrained=False if random_teacher else None,
                    weights_dir=weights_dir, hflip=hflip, vae=vae, latent_norm=latent_norm,
                    latents_dir=latents_dir, num_classes=num_classes, max_images=max_images, seed=seed,
                    device=device, precision=precision, compile=compile_, log_every=log_every,
                    ckpt_every=ckpt_every, keep_last=keep_last, keep_steps=_ints(keep_steps, "keep-steps"),
                    ckpt_minutes=ckpt_minutes, workers=workers, resume=True if resume else None)
        if res.rank == 0:  # under torchrun every rank returns; one summary
            typer.echo(f"step {res.step}: loss {res.loss:.4f}\nwrote {res.out / 'config.json'}, {res.log_path}, "
                       f"{res.checkpoint}")

    @app.command("sample")
    @cli_errors
    def sample_cmd(
        run: Path = typer.Argument(..., help="Run folder (newest checkpoint) or a checkpoint file."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default RUN/samples-STEP)."),
        n: Optional[int] = typer.Option(None, "--n", help=help_default(SAMPLE, "n", "Number of images")),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help=help_default(SAMPLE, "batch_size", "Images per batch")),
        sampler: Optional[str] = typer.Option(None, "--sampler", help="SiT: sde (default), ode-euler, ode-heun. "
                                              "JiT: heun (default), euler."),
        steps: Optional[int] = typer.Option(None, "--steps", help="Steps (default 250 for sde, else 50)."),
        cfg: Optional[float] = typer.Option(None, "--cfg", help=help_default(SAMPLE, "cfg", "Guidance scale, 1 = off")),
        interval: Optional[str] = typer.Option(None, "--interval", help="Guidance interval low,high in the "
                                               "family's time (SiT t=1 noise, default 0,1; JiT t=0 noise, default 0.1,1)."),
        weights: Optional[str] = typer.Option(None, "--weights", help=help_default(SAMPLE, "weights", "auto, ema, ema2 or model; auto = the first "
                                                                  "EMA, or the raw model when the run is too short for "
                                                                  "the EMA to have moved")),
        seed: Optional[int] = typer.Option(None, "--seed", help=help_default(SAMPLE, "seed", "Seed")),
        device: Optional[str] = device_option(SAMPLE),
        no_png: bool = typer.Option(False, "--no-png", help="Write only samples.npz."),
        weights_dir: Optional[str] = typer.Option(None, "--weights-dir", help="Folder with the VAE weights (SiT)."),
        labels: Optional[str] = typer.Option(None, "--labels", help=help_derived(
            "spatialprobe.train.config:SAMPLE_LABELS", "balanced or random (REPA's generate.py draws random "
            "labels, JiT's evaluation is balanced)", _sample_fallback("SAMPLE_LABELS"))),
        precision: Optional[str] = typer.Option(None, "--precision", help=help_derived(
            "spatialprobe.train.config:SAMPLE_PRECISION", "fp32, or bf16 autocast as JiT's evaluation",
            _sample_fallback("SAMPLE_PRECISION"))),
        uint8: Optional[str] = typer.Option(None, "--uint8", help=help_derived(
            "spatialprobe.train.config:SAMPLE_UINT8", "truncate (ADM) or round (JiT) when writing uint8",
            _sample_fallback("SAMPLE_UINT8"))),
        config: Optional[Path] = config_option(),
    ) -> None:
        """Generate images from a training run: ADM-style samples.npz (arr_0 uint8 N,H,W,3 and labels) and PNGs.

        SiT uses Euler-Maruyama (250 steps) or Euler/Heun ODE; JiT uses Heun (50 steps). Guidance is
        v_u + w(v_c - v_u) (SiT) or on the predicted image (JiT), inside the interval.

        Examples:

          spatialprobe sample runs/demo --n 100 --steps 50

          spatialprobe sample runs/sitxl-irepa-dinov2b --n 50000 --batch-size 256 --sampler sde --steps 250 --weights-dir /weights
        """
        from ..train.sample import sample

        path = sample(config_file=config, run=str(run), out=str(out) if out else None, n=n, batch_size=batch_size,
                      sampler=sampler, steps=steps, cfg=cfg, interval=_floats(interval, "interval"),
                      weights=weights, seed=seed, device=device, png=False if no_png else None,
                      weights_dir=weights_dir, labels=labels, precision=precision, uint8=uint8)
        typer.echo(f"wrote {path / 'samples.npz'}" + ("" if no_png else f" and {path / 'png'}/"))

    @ls_app.command("presets")
    @cli_errors
    def ls_presets() -> None:
        """List the REPA/iREPA alignment presets per model family (projector, kernel, spatial norm, gamma, coeff)."""
        from ..train.presets import format_table

        typer.echo(format_table())

    @ls_app.command("recipes")
    @cli_errors
    def ls_recipes() -> None:
        """List the official recipes (spatialprobe train --recipe NAME): model, batch, lr rule, length, alignment,
        sampling and evaluation, with the official command each one reproduces."""
        from ..train.recipes import format_table as recipe_table

        typer.echo(recipe_table())
