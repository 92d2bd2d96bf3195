"""`spatialprobe predict`: where would a new encoder land on the reference property-vs-gFID scatter?"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import cli_errors, config_option, help_default, split_list

CONFIG = "spatialprobe.predict:PredictConfig"


def register(app: typer.Typer, ls_app: typer.Typer) -> None:
    @app.command("predict")
    @cli_errors
    def predict_cmd(
        table: Path = typer.Option(..., "--table", "-t",
                                   help="New encoders: a CSV/parquet with an 'encoder' column and some of "
                                        "lp_acc,lds,cds,srss,rmsc, a `spatialprobe metrics` output folder or a "
                                        "study folder (its correlate/table.csv: one row per encoder)."),
        reference: Optional[str] = typer.Option(None, "--reference", "-r",
                                                help=help_default(CONFIG, "reference", "Packaged table (see `spatialprobe ls references`) "
                                                                  "or your own CSV with the properties and gfid")),
        x: Optional[str] = typer.Option(None, "--x", help=help_default(CONFIG, "x", "Comma-separated properties")),
        y: Optional[str] = typer.Option(None, "--y", help=help_default(CONFIG, "y", "Column predicted")),
        confidence: Optional[float] = typer.Option(None, "--confidence", help=help_default(CONFIG, "confidence", "Prediction-interval level")),
        n_boot: Optional[int] = typer.Option(None, "--n-boot", help=help_default(CONFIG, "n_boot", "Bootstrap replicates")),
        seed: Optional[int] = typer.Option(None, "--seed", help=help_default(CONFIG, "seed", "Seed of the bootstrap")),
        out: Path = typer.Option(..., "--out", "-o",
                                 help="Output folder: predictions.csv, prediction_panel.png/.pdf, config.json."),
        no_figure: bool = typer.Option(False, "--no-figure", help="Skip the figure."),
        config: Optional[Path] = config_option(),
    ) -> None:
        """Predict the gFID a new encoder would reach as a REPA teacher from each of its properties: the
        least-squares line over the reference points, a 95 % prediction interval (t-based and bootstrap over
        reference rows), its rank among the reference encoders, and a 1×5 panel with the new encoders
        highlighted. Protocol differences from the reference (images, resolution, radii, masks) are
        printed as caveats.

        Examples:

          spatialprobe predict --table new.csv --out out/predict

          spatialprobe predict --table out/metrics --reference sit-xl-100k --x lds,cds,rmsc --out out/predict
        """
        from ..predict import predict

        if table.is_dir() and (table / "study.yaml").is_file():
            # a study's results.csv has a row per encoder x method x seed; its wide table has one per encoder
            wide = table / "correlate" / "table.csv"
            if not wide.is_file():
                from ..errors import InputFileError

                raise InputFileError(f"study folder {str(table)!r} has no correlate/table.csv (one row per encoder) "
                                     f"yet; finish the study (`spatialprobe study status {table}`) first.")
            table = wide
        res = predict(config=config, table=str(table), reference=reference, x=split_list(x), y=y,
                      confidence=confidence, n_boot=n_boot, seed=seed, out=str(out),
                      figure=False if no_figure else None)
        p = res.predictions
        n_ref = int(p["n_ref"].max()) if len(p) else 0
        show = p[["encoder", "x", "value", "pred_gfid", "pi_low", "pi_high", "boot_low", "boot_high", "rank"]]
        typer.echo(show.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        typer.echo(f"(rank r = the predicted gFID would be r-th best among the {n_ref} reference encoders)")
        for d in res.dropped:
            typer.echo(f"note: {d}")
        if res.caveats:
            typer.echo("\ncaveat: the protocol differs from the reference's or was not recorded, so the x-axes "
                       "may not be comparable:")
            for c in res.caveats:
                typer.echo(f"  - {c}")
        typer.echo(f"\nwrote {out / 'predictions.csv'}, {out / 'config.json'}"
                   + ("" if no_figure else f", {out / 'prediction_panel.png'} (+ .pdf)"))
