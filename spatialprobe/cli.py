"""The ``spatialprobe`` command line. Each command is a thin wrapper over one public function.

Command modules live in :mod:`spatialprobe.commands`; each defines ``register(app, ls_app)``.
Heavy libraries are imported inside the commands, so ``spatialprobe --help`` stays fast.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import sys

import typer

from . import __version__

app = typer.Typer(
    name="spatialprobe",
    help="Which vision encoder makes the best REPA/iREPA teacher, and which cheap property of its "
         "features predicts that? Extract features, measure spatial structure and linear-probe accuracy, "
         "train short REPA/iREPA runs, evaluate gFID and correlate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
ls_app = typer.Typer(help="List packaged things: reference tables, encoders, presets.", no_args_is_help=True)
app.add_typer(ls_app, name="ls")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"spatialprobe {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
) -> None:
    logger = logging.getLogger("spatialprobe")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)


def _register_all() -> None:
    from . import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{commands.__name__}.{info.name}").register(app, ls_app)


_register_all()


def main() -> None:
    """Console-script entry point."""
    app(prog_name="spatialprobe")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
