"""Feature store: writer, reader, atomic writes."""

from __future__ import annotations

import json

import pytest
import torch

import spatialprobe.store as store
from spatialprobe.errors import DataError, InputFileError, StoreError


def _ids(n):
    return [f"img/{k:03d}" for k in range(n)]


def test_roundtrip_chunks_and_subsets(tmp_path):
    g = torch.Generator().manual_seed(0)
    patch = torch.randn(11, 4, 5, generator=g)
    prefix = torch.randn(11, 1, 5, generator=g)
    path = store.write_store(tmp_path / "s", _ids(11), patch=patch, prefix=prefix, grid=(2, 2), encoder="toy",
                             labels=[k % 3 for k in range(11)], label_names=["a", "b", "c"], shard_size=4)
    assert sorted(p.name for p in path.glob("shard-*.safetensors")) == [f"shard-0000{k}.safetensors" for k in range(3)]
    st = store.open(tmp_path)  # the parent holds exactly one store
    assert st.path == path and len(st) == 11 and st.ids == _ids(11) and st.grid == (2, 2) and st.dim == 5
    assert st.labels == [k % 3 for k in range(11)] and st.label_names == ["a", "b", "c"]
    assert st.has_patch and st.has_prefix
    assert torch.equal(st.load("patch"), patch)
    assert torch.equal(st.load("prefix"), prefix)
    # pooled = mean over the 4 tokens, computed independently here
    assert torch.allclose(st.load("pooled"), (patch[:, 0] + patch[:, 1] + patch[:, 2] + patch[:, 3]) / 4, atol=1e-6)
    chunks = list(st.iter_chunks(("patch", "pooled"), chunk_size=3))
    assert [len(c["ids"]) for c in chunks] == [3, 3, 3, 2]
    assert all(c["patch"].dtype == torch.float32 for c in chunks)
    assert torch.equal(torch.cat([c["patch"] for c in chunks]), patch)
    want = ["img/009", "img/001", "img/002", "img/005"]  # across shards, out of order
    got = list(st.iter_chunks(("patch",), chunk_size=3, ids=want))
    assert sum((c["ids"] for c in got), []) == want
    assert torch.equal(torch.cat([c["patch"] for c in got]), patch[[9, 1, 2, 5]])
    with pytest.raises(StoreError, match="img/999"):
        st.load("patch", ids=["img/999"])


def test_half_precision_and_pooled_only(tmp_path):
    patch = torch.randn(3, 4, 2)
    st = store.open(store.write_store(tmp_path / "h", _ids(3), patch=patch, grid=(2, 2), encoder="toy", dtype="fp16"))
    assert st.dtype == "fp16" and torch.equal(st.load("patch"), patch.half().float())
    assert torch.allclose(st.load("pooled"), patch.mean(1))  # pooled is kept in fp32
    pooled = torch.randn(3, 2)
    st = store.open(store.write_store(tmp_path / "p", _ids(3), pooled=pooled, grid=(2, 2), encoder="toy"))
    assert not st.has_patch and torch.equal(st.load("pooled"), pooled)
    with pytest.raises(StoreError, match="pooled-only"):
        next(st.iter_chunks(("patch",)))


def test_open_errors(tmp_path):
    with pytest.raises(InputFileError):
        store.open(tmp_path / "missing")
    with pytest.raises(StoreError, match="No feature store"):
        store.open(tmp_path)
    store.write_store(tmp_path / "a", _ids(2), pooled=torch.zeros(2, 3), grid=(1, 1), encoder="x")
    store.write_store(tmp_path / "b", _ids(2), pooled=torch.zeros(2, 3), grid=(1, 1), encoder="y")
    with pytest.raises(StoreError, match="2 feature stores"):
        store.open(tmp_path)
    m = tmp_path / "a" / "manifest.json"
    rec = json.loads(m.read_text())
    rec["complete"] = False
    m.write_text(json.dumps(rec))
    with pytest.raises(StoreError, match="resume"):
        store.open(tmp_path / "a")
    with pytest.raises(DataError):
        store.write_store(tmp_path / "c", _ids(2), patch=torch.zeros(2, 3, 1), grid=(2, 2), encoder="x")


def test_shard_marker_requires_intact_file(tmp_path):
    m = store.write_shard(tmp_path, 0, ["a", "b"], {"pooled": torch.ones(2, 3)}, bad=[("c", "broken")])
    assert store.read_marker(tmp_path, 0) == m and m["bad"] == [["c", "broken"]]
    assert not list(tmp_path.glob(".*tmp*"))  # temp names were renamed away
    # a shard file that does not match its marker (e.g. a torn copy) does not count as done
    (tmp_path / store.shard_name(0)).write_bytes(b"xx")
    assert store.read_marker(tmp_path, 0) is None
    assert store.read_marker(tmp_path, 1) is None


