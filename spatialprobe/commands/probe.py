"""`spatialprobe probe` (linear probe on cached features) and `spatialprobe inject` (CLS/mean injection)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..schema import PROPERTIES
from ._common import cli_errors, split_list, config_option, device_option, help_default, show_value

PROBE = "spatialprobe.probe:ProbeConfig"
INJECT = "spatialprobe.inject:InjectConfig"


def _floats(value: Optional[str], what: str) -> Optional[list[float]]:
    from ..errors import ConfigError

    items = split_list(value)
    if items is None:
        return None
    try:
        return [float(v) for v in items]
    except ValueError:
        raise ConfigError(f"{what} {value!r} must be comma-separated numbers, e.g. 1e-3,1e-2.") from None


def _span(values) -> str:
    """A long grid of numbers in a few words: ``13 from 1e-05 to 0.1``."""
    return f"{len(values)} from {show_value(min(values))} to {show_value(max(values))}"


def register(app: typer.Typer, ls_app: typer.Typer) -> None:
    @app.command("probe")
    @cli_errors
    def probe_cmd(
        features: Optional[str] = typer.Option(None, "--features", "-f", help="Feature store (from `spatialprobe extract`)."),
        labels: Optional[str] = typer.Option(None, "--labels", "-l",
                                             help="builtin:digits | builtin:lfw | image folder with class subfolders | "
                                                  "CSV of 'id,label' rows [default: labels stored with the features]."),
        val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help=help_default(PROBE, "val_fraction", "Stratified val split")),
        val_labels: Optional[str] = typer.Option(None, "--val-labels", help="Separate validation labels (ids of the same store)."),
        pool: Optional[str] = typer.Option(None, "--pool", help=help_default(PROBE, "pool", "mean (official none-mean) | cls")),
        normalize: Optional[str] = typer.Option(None, "--normalize", help=help_default(PROBE, "normalize", "standardize | l2 | none")),
        lrs: Optional[str] = typer.Option(None, "--lrs", help=help_default(PROBE, "lrs", "Comma-separated learning rates",
                                                                 show=_span)),
        weight_decays: Optional[str] = typer.Option(None, "--weight-decays", help=help_default(PROBE, "weight_decays", "Comma-separated weight decays")),
        epochs: Optional[int] = typer.Option(None, "--epochs", help=help_default(PROBE, "epochs", "Epochs")),
        min_steps: Optional[int] = typer.Option(None, "--min-steps", help=help_default(PROBE, "min_steps", "Small sets get more epochs to reach this many steps")),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help=help_default(PROBE, "batch_size", "Mini-batch")),
        precision: Optional[str] = typer.Option(None, "--precision", help=help_default(PROBE, "precision", "fp32 | bf16 matrix products")),
        seed: Optional[int] = typer.Option(None, "--seed", help=help_default(PROBE, "seed", "Seed of split and shuffling")),
        device: Optional[str] = device_option(PROBE),
        ignore_missing: bool = typer.Option(False, "--ignore-missing", help="Skip feature ids that have no label."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder: result.json, grid.csv, config.json."),
        config: Optional[Path] = config_option(),
    ) -> None:
        """Linear-probe cached features: multinomial logistic regression on mean-pooled patch tokens (the
        official none-mean), the whole lr × weight-decay grid trained at once as one batched set of heads.
        Writes best_val_acc (fraction), the best setting, the whole grid and the protocol.

        Examples:

          spatialprobe extract --encoder hog --images builtin:digits --out F

          spatialprobe probe --features F --labels builtin:digits --out P

          spatialprobe probe --features F --labels labels.csv --pool cls --epochs 20 --out P
        """
        from ..probe import probe

        res = probe(config=config, features=features, labels=labels, val_fraction=val_fraction, val_labels=val_labels,
                    pool=pool, normalize=normalize, lrs=_floats(lrs, "--lrs"),
                    weight_decays=_floats(weight_decays, "--weight-decays"), epochs=epochs, min_steps=min_steps,
                    batch_size=batch_size, precision=precision, seed=seed, device=device,
                    ignore_missing=ignore_missing or None, out=str(out))
        typer.echo(f"best_val_acc {res.best_val_acc:.4f}  (lr {res.best['lr']:g}, weight decay "
                   f"{res.best['weight_decay']:g}; {res.n_train} train / {res.n_val} val, {res.n_classes} classes, "
                   f"{len(res.grid)} heads, {res.protocol['epochs']} epochs, {res.seconds:.1f} s)")
        typer.echo(f"wrote {out / 'result.json'}, {out / 'grid.csv'}, {out / 'config.json'}")

    @app.command("inject")
    @cli_errors
    def inject_cmd(
        encoder: Optional[str] = typer.Option(None, "--encoder", "-e", help="Encoder to run once (see `spatialprobe ls encoders`)."),
        images: Optional[str] = typer.Option(None, "--images", "-i", help="Image source: builtin:digits, a folder, a list file."),
        features: Optional[str] = typer.Option(None, "--features", "-f", help="Instead of --encoder: a store with patch (+prefix) tokens."),
        labels: Optional[str] = typer.Option(None, "--labels", "-l", help="Labels [default: the image source's own]."),
        alpha: Optional[str] = typer.Option(None, "--alpha", "-a", help=help_default(INJECT, "alphas", "Comma-separated α values")),
        form: Optional[str] = typer.Option(None, "--form", help=help_default(INJECT, "form", "official: α·g+(1−α)·p | additive: p+α·g")),
        mix: Optional[str] = typer.Option(None, "--mix", help=help_default(INJECT, "mix", "cls | mean | auto (cls where the encoder has one)")),
        masks: Optional[str] = typer.Option(None, "--masks", help="Folder of <id>.png FG masks for SRSS (NaN without)."),
        resolution: Optional[int] = typer.Option(None, "--resolution", help=help_default(INJECT, "resolution", "Image resolution")),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help=help_default(INJECT, "batch_size", "Encoder batch")),
        device: Optional[str] = device_option(INJECT),
        weights_dir: Optional[str] = typer.Option(None, "--weights-dir", help="Where the encoder weights are."),
        random_init: bool = typer.Option(False, "--random-init", help="Random-init encoder (no weights; smoke tests)."),
        epochs: Optional[int] = typer.Option(None, "--epochs", help=help_default(INJECT, "epochs", "Probe epochs")),
        seed: Optional[int] = typer.Option(None, "--seed", help=help_default(INJECT, "seed", "Seed")),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder: injection.csv/.png/.pdf, result.json, config.json."),
        no_figure: bool = typer.Option(False, "--no-figure", help="Skip the figure."),
        config: Optional[Path] = config_option(),
    ) -> None:
        """Global-information injection ablation: mix the CLS token (mean token for encoders without one) into
        every patch token for each α and report LP accuracy and LDS/CDS/SRSS/RMSC per α. The encoder runs once;
        mixing happens in memory. Writes a table and a figure (LP and LDS vs α).

        Examples:

          spatialprobe inject --encoder dinov2-vit-b --alpha 0,0.1,0.2,0.3,0.4,0.5 --images imagenet/val --out inj/

          spatialprobe inject --features F --form additive --out inj/
        """
        from ..inject import inject

        table = inject(config=config, encoder=encoder, images=images, features=features, labels=labels,
                       alphas=_floats(alpha, "--alpha"), form=form, mix=mix, masks=masks, resolution=resolution,
                       batch_size=batch_size, device=device, weights_dir=weights_dir,
                       random_init=random_init or None, epochs=epochs, seed=seed, out=str(out),
                       figure=False if no_figure else None)
        cols = ["alpha", *PROPERTIES]
        typer.echo(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-"))
        typer.echo(f"\nwrote {out / 'injection.csv'}, {out / 'result.json'}"
                   + ("" if no_figure else f", {out / 'injection.png'} (+ .pdf)"))
