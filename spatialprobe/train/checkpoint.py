"""Training checkpoints: find, read, write (atomically, verified) and keep (cadence and retention).

A run folder holds ``checkpoints/NNNNNNN.pt`` (the step, zero-padded). A checkpoint is written to a temporary
file, flushed to disk, loaded back to check it, and only then renamed into place; older checkpoints are
deleted only after that, so a run killed while it writes a checkpoint still has its previous one.

What is kept (:class:`CheckpointPolicy`): the newest ``keep_last`` checkpoints, every milestone step
(``keep_steps``), and the last one of the run. Checkpoints are written every ``every`` steps, at every
milestone step, at the last step, and at least every ``minutes`` of wall time.
"""

from __future__ import annotations

import contextlib
import logging
import math
import pickle
import time
import zipfile
from pathlib import Path
from typing import Any, Iterable

import torch

from ..checks import writing
from ..errors import InputFileError, OutputError
from ..io import atomic_path

log = logging.getLogger(__name__)

#: keys every training checkpoint holds
CHECKPOINT_KEYS = ("step", "model", "emas", "config", "model_args", "family")

#: the official SiT/REPA cadence (checkpoint every 50K steps): the most a default cadence waits
OFFICIAL_CKPT_EVERY = 50_000
#: default retention: the newest K checkpoints (plus milestones and the last one)
DEFAULT_KEEP_LAST = 2
#: default wall-time cadence: at least one checkpoint every N minutes
DEFAULT_CKPT_MINUTES = 30.0


def default_ckpt_every(steps: int) -> int:
    """The step cadence of a run of ``steps`` steps when none is given: every 1000 steps for short runs,
    a tenth of the run for longer ones, at most the official 50,000."""
    return int(min(OFFICIAL_CKPT_EVERY, max(1000, math.ceil(steps / 10))))


def checkpoint_path(out: str | Path, step: int) -> Path:
    return Path(out) / "checkpoints" / f"{step:07d}.pt"


def checkpoint_files(out: str | Path) -> list[Path]:
    """Every ``checkpoints/NNNNNNN.pt`` of a run folder, oldest first."""
    return sorted((Path(out) / "checkpoints").glob("[0-9]*.pt"))


