"""Extraction: fingerprints, reuse, bad files, SIGKILL resume, torchrun, several encoders, the CLI."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import spatialprobe.store as store
from spatialprobe.data import open_source
from spatialprobe.encoders.base import EncoderOutput
from spatialprobe.errors import StoreError
from spatialprobe.extract import ExtractConfig, extract, extract_one

TESTS = Path(__file__).resolve().parent


class TinyEncoder:
    """A 4×4-grid encoder meeting the contract: average-pool each cell, fixed random 3→8 projection,
    tanh; prefix = mean token. ``TINY_DELAY`` seconds of sleep per batch slow it down for kill tests;
    ``TINY_HOLD`` (a path) pauses it after 4 images until that file exists."""

    embed_dim = 8
    grid = (4, 4)

    def __init__(self, seed: int = 0, name: str = "tiny") -> None:
        self.name = name
        self.w = torch.randn(3, self.embed_dim, generator=torch.Generator().manual_seed(seed))
        self.weights_id = f"random-init:{seed}"
        self.images_seen = 0

    def to(self, device):
        return self

    def eval(self):
        return self

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return images.float() / 255.0

    def forward_tokens(self, x: torch.Tensor) -> EncoderOutput:
        p = F.adaptive_avg_pool2d(x, self.grid).flatten(2).transpose(1, 2)
        t = torch.tanh(3 * p @ self.w)
        return EncoderOutput(patch=t, prefix=t.mean(1, keepdim=True), grid=self.grid, layer="final")

    def __call__(self, images: torch.Tensor) -> EncoderOutput:
        time.sleep(float(os.environ.get("TINY_DELAY", "0")))
        hold = os.environ.get("TINY_HOLD")  # after the first 4 images, wait until this file exists
        if hold and self.images_seen >= 4:
            while not os.path.exists(hold):
                time.sleep(0.02)
        self.images_seen += images.shape[0]
        with torch.no_grad():
            return self.forward_tokens(self.preprocess(images))


class BrokenEncoder(TinyEncoder):
    def __call__(self, images):
        raise RuntimeError("simulated out-of-memory")


def _cfg(**kw) -> dict:
    base = dict(images="builtin:digits", limit=24, resolution=32, shard_size=8, batch_size=4, num_workers=0,
                dtype="fp32")
    base.update(kw)
    return base


def _store_tensors(path) -> tuple[list[str], dict[str, torch.Tensor]]:
    st = store.open(path)
    return st.ids, {k: st.load(k) for k in st.keys}


# ----------------------------------------------------------------------------- basic extraction

def test_store_matches_direct_encoder_calls(tmp_path):
    enc = TinyEncoder()
    (res,) = extract(out=str(tmp_path), encoder_objects=[enc], **_cfg(dtype="fp16", num_workers=1))
    st = store.open(tmp_path)
    src = open_source("builtin:digits", resolution=32)
    assert st.ids == src.ids[:24] and st.labels == src.labels[:24] and st.label_names == src.label_names
    assert st.grid == (4, 4) and st.dim == 8 and st.has_prefix and len(res.computed_shards) == 3
    direct = TinyEncoder()(torch.stack([src.load(i) for i in range(24)]))
    assert torch.equal(st.load("patch"), direct.patch.half().float())
    assert torch.allclose(st.load("pooled"), direct.patch.mean(1), atol=1e-6)
    assert torch.equal(st.load("prefix"), direct.prefix.half().float())
    m = st.manifest
    for key in ("fingerprint", "environment", "weights_id", "source", "config", "shards"):
        assert key in m
    assert m["weights_id"] == "random-init:0" and m["environment"]["torch"] == torch.__version__
    assert m["fingerprint_inputs"]["source"] == src.subset(24).fingerprint_record()


def test_pooled_only_matches_full_pooled(tmp_path):
    extract(out=str(tmp_path / "full"), encoder_objects=[TinyEncoder()], **_cfg())
    extract(out=str(tmp_path / "lp"), encoder_objects=[TinyEncoder()], **_cfg(pooled_only=True))
    lp = store.open(tmp_path / "lp")
    assert not lp.has_patch and torch.equal(lp.load("pooled"), store.open(tmp_path / "full").load("pooled"))


# ----------------------------------------------------------------------------- fingerprint

def test_fingerprint_changes_are_refused_and_identical_runs_are_noops(tmp_path):
    out = str(tmp_path)
    enc = TinyEncoder()
    (first,) = extract(out=out, encoder_objects=[enc], **_cfg())
    shard = first.path / store.shard_name(0)
    stamp = (shard.stat().st_ino, shard.stat().st_mtime_ns)
    seen = enc.images_seen
    (again,) = extract(out=out, encoder_objects=[enc], **_cfg())
    assert again.reused and again.path == first.path and enc.images_seen == seen  # nothing recomputed
    assert (shard.stat().st_ino, shard.stat().st_mtime_ns) == stamp
    changes = [dict(resolution=48), dict(dtype="fp16"), dict(limit=23), dict(shard_size=6),
               dict(pooled_only=True), dict(prefix=False), dict(images="builtin:lfw")]
    for change in changes:
        with pytest.raises(StoreError, match="another fingerprint"):
            extract(out=out, encoder_objects=[TinyEncoder()], **_cfg(**change))
    with pytest.raises(StoreError, match="weights_id|encoder"):  # other weights
        extract(out=out, encoder_objects=[TinyEncoder(seed=1)], **_cfg())
    # --force replaces the stale store; the old one is gone
    (forced,) = extract(out=out, encoder_objects=[TinyEncoder()], **_cfg(resolution=48, force=True))
    assert forced.path != first.path and not first.path.exists()
    assert store.open(tmp_path).manifest["fingerprint_inputs"]["resolution"] == 48


def test_changed_image_file_is_detected(tmp_path):
    import skimage.data as skd

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(skd, name)()).save(imgs / f"{name}.png")
    kw = dict(images=str(imgs), resolution=32, shard_size=2, batch_size=2, num_workers=0)
    extract(out=str(tmp_path / "f"), encoder_objects=[TinyEncoder()], **kw)
    Image.fromarray(skd.rocket()).save(imgs / "coffee.png")  # same id, new content
    with pytest.raises(StoreError, match="source"):
        extract(out=str(tmp_path / "f"), encoder_objects=[TinyEncoder()], **kw)


# ----------------------------------------------------------------------------- bad and unusual files

def _unusual_folder(root: Path) -> tuple[set[str], set[str]]:
    import skimage.data as skd

    root.mkdir()
    cat = skd.chelsea()
    buf = io.BytesIO()
    Image.fromarray(cat).save(buf, "JPEG")
    jpg = buf.getvalue()
    (root / "corrupt.jpg").write_bytes(jpg[:2] + bytes(200) + jpg[202:])
    buf = io.BytesIO()
    Image.fromarray(skd.coffee()).save(buf, "PNG")
    (root / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "empty.png").write_bytes(b"")
    (root / "notes.jpg").write_text("a text file named .jpg\n")
    rgba = np.dstack([cat, np.full(cat.shape[:2], 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(root / "rgba.png")
    Image.fromarray((skd.camera().astype(np.uint16) * 257)).save(root / "sixteen_bit.png")
    Image.fromarray(skd.camera()).save(root / "gray.png")
    Image.new("RGB", (1, 1), (10, 200, 30)).save(root / "one_pixel.png")
    Image.fromarray(cat).convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray(cat).convert("P").save(root / "palette.gif")
    good = {"rgba", "sixteen_bit", "gray", "one_pixel", "cmyk", "palette"}
    bad = {"corrupt", "truncated", "empty", "notes"}
    return good, bad


def test_unusual_and_bad_files_are_converted_or_recorded(tmp_path):
    good, bad = _unusual_folder(tmp_path / "imgs")
    (res,) = extract(images=str(tmp_path / "imgs"), out=str(tmp_path / "f"), encoder_objects=[TinyEncoder()],
                     resolution=32, shard_size=4, batch_size=3, num_workers=1)
    st = store.open(tmp_path / "f")
    assert set(st.ids) == good and {i for i, _ in st.bad} == bad and {i for i, _ in res.bad} == bad
    assert all(reason for _, reason in st.bad)
    src = open_source(tmp_path / "imgs", resolution=32)
    # 16-bit camera == 8-bit camera after conversion (v·257/257 = v); a 1×1 pixel fills the crop
    assert torch.equal(src.load(src.ids.index("sixteen_bit")), src.load(src.ids.index("gray")))
    px = src.load(src.ids.index("one_pixel"))
    assert (px[:, 0, 0].tolist() == [10, 200, 30]) and bool((px == px[:, :1, :1]).all())
    assert len(st) + len(st.bad) == len(src)  # nothing lost


def test_cli_lists_bad_files_and_exit_codes(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import spatialprobe.extract as ex
    from spatialprobe.cli import app

    _unusual_folder(tmp_path / "imgs")
    monkeypatch.setattr(ex, "load_encoder", lambda name, cfg, device: TinyEncoder(name=name))
    args = ["extract", "--encoder", "tiny", "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "f"),
            "--resolution", "32", "--workers", "0", "--batch-size", "4"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1, r.output
    assert "4 image(s) could not be decoded" in r.output and "truncated" in r.output and "--skip-bad" in r.output
    r = CliRunner().invoke(app, args + ["--skip-bad"])
    assert r.exit_code == 0 and "reused" in r.output
    r = CliRunner().invoke(app, args + ["--resolution", "48"])
    assert r.exit_code == 2 and "--force" in r.output


def test_one_failing_encoder_keeps_the_others(tmp_path):
    res = extract(out=str(tmp_path), encoder_objects=[BrokenEncoder(name="broken"), TinyEncoder()], **_cfg())
    assert res[0].error and "out-of-memory" in res[0].error and res[1].error is None
    assert len(store.open(tmp_path / "tiny")) == 24


# ----------------------------------------------------------------------------- crash safety

_KILL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_extract import TinyEncoder, _cfg
from spatialprobe.extract import extract
extract(out={out!r}, encoder_objects=[TinyEncoder()], **_cfg(limit=40, shard_size=4, batch_size=2))
"""


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    out = tmp_path / "killed"
    script = tmp_path / "run.py"
    script.write_text(_KILL_SCRIPT.format(tests=str(TESTS), out=str(out)))
    env = dict(os.environ, TINY_DELAY="0.25")
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    markers: list[Path] = []
    while time.time() < deadline:
        markers = list(out.glob("tiny/*/shard-*.done"))
        if len(markers) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    folder = next(out.glob("tiny/[!.]*"))
    done = sorted(int(p.name[6:11]) for p in folder.glob("shard-*.done"))
    assert 3 <= len(done) < 10, done  # killed mid-run
    with pytest.raises(StoreError, match="incomplete"):
        store.open(folder)
    stamps = {k: (folder / store.shard_name(k)).stat().st_mtime_ns for k in done}

    enc = TinyEncoder()
    (res,) = extract(out=str(out), encoder_objects=[enc], **_cfg(limit=40, shard_size=4, batch_size=2))
    assert res.path == folder and not set(res.computed_shards) & set(done)
    assert sorted(res.computed_shards) == [k for k in range(10) if k not in done]
    assert enc.images_seen == 4 * (10 - len(done))  # only the unfinished shards were encoded
    assert {k: (folder / store.shard_name(k)).stat().st_mtime_ns for k in done} == stamps
    assert not list(folder.glob(".*tmp*"))

    extract(out=str(tmp_path / "clean"), encoder_objects=[TinyEncoder()], **_cfg(limit=40, shard_size=4, batch_size=2))
    ids_a, ta = _store_tensors(out)
    ids_b, tb = _store_tensors(tmp_path / "clean")
    assert ids_a == ids_b and ta.keys() == tb.keys()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


