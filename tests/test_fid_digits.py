"""The toy digits FD protocol (fd_digits): classifier, reference, inputs, cache determinism, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from spatialprobe.cli import app
from spatialprobe.errors import DataError
from spatialprobe.fid import digits as D

runner = CliRunner()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("digits-cache")


@pytest.fixture(scope="module")
def split():
    return D.digits_split()


def test_classifier_and_fd_separates_digits_from_noise_and_blanks(cache, split):
    xtr, _, xte, yte = split
    assert len(xte) == 360 and len(xtr) == 1437
    ref = D.digits_fd(xte, cache_dir=cache)
    assert set(ref) >= {"fd", "protocol", "n_samples", "classifier_acc", "classifier_sha256"}
    assert ref["classifier_acc"] > 0.9 and ref["n_samples"] == 360
    assert ref["protocol"] == "digits-cnn-fd-v1-r32-s0-n360" and "gfid" not in json.dumps(ref).lower()
    assert abs(ref["fd"]) < 1e-6  # the held-out split against its own statistics
    train = D.digits_fd(xtr, cache_dir=cache)["fd"]
    noise = D.digits_fd(torch.randint(0, 256, (360, 3, 32, 32), generator=torch.Generator().manual_seed(0),
                                      dtype=torch.uint8), cache_dir=cache)["fd"]
    blank = D.digits_fd(torch.zeros(360, 3, 32, 32, dtype=torch.uint8), cache_dir=cache)["fd"]
    one_class = D.digits_fd(xtr[:300][split[1][:300] == 0], cache_dir=cache)["fd"]  # mode collapse: only zeros
    assert 0 < train < 0.05 * min(noise, blank)
    assert train < one_class < noise


def test_every_sample_format_gives_the_same_number(cache, split, tmp_path):
    x = split[0][:100]
    nchw = D.digits_fd(x, cache_dir=cache)
    nhwc = x.permute(0, 2, 3, 1).numpy()
    assert D.digits_fd(nhwc, cache_dir=cache)["fd"] == pytest.approx(nchw["fd"], rel=1e-9)
    np.savez(tmp_path / "samples.npz", arr_0=nhwc)
    assert D.digits_fd(tmp_path / "samples.npz", cache_dir=cache)["fd"] == pytest.approx(nchw["fd"], rel=1e-9)
    (tmp_path / "png").mkdir()
    for i, im in enumerate(nhwc):
        Image.fromarray(im).save(tmp_path / "png" / f"{i:04d}.png")
    assert D.digits_fd(tmp_path / "png", cache_dir=cache)["fd"] == pytest.approx(nchw["fd"], rel=1e-9)
    # 64-px samples are resized to the protocol's 32 px
    big = torch.nn.functional.interpolate(x.float(), size=(64, 64), mode="nearest").to(torch.uint8)
    res = D.digits_fd(big, cache_dir=cache)
    assert res["sample_sizes"] == [[64, 64]] and res["fd"] < 2 * nchw["fd"] + 50
    with pytest.raises(DataError, match="uint8"):
        D.digits_fd(x.float(), cache_dir=cache)
    with pytest.raises(DataError, match="at least 2"):
        D.digits_fd(x[:1], cache_dir=cache)


def test_cache_is_reused_and_a_rebuild_is_bit_identical(cache, split):
    first = D.digits_fd(split[2][:50], cache_dir=cache)
    folder = cache / "digits-fd" / "digits-cnn-fd-v1-s0"
    meta = folder / "meta.json"
    stamp = meta.stat().st_mtime_ns
    D.digits_fd(split[2][:50], cache_dir=cache)
    assert meta.stat().st_mtime_ns == stamp  # reused, not retrained
    (folder / "classifier.safetensors").write_bytes(b"corrupt")
    again = D.digits_fd(split[2][:50], cache_dir=cache)  # detected by its sha256, retrained deterministically
    assert meta.stat().st_mtime_ns != stamp
    assert again["classifier_sha256"] == first["classifier_sha256"] == json.loads(meta.read_text())["classifier_sha256"]
    assert again["fd"] == first["fd"]


def test_cli_writes_fd_digits_json(cache, split, tmp_path):
    np.savez(tmp_path / "s.npz", arr_0=split[2][:80].permute(0, 2, 3, 1).numpy())
    res = runner.invoke(app, ["fd-digits", str(tmp_path / "s.npz"), "--cache-dir", str(cache), "--out", str(tmp_path / "e")])
    assert res.exit_code == 0, res.output
    rec = json.loads((tmp_path / "e" / "fd_digits.json").read_text())
    assert list(rec["metrics"]) == ["fd_digits"] and rec["n_samples"] == 80
    assert rec["protocol"] in res.output and "fd_digits" in res.output
    assert json.loads((tmp_path / "e" / "config.json").read_text())["config"]["cache_dir"] == str(cache)
    res = runner.invoke(app, ["fd-digits", str(tmp_path / "missing.npz"), "--cache-dir", str(cache)])
    assert res.exit_code == 2 and "error:" in res.output
