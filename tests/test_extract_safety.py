"""Data loss and stale data in extraction: kill -9 during --force, images rewritten with the same size and
mtime, two processes on one --out, and what a refusal names."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import spatialprobe.store as store
from spatialprobe.data import open_source
from spatialprobe.data import sources as S
import spatialprobe.io as sp_io
from spatialprobe.errors import StoreError
from spatialprobe.extract import extract

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_extract import TESTS, TinyEncoder, _cfg  # noqa: E402

_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_extract import TinyEncoder, _cfg
from spatialprobe.extract import extract
extract(out={out!r}, encoder_objects=[TinyEncoder()], **_cfg(limit=40, shard_size=4, batch_size=2, **{kw!r}))
"""


def _start(tmp_path: Path, out: Path, hold: Path | None = None, **kw) -> subprocess.Popen:
    script = tmp_path / f"run{len(list(tmp_path.glob('run*.py')))}.py"
    script.write_text(_SCRIPT.format(tests=str(TESTS), out=str(out), kw=kw))
    env = dict(os.environ, TINY_DELAY="0.25")
    if hold is not None:  # the run pauses after its first shard until this file exists
        env.update(TINY_HOLD=str(hold), TINY_DELAY="0")
    return subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_markers(root: Path, n: int, exclude: Path | None = None, timeout: float = 60) -> list[Path]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = [p for p in root.rglob("shard-*.done") if exclude is None or p.parent != exclude]
        if len(found) >= n:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no {n} shard markers under {root} within {timeout} s")


def _tensors(path) -> dict[str, torch.Tensor]:
    st = store.open(path)
    return {"ids": st.ids, **{k: st.load(k) for k in st.keys}}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and a["ids"] == b["ids"] and all(torch.equal(a[k], b[k]) for k in a if k != "ids")


