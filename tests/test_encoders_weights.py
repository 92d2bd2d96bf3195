"""Offline weights: tiny random checkpoints round-trip through each backend's real loading path; wrong
layouts/classes and missing files are errors, never a silent random model. No network anywhere."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import spatialprobe.encoders as E
from spatialprobe.encoders import weights as W
from spatialprobe.errors import WeightsMismatchError, WeightsNotFoundError


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path, monkeypatch):
    """No real caches: HF ($HF_HUB_CACHE) / torch hub / sha caches point into the temp dir."""
    for var in ("HF_HOME", "HF_HUB_CACHE", "TORCH_HOME"):
        monkeypatch.setenv(var, str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("SPATIALPROBE_WEIGHTS", raising=False)
    monkeypatch.setenv("SPATIALPROBE_CACHE", str(tmp_path / "sp-cache"))  # the sha256 cache lives there


@pytest.fixture(scope="module")
def photo():
    import skimage.data as d

    x = torch.from_numpy(np.ascontiguousarray(d.chelsea())).permute(2, 0, 1)[None].float()
    return F.interpolate(x, size=(256, 256), mode="area").round().to(torch.uint8)


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# ------------------------------------------------------------------ timm (pretrained_cfg_overlay=dict(file=...))

def test_timm_roundtrip_and_native_pos_resample(tmp_path, photo):
    src = E.get("dino-vit-b", pretrained=False, depth=1, seed=3)
    path = tmp_path / "dino_vitbase16_pretrain.pth"  # the official DINO file name
    torch.save(src.model.state_dict(), path)
    enc = E.get("dino-vit-b", weights_dir=tmp_path, depth=1)
    assert torch.equal(enc(photo).patch, src(photo).patch)
    assert enc.weights_id == _sha(path) and enc.weights_path == path

    # a native 224-px checkpoint (14x14 pos grid) is resampled to 16x16 with bicubic + antialias
    import timm

    native = timm.create_model("vit_base_patch16_224", depth=1, num_classes=0).state_dict()
    torch.save(native, path)
    enc = E.get("dino-vit-b", weights_dir=tmp_path, depth=1)
    grid = native["pos_embed"][:, 1:].reshape(1, 14, 14, 768).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(16, 16), mode="bicubic", antialias=True, align_corners=False)
    want = torch.cat([native["pos_embed"][:, :1], want.permute(0, 2, 3, 1).reshape(1, 256, 768)], 1)
    assert torch.allclose(enc.model.pos_embed, want, atol=1e-6)


def test_timm_wrong_layout_or_depth_is_an_error(tmp_path):
    src = E.get("dino-vit-b", pretrained=False, depth=1).model.state_dict()
    torch.save({"backbone." + k: v for k, v in src.items()}, tmp_path / "dino_vitbase16_pretrain.pth")
    with pytest.raises(WeightsMismatchError, match="dino-vit-b"):
        E.get("dino-vit-b", weights_dir=tmp_path, depth=1)
    torch.save(src, tmp_path / "dino_vitbase16_pretrain.pth")
    with pytest.raises(WeightsMismatchError, match="blocks.1"):  # checkpoint has 1 block, model 2
        E.get("dino-vit-b", weights_dir=tmp_path, depth=2)


# ------------------------------------------------------------------ PE recipe

def test_pe_roundtrip_and_bilinear_pos_resample(tmp_path, photo):
    src = E.get("pe-vit-b", pretrained=False, depth=1, seed=1)
    path = tmp_path / "pe-vit-b" / "PE-Core-B16-224.pt"
    path.parent.mkdir()
    torch.save(src.model.state_dict(), path)
    enc = E.get("pe-vit-b", weights_dir=tmp_path, depth=1)
    assert torch.equal(enc(photo).patch, src(photo).patch)

    # a native-grid (14x14) pos embed is resampled bilinear, no antialias (the PE reference recipe)
    sd = src.model.state_dict()
    native = torch.randn(1, 1 + 14 * 14, 768)
    sd["pos_embed"] = native
    torch.save(sd, path)
    enc = E.get("pe-vit-b", weights_dir=tmp_path, depth=1)
    grid = native[:, 1:].reshape(1, 14, 14, 768).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(16, 16), mode="bilinear", align_corners=False)
    want = torch.cat([native[:, :1], want.permute(0, 2, 3, 1).reshape(1, 256, 768)], 1)
    assert torch.allclose(enc.model.pos_embed, want, atol=1e-6)


# ------------------------------------------------------------------ C-RADIO (RADIO key layout, align_corners=False)

def test_radio_checkpoint_converts_with_align_corners_false(tmp_path, photo):
    src = E.get("cradio-vit-b", pretrained=False, depth=1, seed=2)
    m = src.model
    d = 768
    pos128 = torch.randn(1, 128 * 128, d)
    p = "radio_model.model."
    sd = {p + "patch_generator.embedder.weight": m.patch_embed.proj.weight.reshape(d, -1).clone(),
          p + "patch_generator.pos_embed": pos128,
          p + "patch_generator.cls_token.token": torch.cat([m.cls_token[0], m.reg_token[0]], 0).clone()}
    sd.update({p + k: v for k, v in m.state_dict().items() if k.startswith("blocks.")})
    from safetensors.torch import save_file

    save_file(sd, str(tmp_path / "cradio-vit-b.safetensors"))
    enc = E.get("cradio-vit-b", weights_dir=tmp_path, depth=1)
    want = F.interpolate(pos128.reshape(1, 128, 128, d).permute(0, 3, 1, 2), size=(16, 16), mode="bilinear",
                         align_corners=False).permute(0, 2, 3, 1).reshape(1, 256, d)
    assert torch.allclose(enc.model.pos_embed, want, atol=1e-6)
    # the same weights put in by hand give identical tokens
    with torch.no_grad():
        m.pos_embed.copy_(want)
        m.patch_embed.proj.bias.zero_()
    assert torch.allclose(enc(photo).patch, src(photo).patch, atol=1e-6)
    del sd[p + "blocks.0.attn.qkv.weight"]
    save_file(sd, str(tmp_path / "cradio-vit-b.safetensors"))
    with pytest.raises(WeightsMismatchError, match="qkv"):
        E.get("cradio-vit-b", weights_dir=tmp_path, depth=1)


# ------------------------------------------------------------------ MoCo v3 local .pth

def test_mocov3_local_checkpoint(tmp_path, photo):
    src = E.get("mocov3-vit-b", pretrained=False, depth=1, seed=4)
    sd = {"module.base_encoder." + k: v for k, v in src.model.state_dict().items()}
    sd["module.base_encoder.head.0.weight"] = torch.randn(4, 768)  # MoCo projection head: dropped
    sd["module.momentum_encoder.cls_token"] = torch.randn(1, 1, 768)  # momentum branch: dropped
    path = tmp_path / "vit-b-300ep.pth.tar"
    torch.save({"state_dict": sd, "epoch": 300}, path)
    enc = E.get("mocov3-vit-b", weights_dir=tmp_path, depth=1)
    assert torch.equal(enc(photo).patch, src(photo).patch)
    torch.save({"state_dict": {"backbone." + k: v for k, v in src.model.state_dict().items()}}, path)
    with pytest.raises(WeightsMismatchError, match="mocov3-vit-b"):
        E.get("mocov3-vit-b", weights_dir=tmp_path, depth=1)


# ------------------------------------------------------------------ transformers (from_pretrained(dir))

def test_webssl_from_pretrained_dir(tmp_path, photo):
    src = E.get("webssl-vit-dino300m_full2b_224", pretrained=False, depth=1, seed=5)
    folder = tmp_path / "webssl-dino300m-full2b-224"
    src.model.save_pretrained(folder)
    enc = E.get("webssl-vit-dino300m_full2b_224", weights_dir=tmp_path)
    assert torch.equal(enc(photo).patch, src(photo).patch)
    assert len(enc.weights_id) == 64


def test_webssl_wrong_class_is_an_error(tmp_path):
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=1024, num_hidden_layers=1, num_attention_heads=16, intermediate_size=64,
                       image_size=224, patch_size=14)).save_pretrained(tmp_path / "webssl-dino300m-full2b-224")
    with pytest.raises(WeightsMismatchError):
        E.get("webssl-vit-dino300m_full2b_224", weights_dir=tmp_path)


# ------------------------------------------------------------------ missing weights, search order

def test_missing_weights_names_file_and_source(tmp_path):
    with pytest.raises(WeightsNotFoundError) as ei:
        E.get("sam2", weights_dir=tmp_path)
    msg = str(ei.value)
    assert "sam2-vit-s" in msg and "sam2_hiera_small.pt" in msg
    assert "https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_small.pt" in msg
    assert str(tmp_path / "sam2_hiera_small.pt") in msg
    with pytest.raises(WeightsNotFoundError, match="gated"):
        E.get("dinov3-vit-7b16")


def test_search_order_env_and_hf_cache(tmp_path, monkeypatch):
    s = E.spec("dinov2-vit-b")
    env = tmp_path / "env"
    (env / "dinov2-vit-b").mkdir(parents=True)
    (env / "dinov2-vit-b" / "dinov2_vitb14_pretrain.pth").write_bytes(b"x")
    hub = tmp_path / "cache" / "models--timm--vit_base_patch14_dinov2.lvd142m" / "snapshots" / "abc"
    hub.mkdir(parents=True)
    (hub / "model.safetensors").write_bytes(b"y")
    assert W.locate(s).path == hub / "model.safetensors"  # only the HF cache has it
    monkeypatch.setenv("SPATIALPROBE_WEIGHTS", str(env))
    assert W.locate(s).path == env / "dinov2-vit-b" / "dinov2_vitb14_pretrain.pth"  # env beats caches
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "dinov2-vit-b.safetensors").write_bytes(b"z")
    assert W.locate(s, wd).path == wd / "dinov2-vit-b.safetensors"  # --weights-dir beats env


def test_pinned_sha_prefix_is_checked(tmp_path):
    (tmp_path / "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth").write_bytes(b"not the checkpoint")
    with pytest.raises(WeightsMismatchError, match="sha256"):
        E.get("dinov3-vit-b16", weights_dir=tmp_path)


# ------------------------------------------------------------------ timm hub files of the SigLIP and SAM2 rows

def test_timm_hub_files_of_siglip_and_sam2(tmp_path, photo):
    from safetensors.torch import save_file

    src = E.get("siglip-vit-b", pretrained=False, depth=1, seed=7)
    save_file(src.model.state_dict(), str(tmp_path / "siglip-vit-b.safetensors"))
    enc = E.get("siglip-vit-b", weights_dir=tmp_path, depth=1)
    assert torch.equal(enc(photo).patch, src(photo).patch)

    import timm

    hub = timm.create_model("sam2_hiera_small", pretrained=False).state_dict()  # with timm's head.norm
    assert any(k.startswith("head.norm") for k in hub)
    save_file(hub, str(tmp_path / "sam2-vit-s.safetensors"))
    enc = E.get("sam2-vit-s", weights_dir=tmp_path, input_res=256)
    trunk = {k: v for k, v in hub.items() if not k.startswith("head.")}
    assert all(torch.equal(v, trunk[k]) for k, v in enc.model.state_dict().items()) and len(trunk) == len(
        enc.model.state_dict())
