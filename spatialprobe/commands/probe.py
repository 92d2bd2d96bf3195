"""`spatialprobe probe` (linear probe on cached features) and `spatialprobe inject` (CLS/mean injection)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..schema import PROPERTIES
from ._common import cli_errors, split_list, config_option, device_option


def _floats(value: Optional[str], what: str) -> Optional[list[float]]:
    from ..errors import ConfigError

    items = split_list(value)
    if items is None:
        return None
    try:
        return [float(v) for v in items]
    except ValueError:
        raise ConfigError(f"{what} {value!r} must be comma-separated numbers, e.g. 1e-3,1e-2.") from None


def register(app: typer.Typer, ls_app: typer.Typer) -> None:
    @app.command("probe")
    @cli_errors
    def probe_cmd(
        features: Optional[str] = typer.Option(None, "--features", "-f", help="Feature store (from `spatialprobe extract`)."),
        labels: Optional[str] = typer.Option(None, "--labels", "-l",
                                             help="builtin:digits | builtin:lfw | image folder with class subfolders | "
                                                  "CSV of 'id,label' rows [default: labels stored with the features]."),
        val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="Stratified val split [default: 0.2]."),
        val_labels: Optional[str] = typer.Option(None, "--val-labels", help="Separate validation labels (ids of the same store)."),
        pool: Optional[str] = typer.Option(None, "--pool", help="mean (official none-mean) | cls [default: mean]."),
        normalize: Optional[str] = typer.Option(None, "--normalize", help="standardize | l2 | none [default: standardize]."),
        lrs: Optional[str] = typer.Option(None, "--lrs", help="Comma-separated learning rates [default: 13 from 1e-5 to 1e-1]."),
        weight_decays: Optional[str] = typer.Option(None, "--weight-decays", help="Comma-separated weight decays [default: 0,1e-4,1e-3]."),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs [default: 10]."),
        min_steps: Optional[int] = typer.Option(None, "--min-steps", help="Small sets get more epochs to reach this many steps [default: 1000]."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Mini-batch [default: 128]."),
        precision: Optional[str] = typer.Option(None, "--precision", help="fp32 | bf16 matrix products [default: fp32]."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Seed of split and shuffling [default: 0]."),
        device: Optional[str] = device_option(),
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
        alpha: Optional[str] = typer.Option(None, "--alpha", "-a", help="Comma-separated α values [default: 0,0.1,0.2,0.3,0.4,0.5]."),
        form: Optional[str] = typer.Option(None, "--form", help="official: α·g+(1−α)·p | additive: p+α·g [default: official]."),
        mix: Optional[str] = typer.Option(None, "--mix", help="cls | mean | auto (cls where the encoder has one) [default: auto]."),
        masks: Optional[str] = typer.Option(None, "--masks", help="Folder of <id>.png FG masks for SRSS (NaN without)."),
        resolution: Optional[int] = typer.Option(None, "--resolution", help="Image resolution [default: 256]."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Encoder batch [default: 32]."),
        device: Optional[str] = device_option(),
        weights_dir: Optional[str] = typer.Option(None, "--weights-dir", help="Where the encoder weights are."),
        random_init: bool = typer.Option(False, "--random-init", help="Random-init encoder (no weights; smoke tests)."),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="Probe epochs [default: 10]."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Seed [default: 0]."),
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
