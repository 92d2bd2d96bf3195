"""Helpers shared by command modules: error handling and option parsing."""

from __future__ import annotations

import errno
import functools
import logging
from typing import Callable

import typer

from ..config import comma_list
from ..errors import SpatialProbeError

_OUTPUT_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EROFS, errno.EACCES, errno.EPERM}


def cli_errors(fn: Callable) -> Callable:
    """Turn a :class:`SpatialProbeError` into one ``error: ...`` line and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SpatialProbeError as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None
        except OSError as exc:  # full disk, read-only folder, ... met while writing: one line, no traceback
            if exc.errno not in _OUTPUT_ERRNOS:
                raise
            from ..checks import os_error_message

            typer.secho(f"error: {os_error_message(exc)}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None

    return wrapper


def split_list(value: str | None) -> list[str] | None:
    """'a,b, c' -> ['a', 'b', 'c']; None stays None."""
    if value is None:
        return None
    return comma_list(value)


def quiet_warnings_to_stderr() -> None:
    """Library warnings (e.g. dropped NaN rows) go to stderr as 'warning: ...'."""
    logging.getLogger("spatialprobe").setLevel(logging.INFO)


def config_option():
    """The ``--config`` option every command shares (precedence: defaults < file < flags)."""
    return typer.Option(None, "--config", help="YAML/JSON file of options; flags override it.")


def device_option():
    """The ``--device`` option of commands that run a model."""
    return typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N [default: auto].")