def test_write_store_replaces_atomically_and_hidden_folders_are_not_stores(tmp_path):
    first = store.write_store(tmp_path / "s", _ids(2), pooled=torch.zeros(2, 3), grid=(1, 1), encoder="x")
    again = store.write_store(tmp_path / "s", _ids(3), pooled=torch.ones(3, 3), grid=(1, 1), encoder="x")
    assert again == first and len(store.open(again)) == 3 and torch.equal(store.open(again).load("pooled"), torch.ones(3, 3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no staged or trash folder left behind
    # a staged --force build or a trash folder beside a store is never found as a second store
    store.write_store(tmp_path / ".partial-abc", _ids(2), pooled=torch.zeros(2, 3), grid=(1, 1), encoder="x")
    store.write_store(tmp_path / ".trash-old", _ids(2), pooled=torch.zeros(2, 3), grid=(1, 1), encoder="x")
    assert store.find_stores(tmp_path) == [first] and store.open(tmp_path).path == first


def test_store_lock_is_exclusive_and_names_the_holder(tmp_path):
    with store.StoreLock(tmp_path / "enc"):
        with pytest.raises(StoreError, match=r"being written by another extraction \(pid \d+ on "):
            store.StoreLock(tmp_path / "enc").acquire()
    with store.StoreLock(tmp_path / "enc"):  # released: free again
        pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="Cannot create the lock file"):
        store.StoreLock(tmp_path / "file" / "enc").acquire()


def _build(w, base, shards):
    w.begin(base)
    for k, (ids, pooled, bad) in enumerate(shards):
        w.write_shard(k, ids, {"pooled": pooled}, bad)
    return w.finish(base, len(shards), labels={i: n for n, i in enumerate(_ids(4))}, layer="final")


def test_store_writer_owns_the_build_resume_refusal_and_swap(tmp_path):
    fp_a, fp_b = "a" * 64, "b" * 64
    base = {"format": store.FORMAT_VERSION, "fingerprint": fp_a, "fingerprint_inputs": {"size": 1}, "encoder": "toy",
            "grid": [1, 1], "dim": 3, "dtype": "fp32", "n_shards": 2, "complete": False}
    w = store.StoreWriter(tmp_path, "toy", fp_a, inputs={"size": 1}).lock()
    with pytest.raises(StoreError, match="being written by another extraction"):
        store.StoreWriter(tmp_path, "toy", fp_a).lock()  # the encoder folder is held
    assert w.plan() is None and w.work == w.final == tmp_path / "toy" / fp_a[:16]
    w.begin(base)
    w.write_shard(0, _ids(2), {"pooled": torch.ones(2, 3)})
    with pytest.raises(StoreError, match="incomplete"):
        store.open(w.final)  # the manifest says complete: false until finish
    assert w.done_shards(2) == {0}  # a resume skips shard 0
    with pytest.raises(StoreError, match=r"shards \[1\] .* not done"):
        w.finish(base, 2)
    w.write_shard(1, _ids(4)[2:3], {"pooled": torch.zeros(1, 3)}, bad=[("img/003", "broken")])
    m = w.finish(base, 2, labels={i: n for n, i in enumerate(_ids(4))}, layer="final")
    w.unlock()
    st = store.open(w.final)
    assert st.manifest == m and st.ids == _ids(3) and st.labels == [0, 1, 2] and st.bad == [("img/003", "broken")]
    assert m["layer"] == "final" and m["keys"] == ["pooled"] and m["prefix_tokens"] == 0 and "environment" in m
    assert store.StoreWriter(tmp_path, "toy", fp_a).plan() == m  # identical and complete: reused

    # another fingerprint is refused, naming what changed; with force it is built beside and swapped in
    b = store.StoreWriter(tmp_path, "toy", fp_b, inputs={"size": 2})
    with pytest.raises(StoreError, match=r"another fingerprint \(aaaaaaaaaaaaaaaa; differs in: size\)"):
        b.plan(diff=lambda old, new: [k for k in new if old.get(k) != new.get(k)])
    assert b.plan(force=True) is None and b.work.name == f".partial-{fp_b[:16]}"
    _build(b, {**base, "fingerprint": fp_b}, [(_ids(4), torch.ones(4, 3), [])])
    assert store.find_stores(tmp_path) == [b.final] and len(store.open(tmp_path)) == 4
    assert sorted(p.name for p in (tmp_path / "toy").iterdir()) == [".lock", fp_b[:16]]  # nothing staged left
