"""The L0 base modules: io (atomic writes, JSON/table reading, hash cache, cache folder, lock), runtime
(devices, torchrun ranks, decode workers), tokens and schema, and that the old names still reach them."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import spatialprobe.io as sp_io
import spatialprobe.config as sp_config
from spatialprobe import runtime, schema, tokens
from spatialprobe.errors import ConfigError, DataError, InputFileError, StoreError


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


# ----------------------------------------------------------------------------- io: atomic writes

def test_atomic_writes_leave_no_temp_file(tmp_path):
    sp_io.atomic_write_bytes(tmp_path / "a.bin", b"abc")
    sp_io.atomic_write_json(tmp_path / "b.json", {"x": [1, 2]})
    sp_io.atomic_write(tmp_path / "c.pt", lambda tmp: torch.save({"w": torch.arange(3)}, tmp))
    assert (tmp_path / "a.bin").read_bytes() == b"abc"
    assert (tmp_path / "b.json").read_text() == json.dumps({"x": [1, 2]}, indent=1) + "\n"
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["w"], torch.arange(3))
    assert _leftovers(tmp_path) == []


def test_failed_atomic_write_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "out.json"
    sp_io.atomic_write_json(target, {"v": 1})

    def half_then_crash(tmp: Path) -> None:
        tmp.write_text('{"v": 2')
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        sp_io.atomic_write(target, half_then_crash)
    with pytest.raises(TypeError):
        sp_io.atomic_write_json(target, {"v": object()})  # not serialisable: nothing written
    assert json.loads(target.read_text()) == {"v": 1}
    assert _leftovers(tmp_path) == []


def test_clean_temp_files_removes_a_killed_writers_leftovers(tmp_path):
    (tmp_path / sp_io.temp_name(tmp_path / "shard.bin").name).write_bytes(b"half")
    (tmp_path / "keep.bin").write_bytes(b"x")
    sp_io.clean_temp_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.bin"]


# ----------------------------------------------------------------------------- io: reading

def test_read_json_default_on_missing_or_bad(tmp_path):
    (tmp_path / "ok.json").write_text('{"a": 1}')
    (tmp_path / "bad.json").write_text("{not json")
    assert sp_io.read_json(tmp_path / "ok.json") == {"a": 1}
    assert sp_io.read_json(tmp_path / "bad.json") is None
    assert sp_io.read_json(tmp_path / "missing.json", {}) == {}


def test_read_table_formats_and_errors(tmp_path):
    (tmp_path / "t.csv").write_text("encoder,lds\na,0.5\n")
    (tmp_path / "t.tsv").write_text("encoder\tlds\nb\t0.25\n")
    assert sp_io.read_table(tmp_path / "t.csv")["lds"].tolist() == [0.5]
    assert sp_io.read_table(tmp_path / "t.tsv")["encoder"].tolist() == ["b"]
    with pytest.raises(InputFileError, match="does not exist"):
        sp_io.read_table(tmp_path / "none.csv")
    (tmp_path / "t.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="could not be read as .parquet"):
        sp_io.read_table(tmp_path / "t.parquet")


# ----------------------------------------------------------------------------- io: cache folder and hashes

def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("SPATIALPROBE_CACHE", str(tmp_path / "sp"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert sp_io.cache_dir() == tmp_path / "sp"
    monkeypatch.delenv("SPATIALPROBE_CACHE")
    assert sp_io.cache_dir() == tmp_path / "xdg" / "spatialprobe"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert sp_io.cache_dir() == tmp_path / "home" / ".cache" / "spatialprobe"


@pytest.fixture
def counted_reads(tmp_path, monkeypatch):
    """A fresh hash cache under $SPATIALPROBE_CACHE; the list of files actually read."""
    monkeypatch.setenv("SPATIALPROBE_CACHE", str(tmp_path / "cache"))
    sp_io.forget_hashes()
    reads: list[str] = []
    real = sp_io.sha256_file
    monkeypatch.setattr(sp_io, "sha256_file", lambda p, *a, **k: reads.append(Path(p).name) or real(p, *a, **k))
    yield reads
    sp_io.forget_hashes()


def test_sha256_cache_lives_under_spatialprobe_cache_and_invalidates(tmp_path, counted_reads):
    f = tmp_path / "w.bin"
    f.write_bytes(b"weights-1")
    assert sp_io.sha256(f) == hashlib.sha256(b"weights-1").hexdigest()
    assert (tmp_path / "cache" / "file-hashes.sqlite").is_file()
    assert sp_io.sha256(f) == hashlib.sha256(b"weights-1").hexdigest() and counted_reads == ["w.bin"]
    sp_io.forget_hashes()  # a new process: the SQLite file answers
    assert sp_io.sha256(f) == hashlib.sha256(b"weights-1").hexdigest() and counted_reads == ["w.bin"]

    f.write_bytes(b"weights-22")  # size change
    assert sp_io.sha256(f) == hashlib.sha256(b"weights-22").hexdigest()
    st = f.stat()
    f.write_bytes(b"weights-33")  # same size, then the old mtime put back: ctime still moves
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert sp_io.sha256(f) == hashlib.sha256(b"weights-33").hexdigest()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # mtime only
    sp_io.sha256(f)
    assert counted_reads == ["w.bin"] * 4


def test_sha256_of_a_folder_is_the_named_stream_and_cached(tmp_path, counted_reads):
    d = tmp_path / "model"
    (d / "sub").mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "sub" / "w.bin").write_bytes(b"abc")
    h = hashlib.sha256()
    for rel, data in (("config.json", b"{}"), ("sub/w.bin", b"abc")):
        h.update(rel.encode())
        h.update(data)
    assert sp_io.sha256(d) == h.hexdigest()
    sp_io.forget_hashes()
    assert sp_io.sha256(d) == h.hexdigest()  # from the SQLite file: no second read
    (d / "extra.txt").write_text("x")
    assert sp_io.sha256(d) != h.hexdigest()


def test_sha256_of_a_missing_file_raises(tmp_path, counted_reads):
    with pytest.raises(OSError):
        sp_io.sha256(tmp_path / "nope.bin")


def test_weights_checksum_uses_the_one_cache(tmp_path, counted_reads):
    from spatialprobe.encoders.weights import sha256 as weights_sha256

    f = tmp_path / "ckpt.safetensors"
    f.write_bytes(b"\0" * 100)
    # config is imported at the top of this module, before the fixture patches io.sha256_file
    assert weights_sha256 is sp_io.sha256 and (sp_config.sha256_file.__module__, sp_config.sha256_file.__name__) \
        == ("spatialprobe.io", "sha256_file")
    assert weights_sha256(f) == weights_sha256(f) and counted_reads == ["ckpt.safetensors"]


# ----------------------------------------------------------------------------- io: lock

def test_file_lock_is_exclusive_and_store_lock_is_it(tmp_path):
    from spatialprobe import store

    assert store.StoreLock is sp_io.FileLock
    with sp_io.FileLock(tmp_path / "enc") as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        with pytest.raises(StoreError, match="being written by another"):
            store.StoreLock(tmp_path / "enc").acquire()
    sp_io.FileLock(tmp_path / "enc").acquire().release()


# ----------------------------------------------------------------------------- runtime

def test_resolve_device_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.resolve_device("auto") == torch.device("cpu")
    assert runtime.resolve_device("auto", local_rank=3) == torch.device("cpu")
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match="no CUDA device.*--device cpu"):
            runtime.resolve_device(name)


def test_resolve_device_with_cuda_and_torchrun_local_rank(monkeypatch):
    from spatialprobe.extract import resolve_device as extract_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.resolve_device("auto") == torch.device("cuda")
    assert runtime.resolve_device("cuda") == torch.device("cuda")
    assert runtime.resolve_device("auto", local_rank=2) == torch.device("cuda:2")
    assert runtime.resolve_device("cuda", local_rank=2) == torch.device("cuda:2")
    assert runtime.resolve_device("cuda:0", local_rank=2) == torch.device("cuda:0")  # explicit index wins
    assert extract_device("auto", 1) == "cuda:1" and extract_device("cpu", 1) == "cpu"


def test_torchrun_env_helpers_and_decode_workers(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert (runtime.world_size(), runtime.rank(), runtime.local_rank(), runtime.is_rank0()) == (1, 0, 0, True)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert (runtime.world_size(), runtime.rank(), runtime.local_rank(), runtime.is_rank0()) == (4, 3, 1, False)
    assert runtime.decode_workers(0) == 0 and runtime.decode_workers(3) == 3
    assert runtime.decode_workers(-1) == min(8, os.cpu_count() or 1)


# ----------------------------------------------------------------------------- tokens

def test_token_transforms_by_hand():
    patch = torch.tensor([[[1.0, 0.0], [3.0, 2.0]]])  # [1, 2, 2]
    cls = torch.tensor([[10.0, 20.0]])
    torch.testing.assert_close(tokens.mix_cls(patch, cls, 0.5), torch.tensor([[[5.5, 10.0], [6.5, 11.0]]]))
    torch.testing.assert_close(tokens.mix_cls(patch, cls, 0.5, form="additive"),
                               torch.tensor([[[6.0, 10.0], [8.0, 12.0]]]))
    torch.testing.assert_close(tokens.mix_mean(patch, 1.0), torch.tensor([[[2.0, 1.0], [2.0, 1.0]]]))
    # std over 2 tokens (unbiased) of [1, 3] is sqrt(2); gamma = 1 centres
    z = tokens.spatial_norm(patch, 1.0)
    torch.testing.assert_close(z[0, :, 0], torch.tensor([-1.0, 1.0]) / (2 ** 0.5 + tokens.SPNORM_EPS))
    with pytest.raises(DataError, match="no CLS"):
        tokens.mix_cls(patch, None, 0.1)
    with pytest.raises(ConfigError, match="form"):
        tokens.mix_mean(patch, 0.1, form="other")


def test_one_definition_behind_the_old_names():
    from spatialprobe.encoders import variants  # noqa: F401 - imports the transforms it applies
    from spatialprobe.metrics import spatial_norm as metrics_spatial_norm
    from spatialprobe.train import repa

    assert metrics_spatial_norm is tokens.spatial_norm and repa.spatial_norm is tokens.spatial_norm
    sys.modules.pop("spatialprobe.encoders.transforms", None)
    with pytest.warns(DeprecationWarning, match="spatialprobe.tokens"):
        old = importlib.import_module("spatialprobe.encoders.transforms")
    assert old.mix_cls is tokens.mix_cls and old.mix_mean is tokens.mix_mean


# ----------------------------------------------------------------------------- schema and moved helpers

def test_schema_vocabulary_is_what_the_stages_use():
    from spatialprobe import correlation, inject, store
    from spatialprobe.metrics import METRICS
    from spatialprobe.study import launchers, spec

    assert schema.PROPERTIES == ("lp_acc", "lds", "cds", "srss", "rmsc")
    assert METRICS == inject.METRICS == schema.SPATIAL_METRICS
    assert correlation.DEFAULT_X == schema.PROPERTIES and correlation.DEFAULT_Y == (schema.GFID,)
    assert set(launchers.LAUNCHERS) == set(schema.LAUNCHERS) == set(spec.LAUNCHERS)
    assert set(spec.QUALITY_COL.values()) <= set(schema.QUALITY)
    assert store.MANIFEST == schema.MANIFEST_JSON
    assert correlation.read_table is sp_io.read_table


def test_adm_crop_geometry_is_the_crop_center_crop_arr_takes():
    from PIL import Image

    from spatialprobe.data.preprocess import adm_crop_geometry, center_crop_arr
    from spatialprobe.metrics import masks

    assert masks.adm_crop_geometry is adm_crop_geometry
    assert adm_crop_geometry((700, 500), 256) == ((358, 256), (51, 0))
    assert adm_crop_geometry((1200, 600), 256) == ((512, 256), (128, 0))  # halved once first
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (500, 700, 3), dtype=np.uint8))
    want = np.asarray(img.resize((358, 256), resample=Image.BICUBIC))[:, 51:51 + 256]
    assert np.array_equal(center_crop_arr(img, 256), want)
