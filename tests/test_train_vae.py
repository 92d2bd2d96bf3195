"""Latent path: the SD-VAE architecture, offline loading, and the id-keyed latent cache."""

import json

import pytest
import torch

from spatialprobe.errors import WeightsNotFoundError
from spatialprobe.train import vae as V
from train_stubs import digits_source


def test_sd_vae_config_builds_the_published_architecture():
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        m = AutoencoderKL(**V.SD_VAE_CONFIG)
    assert sum(p.numel() for p in m.parameters()) == 83_653_863  # fid-vae-notes §3
    assert m.config.scaling_factor == pytest.approx(0.18215)


def test_missing_sd_vae_fails_offline_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("SPATIALPROBE_WEIGHTS", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf"), raising=False)
    with pytest.raises(WeightsNotFoundError, match="sd-vae-ft-mse"):
        V.load_vae("sd-vae-ft-mse", weights_dir=str(tmp_path))


def test_tiny_vae_round_trips_through_a_local_folder(tmp_path):
    vae, vid = V.load_vae("tiny-random:3")
    vae2, _ = V.load_vae("tiny-random:3")
    assert vid == "tiny-random-init:3"
    assert all(torch.equal(a, b) for a, b in zip(vae.state_dict().values(), vae2.state_dict().values()))
    vae.save_pretrained(tmp_path / "sd-vae-ft-mse")
    loaded, lid = V.load_vae("sd-vae-ft-mse", weights_dir=str(tmp_path))  # the offline lookup path
    assert lid.startswith("sd-vae-ft-mse:")
    x = V.images_to_vae_input(digits_source(64, 2).images)
    with torch.no_grad():
        a = vae.encode(x).latent_dist.mean
        b = loaded.encode(x).latent_dist.mean
    assert a.shape == (2, 4, 8, 8) and torch.equal(a, b)
    assert V.decode(loaded, a, torch.ones(4), torch.zeros(4)).shape == (2, 3, 64, 64)


def test_latent_cache_statistics_and_reuse(tmp_path):
    src = digits_source(64, 20)
    vae, vid = V.load_vae("tiny-random")
    cache = V.cache_latents(src, list(range(20)), vae, vid, 64, tmp_path, batch_size=8)
    with torch.no_grad():
        d = vae.encode(V.images_to_vae_input(src.images)).latent_dist
    m, s = cache.moments(13)
    torch.testing.assert_close(m, d.mean[13], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s, d.std[13], atol=1e-5, rtol=1e-5)
    # per-channel mean and std of z = mean + std·ε over images and positions (closed form, not sampling)
    mu = d.mean.mean(dim=(0, 2, 3))
    var = (d.mean ** 2 + d.std ** 2).mean(dim=(0, 2, 3)) - mu ** 2
    torch.testing.assert_close(cache.latent_mean, mu, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cache.latent_std, var.sqrt(), atol=1e-5, rtol=1e-4)
    scale, bias = cache.normalizer("channel")
    torch.testing.assert_close(scale, 1 / var.sqrt(), rtol=1e-4, atol=1e-4)
    scale, bias = cache.normalizer("scalar")
    assert scale.tolist() == pytest.approx([0.18215] * 4) and bias.tolist() == [0.0] * 4
    # the same images reuse the cache; other ids get another fingerprint folder
    again = V.cache_latents(src, list(range(20)), vae, vid, 64, tmp_path)
    assert again.path == cache.path
    other = V.cache_latents(src, list(range(10)), vae, vid, 64, tmp_path)
    assert other.path != cache.path and json.loads((other.path / "manifest.json").read_text())["ids"] == src.ids[:10]


def test_to_uint8_is_adm_quantisation():
    x = torch.tensor([-1.0, -0.999, 0.0, 0.999, 1.0, 2.0])
    assert V.to_uint8(x).tolist() == [0, 0, 127, 254, 255, 255]
