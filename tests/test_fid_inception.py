"""The Inception feature extractor offline (random init, weights round trip), batch independence, image
readers, input errors, and `spatialprobe fid-ref` / `spatialprobe fid` end to end (random-init Inception:
the numbers are meaningless, the identities checked are not)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from spatialprobe import fid
from spatialprobe.cli import app
from spatialprobe.errors import DataError, WeightsMismatchError, WeightsNotFoundError
from spatialprobe.fid.inception import INCEPTION_WEIGHTS_FILE


def _real_images(n: int, size: int) -> torch.Tensor:
    """n real photos (scikit-image / scikit-learn bundled data), random crops resized to size, uint8 NCHW."""
    from PIL import Image
    from skimage import data
    from sklearn.datasets import load_sample_images

    bases = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), *load_sample_images().images]
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        b = bases[i % len(bases)]
        c = int(min(b.shape[:2]) * rng.uniform(0.4, 1.0))
        y, x = rng.integers(0, b.shape[0] - c + 1), rng.integers(0, b.shape[1] - c + 1)
        out.append(np.asarray(Image.fromarray(b[y:y + c, x:x + c]).resize((size, size), Image.BICUBIC)))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def model():
    return fid.build_inception(pretrained=False, seed=0)


@pytest.fixture(scope="module")
def images50():
    return _real_images(50, 64)


@pytest.fixture(scope="module")
def feats50(model, images50):
    return model(images50)


def test_random_init_shapes_and_layers(model, feats50, images50):
    assert feats50["pool"].shape == (50, 2048) and feats50["spatial"].shape == (50, 2023)
    assert feats50["logits"].shape == (50, 1008)
    assert all(v.dtype == torch.float32 for v in feats50.values())
    assert feats50["pool"].std(0).mean() > 1e-4  # the Kaiming init gives features that vary between images
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    ext = model.extractor
    # IS logits = pool_3 @ fc.weight (no bias)
    torch.testing.assert_close(feats50["logits"], feats50["pool"] @ ext.fc.weight.T, rtol=1e-5, atol=1e-5)
    # sFID = Mixed_6d's first 7 output channels (its concat starts with branch1x1), in (h, w, c) order
    seen = {}
    h = ext.Mixed_6d.register_forward_hook(lambda m, i, o: seen.setdefault("x", o))
    try:
        ext(images50[:3])
    finally:
        h.remove()
    nchw = seen["x"][:, :7]  # [3, 7, 17, 17]
    sp = feats50["spatial"][:3].reshape(3, 17, 17, 7)
    for (hh, ww, cc) in [(0, 0, 0), (0, 1, 0), (0, 0, 1), (16, 3, 6), (5, 16, 2)]:
        torch.testing.assert_close(sp[:, hh, ww, cc], nchw[:, cc, hh, ww], rtol=1e-5, atol=1e-6)


def test_batch_1_vs_50_agree(model, images50, feats50):
    # every 7th image alone (first and last included) against its row of the batch-50 pass; all 50 alone
    # would cost ~15 s more of CPU for the same property
    for i in (0, 7, 14, 21, 28, 35, 42, 49):
        one = model(images50[i:i + 1])
        for k in ("pool", "spatial", "logits"):
            assert (one[k][0] - feats50[k][i]).abs().max().item() <= 1e-5, (i, k)


def test_weights_round_trip_through_real_loading(model, tmp_path, monkeypatch, images50):
    d = tmp_path / "w"
    d.mkdir()
    torch.save(model.extractor.state_dict(), d / INCEPTION_WEIGHTS_FILE)
    x = images50[:1]
    want = model(x)
    monkeypatch.delenv("SPATIALPROBE_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    from spatialprobe.config import sha256_file

    for how in ({"weights": d / INCEPTION_WEIGHTS_FILE}, {"weights": d}):
        m = fid.build_inception(**how)
        assert m.weights_id == sha256_file(d / INCEPTION_WEIGHTS_FILE)
        assert m.weights_file == d / INCEPTION_WEIGHTS_FILE
        got = m(x)
        assert all(torch.equal(got[k], want[k]) for k in want)
    # $SPATIALPROBE_WEIGHTS, then the torch hub cache where torch-fidelity keeps the file
    monkeypatch.setenv("SPATIALPROBE_WEIGHTS", str(d))
    assert fid.find_inception_weights() == d / INCEPTION_WEIGHTS_FILE
    monkeypatch.delenv("SPATIALPROBE_WEIGHTS")
    cache = tmp_path / "th" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / INCEPTION_WEIGHTS_FILE).write_bytes((d / INCEPTION_WEIGHTS_FILE).read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert fid.find_inception_weights() == cache / INCEPTION_WEIGHTS_FILE


def test_missing_and_wrong_weights(tmp_path, monkeypatch):
    monkeypatch.delenv("SPATIALPROBE_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    with pytest.raises(WeightsNotFoundError) as ei:
        fid.build_inception()
    msg = str(ei.value)
    assert INCEPTION_WEIGHTS_FILE in msg and "github.com/toshas/torch-fidelity" in msg
    assert str(tmp_path / "th" / "hub" / "checkpoints") in msg and "--inception-weights" in msg
    bad = tmp_path / "bad.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(WeightsMismatchError, match="do not fit"):
        fid.build_inception(bad)


def test_bad_images_give_clear_errors(model):
    x = torch.zeros(2, 3, 32, 32)
    with pytest.raises(DataError, match="uint8"):
        model(x)
    with pytest.raises(DataError, match="NaN"):
        model(x.fill_(float("nan")))
    with pytest.raises(DataError, match="permute"):
        model(torch.zeros(2, 32, 32, 3, dtype=torch.uint8))
    with pytest.raises(DataError, match=r"\[B, 3, H, W\]"):
        model(torch.zeros(3, 32, 32, dtype=torch.uint8))


def test_bad_sample_files(tmp_path):
    np.savez(tmp_path / "f.npz", arr_0=np.full((4, 8, 8, 3), np.nan, np.float32))
    with pytest.raises(DataError, match="uint8"):
        fid.open_samples(tmp_path / "f.npz")
    np.savez(tmp_path / "c.npz", arr_0=np.zeros((4, 3, 8, 8), np.uint8))
    with pytest.raises(DataError, match="channels-first"):
        fid.open_samples(tmp_path / "c.npz")
    np.savez(tmp_path / "k.npz", images=np.zeros((4, 8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="arr_0"):
        fid.open_samples(tmp_path / "k.npz")


def test_readers_agree_npz_png_folder_sample_output(tmp_path, images50):
    from PIL import Image

    x = images50[:5]
    nhwc = x.permute(0, 2, 3, 1).numpy()
    np.savez(tmp_path / "s.npz", arr_0=nhwc)
    (tmp_path / "png").mkdir()
    for i, a in enumerate(nhwc):
        Image.fromarray(a).save(tmp_path / "png" / f"{i:06d}.png")
    (tmp_path / "run").mkdir()  # `spatialprobe sample` output: samples.npz (+ PNGs)
    np.savez(tmp_path / "run" / "samples.npz", arr_0=nhwc)
    Image.fromarray(nhwc[0]).save(tmp_path / "run" / "000000.png")
    for spec, kind in ((tmp_path / "s.npz", "npz"), (tmp_path / "png", "folder"), (tmp_path / "run", "npz")):
        s = fid.open_samples(spec)
        assert s.kind == kind and len(s) == 5
        got = torch.cat(list(s.iter_batches(2)))
        assert torch.equal(got, x)
        assert torch.equal(torch.cat(list(s.iter_batches(3, limit=4))), x[:4])


def test_cli_ref_and_eval_end_to_end(tmp_path, model, images50, feats50, monkeypatch):
    """Samples identical to the reference images: FID = 0, precision = recall = 1; the zoo encoder FD too."""
    d = tmp_path / "w"
    d.mkdir()
    torch.save(model.extractor.state_dict(), d / INCEPTION_WEIGHTS_FILE)
    monkeypatch.setenv("SPATIALPROBE_WEIGHTS", str(d))
    x = images50[:6]
    np.savez(tmp_path / "real.npz", arr_0=x.permute(0, 2, 3, 1).numpy())
    runner = CliRunner()
    r = runner.invoke(app, ["fid-ref", str(tmp_path / "real.npz"), "--out", str(tmp_path / "ref.npz"),
                            "--name", "toy64", "--pr-images", "6", "--no-progress"])
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "ref.npz") as z:
        assert z["mu"].shape == (2048,) and z["sigma"].shape == (2048, 2048)
        assert z["mu_s"].shape == (2023,) and z["sigma_s"].shape == (2023, 2023)
        assert z["arr_0"].shape == (6, 64, 64, 3) and z["arr_0"].dtype == np.uint8
        np.testing.assert_array_equal(z["arr_0"], x.permute(0, 2, 3, 1).numpy())
        want_mu = feats50["pool"][:6].double().mean(0).numpy()
        np.testing.assert_allclose(z["mu"], want_mu, atol=1e-6)
        np.testing.assert_allclose(z["mu_s"], feats50["spatial"][:6].double().mean(0).numpy(), atol=1e-6)
        np.testing.assert_allclose(z["sigma_s"], np.cov(feats50["spatial"][:6].double().numpy(), rowvar=False),
                                   atol=1e-9)
    out = tmp_path / "eval"
    r = runner.invoke(app, ["fid", str(tmp_path / "real.npz"), "--ref", str(tmp_path / "ref.npz"), "--out", str(out),
                            "--fd-method", "eigh", "--metrics", "fid,is,precision,recall", "--no-progress"])
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "fid.json").read_text())
    from spatialprobe.config import sha256_file

    assert rec["protocol"] == "adm-toy64-6" and rec["num_samples"] == 6
    assert rec["reference"]["sha256"] == sha256_file(tmp_path / "ref.npz")
    assert rec["inception"]["weights_id"] == sha256_file(d / INCEPTION_WEIGHTS_FILE)
    m = rec["metrics"]
    assert abs(m["fid"]) < 1e-4 and "sfid" not in m  # sFID: same Fréchet code on the mu_s/sigma_s checked above
    assert m["precision"] == 1.0 and m["recall"] == 1.0 and m["is"] >= 1.0
    assert (out / "config.json").is_file()

    # FD on a zoo encoder's pooled features (weight-free `pixels`), reference stats from arr_0: identical sets -> 0
    rec = fid.evaluate(tmp_path / "real.npz", tmp_path / "ref.npz", model=model, metrics=["is"],
                       fd_encoder="pixels", fd_method="eigh", progress=False)
    assert abs(rec["metrics"]["fd_pixels"]) < 1e-3 and rec["settings"]["fd_encoder"] == "pixels"

    # too few samples for a covariance
    np.savez(tmp_path / "one.npz", arr_0=x[:1].permute(0, 2, 3, 1).numpy())
    r = runner.invoke(app, ["fid", str(tmp_path / "one.npz"), "--ref", str(tmp_path / "ref.npz"), "--out", str(out)])
    assert r.exit_code == 2 and "at least 2" in r.output
