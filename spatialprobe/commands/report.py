"""`spatialprobe report`: an executed Jupyter notebook, an HTML page and the figures of one result folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import cli_errors, config_option, help_default, split_list

CONFIG = "spatialprobe.report.build:ReportConfig"


def register(app: typer.Typer, ls_app: typer.Typer) -> None:
    @app.command("report")
    @cli_errors
    def report_cmd(
        dir: Path = typer.Argument(..., help="Result folder of study, correlate, metrics, probe, inject, predict or viz."),
        kind: Optional[str] = typer.Option(None, "--kind", help=help_default(CONFIG, "kind", "Folder kind; auto: detected from its files")),
        template: Optional[Path] = typer.Option(None, "--template", help="Own notebook template with a cell tagged "
                                                                        "'parameters' (default: the packaged one)."),
        viz_encoders: Optional[str] = typer.Option(None, "--viz-encoders", help="Also compute similarity maps of these "
                                                                               "encoders, e.g. hog,pixels."),
        viz_image: Optional[str] = typer.Option(None, "--viz-image", help=help_default(CONFIG, "viz_image",
                                                                                      "Image of the similarity maps")),
        viz_random_init: bool = typer.Option(False, "--viz-random-init", help="Random-init encoders for the maps."),
        show_code: bool = typer.Option(False, "--show-code", help="Keep the code cells in report.html."),
        timeout: Optional[int] = typer.Option(None, "--timeout", help=help_default(CONFIG, "timeout", "Seconds per notebook cell")),
        no_html: bool = typer.Option(False, "--no-html", help="Write report.ipynb and figures only."),
        config: Optional[Path] = config_option(),
    ) -> None:
        """Render a report of one result folder: a notebook template with the folder as its parameters,
        executed in a Jupyter kernel, written as DIR/report.ipynb, a self-contained DIR/report.html and
        every figure as PDF + PNG under DIR/figures/. Sections: what was run (versions, checksums,
        protocol ids), results, correlations with CIs, REPA − iREPA, injection curves, similarity maps,
        outliers and leave-one-family-out; a section without data says so.

        Examples:

          spatialprobe correlate --reference sit-xl-100k --out out/correlate && spatialprobe report out/correlate

          spatialprobe report runs/study --viz-encoders hog,pixels

          spatialprobe report out/inject --show-code
        """
        from ..report.build import report

        res = report(str(dir), config=config, kind=kind, template=str(template) if template else None,
                     viz_encoders=split_list(viz_encoders), viz_image=viz_image,
                     viz_random_init=True if viz_random_init else None, show_code=True if show_code else None,
                     timeout=timeout, html=False if no_html else None)
        typer.echo(f"{res.kind} folder: wrote {res.notebook}" + (f", {res.html}" if res.html else "")
                   + f" and {len(res.figures)} figure files under {dir / 'figures'}")
