"""`spatialprobe correlate` and `spatialprobe ls references`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import cli_errors, split_list, config_option, help_default

CONFIG = "spatialprobe.correlation:CorrelateConfig"
OFFICIAL = "spatialprobe.official:OfficialConfig"


def _print_table(df) -> None:
    cols = ["x", "y", "n", "pearson_r", "pearson_ci_low", "pearson_ci_high", "pearson_p_perm",
            "spearman_rho", "kendall_tau", "loo_min", "loo_max", "lofo_min", "lofo_max"]
    if df["control"].notna().any():
        cols += ["control", "partial_r"]
    show = df[cols].copy()
    typer.echo(show.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-"))
    for _, r in df.iterrows():  # below MIN_N_FOR_CI the CI and p columns are "-": say why
        if isinstance(r.get("note"), str) and r["note"]:
            typer.echo(f"note: {r['x']} vs {r['y']}: r = {r['pearson_r']:.3f}, {r['note']}")


def register(app: typer.Typer, ls_app: typer.Typer) -> None:
    @app.command("correlate")
    @cli_errors
    def correlate_cmd(
        reference: Optional[str] = typer.Option(None, "--reference", "-r",
                                                help="Packaged table, e.g. sit-xl-100k (see `spatialprobe ls references`)."),
        table: Optional[Path] = typer.Option(None, "--table", "-t", help="Your results table (.csv, .tsv or .parquet)."),
        x: Optional[str] = typer.Option(None, "--x", help=help_default(CONFIG, "x", "Comma-separated x columns")),
        y: Optional[str] = typer.Option(None, "--y", help=help_default(CONFIG, "y", "Comma-separated y columns")),
        family_col: Optional[str] = typer.Option(None, "--family-col",
                                                 help="Column with encoder families, for leave-one-family-out [default: 'family' if present]."),
        control: Optional[str] = typer.Option(None, "--control", help="Also report the partial correlation controlling for this column."),
        allow_duplicates: bool = typer.Option(False, "--allow-duplicates",
                                              help="Accept repeated ids (each repeat then counts as a point)."),
        n_resamples: Optional[int] = typer.Option(None, "--n-resamples", help=help_default(CONFIG, "n_resamples", "Bootstrap and permutation resamples")),
        confidence: Optional[float] = typer.Option(None, "--confidence", help=help_default(CONFIG, "confidence", "CI level")),
        seed: Optional[int] = typer.Option(None, "--seed", help=help_default(CONFIG, "seed", "Seed of the bootstrap and permutation test")),
        official: Optional[Path] = typer.Option(None, "--official",
                                                help="Official iREPA collection folder (data/features, masks, stats): "
                                                     "recompute every r from the released data, joined by image id."),
        steps: Optional[int] = typer.Option(None, "--steps", help=help_default(OFFICIAL, "steps", "With --official: gFID at this step")),
        model: Optional[str] = typer.Option(None, "--model", help=help_default(OFFICIAL, "model", "With --official: sit-xl-2, sit-l-2 "
                                                                                             "or sit-b-2")),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder: correlations.csv, config.json, correlation_panel.png/.pdf."),
        no_figure: bool = typer.Option(False, "--no-figure", help="Skip the figure."),
        config: Optional[Path] = config_option(),
    ) -> None:
        """Correlate encoder properties (x) with generation quality (y): Pearson r with a bootstrap CI,
        permutation p, Spearman, Kendall, leave-one-out and leave-one-family-out ranges, and the paper's
        1×N figure.

        Examples:

          spatialprobe correlate --reference sit-xl-100k --out out/

          spatialprobe correlate --table results.csv --x lds,lp_acc --y gfid --family-col family --out out/

          spatialprobe correlate --official spatial-metrics-data --steps 100000 --out out/official
        """
        if official is not None:
            from ..errors import ConfigError
            from ..official import correlate_official

            if reference or table or y or family_col:
                raise ConfigError("--official reads its own table (y = gfid, families from the encoder ids); "
                                  "drop --reference/--table/--y/--family-col.")

            res = correlate_official(official=str(official), steps=steps, model=model, x=split_list(x),
                                     control=control,
                                     n_resamples=n_resamples or 10_000, confidence=confidence or 0.95,
                                     seed=seed or 0, out=str(out), figure=not no_figure)
            _print_table(res.correlations)
            typer.echo("\nthe official script's positional feature/mask join instead gives:")
            typer.echo(res.positional.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
            for note in res.notes:
                typer.echo(f"note: {note}")
            typer.echo(f"\nwrote {out / 'correlations.csv'}, {out / 'official_table.csv'}, "
                       f"{out / 'positional_join.csv'}, {out / 'positional_values.csv'}, {out / 'config.json'}")
            return
        from ..correlation import correlate

        result = correlate(config=config, reference=reference, table=str(table) if table else None,
                           x=split_list(x), y=split_list(y), family_col=family_col, control=control,
                           allow_duplicates=allow_duplicates or None, n_resamples=n_resamples, confidence=confidence, seed=seed, out=str(out),
                           figure=False if no_figure else None)
        _print_table(result)
        typer.echo(f"\nwrote {out / 'correlations.csv'}, {out / 'config.json'}"
                   + ("" if no_figure else f", {out / 'correlation_panel.png'} (+ .pdf)"))

    @ls_app.command("references")
    @cli_errors
    def ls_references() -> None:
        """List the packaged reference tables: name, rows, description, source."""
        from .. import reference

        for t in reference.tables():
            n = len(reference.load(t.name))
            typer.echo(f"{t.name:<20} {n:>4} rows  {t.description}\n{'':<31}source: {t.source}")