# ----------------------------------------------------------------------------- torchrun

_TORCHRUN_SCRIPT = """
import json, os, sys
sys.path.insert(0, {tests!r})
from test_extract import TinyEncoder, _cfg
from spatialprobe.extract import extract
(res,) = extract(out={out!r}, encoder_objects=[TinyEncoder()], **_cfg(limit=40, shard_size=4, batch_size=3))
with open(os.path.join({log!r}, "rank%s.json" % os.environ["RANK"]), "w") as fh:
    json.dump({{"computed": res.computed_shards, "n": res.n_images}}, fh)
"""


def test_torchrun_two_ranks_equals_one_process_and_resumes_any_world_size(tmp_path):
    single = tmp_path / "single"
    extract(out=str(single), encoder_objects=[TinyEncoder()], **_cfg(limit=40, shard_size=4, batch_size=3))
    # a partial store written by one process: shards 1, 2, 7 lost
    multi = tmp_path / "multi"
    shutil.copytree(single, multi)
    folder = next(multi.glob("tiny/[!.]*"))
    for k in (1, 2, 7):
        (folder / store.done_name(k)).unlink()
        (folder / store.shard_name(k)).unlink()
    m = json.loads((folder / store.MANIFEST).read_text())
    m["complete"] = False
    (folder / store.MANIFEST).write_text(json.dumps(m))
    (tmp_path / "logs").mkdir()
    script = tmp_path / "dist.py"
    script.write_text(_TORCHRUN_SCRIPT.format(tests=str(TESTS), out=str(multi), log=str(tmp_path / "logs")))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    env["OMP_NUM_THREADS"] = "1"
    torchrun = shutil.which("torchrun") or "torchrun"
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(script)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    logs = [json.loads((tmp_path / "logs" / f"rank{k}.json").read_text()) for k in (0, 1)]
    # shard k goes to rank k % 2; only the missing shards were computed, each by exactly one rank
    assert sorted(logs[0]["computed"]) == [2] and sorted(logs[1]["computed"]) == [1, 7]
    assert logs[0]["n"] == logs[1]["n"] == 40
    ids_a, ta = _store_tensors(single)
    ids_b, tb = _store_tensors(multi)
    assert ids_a == ids_b and all(torch.equal(ta[k], tb[k]) for k in ta)

    # and a fresh two-rank run from nothing gives the same store
    fresh = tmp_path / "fresh"
    script.write_text(_TORCHRUN_SCRIPT.format(tests=str(TESTS), out=str(fresh), log=str(tmp_path / "logs")))
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(script)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    logs = [json.loads((tmp_path / "logs" / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert sorted(logs[0]["computed"]) == [0, 2, 4, 6, 8] and sorted(logs[1]["computed"]) == [1, 3, 5, 7, 9]
    ids_c, tc = _store_tensors(fresh)
    assert ids_a == ids_c and all(torch.equal(ta[k], tc[k]) for k in ta)


def test_random_init_and_seed_enter_the_fingerprint():
    from spatialprobe.extract import store_fingerprint

    src = open_source("builtin:lfw", resolution=32)
    enc = TinyEncoder()
    fps = {store_fingerprint(enc, src, ExtractConfig(**kw))[0]
           for kw in ({}, {"random_init": True}, {"random_init": True, "seed": 1})}
    assert len(fps) == 3


def test_cli_hog_builtin_then_metrics_end_to_end(tmp_path):
    from typer.testing import CliRunner

    from spatialprobe.cli import app

    feats, met = tmp_path / "F", tmp_path / "M"
    r = CliRunner().invoke(app, ["extract", "--encoder", "hog", "--images", "builtin", "--limit", "3",
                                 "--workers", "0", "--out", str(feats)])
    assert r.exit_code == 0, r.output
    st = store.open(feats)
    assert st.encoder == "hog" and st.ids == open_source("builtin").ids[:3] and st.grid == (16, 16)
    assert st.manifest["weights_id"] == "none"
    r = CliRunner().invoke(app, ["metrics", "--features", str(feats), "--out", str(met)])
    assert r.exit_code == 0, r.output
    assert (met / "summary.csv").is_file()


# ----------------------------------------------------------------------------- shared decoding

class _CountingSource(type(open_source("builtin:digits"))):
    """builtin:digits, counting how often an image is decoded and cropped (in this process)."""

    decodes = 0

    def load_pil(self, i):
        type(self).decodes += 1
        return super().load_pil(i)


def _counting_digits():
    base = open_source("builtin:digits", resolution=32)
    src = _CountingSource(base.spec, base.ids, base._make, labels=base.labels, label_names=base.label_names,
                          resolution=32, content_key=base._key)
    src.kind = base.kind
    _CountingSource.decodes = 0
    return src.subset(24)


def test_several_encoders_share_one_decode_and_equal_separate_runs(tmp_path):
    from spatialprobe.extract import extract_many

    cfg = ExtractConfig(**{k: v for k, v in _cfg().items() if k not in ("images", "limit")})
    encs = [TinyEncoder(0, "tiny"), TinyEncoder(1, "tiny-b"), TinyEncoder(2, "tiny@mix_cls=0.5")]
    src = _counting_digits()
    res = extract_many(encs, src, tmp_path / "shared", cfg)
    assert list(res) == ["tiny", "tiny-b", "tiny@mix_cls=0.5"] and _CountingSource.decodes == 24  # not 3 × 24
    assert all(e.images_seen == 24 for e in encs)
    for seed, (key, r) in enumerate(res.items()):
        (alone,) = extract(out=str(tmp_path / "alone" / str(seed)), encoder_objects=[TinyEncoder(seed, key)], **_cfg())
        ids_a, ta = _store_tensors(r.path)
        ids_b, tb = _store_tensors(alone.path)
        assert ids_a == ids_b and all(torch.equal(ta[k], tb[k]) for k in ta), key
        assert r.open().encoder == key and r.path.parent.name == key  # '@' and '=' kept in the folder name
    # one encoder's lost shard: only that shard is decoded again, and only that encoder runs on it
    folder = res["tiny-b"].path
    (folder / store.done_name(1)).unlink()
    m = json.loads((folder / store.MANIFEST).read_text())
    (folder / store.MANIFEST).write_text(json.dumps({**m, "complete": False}))
    _CountingSource.decodes = 0
    again = extract_many([TinyEncoder(0, "tiny"), b := TinyEncoder(1, "tiny-b")], src, tmp_path / "shared", cfg)
    assert again["tiny"].reused and again["tiny-b"].computed_shards == [1] and b.images_seen == 8
    assert _CountingSource.decodes == 8


def test_store_dirname_and_encoder_id_lists():
    from spatialprobe.extract import split_encoder_ids

    assert store.store_dirname("hog@mix_cls=0.5") == "hog@mix_cls=0.5"
    odd = store.store_dirname("facebook/dinov2 base:v1")
    assert "/" not in odd and " " not in odd and odd.startswith("facebook_dinov2_base_v1-")
    assert store.store_dirname("a/b") != store.store_dirname("a_b") and store.store_dirname("..") != ".."
    assert split_encoder_ids("pixels, hog,sift") == ["pixels", "hog", "sift"]
    assert split_encoder_ids("hog@mix_cls=0.5,layer=8,sift") == ["hog@mix_cls=0.5,layer=8", "sift"]


def test_cli_several_cheap_encoders_in_one_pass(tmp_path):
    from typer.testing import CliRunner

    from spatialprobe.cli import app

    r = CliRunner().invoke(app, ["extract", "--encoder", "pixels,hog,sift", "--images", "builtin", "--limit", "2",
                                 "--workers", "0", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    for name in ("pixels", "hog", "sift"):
        st = store.open(tmp_path / name)
        assert st.encoder == name and len(st) == 2 and st.grid == (16, 16)
    assert "shared decoding pass" in r.output


def test_extract_many_takes_ids_and_reports_each_failure(tmp_path):
    from spatialprobe.errors import UnknownNameError
    from spatialprobe.extract import extract_many

    src = open_source("builtin", resolution=32).subset(2)
    cfg = ExtractConfig(num_workers=0, shard_size=2)
    res = extract_many(["pixels", "no-such-encoder", TinyEncoder()], src, tmp_path, cfg)
    assert list(res) == ["pixels", "no-such-encoder", "tiny"]
    assert res["pixels"].error is None and len(res["pixels"].open()) == 2 and res["tiny"].open().encoder == "tiny"
    bad = res["no-such-encoder"]
    assert bad.path is None and isinstance(bad.exception, UnknownNameError) and "no-such-encoder" in bad.error
