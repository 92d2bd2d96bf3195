"""Official release layouts load through the real path, strictly, and give the tokens of the same
architecture filled by an explicit key map written here (independently of spatialprobe's converters), or
of the publisher's own transformers/diffusers class where that is the publisher's code. Files are
synthesised from ``tests/data/weights-layouts/*.json`` (exact wrappers, keys, shapes, dtypes)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import spatialprobe.encoders as E
from spatialprobe.encoders import weights as W
from spatialprobe.errors import WeightsMismatchError

from layouts_synth import layout, synthesise

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
HALF = ((0.5,) * 3, (0.5,) * 3)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    for var in ("HF_HOME", "HF_HUB_CACHE", "TORCH_HOME"):
        monkeypatch.setenv(var, str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("SPATIALPROBE_WEIGHTS", raising=False)
    monkeypatch.setenv("SPATIALPROBE_CACHE", str(tmp_path / "sp-cache"))  # the sha256 cache lives there


@pytest.fixture(scope="module")
def photos():
    """Two real photographs, 256 px uint8 (and one at 200 px to exercise the resize)."""
    import skimage.data as d

    out = []
    for img in (d.chelsea(), d.astronaut()):
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
        out.append(F.interpolate(x, size=(256, 256), mode="area").round().to(torch.uint8))
    return torch.cat(out)


def _prep(images, size, mode, norm, antialias=False):
    x = images.float() / 255
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=antialias)
    m, s = (torch.tensor(v).view(1, 3, 1, 1) for v in norm)
    return (x - m) / s


def _close(a, b, tol=1e-4):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.isfinite(a).all() and a.float().std() > 1e-3, "degenerate tokens: the comparison would prove nothing"
    err = (a - b).abs().max().item()
    assert err <= tol, f"max abs error {err}"


# ------------------------------------------------------------------ SAM2: {"model": whole SAM2}

def test_sam2_full_release_file(tmp_path, photos):
    path = synthesise("sam2-vit-s", tmp_path / "w")
    assert path.name == "sam2_hiera_small.pt"
    enc = E.get("sam2-vit-s", weights_dir=tmp_path / "w", input_res=256)  # 8x8 tokens: a quarter of the work
    got = enc(photos[:1]).patch

    # explicit map: timm Hiera key <- image_encoder.trunk.<key with mlp.fc1/2 named mlp.layers.0/1>
    sd = torch.load(path, map_location="cpu", weights_only=True)["model"]
    ref = copy.deepcopy(enc.model)  # same architecture; every value is overwritten by the strict load below
    want = {}
    for k in ref.state_dict():
        if k.startswith("head."):
            continue
        src = "image_encoder.trunk." + k.replace("mlp.fc1.", "mlp.layers.0.").replace("mlp.fc2.", "mlp.layers.1.")
        want[k] = sd[src]
    assert len(want) == len(ref.state_dict())
    ref.load_state_dict(want, strict=True)
    y = ref.eval().forward_features(_prep(photos[:1], 256, "bicubic", IMAGENET))
    _close(got, y.reshape(1, -1, y.shape[-1]), 1e-5)
    assert got.shape == (1, 64, 768)

    # the iREPA path: transformers Sam2Model(...).vision_encoder, last_hidden_state (NHWC, before the neck),
    # filled from the same file by its own explicit map (trunk -> backbone, neck convs included: strict)
    from transformers import Sam2HieraDetConfig, Sam2VisionConfig, Sam2VisionModel

    bb = Sam2HieraDetConfig(blocks_per_stage=[1, 2, 11, 2], embed_dim_per_stage=[96, 192, 384, 768],
                            num_attention_heads_per_stage=[1, 2, 4, 8], global_attention_blocks=[7, 10, 13],
                            window_positional_embedding_background_size=[7, 7], window_size_per_stage=[8, 4, 14, 7])
    hf = Sam2VisionModel(Sam2VisionConfig(backbone_config=bb))
    ren = (("norm1.", "layer_norm1."), ("norm2.", "layer_norm2."), ("mlp.layers.0.", "mlp.proj_in."),
           ("mlp.layers.1.", "mlp.proj_out."), ("patch_embed.proj.", "patch_embed.projection."))
    hsd = {}
    for k, v in sd.items():
        if k.startswith("image_encoder.trunk."):
            k = "backbone." + k[len("image_encoder.trunk."):]
            for a, b in ren:
                k = k.replace(a, b)
            hsd[k] = v
        elif k.startswith("image_encoder.neck.convs."):
            hsd[k[len("image_encoder."):].replace(".conv.", ".")] = v
    hf.load_state_dict(hsd, strict=True)
    with torch.no_grad():
        h = hf.eval()(pixel_values=_prep(photos[:1], 256, "bicubic", IMAGENET)).last_hidden_state
    _close(got, h.reshape(1, -1, h.shape[-1]), 1e-4)

    del sd["image_encoder.trunk.blocks.3.attn.qkv.weight"]
    torch.save({"model": sd}, path)
    with pytest.raises(WeightsMismatchError, match=r"blocks\.3\.attn\.qkv\.weight"):
        E.get("sam2-vit-s", weights_dir=tmp_path / "w", input_res=256)


# ------------------------------------------------------------------ PE-Core: the whole CLIP, raw state dict

def _pe_reference(sd, model, depth, grid):
    """timm PE (eva) filled from PE-CLIP keys by an explicit map; abs pos resampled bilinear to the grid."""
    ref = copy.deepcopy(model)  # same architecture; every value is overwritten by the strict load below
    v = {k[len("visual."):]: t for k, t in sd.items() if k.startswith("visual.")}
    d = v["conv1.weight"].shape[0]
    want = {"patch_embed.proj.weight": v["conv1.weight"], "cls_token": v["class_embedding"].view(1, 1, d),
            "norm_pre.weight": v["ln_pre.weight"], "norm_pre.bias": v["ln_pre.bias"],
            "norm.weight": v["ln_post.weight"], "norm.bias": v["ln_post.bias"],
            "attn_pool.latent": v["attn_pool.probe"].view(1, 1, d),
            "attn_pool.proj.weight": v["attn_pool.attn.out_proj.weight"],
            "attn_pool.proj.bias": v["attn_pool.attn.out_proj.bias"],
            "attn_pool.norm.weight": v["attn_pool.layernorm.weight"],
            "attn_pool.norm.bias": v["attn_pool.layernorm.bias"],
            "attn_pool.mlp.fc1.weight": v["attn_pool.mlp.c_fc.weight"],
            "attn_pool.mlp.fc1.bias": v["attn_pool.mlp.c_fc.bias"],
            "attn_pool.mlp.fc2.weight": v["attn_pool.mlp.c_proj.weight"],
            "attn_pool.mlp.fc2.bias": v["attn_pool.mlp.c_proj.bias"],
            "head.weight": v["proj"].t(), "head.bias": torch.zeros(v["proj"].shape[1])}
    w, b = v["attn_pool.attn.in_proj_weight"], v["attn_pool.attn.in_proj_bias"]
    want.update({"attn_pool.q.weight": w[:d], "attn_pool.kv.weight": w[d:],
                 "attn_pool.q.bias": b[:d], "attn_pool.kv.bias": b[d:]})
    for i in range(depth):
        a, t = f"transformer.resblocks.{i}.", f"blocks.{i}."
        want[t + "attn.qkv.weight"], want[t + "attn.qkv.bias"] = v[a + "attn.in_proj_weight"], v[a + "attn.in_proj_bias"]
        for s_, d_ in (("attn.out_proj", "attn.proj"), ("ln_1", "norm1"), ("ln_2", "norm2"), ("mlp.c_fc", "mlp.fc1"),
                       ("mlp.c_proj", "mlp.fc2")):
            want[f"{t}{d_}.weight"], want[f"{t}{d_}.bias"] = v[f"{a}{s_}.weight"], v[f"{a}{s_}.bias"]
    pos = v["positional_embedding"]
    n = int(round((pos.shape[0] - 1) ** 0.5))
    g = F.interpolate(pos[1:].reshape(1, n, n, d).permute(0, 3, 1, 2), size=(grid, grid), mode="bilinear",
                      align_corners=False, antialias=False)
    want["pos_embed"] = torch.cat([pos[:1], g.permute(0, 2, 3, 1).reshape(grid * grid, d)])[None]
    ref.load_state_dict(want, strict=True)
    return ref.eval()


@pytest.mark.parametrize("eid,res,patch", [("pe-vit-b", 256, 16), ("pe-vit-l", 224, 14)])
def test_pe_core_whole_clip_release_file(tmp_path, photos, eid, res, patch):
    path = synthesise(eid, tmp_path / "w", seed=1)
    assert path.name == layout(eid)["release_path"]
    enc = E.get(eid, weights_dir=tmp_path / "w", depth=2)
    got = enc(photos).patch
    sd = torch.load(path, map_location="cpu", weights_only=True)
    assert sd["positional_embedding"].shape == (32, 1024)  # the text tower's, left alone
    ref = _pe_reference(sd, enc.model, 2, 16)
    y = ref.forward_intermediates(_prep(photos, res, "bilinear", HALF), indices=1, norm=False, output_fmt="NLC",
                                  intermediates_only=True)[-1]
    _close(got, y, 1e-5)

    del sd["visual.transformer.resblocks.1.mlp.c_fc.weight"]
    torch.save(sd, path)
    with pytest.raises(WeightsMismatchError, match=r"blocks\.1\.mlp\.fc1\.weight"):
        E.get(eid, weights_dir=tmp_path / "w", depth=2)


# ------------------------------------------------------------------ C-RADIO: torch hub .pth.tar with args Namespace, fp16

@pytest.mark.parametrize("eid", ["cradio-vit-b", "cradio-vit-l"])
def test_cradio_hub_release_file(tmp_path, photos, eid):
    import argparse

    path = synthesise(eid, tmp_path / "w", seed=2)
    assert path.name == layout(eid)["release_path"]
    with torch.serialization.safe_globals([argparse.Namespace]):
        obj = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(obj["args"], argparse.Namespace)
    sd = obj["state_dict"]
    # the real conditioner holds the CLIP statistics RADIO normalises with
    sd["input_conditioner.norm_mean"] = torch.tensor(CLIP[0]).view(3, 1, 1)
    sd["input_conditioner.norm_std"] = torch.tensor(CLIP[1]).view(3, 1, 1)
    torch.save(obj, path)
    enc = E.get(eid, weights_dir=tmp_path / "w", depth=2)
    got = enc(photos).patch

    # explicit map (fp16 values upcast first, pos 128x128 -> 16x16 bilinear align_corners=False in fp32)
    ref = copy.deepcopy(enc.model)  # every value is overwritten by the strict load below
    p = "base_model."
    d = sd[p + "patch_generator.embedder.weight"].shape[0]
    tok = sd[p + "patch_generator.cls_token.token"].float()
    pos = sd[p + "patch_generator.pos_embed"].float().reshape(1, 128, 128, d).permute(0, 3, 1, 2)
    pos = F.interpolate(pos, size=(16, 16), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    want = {"patch_embed.proj.weight": sd[p + "patch_generator.embedder.weight"].float().reshape(d, 3, 16, 16),
            "patch_embed.proj.bias": torch.zeros(d), "cls_token": tok[None, :1], "reg_token": tok[None, 1:],
            "pos_embed": pos.reshape(1, 256, d)}
    for k, v in sd.items():
        if k.startswith(p + "blocks."):
            want[k[len(p):].replace(".grandma", ".gamma")] = v.float()
    ref.load_state_dict(want, strict=True)
    y = ref.eval().forward_features(_prep(photos, 256, "bilinear", CLIP))[:, 8:]
    _close(got, y, 1e-5)

    # a pickle that needs any other class is still refused
    obj["args"] = argparse.ArgumentParser
    with pytest.raises(Exception):
        torch.save(obj, tmp_path / "w" / "x.pt")
        W.read_checkpoint(tmp_path / "w" / "x.pt")
    del sd[p + "blocks.1.attn.proj.weight"]
    obj["args"] = argparse.Namespace(model="x")
    torch.save(obj, path)
    with pytest.raises(WeightsMismatchError, match=r"blocks\.1\.attn\.proj\.weight"):
        E.get(eid, weights_dir=tmp_path / "w", depth=2)


def test_radio_namespace_outside_radio_is_refused(tmp_path):
    import argparse

    torch.save({"args": argparse.Namespace(a=1), "model": {"blocks.0.x": torch.zeros(1)}},
               tmp_path / "dino_vitbase16_pretrain.pth")
    with pytest.raises(WeightsMismatchError, match="Namespace"):
        E.get("dino-vit-b", weights_dir=tmp_path, depth=1)


# ------------------------------------------------------------------ SigLIP / SigLIP2: the HF folder the iREPA code loads

@pytest.mark.parametrize("eid", ["siglip-vit-b", "siglip2-vit-b"])
def test_siglip_hf_folder(tmp_path, photos, eid):
    from transformers import SiglipVisionModel

    folder = synthesise(eid, tmp_path / "w", seed=3)
    enc = E.get(eid, weights_dir=tmp_path / "w", depth=2)
    assert enc.weights_path == folder
    got = enc(photos).patch
    ref = SiglipVisionModel.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32).eval()
    with torch.no_grad():
        y = ref(pixel_values=_prep(photos, 256, "bicubic", IMAGENET)).last_hidden_state
    _close(got, y, 1e-4)

    # also found in the Hugging Face cache under the google/ repo name
    snap = tmp_path / "cache" / f"models--google--{folder.name}" / "snapshots" / "abc"
    snap.parent.mkdir(parents=True)
    folder.rename(snap)
    assert W.locate(E.spec(eid)).path == snap


def test_siglip_folder_missing_key(tmp_path):
    folder = synthesise("siglip-vit-b", tmp_path / "w", seed=3)
    from safetensors.torch import load_file, save_file

    sd = load_file(str(folder / "model.safetensors"))
    del sd["vision_model.encoder.layers.1.self_attn.v_proj.weight"]
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
    with pytest.raises(WeightsMismatchError, match=r"v_proj"):
        E.get("siglip-vit-b", weights_dir=tmp_path / "w", depth=2)


# ------------------------------------------------------------------ WebSSL: a bf16 folder still gives an fp32 model

def test_webssl_bf16_folder_loads_in_fp32(tmp_path, photos):
    from transformers import Dinov2Model

    eid = "webssl-vit-dino300m_full2b_224"
    folder = synthesise(eid, tmp_path / "w", seed=4, dtype=torch.bfloat16)
    enc = E.get(eid, weights_dir=tmp_path / "w")
    assert all(p.dtype == torch.float32 for p in enc.model.parameters())
    got = enc(photos).patch
    ref = Dinov2Model.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32).eval()
    with torch.no_grad():
        y = ref(pixel_values=_prep(photos, 224, "bicubic", IMAGENET)).last_hidden_state[:, 1:]
    _close(got, y, 1e-5)

    from safetensors.torch import load_file, save_file

    sd = load_file(str(folder / "model.safetensors"))
    del sd["encoder.layer.1.attention.attention.key.weight"]
    save_file(sd, str(folder / "model.safetensors"))
    with pytest.raises(WeightsMismatchError, match=r"layer\.1\.attention\.(k_proj|attention\.key)\.weight"):
        E.get(eid, weights_dir=tmp_path / "w")


# ------------------------------------------------------------------ MoCo v3 ViT-L as the iREPA study distributes it

def test_mocov3_irepa_renamed_blocks(tmp_path, photos):
    small = dict(depth=15, embed_dim=64, num_heads=2)  # 15 blocks (13 and 14 are renamed), narrow for speed
    src = E.get("mocov3-vit-l", pretrained=False, seed=6, **small)
    sd = {}
    for k, v in src.model.state_dict().items():
        k = re.sub(r"^blocks\.(13|14)\.norm1\.", r"blocks.\1.norm\1.", k)
        k = re.sub(r"^blocks\.(13|14)\.mlp\.fc1\.", r"blocks.\1.mlp.fc\1.", k)
        sd["module.base_encoder." + k] = v
    assert "module.base_encoder.blocks.13.norm13.weight" in sd and "module.base_encoder.blocks.14.mlp.fc14.bias" in sd
    torch.save({"state_dict": sd}, tmp_path / "mocov3_vitl.pth")
    enc = E.get("mocov3-vit-l", weights_dir=tmp_path, **small)
    want = src.model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in enc.model.state_dict().items())
    assert torch.equal(enc(photos[:1]).patch, src(photos[:1]).patch)


# ------------------------------------------------------------------ OpenAI CLIP in the clip package's cache

def test_clip_cache_is_searched(tmp_path):
    cache = tmp_path / "home" / ".cache" / "clip"
    cache.mkdir(parents=True)
    (cache / "ViT-L-14.pt").write_bytes(b"x")
    assert W.locate(E.spec("clip-vit-L")).path == cache / "ViT-L-14.pt"


# ------------------------------------------------------------------ DINOv3: the official transform resizes bilinear

def test_dinov3_resizes_bilinear_with_antialias(photos):
    enc = E.get("dinov3-vit-b16", pretrained=False, depth=1)
    small = F.interpolate(photos.float(), size=(200, 200), mode="area").round().to(torch.uint8)
    want = _prep(small, 256, "bilinear", IMAGENET, antialias=True)
    _close(enc.preprocess(small), want, 1e-6)


# ------------------------------------------------------------------ no free unpickling anywhere

def test_no_weights_only_false_in_the_package():
    root = Path(E.__file__).resolve().parents[1]
    hits = [f"{p.relative_to(root)}:{i}" for p in root.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if re.search(r"weights_only\s*=\s*False", line)]
    assert hits == [], hits
    assert any("weights_only=True" in p.read_text() for p in root.rglob("*.py"))


# ------------------------------------------------------------------ spatialprobe weights --check / --verify

def _check_folder(root: Path) -> None:
    """One good full-depth file per encoder layout (values zero: --check reads headers only), one truncated
    file, one file of the wrong model."""
    for name, depth in (("sam2-vit-s", None), ("pe-vit-b", 12), ("cradio-vit-b", 12), ("cradio-vit-l", 24),
                        ("siglip-vit-b", 12), ("siglip2-vit-b", 12), ("webssl-vit-dino300m_full2b_224", 24)):
        synthesise(name, root, depth=depth, zeros_only=True)
    synthesise("sd-vae-ft-mse", root, zeros_only=True)
    from spatialprobe.fid import inception as I

    sd = I._new_extractor(["2048"]).state_dict()
    torch.save({k: torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in sd.items()
                if not k.endswith("num_batches_tracked")}, root / I.INCEPTION_WEIGHTS_FILE)
    # a PE-Core-B file under PE-Core-L's name: right layout, wrong model
    (root / "PE-Core-L14-336.pt").write_bytes((root / "PE-Core-B16-224.pt").read_bytes())
    # a truncated download
    import timm

    torch.save(timm.create_model("vit_base_patch16_224", depth=1).state_dict(), root / "x.pth")
    data = (root / "x.pth").read_bytes()
    (root / "dino_vitbase16_pretrain.pth").write_bytes(data[: len(data) // 2])
    (root / "x.pth").unlink()


def test_weights_check_reports_each_file(tmp_path):
    from typer.testing import CliRunner

    from spatialprobe.cli import app

    root = tmp_path / "w"
    _check_folder(root)
    res = CliRunner().invoke(app, ["weights", "--check", "--weights-dir", str(root)])
    out = res.output
    assert res.exit_code == 1, out
    lines = {ln.split()[1]: ln for ln in out.splitlines() if ln.startswith(("ok ", "BAD"))}
    for eid, lay in (("sam2-vit-s", "sam2-full"), ("pe-vit-b", "pe-clip"), ("cradio-vit-b", "radio-hub"),
                     ("cradio-vit-l", "radio-hub"), ("siglip-vit-b", "hf-siglip"), ("siglip2-vit-b", "hf-siglip"),
                     ("webssl-vit-dino300m_full2b_224", "hf-dinov2")):
        assert lines[eid].startswith("ok ") and f"({lay})" in lines[eid], out
    assert lines["pe-vit-l"].startswith("BAD") and "(pe-clip)" in lines["pe-vit-l"]
    assert lines["dino-vit-b"].startswith("BAD")
    text = out.split("dino-vit-b", 1)[1].splitlines()[1]
    assert "truncated" in text, out
    assert "pe-vit-l" in out.split(lines["pe-vit-l"], 1)[1].splitlines()[1]
    assert lines["fid-inception"].startswith("ok ") and lines["sd-vae-ft-mse"].startswith("ok "), out
    assert "9/11 file(s) ok, 2 wrong" in out

    # only good files: exit 0; --verify compares the pinned digests
    for bad in ("PE-Core-L14-336.pt", "dino_vitbase16_pretrain.pth"):
        (root / bad).unlink()
    res = CliRunner().invoke(app, ["weights", "--check", "--weights-dir", str(root)])
    assert res.exit_code == 0 and "9/9 file(s) ok" in res.output, res.output
    # a VAE folder of the wrong model is reported too
    from safetensors.torch import save_file

    save_file({"encoder.conv_in.weight": torch.zeros(8, 3, 3, 3)},
              str(root / "sd-vae-ft-mse" / "diffusion_pytorch_model.safetensors"))
    res = CliRunner().invoke(app, ["weights", "--check", "--weights-dir", str(root)])
    assert res.exit_code == 1 and "BAD sd-vae-ft-mse" in res.output, res.output
    res = CliRunner().invoke(app, ["weights", "--check", "--encoder", "sam2", "--weights-dir", str(root)])
    assert res.exit_code == 0 and "ok  sam2-vit-s" in res.output, res.output
    (root / "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth").write_bytes(b"not it")
    res = CliRunner().invoke(app, ["weights", "--verify", "--family", "DINOv3", "--weights-dir", str(root)])
    assert res.exit_code == 1 and "sha256 mismatch" in res.output, res.output
    res = CliRunner().invoke(app, ["weights", "--verify", "--encoder", "sam2", "--weights-dir", str(root)])
    assert res.exit_code == 0 and "sha256 not pinned" in res.output, res.output


def test_every_zoo_row_states_its_layouts():
    from spatialprobe.encoders.layouts import LAYOUTS
    from spatialprobe.encoders.spec import all_specs

    # the shipped encoders.yaml rows only: run-time additions (a study's ``define:``) may be random-init
    for s in all_specs().values():
        if not s.weight_free:
            assert s.weights.format and set(s.weights.format) <= set(LAYOUTS), s.id


# ------------------------------------------------------------------ SD-VAE ft-MSE: dnnlib cache and single files

def test_vae_dnnlib_cache_and_single_file(tmp_path):
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file, save_file

    from spatialprobe.train import vae as V

    snap = tmp_path / "home" / ".cache" / "dnnlib" / "diffusers" / "models--stabilityai--sd-vae-ft-mse" / "snapshots"
    folder = synthesise("sd-vae-ft-mse", snap, seed=7)
    folder = folder.rename(snap / "0123abc")
    vae, vid = V.load_vae("sd-vae-ft-mse")
    ref = AutoencoderKL.from_pretrained(str(folder), local_files_only=True).eval()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        want = ref.encode(x).latent_dist.mean
        _close(vae.encode(x).latent_dist.mean, want, 1e-5)
    assert vid.startswith("sd-vae-ft-mse:")

    # the same weights as one file (legacy attention names, as in the folder) in --weights-dir
    wd = tmp_path / "wd"
    wd.mkdir()
    sd = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    save_file(sd, str(wd / "sd-vae-ft-mse.safetensors"))
    vae2, vid2 = V.load_vae("sd-vae-ft-mse", weights_dir=str(wd))
    with torch.no_grad():
        _close(vae2.encode(x).latent_dist.mean, want, 1e-5)

    # the original LDM (CompVis) single file, e.g. vae-ft-mse-840000-ema-pruned.ckpt: {"state_dict": LDM keys}
    (wd / "sd-vae-ft-mse.safetensors").unlink()
    torch.save({"state_dict": _to_ldm(sd), "global_step": 840000}, wd / "vae-ft-mse-840000-ema-pruned.ckpt")
    vae3, _ = V.load_vae("sd-vae-ft-mse", weights_dir=str(wd))
    with torch.no_grad():
        _close(vae3.encode(x).latent_dist.mean, want, 1e-5)
    (wd / "vae-ft-mse-840000-ema-pruned.ckpt").unlink()

    del sd["encoder.conv_in.weight"]
    save_file(sd, str(wd / "sd-vae-ft-mse.safetensors"))
    with pytest.raises(WeightsMismatchError, match=r"encoder\.conv_in\.weight"):
        V.load_vae("sd-vae-ft-mse", weights_dir=str(wd))


def _to_ldm(sd):
    """diffusers AutoencoderKL keys (legacy attention names) -> the original LDM keys, written out here."""
    out = {}
    for k, v in sd.items():
        n = k
        m = re.match(r"(encoder|decoder)\.(down|up)_blocks\.(\d)\.(resnets|downsamplers|upsamplers)\.(\d)\.(.*)", k)
        if m:
            part, kind, i, sub, j, rest = m.groups()
            i = int(i) if kind == "down" else 3 - int(i)  # LDM numbers the decoder's up blocks bottom-up
            rest = rest.replace("conv_shortcut", "nin_shortcut")
            n = (f"{part}.{kind}.{i}.block.{j}.{rest}" if sub == "resnets"
                 else f"{part}.{kind}.{i}.{'downsample' if kind == 'down' else 'upsample'}.{rest}")
        m = re.match(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d)\.(.*)", k)
        if m:
            part, sub, j, rest = m.groups()
            if sub == "resnets":
                n = f"{part}.mid.block_{int(j) + 1}.{rest}"
            else:
                for a, b in (("group_norm.", "norm."), ("query.", "q."), ("key.", "k."), ("value.", "v."),
                             ("proj_attn.", "proj_out.")):
                    rest = rest.replace(a, b) if rest.startswith(a) else rest
                n = f"{part}.mid.attn_1.{rest}"
                if rest.endswith("weight") and not rest.startswith("norm."):
                    v = v[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        n = n.replace("conv_norm_out", "norm_out")
        out[n] = v
    return out


# ------------------------------------------------------------------ FID Inception: the message counts the file's tensors

def test_inception_mismatch_counts_release_tensors(tmp_path):
    from spatialprobe.fid import inception as I

    sd = I._new_extractor(["2048"]).state_dict()
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    assert len(sd) == I.INCEPTION_TENSORS == 472
    del sd["fc.weight"]
    torch.save(sd, tmp_path / I.INCEPTION_WEIGHTS_FILE)
    with pytest.raises(WeightsMismatchError, match="471 tensors in this file, 472 in the release"):
        I.build_inception(tmp_path / I.INCEPTION_WEIGHTS_FILE)
