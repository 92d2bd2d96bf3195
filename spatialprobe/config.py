"""Dataclass configs with one precedence rule: defaults < YAML/JSON file < explicit arguments (CLI flags).

Every result directory gets the resolved config (``config.json``) with the package version, so a number
can always be traced back to the options that made it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import subprocess
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError, InputFileError

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
    if isinstance(file, cls):
        values.update({f: getattr(file, f) for f in names})
    elif file is not None:
        data = {str(k).replace("-", "_"): v for k, v in load_config_file(file).items()}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"Config file {str(file)!r} has unknown option(s) {', '.join(unknown)}; "
                              f"valid: {', '.join(sorted(names))}.")
        values.update(data)
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"Unknown option(s) {', '.join(unknown)} for {cls.__name__}.")
    return cls(**values)


def _jsonable(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {k: _jsonable(x) for k, x in dataclasses.asdict(v).items()}
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return repr(v)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


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
    record = {"config": _jsonable(config), "environment": environment(), **_jsonable(extra)}
    Path(path).write_text(json.dumps(record, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return record