def latest_checkpoint(out: str | Path) -> Path | None:
    """The highest-step ``checkpoints/NNNNNNN.pt`` file of a run folder (intact or not), or None."""
    ck = checkpoint_files(out)
    return ck[-1] if ck else None


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *, mmap: bool = False) -> dict:
    """Load one training checkpoint safely (``torch.load(weights_only=True)``: tensors and plain
    containers only, never arbitrary pickled objects). ``mmap`` maps the tensors instead of reading them.

    Raises :class:`~spatialprobe.errors.InputFileError` saying "not a checkpoint" and why (empty,
    truncated or corrupt, foreign bytes, a torch file that is not a training checkpoint)."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise InputFileError(f"Checkpoint {str(p)!r} cannot be read ({exc.strerror or exc}).") from None
    if size == 0:
        raise InputFileError(f"{str(p)!r} is not a checkpoint: the file is empty (0 bytes).")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True, **({"mmap": True} if mmap else {}))
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError, AttributeError,
            ImportError, IndexError, KeyError, TypeError) as exc:
        if zipfile.is_zipfile(p):
            why = "the file is truncated or corrupt (a torch archive that cannot be read to the end)"
        elif isinstance(exc, pickle.UnpicklingError) and "Weights only" in str(exc):
            why = ("it holds pickled objects other than tensors and plain containers; spatialprobe only loads "
                   "checkpoints it wrote")
        else:
            why = "its bytes are not a torch checkpoint (random, truncated or another format)"
        raise InputFileError(f"{str(p)!r} is not a checkpoint: {why}.") from None
    if not isinstance(state, dict) or any(k not in state for k in CHECKPOINT_KEYS):
        have = ", ".join(sorted(map(str, state))[:6]) if isinstance(state, dict) else type(state).__name__
        raise InputFileError(f"{str(p)!r} is not a spatialprobe training checkpoint (it holds {have}; expected "
                             f"{', '.join(CHECKPOINT_KEYS)}).")
    return state


def newest_intact_checkpoint(out: str | Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict] | None:
    """``(path, state)`` of the newest checkpoint of a run folder that loads, or None when there is none.

    A newer file that does not load (a truncated copy, a full disk) is skipped with a warning naming it;
    when every file is unusable the error lists them."""
    files = checkpoint_files(out)
    problems = []
    for ck in reversed(files):
        try:
            state = read_checkpoint(ck, map_location)
        except InputFileError as exc:
            problems.append(str(exc))
            continue
        for msg in problems:
            log.warning("%s; using the newest intact checkpoint, %s (step %d), instead", msg, ck.name,
                        int(state["step"]))
        return ck, state
    if problems:
        raise InputFileError(f"No intact checkpoint in {str(Path(out) / 'checkpoints')!r}: " + " ".join(problems)
                             + " Delete the unusable files to start the run afresh.")
    return None


def _read_back(path: Path, step: int) -> str:
    """Why the checkpoint file at ``path`` is not an intact checkpoint of ``step`` ('' when it is)."""
    try:
        back = read_checkpoint(path, mmap=True)
    except InputFileError as exc:
        return str(exc)
    return "" if int(back["step"]) == step else f"it holds step {back['step']}"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically through :func:`spatialprobe.io.atomic_path`: a temporary file,
    loaded back (memory-mapped) to check that it holds the checkpoint keys and the step, then flushed to disk
    and renamed into place.

    A failed write (full disk, a kill) leaves no partial file at ``path`` and never touches the other
    checkpoints; a write that does not read back raises :class:`~spatialprobe.errors.OutputError`."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")  # named, so retention can remove a killed write's leftover
    with writing(path, tmp, what="checkpoint"), atomic_path(path, tmp):
        torch.save(state, tmp)
        if "step" in state:
            why = _read_back(tmp, int(state["step"]))
            if why:  # atomic_path removes the temporary file
                raise OutputError(f"checkpoint: {str(path)!r} did not read back after writing ({why}); the "
                                  "previous checkpoints are kept. Check the disk, or choose another --out.")
    return path


def checkpoint_step(path: Path) -> int:
    return int(path.stem)


def kept_steps(steps: Iterable[int], keep_last: int, keep_steps: Iterable[int] = ()) -> set[int]:
    """The checkpoint steps retention keeps among ``steps``: the newest ``keep_last`` (0 = all) and every
    milestone in ``keep_steps``."""
    steps = sorted(set(steps))
    keep = set(steps) if keep_last <= 0 else set(steps[-keep_last:])
    return keep | (set(steps) & set(keep_steps))


def prune_checkpoints(out: str | Path, keep_last: int, keep_steps: Iterable[int] = (),
                      newest: Path | None = None) -> list[Path]:
    """Delete the checkpoints of a run folder that retention does not keep; returns the deleted paths.

    ``newest`` is the checkpoint just written: nothing is deleted unless it exists (it was verified by
    :func:`save_checkpoint` before its rename). Stale temporary files of an interrupted write go too."""
    if newest is not None and not Path(newest).is_file():
        return []
    files = {checkpoint_step(p): p for p in checkpoint_files(out)}
    keep = kept_steps(files, keep_last, keep_steps)
    gone = []
    for s, p in sorted(files.items()):
        if s not in keep and p != newest:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
            gone.append(p)
    for tmp in (Path(out) / "checkpoints").glob("[0-9]*.pt.tmp"):
        if newest is None or tmp != newest.with_suffix(".pt.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return gone


class CheckpointPolicy:
    """When a run writes a checkpoint and which ones it keeps.

    A checkpoint is due every ``every`` steps, at each milestone in ``keep_steps``, at the last step
    (``steps``), and when ``minutes`` (> 0) of wall time have passed since the last one (or the start).
    After each verified write, retention keeps the newest ``keep_last`` (0 = every one) plus milestones."""

    def __init__(self, out: str | Path, *, steps: int, every: int, keep_last: int = DEFAULT_KEEP_LAST,
                 keep_steps: Iterable[int] = (), minutes: float = 0.0):
        self.out, self.steps, self.every = Path(out), int(steps), int(every)
        self.keep_last, self.keep_steps = int(keep_last), sorted({int(s) for s in keep_steps})
        self.minutes = float(minutes or 0.0)
        self._milestones = set(self.keep_steps)
        self._last_time = time.monotonic()

    def due_by_step(self, step: int) -> bool:
        return step % self.every == 0 or step == self.steps or step in self._milestones

    def due_by_clock(self) -> bool:
        return self.minutes > 0 and time.monotonic() - self._last_time >= self.minutes * 60.0

    def path(self, step: int) -> Path:
        return checkpoint_path(self.out, step)

    def save(self, state: dict[str, Any], step: int) -> Path:
        """Write the checkpoint of ``step`` (verified, atomic), then delete what retention drops."""
        p = save_checkpoint(state, self.path(step))
        gone = prune_checkpoints(self.out, self.keep_last, self.keep_steps, newest=p)
        if gone:
            log.debug("retention removed %s", ", ".join(g.name for g in gone))
        self.saved()
        return p

    def saved(self) -> None:
        """Restart the wall-time clock (every rank calls it when a checkpoint is written)."""
        self._last_time = time.monotonic()

    def describe(self) -> str:
        keep = "every checkpoint" if self.keep_last <= 0 else f"the newest {self.keep_last}"
        extra = f" + steps {', '.join(map(str, self.keep_steps))}" if self.keep_steps else ""
        clock = f" and at least every {self.minutes:g} min" if self.minutes > 0 else ""
        return f"checkpoint every {self.every} steps{clock}; keep {keep}{extra} and the last"
