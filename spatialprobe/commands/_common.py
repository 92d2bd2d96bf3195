"""Helpers shared by command modules: error handling, option parsing and help defaults.

A default shown in ``--help`` is never written by hand: :func:`help_default` names the dataclass field (or
function parameter) that defines it, and the value is read from there when the help is shown. The
definitions are imported only then, so building the command line stays light (no torch, numpy, ...).
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import importlib
import inspect
import logging
import re
from collections.abc import Hashable
from typing import Any, Callable

import typer
from typer.core import TyperCommand

from ..config import comma_list
from ..errors import SpatialProbeError

_OUTPUT_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EROFS, errno.EACCES, errno.EPERM}


def cli_errors(fn: Callable) -> Callable:
    """Turn a :class:`SpatialProbeError` into one ``error: ...`` line and exit code 2 (no traceback)."""

    if getattr(fn, "_spatialprobe_errors", False):
        return fn

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SpatialProbeError as exc:
            typer.secho(f"error: {error_text(exc)}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None
        except OSError as exc:  # full disk, read-only folder, ... met while writing: one line, no traceback
            if exc.errno not in _OUTPUT_ERRNOS:
                raise
            from ..checks import os_error_message

            typer.secho(f"error: {os_error_message(exc)}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None

    wrapper._spatialprobe_errors = True  # type: ignore[attr-defined]
    return wrapper


def error_text(exc: BaseException) -> str:
    """The message of ``exc``; a message that itself fails to format still gives one line, never a traceback."""
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not hide the error behind a second one
        try:
            args = ", ".join(repr(a) for a in exc.args)
        except Exception:  # noqa: BLE001
            args = ""
        return f"{type(exc).__name__}({args})"


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


def device_option(where: str):
    """The ``--device`` option of commands that run a model; its default is the ``device`` field of ``where``."""
    return typer.Option(None, "--device", help=help_default(where, "device", "auto | cpu | cuda | cuda:N"))


# ----------------------------------------------------------------------------- help defaults

#: the place of a default in a help text until the help is shown: ``{default of KEY}``
_MARK = re.compile(r"\{default of ([^{}]+)\}")
#: KEY -> a function giving the text shown for that default
_RENDERERS: dict[str, Callable[[], str]] = {}


def default_of(where: str, name: str) -> Any:
    """The default of ``name`` in ``where`` (``"module:Object"``): a dataclass field (its default, or what
    its default_factory makes), a function's parameter, or a key of a mapping."""
    module, _, qualname = where.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if dataclasses.is_dataclass(obj):
        field = {f.name: f for f in dataclasses.fields(obj)}.get(name)
        if field is None:
            raise LookupError(f"{where} has no field {name!r}.")
        if field.default is not dataclasses.MISSING:
            return field.default
        if field.default_factory is not dataclasses.MISSING:
            return field.default_factory()
        raise LookupError(f"{where}.{name} has no default.")
    if callable(obj):
        param = inspect.signature(obj).parameters.get(name)
        if param is None or param.default is inspect.Parameter.empty:
            raise LookupError(f"{where} has no parameter {name!r} with a default.")
        return param.default
    return obj[name]


def show_value(value: Any) -> str:
    """A default as a user would type it: ``256``, ``0.95``, ``1e-05``, ``lds,cds``, ``on`` / ``off``."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:.12g}"
    if isinstance(value, (list, tuple)):
        return ",".join(show_value(v) for v in value)
    return str(value)


def help_derived(key: str, text: str, render: Callable[[], str]) -> str:
    """``text [default: X].`` where X is ``render()``, called only when the help is shown.

    ``key`` names the definition (it shows in the raw help text, e.g. for debugging).
    """
    if key in _RENDERERS and _RENDERERS[key] is not render:
        key = f"{key}#{len(_RENDERERS)}"
    _RENDERERS[key] = render
    return f"{text} [default: {{default of {key}}}]."


def help_default(where: str, name: str, text: str, *,
                 show: Callable[[Any], str] | dict[Any, str] | None = None) -> str:
    """``text [default: X].`` with X the default of ``name`` in ``where`` (see :func:`default_of`).

    ``show`` turns the value into words: a mapping for sentinel values (``{0: "auto"}``; other values
    are shown as they are) or a function of the value.
    """

    def render() -> str:
        value = default_of(where, name)
        if isinstance(show, dict):
            return show[value] if isinstance(value, Hashable) and value in show else show_value(value)
        return show(value) if show is not None else show_value(value)

    return help_derived(f"{where}.{name}", text, render)


def fill_help_defaults(command: Any) -> None:
    """Replace the default markers in the help of ``command``'s parameters by the defaults themselves."""
    try:
        from rich.markup import escape
    except ImportError:  # pragma: no cover - plain click help prints brackets as they are
        escape = str
    for param in command.params:
        text = getattr(param, "help", None)
        if text and "{default of " in text:
            param.help = _MARK.sub(lambda m: escape(_RENDERERS[m.group(1)]()), text)


class HelpDefaultsCommand(TyperCommand):
    """A command whose options' help shows the defaults read from their definitions (see :func:`help_default`)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        fill_help_defaults(self)
        return super().format_help(ctx, formatter)
