"""Checks shared by the library functions: value ranges, devices and output folders.

They run before any computation, so a bad option fails in a second with one message naming the option,
its value and the valid range, instead of after an hour (or never, with a wrong number).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import ConfigError, OutputError


def check_range(name: str, value: Any, lo: float | None = None, hi: float | None = None, *,
                lo_open: bool = False, hi_open: bool = False, hint: str = "") -> None:
    """Raise :class:`ConfigError` unless ``lo <(=) value <(=) hi`` (``None`` = unbounded; ``value`` None passes)."""
    if value is None:
        return
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} must be a number.") from None
    ok = v == v  # NaN is never in range
    if ok and lo is not None:
        ok = v > lo if lo_open else v >= lo
    if ok and hi is not None:
        ok = v < hi if hi_open else v <= hi
    if not ok:
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        rng = f"{'(' if lo_open or lo is None else '['}{lo_s}, {hi_s}{')' if hi_open or hi is None else ']'}"
        raise ConfigError(f"{name}={value!r} is out of range: it must lie in {rng}{'; ' + hint if hint else '.'}")


def check_device(device: Any, name: str = "device") -> None:
    """Fail early, with the fix, when a CUDA device is asked for but not available (``auto`` always passes)."""
    d = str(device).strip().lower()
    if d in ("auto", "cpu", "none", ""):
        return
    if d == "mps" or d.startswith("cuda"):
        import torch

        if d == "mps":
            if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
                raise ConfigError(f"{name}={device!r}: no MPS device on this machine; use --device cpu or auto.")
            return
        if not torch.cuda.is_available():
            raise ConfigError(f"{name}={device!r}: no CUDA device is available on this machine "
                              "(torch.cuda.is_available() is False); use --device cpu or auto.")
        idx = d.partition(":")[2]
        if idx:
            if not idx.isdigit():
                raise ConfigError(f"{name}={device!r} is not a device; use cpu, cuda or cuda:N.")
            if int(idx) >= torch.cuda.device_count():
                raise ConfigError(f"{name}={device!r}: this machine has {torch.cuda.device_count()} CUDA "
                                  f"device(s) (cuda:0..cuda:{torch.cuda.device_count() - 1}).")
        return
    raise ConfigError(f"{name}={device!r} is not a device; use auto, cpu, cuda or cuda:N.")


def os_error_message(exc: OSError, path: Any = None) -> str:
    """One line for an OS error on an output path: what happened, which path, what to do."""
    where = path if path is not None else (exc.filename or "?")
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return f"no space left on device while writing {str(where)!r}; free space or choose another --out."
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"output {str(where)!r} is not writable ({os.strerror(code)}); choose another --out or fix its permissions."
    if code in (errno.ENOTDIR, errno.EEXIST):
        return f"output {str(where)!r}: a file is in the way of a folder ({os.strerror(code)}); choose another --out."
    return f"cannot write {str(where)!r}: {exc.strerror or exc}."


def prepare_out_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """Create the output folder ``path`` (with parents) and prove it is writable, before any work is done.

    Raises :class:`OutputError` naming the path when it is a file, read-only, or on a full disk.
    """
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise OutputError(f"{what} {str(p)!r} is a file, not a folder; choose a folder (it is created when missing).")
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=p)
        try:
            os.write(fd, b"0")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{what}: " + os_error_message(exc, p)) from None
    return p


def prepare_out_file(path: str | os.PathLike, what: str = "--out") -> Path:
    """The parent folder of an output file must be writable, and the path itself must not be a folder."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise OutputError(f"{what} {str(p)!r} is a folder; give a file name, e.g. {str(p / 'ref.npz')!r}.")
    prepare_out_dir(p.parent if str(p.parent) else ".", what=f"{what} folder")
    return p


@contextlib.contextmanager
def writing(path: str | os.PathLike, partial: str | os.PathLike | None = None, what: str = "output"):
    """Turn a failed write of ``path`` (full disk, read-only, a writer's RuntimeError) into one
    :class:`OutputError` naming it; the ``partial`` temporary file is removed so no half file is left."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, OutputError):
            raise
        if partial is not None:
            with contextlib.suppress(OSError):
                os.unlink(partial)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise OutputError(f"{what}: " + os_error_message(exc, path)) from exc
        text = str(exc)
        full = "space" in text.lower() or _nearly_full(Path(path).parent)
        if full:
            raise OutputError(f"{what}: no space left on device while writing {str(path)!r}; free space or "
                              "choose another --out.") from exc
        raise OutputError(f"{what}: could not write {str(path)!r}: {text.splitlines()[0] if text else exc!r}") from exc


def _nearly_full(folder: Path, margin: int = 64 << 20) -> bool:
    try:
        return shutil.disk_usage(folder).free < margin
    except OSError:
        return False