def test_sigkill_during_force_keeps_the_old_store_and_the_rerun_completes(tmp_path):
    out = tmp_path / "f"
    base = dict(limit=40, shard_size=4, batch_size=2)
    (old,) = extract(out=str(out), encoder_objects=[TinyEncoder()], **_cfg(**base))
    before = _tensors(old.path)

    proc = _start(tmp_path, out, resolution=48, force=True)
    new_markers = _wait_for_markers(out, 2, exclude=old.path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    staged = {p.parent for p in new_markers}
    assert len(staged) == 1 and old.path not in staged  # the replacement was being built beside the old store
    # the old store is intact and still the one store a reader finds
    assert old.path.is_dir() and store.open(out).path == old.path
    assert _same(_tensors(out), before)
    # without --force the rerun is still refused, and says an interrupted --force build is waiting
    with pytest.raises(StoreError, match="interrupted --force"):
        extract(out=str(out), encoder_objects=[TinyEncoder()], **_cfg(**base, resolution=48))

    done_before = len(list(next(iter(staged)).glob("shard-*.done")))
    enc = TinyEncoder()
    (res,) = extract(out=str(out), encoder_objects=[enc], **_cfg(**base, resolution=48, force=True))
    assert res.path != old.path and not old.path.exists()
    assert done_before >= 2 and len(res.computed_shards) == 10 - done_before  # resumed, not restarted
    assert enc.images_seen == 4 * (10 - done_before)
    assert store.open(out).manifest["fingerprint_inputs"]["resolution"] == 48
    assert not [p for p in (out / "tiny").iterdir() if p.name.startswith((".partial-", ".trash-"))]
    (clean,) = extract(out=str(tmp_path / "clean"), encoder_objects=[TinyEncoder()], **_cfg(**base, resolution=48))
    assert _same(_tensors(res.path), _tensors(clean.path))


def _write_ppm(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path, "PPM")


def test_rewritten_image_with_same_size_and_mtime_is_not_served_from_the_store(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for k in range(3):
        _write_ppm(imgs / f"im{k}.ppm", k)
    kw = dict(images=str(imgs), resolution=32, shard_size=2, batch_size=2, num_workers=0, dtype="fp32")
    (first,) = extract(out=str(tmp_path / "f"), encoder_objects=[TinyEncoder()], **kw)
    old_rows = store.open(first.path).load("patch")
    target = imgs / "im1.ppm"
    st = target.stat()
    _write_ppm(target, 99)  # new pixels, same dimensions: same byte size
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the old modification time
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    with pytest.raises(StoreError, match=r"differs in: source\.content \(the bytes of at least one image file\)\)") as e:
        extract(out=str(tmp_path / "f"), encoder_objects=[TinyEncoder()], **kw)
    assert "encoder" not in str(e.value).split("differs in:")[1].split(")")[0]
    (new,) = extract(out=str(tmp_path / "f"), encoder_objects=[TinyEncoder()], force=True, **kw)
    assert new.path != first.path and not first.path.exists()
    src = open_source(imgs, resolution=32)
    direct = TinyEncoder()(torch.stack([src.load(i) for i in range(3)])).patch
    rows = store.open(new.path).load("patch")
    assert torch.equal(rows, direct)  # computed from the new pixels
    assert not torch.equal(rows[1], old_rows[1]) and torch.equal(rows[[0, 2]], old_rows[[0, 2]])


def test_content_hashes_are_read_once_and_cached_by_stat(tmp_path, monkeypatch):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for k in range(4):
        _write_ppm(imgs / f"im{k}.ppm", k)
    reads: list[str] = []
    real = sp_io.sha256_file
    monkeypatch.setattr(sp_io, "sha256_file", lambda p, *a, **k: reads.append(os.path.basename(p)) or real(p))
    sp_io.forget_hashes()
    monkeypatch.setenv("SPATIALPROBE_CACHE", str(tmp_path / "cache"))
    fp = open_source(imgs).fingerprint()
    assert sorted(reads) == [f"im{k}.ppm" for k in range(4)]
    reads.clear()
    assert open_source(imgs).fingerprint() == fp and reads == []  # unchanged tree: stat only
    sp_io.forget_hashes()  # a new process: the SQLite cache answers
    assert open_source(imgs).fingerprint() == fp and reads == []
    assert (tmp_path / "cache" / "file-hashes.sqlite").is_file()
    st = (imgs / "im2.ppm").stat()
    os.utime(imgs / "im2.ppm", ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime, new ctime: re-hashed
    assert open_source(imgs).fingerprint() == fp and reads == ["im2.ppm"]
    reads.clear()
    assert open_source(imgs).subset(2).fingerprint() != fp and reads == []
    rec = open_source(imgs).fingerprint_record()
    assert rec["content_kind"] == S.CONTENT_HASH and rec["n"] == 4


def test_refusal_names_the_field_that_changed(tmp_path):
    out = str(tmp_path)
    kw = dict(encoder="pixels", images="builtin", limit=2, num_workers=0, shard_size=2)
    extract(out=out, resolution=32, **kw)
    with pytest.raises(StoreError) as e:
        extract(out=out, resolution=48, **kw)
    changed = str(e.value).split("differs in: ")[1].split("). ")[0]
    assert "resolution" in changed and "encoder" not in changed and "--force" in str(e.value)


def test_a_second_process_on_the_same_out_gets_a_clear_error_and_the_first_completes(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import spatialprobe.extract as ex
    from spatialprobe.cli import app

    out = tmp_path / "f"
    release = tmp_path / "release"
    proc = _start(tmp_path, out, hold=release)
    _wait_for_markers(out, 1)
    # a duplicate run and a concurrent --force are both turned away; nothing of the first is touched
    for extra in ({}, {"force": True, "resolution": 48}):
        with pytest.raises(StoreError, match=r"being written by another extraction \(pid \d+"):
            extract(out=str(out), encoder_objects=[TinyEncoder()], **_cfg(limit=40, shard_size=4, batch_size=2, **extra))
    monkeypatch.setattr(ex, "load_encoder", lambda name, cfg, device: TinyEncoder(name=name))
    r = CliRunner().invoke(app, ["extract", "--encoder", "tiny", "--images", "builtin:digits", "--limit", "40",
                                 "--resolution", "48", "--shard-size", "4", "--workers", "0", "--dtype", "fp32",
                                 "--out", str(out), "--force"])
    assert r.exit_code == 2 and "error:" in r.output and "another extraction" in r.output
    assert "Traceback" not in r.output
    assert proc.poll() is None  # the first run was held all along, so every attempt above met its lock
    release.write_text("go")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    st = store.open(out)
    assert len(st) == 40 and st.manifest["fingerprint_inputs"]["resolution"] == 32
    # once the first is done the lock is free again: an identical run reuses its store
    (again,) = extract(out=str(out), encoder_objects=[TinyEncoder()], **_cfg(limit=40, shard_size=4, batch_size=2))
    assert again.reused
