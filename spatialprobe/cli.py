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
from typer.core import TyperCommand

from . import __version__
from .commands import HelpDefaultsCommand, cli_errors, error_text
from .errors import SpatialProbeError

#: help is laid out at least this wide, so option names and defaults are never cut (rich's default is 80)
HELP_WIDTH = 120


def _help_width() -> None:
    import os
    import shutil

    from typer import rich_utils

    if not os.environ.get("TERMINAL_WIDTH"):
        rich_utils.MAX_WIDTH = max(HELP_WIDTH, shutil.get_terminal_size((HELP_WIDTH, 24)).columns)


_help_width()

app = typer.Typer(
    name="spatialprobe",
    help="Which vision encoder makes the best REPA/iREPA teacher, and which cheap property of its "
         "features predicts that? Extract features, measure spatial structure and linear-probe accuracy, "
         "train short REPA/iREPA runs, evaluate gFID and correlate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": HELP_WIDTH},
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
    _escape_help(app)
    _escape_help(ls_app)
    _help_defaults(app)
    _errors_everywhere(app)


def _errors_everywhere(typer_app: typer.Typer) -> None:
    """Every command turns a spatialprobe error into one ``error: ...`` line and exit code 2, whether or
    not its module remembered to (``cli_errors`` leaves an already wrapped command as it is)."""
    for cmd in typer_app.registered_commands:
        if cmd.callback is not None:
            cmd.callback = cli_errors(cmd.callback)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _errors_everywhere(group.typer_instance)


def _help_defaults(typer_app: typer.Typer) -> None:
    """Every command fills in the defaults of its options' help (read from the config dataclasses) when shown."""
    for cmd in typer_app.registered_commands:
        if cmd.cls in (None, TyperCommand):  # the plain command class: not one a command chose
            cmd.cls = HelpDefaultsCommand
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _help_defaults(group.typer_instance)


def _escape_help(typer_app: typer.Typer) -> None:
    """Help texts are plain text: ``[default: 256]`` must print as written, not vanish as rich markup."""
    import inspect

    try:
        from rich.markup import escape
    except ImportError:  # pragma: no cover - plain click help prints brackets as they are
        return
    for cmd in typer_app.registered_commands:
        if cmd.help:
            cmd.help = escape(cmd.help)
        elif cmd.callback is not None and cmd.callback.__doc__:
            cmd.help = escape(inspect.cleandoc(cmd.callback.__doc__))
        for p in inspect.signature(cmd.callback).parameters.values():
            info = p.default
            if isinstance(info, typer.models.ParameterInfo) and info.help:
                info.help = escape(info.help)


_register_all()


def main() -> None:
    """Console-script entry point. A spatialprobe error raised outside a command (while parsing an option,
    in a callback) is still one ``error: ...`` line and exit code 2."""
    try:
        app(prog_name="spatialprobe")
    except SpatialProbeError as exc:
        typer.secho(f"error: {error_text(exc)}", err=True, fg=typer.colors.RED)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
