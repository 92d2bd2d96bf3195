"""`spatialprobe fd-digits`: the toy FD protocol of the digits mini study (not gFID)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import cli_errors, config_option, help_default

CONFIG = "spatialprobe.fid.digits:DigitsFdConfig"


def register(app: typer.Typer, ls_app: typer.Typer) -> None:
    @app.command("fd-digits")
    @cli_errors
    def fd_digits_cmd(
        samples: str = typer.Argument(..., help="ADM .npz (arr_0 uint8 [N,H,W,3]), a folder of PNGs, or the "
                                                "output folder of `spatialprobe sample`."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for fd_digits.json and config.json "
                                           "[default: print only]."),
        seed: Optional[int] = typer.Option(None, "--seed", help=help_default(CONFIG, "seed", "Training seed of the feature CNN")),
        cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help="Cache of the CNN and the reference "
                                                "statistics [default: $SPATIALPROBE_CACHE or ~/.cache/spatialprobe]."),
        config: Optional[Path] = config_option(),
    ) -> None:
        """Toy Fréchet distance of generated digits (fd_digits): the penultimate features of a small CNN
        trained once, deterministically, on scikit-learn's digits (train split, cached), against the held-out
        digits. The digits analogue of Inception for the CPU mini study; it is not gFID and is not comparable
        with it. Samples are resized to 32 px when needed. Prints the protocol id, the sample count and the
        CNN's held-out accuracy.

        Examples:

          spatialprobe fd-digits runs/jit-hog/samples-0000080 --out eval/

          spatialprobe fd-digits samples.npz --seed 1
        """
        from ..fid.digits import evaluate_digits

        rec = evaluate_digits(samples, out=out, config=config, seed=seed, cache_dir=cache_dir)
        typer.echo(f"protocol {rec['protocol']}  samples {rec['n_samples']}  classifier held-out accuracy "
                   f"{rec['classifier_acc']:.4f}  sha256 {rec['classifier_sha256'][:12]}…")
        typer.echo(f"fd_digits    {rec['fd']:.4f}")
        if out is not None:
            typer.echo(f"wrote {out / 'fd_digits.json'}, {out / 'config.json'}")
