"""`spatialprobe study init | run | status`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..schema import RESULTS_CSV
from ._common import cli_errors

study_app = typer.Typer(help="Run a whole study from one spec: properties x teachers x REPA/iREPA runs -> "
                             "quality -> correlations; resumable, local or on SLURM.", no_args_is_help=True)


def _print_status(df) -> None:
    show = df.copy()
    show["seconds"] = show["seconds"].map(lambda v: "-" if v is None or v != v else f"{v:.1f}")
    typer.echo(show.to_string(index=False))
    counts = df["state"].value_counts()
    typer.echo("\n" + ", ".join(f"{k} {v}" for k, v in counts.items()))


def _print_results(out: Path) -> None:
    """The results (one row per encoder, quality per method averaged over seeds) and the headline
    correlations, as the report's first section states them."""
    import pandas as pd

    from ..report.findings import headline_lines

    wide_path = out / "correlate" / "table.csv"
    res = pd.read_csv(out / RESULTS_CSV)
    if wide_path.is_file():
        wide = pd.read_csv(wide_path)
        wide = wide[[c for c in wide.columns if not c.endswith(("_sd", "_n", "_nan"))]]
    else:
        wide = res[[c for c in res.columns if not c.startswith("fp_") and not c.endswith("_nan")]]
    typer.echo("\nresults (mean over seeds):")
    typer.echo(wide.to_string(index=False, na_rep="–", float_format=lambda v: f"{v:.4g}"))
    frames = [pd.read_csv(p) for p in sorted((out / "correlate").glob("*/correlations.csv"))]
    stats = pd.concat(frames, ignore_index=True) if frames else None
    typer.echo("\nwhat was found:")
    for line in headline_lines(stats, res):
        typer.echo(f"  {line}")


def register(app: typer.Typer, ls_app: typer.Typer) -> None:
    app.add_typer(study_app, name="study")

    @study_app.command("init")
    @cli_errors
    def init_cmd(
        path: Path = typer.Argument(Path("study.yaml"), help="Where to write the annotated template."),
        force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
    ) -> None:
        """Write an annotated study.yaml template (every field, with comments).

        Example:

          spatialprobe study init study.yaml && spatialprobe study run study.yaml --out runs/s --dry-run
        """
        from ..errors import ConfigError
        from ..study.spec import TEMPLATE

        from ..errors import OutputError

        if path.is_dir():
            raise OutputError(f"{path} is a folder; give a file name, e.g. {path / 'study.yaml'}.")
        if path.exists() and not force:
            raise ConfigError(f"{path} exists; pass --force to overwrite it.")
        if not path.parent.is_dir():
            raise OutputError(f"folder {str(path.parent)!r} does not exist; create it first (mkdir -p "
                              f"{path.parent}) or give a path in an existing folder.")
        path.write_text(TEMPLATE, encoding="utf-8")
        typer.echo(f"wrote {path}")

    @study_app.command("run")
    @cli_errors
    def run_cmd(
        spec: str = typer.Argument(..., help="study.yaml, or a packaged spec: mini."),
        out: Path = typer.Option(..., "--out", "-o", help="Study folder (resumable: rerun the same command)."),
        smoke: bool = typer.Option(False, "--smoke", help="Apply the spec's smoke: overrides (a quick run)."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and missing weights; run nothing."),
        launcher: Optional[str] = typer.Option(None, "--launcher", help="local | submitit (overrides the spec)."),
        cluster: Optional[str] = typer.Option(None, "--cluster", help="submitit executor: slurm | local | debug."),
        device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda (overrides the spec)."),
    ) -> None:
        """Run every node of the study that is not done yet (a crash or kill resumes with the same command;
        a changed setting reruns only the nodes it touches). Writes OUT/results.csv (+ .parquet),
        OUT/summary.json, OUT/correlate/<y>/ and OUT/nodes/<kind>/<key>/.

        Examples:

          spatialprobe study run mini --out runs/mini

          spatialprobe study run mini --smoke --out runs/mini-smoke

          spatialprobe study run study.yaml --out runs/s --dry-run

          spatialprobe study run study.yaml --out runs/s --launcher submitit --cluster slurm
        """
        from ..study.runner import format_missing, run_study, status_table

        res = run_study(spec=spec, out=str(out), smoke=smoke, dry_run=dry_run, launcher=launcher,
                        cluster=cluster, device=device)
        if dry_run:
            _print_status(status_table(out, res.nodes))
            if res.missing_weights:
                typer.echo("\n" + format_missing(res.missing_weights))
                raise typer.Exit(1)
            typer.echo("\nall weights present (or not needed)")
            return
        if (out / RESULTS_CSV).is_file():
            _print_results(out)
            typer.echo(f"\nwrote {out / RESULTS_CSV} (+ .parquet), {out / 'summary.json'}, {out / 'correlate'}/")
        for w in res.withdrawn:
            typer.secho(f"withdrew {w['path']} (moved under {out / 'withdrawn'}/): {w['reason']}", err=True,
                        fg=typer.colors.YELLOW)
        if res.failed:
            typer.secho(f"{len(res.failed)} node(s) failed or blocked: {', '.join(res.failed[:6])}"
                        f"{' ...' if len(res.failed) > 6 else ''} (spatialprobe study status {out})",
                        err=True, fg=typer.colors.RED)
            raise typer.Exit(1)

    @study_app.command("status")
    @cli_errors
    def status_cmd(out: Path = typer.Argument(..., help="Study folder.")) -> None:
        """Print the plan as a table: node, state (done / missing / stale / partial / queued / running /
        failed / blocked / skipped), seconds, the cluster job and its scheduler state (when jobs were
        submitted), output folder (or the error).

        Example:

          spatialprobe study status runs/mini
        """
        from ..study.runner import study_status

        _print_status(study_status(out))

    @study_app.command("cancel")
    @cli_errors
    def cancel_cmd(out: Path = typer.Argument(..., help="Study folder.")) -> None:
        """Cancel the study's queued and running cluster jobs (scancel); `study run` submits their nodes
        again later.

        Example:

          spatialprobe study cancel runs/s
        """
        from ..study.runner import study_cancel

        ids = study_cancel(out)
        typer.echo(f"cancelled {len(ids)} job(s){': ' + ', '.join(ids) if ids else ''}")
