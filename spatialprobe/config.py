"""Dataclass configs with one precedence rule: defaults < YAML/JSON file < explicit arguments (CLI flags).

Every result directory gets the resolved config (``config.json``) with the package version, so a number
can always be traced back to the options that made it.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import platform
import subprocess
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError, InputFileError
from .io import sha256_file  # noqa: F401 - re-exported: the one file-hash rule lives in spatialprobe.io

T = TypeVar("T")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON mapping of option names to values."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"Config file {str(p)!r} does not exist.")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - any parse error is the user's file
        raise ConfigError(f"Config file {str(p)!r} could not be parsed: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {str(p)!r} must hold a mapping of option: value, not {type(data).__name__}.")
    return data


def resolve(cls: type[T], file: str | Path | T | None = None, **overrides: Any) -> T:
    """Build ``cls`` from its defaults, then a config file (or a ready ``cls`` instance), then the
    non-None ``overrides``.

    Unknown keys in the file are an error naming them and the valid keys.
    """
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    from_file: set[str] = set()
    if isinstance(file, cls):
        values.update({f: getattr(file, f) for f in names})
    elif file is not None:
        data = {str(k).replace("-", "_"): v for k, v in load_config_file(file).items()}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"Config file {str(file)!r} has unknown option(s) {', '.join(unknown)}; "
                              f"valid: {', '.join(sorted(names))}.")
        values.update(data)
        from_file = set(data)
    given = {k: v for k, v in overrides.items() if v is not None}
    values.update(given)
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"Unknown option(s) {', '.join(unknown)} for {cls.__name__}.")
    if not isinstance(file, cls):
        where = {k: f" in config file {str(file)!r}" for k in from_file - set(given)}
        values = check_types(cls, values, where)
    return cls(**values)


def _type_name(t: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(t, str(t))


def _coerce(value: Any, t: Any) -> Any:
    """``value`` as the scalar type ``t`` (numeric strings such as YAML's ``1e-4`` become numbers), or raise ValueError."""
    if t is bool:
        if isinstance(value, bool):
            return value
        raise ValueError
    if t is int:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
        raise ValueError
    if t is float:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, (int, float)):
            return value
        if isinstance(value, str):
            return float(value)
        raise ValueError
    if t is str:
        if isinstance(value, (dict, list, tuple, set, bool)):
            raise ValueError
        return value
    return value


def check_types(cls: type, values: dict[str, Any], where: dict[str, str] | None = None) -> dict[str, Any]:
    """Check (and coerce numeric strings of) ``values`` against the field types of the dataclass ``cls``.

    A value of the wrong type (``limit: two`` for an int) is a :class:`ConfigError` naming the option,
    the value, the expected type and (``where``) the config file it came from. Fields whose type is not a
    plain scalar, an optional scalar or a list of scalars are left to the dataclass.
    """
    import typing

    where = where or {}
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolvable annotations: nothing to check
        return values
    out = dict(values)
    scalars = (int, float, bool, str)
    for k, v in values.items():
        t = hints.get(k)
        if t is None or v is None:
            continue
        args = [a for a in typing.get_args(t) if a is not type(None)]
        origin = typing.get_origin(t)
        if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            if len(args) != 1:
                continue
            t = args[0]
            origin, args = typing.get_origin(t), list(typing.get_args(t))
        try:
            if t in scalars:
                out[k] = _coerce(v, t)
            elif origin in (list, tuple, collections.abc.Sequence) and args and args[0] in scalars:
                if isinstance(v, (list, tuple)):
                    out[k] = type(v)(_coerce(x, args[0]) for x in v)
                elif not isinstance(v, str):
                    raise ValueError
        except (TypeError, ValueError):
            want = _type_name(t) if t in scalars else f"a list of {_type_name(args[0]).split(' ', 1)[-1]}s"
            raise ConfigError(f"Option {k}={v!r}{where.get(k, '')} must be {want}.") from None
    return out


def jsonable(v: Any) -> Any:
    """``v`` as plain JSON values: dataclasses and dicts as dicts, tuples as lists, paths as strings, else repr."""
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {k: jsonable(x) for k, x in dataclasses.asdict(v).items()}
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return repr(v)


def comma_list(value: str) -> list[str]:
    """``"a,b, c"`` -> ``["a", "b", "c"]`` (empty pieces dropped): list options given as one string."""
    return [v.strip() for v in value.split(",") if v.strip()]


def git_revision() -> str | None:
    """The git commit of the spatialprobe checkout, when it is one."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment() -> dict[str, Any]:
    """Versions that can change numbers."""
    from . import __version__

    env: dict[str, Any] = {"spatialprobe": __version__, "python": platform.python_version(),
                           "git_revision": git_revision()}
    for mod in ("numpy", "scipy", "pandas", "torch", "timm"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional in this record
            env[mod] = None
    return env


def write_config(path: str | Path, config: Any, **extra: Any) -> dict[str, Any]:
    """Write the resolved config plus environment and extras as JSON; returns what was written."""
    record = {"config": jsonable(config), "environment": environment(), **jsonable(extra)}
    Path(path).write_text(json.dumps(record, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return record
