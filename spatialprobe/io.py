"""File rules every stage shares: atomic writes, JSON and table reading, the folder lock, sha256 of files
with one hash cache, and the cache folder.

- **Atomic writes** (:func:`atomic_path`, :func:`atomic_write`, :func:`atomic_write_bytes`,
  :func:`atomic_write_json`): the content goes to a hidden temporary name in the same folder
  (``.<name>.tmp-<pid>``), is fsynced, renamed over the target and the folder is fsynced; a failed writer
  leaves no temporary file, and a reader sees the old file or the new one, never half of one.
  :func:`clean_temp_files` removes what a killed writer left behind.
- **The cache folder** (:func:`cache_dir`): ``$SPATIALPROBE_CACHE``, else ``$XDG_CACHE_HOME/spatialprobe``,
  else ``~/.cache/spatialprobe``.
- **sha256 of files** (:func:`sha256_file` reads a file; :func:`sha256` answers from the one hash cache,
  :class:`HashCache`: an SQLite file ``<cache_dir>/file-hashes.sqlite`` keyed by (path, device, inode, size,
  mtime, ctime), so an unchanged file costs one ``stat`` and any rewrite, ``touch`` or replacement is
  re-hashed).
- **The folder lock** (:class:`FileLock`): one writer at a time, released by the kernel when the holder dies.

Only :mod:`spatialprobe.errors` is imported from the package (this is the bottom layer).
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import logging
import os
import socket
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from .errors import DataError, InputFileError, StoreError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger("spatialprobe.io")

#: the lock file :class:`FileLock` holds inside its folder
LOCK_NAME = ".lock"
#: the pattern of the temporary names the atomic writers use (see :func:`clean_temp_files`)
TEMP_GLOB = ".*.tmp-*"


# ----------------------------------------------------------------------------- atomic writes

def fsync_dir(d: str | Path) -> None:
    """fsync a folder (its entries: a rename inside it is durable after this); errors are ignored."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_name(path: str | Path) -> Path:
    """The hidden temporary name beside ``path`` that the atomic writers of this process use."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | Path, tmp: str | Path | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on a clean exit it is fsynced and renamed over
    ``path`` (then the folder is fsynced), on an error it is removed. For writers that take a file name
    (``torch.save``, ``safetensors.save_file``, ``zipfile``, ``shutil.copy2``). ``tmp`` names the temporary
    file where a caller cleans up its own leftovers by name (default: :func:`temp_name`)."""
    path = Path(path)
    tmp = temp_name(path) if tmp is None else Path(tmp)
    try:
        yield tmp
        with builtins.open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` writes the content to the temporary path; then as :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        write(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temp name in the same folder, fsync, rename over ``path``, fsync the folder."""
    with atomic_path(path) as tmp, builtins.open(tmp, "wb") as fh:
        fh.write(data)


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 1, default: Callable | None = None) -> None:
    """``obj`` as JSON (``indent``, a final newline) written with :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, (json.dumps(obj, indent=indent, default=default) + "\n").encode())


def clean_temp_files(folder: str | Path) -> None:
    """Remove temp files a killed writer left behind."""
    for p in Path(folder).glob(TEMP_GLOB):
        try:
            p.unlink()
        except OSError:
            pass


# ----------------------------------------------------------------------------- reading

def read_json(path: str | Path, default: Any = None) -> Any:
    """The parsed JSON file, or ``default`` when it is missing, unreadable or not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def read_table(path: str | Path) -> "pd.DataFrame":
    """Read a results table (.csv, .tsv or .parquet) with a clear error when it is missing or unreadable."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"Table file {str(p)!r} does not exist.")
    suffix = p.suffix.lower()
    if p.stat().st_size == 0:
        raise DataError(f"Table file {str(p)!r} is empty (0 bytes); pass a table with a header and one row per "
                        "encoder.")
    try:
        if suffix == ".parquet":
            return pd.read_parquet(p)
        if suffix in (".tsv", ".tab"):
            return pd.read_csv(p, sep="\t")
        return pd.read_csv(p)
    except Exception as exc:  # noqa: BLE001 - surface any parser error as the user's input problem
        raise DataError(f"Table file {str(p)!r} could not be read as {suffix or 'CSV'}: {exc}") from exc


# ----------------------------------------------------------------------------- the cache folder and file hashes

def cache_dir() -> Path:
    """``$SPATIALPROBE_CACHE``, else ``$XDG_CACHE_HOME/spatialprobe``, else ``~/.cache/spatialprobe``."""
    if os.environ.get("SPATIALPROBE_CACHE"):
        return Path(os.environ["SPATIALPROBE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "spatialprobe"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file's bytes, read now (no cache; :func:`sha256` is the cached one)."""
    h = hashlib.sha256()
    with builtins.open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class HashCache:
    """sha256 of files, cached in memory and in an SQLite file by (path, dev, inode, size, mtime, ctime).

    A file whose stat key is unchanged is never read again; any change of the key (a rewrite, a
    replacement, ``os.utime``, a copy) makes it re-hashed. When the cache file cannot be written
    (read-only home, odd file systems) hashes are still computed, just not kept across processes.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else cache_dir() / "file-hashes.sqlite"
        self._mem: dict[str, tuple[tuple, str]] = {}
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection | None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(str(self.path), timeout=30)
            con.execute("CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, dev INTEGER, ino INTEGER, "
                        "size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER, sha256 TEXT)")
            con.execute("CREATE TABLE IF NOT EXISTS trees (path TEXT PRIMARY KEY, signature TEXT, sha256 TEXT)")
            return con
        except (OSError, sqlite3.Error) as exc:
            log.debug("content-hash cache %s unavailable (%s); hashing without it", self.path, exc)
            return None

    def digests(self, files: Sequence[str | Path], *, workers: int = 8, progress: bool = True) -> list[str | None]:
        """sha256 of each file (None for a file that cannot be read), reading only files not cached."""
        paths = [os.path.abspath(f) for f in files]
        keys: list[tuple | None] = []
        for p in paths:
            try:
                keys.append(_stat_key(os.stat(p)))
            except OSError:
                keys.append(None)
        out: list[str | None] = [None] * len(paths)
        todo = []
        for j, (p, k) in enumerate(zip(paths, keys)):
            if k is None:
                continue
            hit = self._mem.get(p)
            if hit is not None and hit[0] == k:
                out[j] = hit[1]
            else:
                todo.append(j)
        if not todo:
            return out
        con = self._connect()
        if con is not None:
            try:
                for a in range(0, len(todo), 500):
                    part = todo[a:a + 500]
                    rows = con.execute(f"SELECT path, dev, ino, size, mtime_ns, ctime_ns, sha256 FROM hashes WHERE path IN "
                                       f"({','.join('?' * len(part))})", [paths[j] for j in part]).fetchall()
                    known = {r[0]: (tuple(r[1:6]), r[6]) for r in rows}
                    for j in part:
                        hit = known.get(paths[j])
                        if hit is not None and hit[0] == keys[j]:
                            out[j] = hit[1]
                            self._mem[paths[j]] = hit
            except sqlite3.Error as exc:
                log.debug("content-hash cache %s unreadable (%s)", self.path, exc)
        missing = [j for j in todo if out[j] is None]
        if missing:
            from tqdm.auto import tqdm

            def one(j: int) -> tuple[int, str | None, tuple | None]:
                try:
                    before = keys[j]
                    digest = sha256_file(paths[j])
                    after = _stat_key(os.stat(paths[j]))
                    return j, digest, after if after == before else None  # changed while read: not cached
                except OSError:
                    return j, None, None

            fresh = []
            with ThreadPoolExecutor(max_workers=max(1, min(workers, len(missing)))) as pool:
                for j, digest, key in tqdm(pool.map(one, missing), total=len(missing), unit="file",
                                           desc="hashing images", disable=not progress or len(missing) < 2000,
                                           mininterval=1.0):
                    out[j] = digest
                    if digest is not None and key is not None:
                        with self._lock:
                            self._mem[paths[j]] = (key, digest)
                        fresh.append((paths[j], *key, digest))
            if con is not None and fresh:
                try:
                    with con:
                        con.executemany("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?, ?, ?)", fresh)
                except sqlite3.Error as exc:
                    log.debug("content-hash cache %s not written (%s)", self.path, exc)
        if con is not None:
            con.close()
        return out

    def tree_digest(self, folder: str | Path) -> str:
        """sha256 of a folder's files in sorted order, each preceded by its relative path; cached by the
        stat keys of all its files (a file added, removed, renamed or rewritten makes it re-hashed)."""
        p = Path(folder)
        files = sorted(f for f in p.rglob("*") if f.is_file())
        rows = [[str(f.relative_to(p)), *_stat_key(f.stat())] for f in files]
        signature = hashlib.sha256(json.dumps(rows).encode()).hexdigest()
        where = os.path.abspath(p)
        hit = self._mem.get(where)
        if hit is not None and hit[0] == (signature,):
            return hit[1]
        con = self._connect()
        if con is not None:
            try:
                row = con.execute("SELECT signature, sha256 FROM trees WHERE path = ?", (where,)).fetchone()
            except sqlite3.Error:
                row = None
            if row is not None and row[0] == signature:
                con.close()
                self._mem[where] = ((signature,), row[1])
                return row[1]
        h = hashlib.sha256()
        for f in files:
            h.update(str(f.relative_to(p)).encode())
            with builtins.open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    h.update(block)
        digest = h.hexdigest()
        self._mem[where] = ((signature,), digest)
        if con is not None:
            try:
                with con:
                    con.execute("INSERT OR REPLACE INTO trees VALUES (?, ?, ?)", (where, signature, digest))
            except sqlite3.Error as exc:
                log.debug("content-hash cache %s not written (%s)", self.path, exc)
            con.close()
        return digest


_CACHES: dict[str, HashCache] = {}


def hash_cache() -> HashCache:
    """The process-wide :class:`HashCache` for the current :func:`cache_dir`."""
    key = str(cache_dir())
    if key not in _CACHES:
        _CACHES[key] = HashCache()
    return _CACHES[key]


def forget_hashes() -> None:
    """Drop the in-memory part of the hash caches (the SQLite files stay): what a new process starts with."""
    _CACHES.clear()


def sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder's files (sorted by name, each preceded by its relative path),
    answered from the hash cache when the file(s) did not change. A missing file raises ``OSError``."""
    p = Path(path)
    if p.is_dir():
        return hash_cache().tree_digest(p)
    digest = hash_cache().digests([p], progress=False)[0]
    return digest if digest is not None else sha256_file(p)  # unreadable: raise its OSError


# ----------------------------------------------------------------------------- the folder lock

class FileLock:
    """An exclusive, non-blocking lock on a folder (``<folder>/.lock``).

    Held for the whole extraction, so a second process on the same ``--out`` and encoder (a duplicate
    run, or a concurrent ``--force``) fails at once with a :class:`StoreError` naming the holder,
    instead of duplicating work or deleting files under the first. Uses ``fcntl.flock``: the kernel
    drops the lock when the holder dies, even by SIGKILL, so a stale lock file never blocks a rerun.
    Usable as a context manager. ``blocking=True`` waits for the holder instead (a one-time build that
    concurrent jobs share: the first builds, the others wait and then find it done).
    """

    def __init__(self, folder: str | Path, *, blocking: bool = False) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.blocking = blocking
        self._fh = None

    def acquire(self) -> "FileLock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX platforms: no inter-process lock
            log.warning("no fcntl on this platform: %s is not locked against concurrent writers", self.folder)
            return self
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fh = builtins.open(self.path, "a+")
        except OSError as exc:
            raise StoreError(f"Cannot create the lock file {str(self.path)!r} ({exc.strerror or exc}); "
                             "make the output folder writable or choose another --out.") from None
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX if self.blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip()
            fh.close()
            try:
                who = json.loads(holder)
                who = f"pid {who['pid']} on {who['host']}, since {who['since']}"
            except (ValueError, KeyError, TypeError):
                who = "another process"
            raise StoreError(f"{str(self.folder)!r} is being written by another extraction ({who}). Wait for it "
                             "to finish and run the command again (an identical command then reuses its store), "
                             "or choose another --out.") from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            import fcntl

            try:
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            finally:
                self._fh.close()
                self._fh = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
