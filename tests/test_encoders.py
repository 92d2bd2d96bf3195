"""Encoder zoo: yaml, meta builds, random-init forwards on real photographs, classical encoders,
transforms, aliases and the CLI. Checkpoint loading lives in test_encoders_weights.py."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import spatialprobe.encoders as E
from spatialprobe.tokens import mix_cls, mix_mean
from spatialprobe.errors import ConfigError, DataError, UnknownNameError

PAPER_27 = (
    ["dinov2-vit-b", "dinov2-vit-l", "dinov2-vit-g", "dinov3-vit-b16", "dinov3-vit-l16", "dinov3-vit-h16plus",
     "dinov3-vit-7b16"]
    + [f"webssl-vit-{m}_full2b_224" for m in ("dino300m", "dino1b", "dino2b", "dino3b")]
    + ["pe-vit-b", "pe-vit-l", "pe-vit-g", "langpe-vit-l", "langpe-vit-g", "spatialpe-vit-b", "spatialpe-vit-l",
       "spatialpe-vit-g", "cradio-vit-b", "cradio-vit-l", "dino-vit-b", "clip-vit-L", "mocov3-vit-b", "mocov3-vit-l",
       "jepa-vit-h", "mae-vit-l"])
EXTRAS = ["sam2-vit-s", "sam2-vit-b", "sam2-vit-l", "siglip-vit-b", "siglip-vit-l", "siglip-vit-so400m",
          "siglip2-vit-b", "siglip2-vit-l", "siglip2-vit-so400m", "siglip2-vit-g", "sift", "hog", "pixels",
          "dinov2-vit-b-p16"]
NEURAL = [s.id for s in E.list_specs() if not s.weight_free]
FULL_ZOO = os.environ.get("SPATIALPROBE_TEST_FULL_ZOO") == "1"


def _photos(n: int = 2) -> torch.Tensor:
    """Real photographs (scikit-image bundled data) as uint8 [n,3,256,256]."""
    import skimage.data as d

    imgs = []
    for fn in (d.astronaut, d.coffee, d.chelsea, d.rocket)[:n]:
        x = torch.from_numpy(np.ascontiguousarray(fn())).permute(2, 0, 1)[None].float()
        imgs.append(F.interpolate(x, size=(256, 256), mode="area").round().clamp(0, 255).to(torch.uint8))
    return torch.cat(imgs)


PHOTOS = _photos(2)


# ------------------------------------------------------------------ yaml

def test_yaml_has_paper27_and_extras():
    ids = E.list_encoders()
    assert set(PAPER_27 + EXTRAS) == set(ids)
    assert sorted(s.id for s in E.list_specs(paper27=True)) == sorted(PAPER_27)
    assert len(PAPER_27) == 27
    fams = {"DINOv2", "DINOv3", "WebSSL", "PE-Core", "PE-Lang", "PE-Spatial", "C-RADIO", "DINO", "CLIP",
            "MoCo v3", "I-JEPA", "MAE", "SAM2", "SigLIP", "SigLIP2", "Classical", "Baseline"}
    assert {s.family for s in E.list_specs()} == fams
    for s in E.list_specs():
        assert s.grid == (16, 16), s.id
        if not s.weight_free:
            assert s.weights.source and s.params_m > 0 and s.weights.licence, s.id


def test_yaml_ships_inside_package():
    from spatialprobe.encoders.spec import yaml_path

    pkg = os.path.join(os.path.dirname(E.__file__), "encoders.yaml")
    assert os.path.isfile(pkg) and not os.path.islink(pkg)  # a real file, so a wheel holds it as is
    assert yaml_path().read_text() == open(pkg).read()
    root = os.path.join(os.path.dirname(E.__file__), os.pardir, os.pardir, "encoders.yaml")
    if os.path.lexists(root):  # a source checkout: the top-level file users edit is the packaged one
        assert os.path.samefile(root, pkg)


def test_yaml_validation_names_bad_field():
    from spatialprobe.encoders.spec import parse_row

    with pytest.raises(ConfigError, match="famly"):
        parse_row("x", {"family": "DINO", "backend": "timm", "famly": 1, "embed_dim": 8,
                        "weights": {"source": "s"}})
    with pytest.raises(ConfigError, match="family"):
        parse_row("x", {"family": "Dino", "backend": "timm", "embed_dim": 8, "weights": {"source": "s"}})
    with pytest.raises(ConfigError, match="weights.source"):
        parse_row("x", {"family": "DINO", "backend": "timm", "embed_dim": 8})


def test_aliases_and_did_you_mean():
    assert E.spec("sam2").id == "sam2-vit-s"
    assert E.spec("dinov2").id == "dinov2-vit-b"
    assert E.spec("DINOv2-ViT-L").id == "dinov2-vit-l"  # case-insensitive
    assert E.spec("clip").id == "clip-vit-L"
    with pytest.raises(UnknownNameError) as ei:
        E.get("sam2-vit-m")
    msg = str(ei.value)
    assert "sam2-vit-m" in msg and "Did you mean" in msg and "sam2-vit-s" in msg
    with pytest.raises(UnknownNameError, match="family"):
        E.list_specs(family="Dinov9")
    assert [s.id for s in E.list_specs(family="sam2")] == ["sam2-vit-s", "sam2-vit-b", "sam2-vit-l"]


# ------------------------------------------------------------------ meta builds (every entry)

@pytest.mark.parametrize("eid", NEURAL)
def test_meta_build_matches_yaml(eid):
    s = E.spec(eid)
    t0 = time.perf_counter()
    enc = E.get(eid, device="meta")
    build_s = time.perf_counter() - t0
    n = sum(p.numel() for p in enc.model.parameters()) / 1e6
    assert abs(n / s.params_m - 1) < 0.02, f"{eid}: {n:.2f}M vs yaml {s.params_m}M"
    pe = getattr(enc.model, "patch_embed", None)
    if pe is not None and hasattr(pe, "patch_size"):
        assert tuple(pe.patch_size)[0] == s.patch
    elif hasattr(enc.model, "config"):
        assert enc.model.config.patch_size == s.patch
    out = enc(PHOTOS[:1])
    assert out.patch.shape == (1, 256, s.embed_dim) and out.grid == (16, 16)
    assert (out.prefix is None) == (s.cls_tokens == 0)
    assert enc.weights_id == "meta"
    if eid in ("pe-vit-g", "dinov3-vit-7b16"):
        assert build_s < 2.0, f"meta build of {eid} took {build_s:.2f}s"  # typically ~0.4 s


def test_headline_parameter_counts():
    # published: PE-Core-G 1.88 B, DINOv3 ViT-7B 6.7 B, SAM2-Hiera-L trunk 212 M
    for eid, pub in (("pe-vit-g", 1880.0), ("dinov3-vit-7b16", 6700.0), ("sam2-vit-l", 212.0)):
        n = sum(p.numel() for p in E.get(eid, device="meta").model.parameters()) / 1e6
        assert abs(n / pub - 1) < 0.02, (eid, n)


# ------------------------------------------------------------------ random-init forwards on real photos

def _arch_key(s):
    return (s.backend, s.model.split(".")[0], tuple(sorted(s.kwargs.items())), s.input_res, s.tap,
            s.prefix_tokens)


def _forward_plan():
    """(id, build overrides) per distinct architecture: a depth-reduced build of the same width, heads,
    norms, prefix tokens and tap (the full configuration of every entry runs on meta above). With
    SPATIALPROBE_TEST_FULL_ZOO=1: full-size random-init forwards for every entry up to 350 M parameters
    and depth-reduced builds of all larger ones (minutes on CPU)."""
    seen, plan = set(), []
    for s in E.list_specs():
        if s.weight_free:
            continue
        key = _arch_key(s)
        if key in seen and not FULL_ZOO:
            continue  # identical architecture already covered (e.g. siglip2-vit-b == siglip-vit-b)
        seen.add(key)
        small = s.params_m <= 350
        if FULL_ZOO and small:
            ov = {}
        elif s.family == "SAM2":
            if s.id != "sam2-vit-s" and not FULL_ZOO:
                continue  # same Hiera code path as -s at other widths (full configs run on meta)
            ov = dict(stages=(1, 1, 2, 1), global_att_blocks=(3,))  # 4 of the Hiera blocks, same widths
        elif not FULL_ZOO and s.params_m > 350 and s.id not in ("pe-vit-g", "dinov2-vit-g", "jepa-vit-h"):
            continue  # width-only variants of code paths covered here; their full config runs on meta
        else:
            ov = {"depth": 1}
        plan.append(pytest.param(s.id, ov, id=f"{s.id}-{'full' if not ov else 'reduced'}"))
    return plan


@pytest.mark.parametrize("eid,ov", _forward_plan())
def test_random_init_forward_on_photos(eid, ov):
    s = E.spec(eid)
    enc = E.get(eid, pretrained=False, **ov)
    assert not enc.training and all(not p.requires_grad for p in enc.parameters())
    out = enc(PHOTOS)
    assert out.patch.shape == (2, 256, s.embed_dim) and out.patch.dtype == torch.float32
    assert torch.isfinite(out.patch).all()
    assert out.patch.std() > 0 and not torch.allclose(out.patch[0], out.patch[1])  # image-dependent
    if s.cls_tokens:
        assert out.prefix.shape == (2, 1, s.embed_dim) and out.cls.shape == (2, s.embed_dim)
    assert enc.weights_id == "random-init:0"
    assert out.layer == {"final_norm": "final", "no_norm": "final-no-norm", "nhwc": "final"}[s.tap]


def test_random_init_is_seeded_and_layers_tap():
    a = E.get("dino-vit-b", pretrained=False, depth=2)
    b = E.get("dino-vit-b", pretrained=False, depth=2)
    c = E.get("dino-vit-b", pretrained=False, depth=2, seed=1)
    oa, ob = a(PHOTOS[:1]).patch, b(PHOTOS[:1]).patch
    assert torch.equal(oa, ob) and not torch.allclose(oa, c(PHOTOS[:1]).patch)
    assert c.weights_id == "random-init:1"
    mid = E.get("dino-vit-b", pretrained=False, depth=2, layers=-1)
    o = mid(PHOTOS[:1])
    assert o.layer == "block-1" and o.patch.shape == (1, 256, 768)
    # last block without the final norm: re-applying the model's norm gives the final tap
    assert torch.allclose(a.model.norm(torch.cat([o.prefix, o.patch], 1))[:, 1:], oa, atol=1e-5)


def test_no_norm_tap_skips_final_norm():
    # MAE's official tap is before the final norm: norm(tap) must equal the final_norm override
    raw = E.get("mae-vit-l", pretrained=False, depth=1)
    normed = E.get("mae-vit-l", pretrained=False, depth=1, tap="final_norm")
    o_raw, o_norm = raw(PHOTOS[:1]), normed(PHOTOS[:1])
    assert o_raw.layer == "final-no-norm" and o_norm.layer == "final"
    full = torch.cat([o_raw.prefix, o_raw.patch], 1)
    assert torch.allclose(raw.model.norm(full)[:, 1:], o_norm.patch, atol=1e-5)
    assert not torch.allclose(o_raw.patch, o_norm.patch, atol=1e-2)


def test_preprocess_resize_and_mean_std():
    enc = E.get("dinov2-vit-b", pretrained=False, depth=1)
    x = torch.full((1, 3, 256, 256), 200, dtype=torch.uint8)
    y = enc.preprocess(x)
    assert y.shape == (1, 3, 224, 224)
    want = (200 / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(y[0, :, 100, 100], want, atol=1e-5)
    sig = E.get("siglip-vit-b", device="meta")
    assert sig.spec.norm == "imagenet"  # iREPA parity; the fix is an override
    assert E.get("siglip-vit-b", device="meta", norm="half").spec.mean == (0.5, 0.5, 0.5)
    with pytest.raises(DataError, match="uint8"):
        enc(x.float())
    with pytest.raises(DataError, match=r"\[B,3,H,W\]"):
        enc(x[0])


# ------------------------------------------------------------------ classical encoders

def test_pixels_are_the_raw_patches():
    out = E.get("pixels")(PHOTOS)
    assert out.patch.shape == (2, 256, 768) and out.prefix is None
    img = PHOTOS.float() / 255
    r, c = 5, 11  # patch at grid row 5, column 11
    want = img[1, :, 16 * r:16 * r + 16, 16 * c:16 * c + 16].reshape(-1)
    assert torch.allclose(out.patch[1, 16 * r + c], want)


@pytest.mark.parametrize("name", ["sift", "hog"])
def test_sift_hog_deterministic_on_photos(name):
    enc = E.get(name)
    assert enc.weights_id == "none"
    a, b = enc(PHOTOS), enc(PHOTOS)
    assert a.patch.shape == (2, 256, 128) and a.patch.dtype == torch.float32 and a.prefix is None
    assert torch.equal(a.patch, b.patch)
    assert (a.patch >= 0).all() and a.patch.sum() > 0
    assert not torch.allclose(a.patch[0], a.patch[1])


@pytest.mark.parametrize("name", ["sift", "hog"])
def test_sift_hog_respond_only_where_there_is_an_edge(name):
    # a vertical step edge at x = 128: only cells touching it (grid columns 7 and 8) see any gradient
    img = torch.zeros(1, 3, 256, 256, dtype=torch.uint8)
    img[..., 128:] = 255
    f = E.get(name)(img).patch[0].reshape(16, 16, 128)
    energy = f.abs().sum(-1)
    assert energy[:, :6].max() == 0 and energy[:, 10:].max() == 0
    assert (energy[:, 7] > 0).all() and (energy[:, 8] > 0).all()
    if name == "hog":  # a horizontal gradient puts all energy in orientation bin 0 (0°)
        cell = f[8, 7].reshape(16, 8)
        assert cell[:, 1:].sum() == 0 and cell[:, 0].sum() > 0


# ------------------------------------------------------------------ transforms

def test_mix_cls_forms():
    p = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # [1,2,2]
    c = torch.tensor([[10.0, 20.0]])
    assert torch.allclose(mix_cls(p, c, 0.0), p)
    assert torch.allclose(mix_cls(p, c, 1.0), c[:, None].expand_as(p))
    assert torch.allclose(mix_cls(p, c, 0.1), torch.tensor([[[1.9, 3.8], [3.7, 5.6]]]))
    assert torch.allclose(mix_cls(p, c[:, None], 0.5, form="additive"), torch.tensor([[[6.0, 12.0], [8.0, 14.0]]]))
    with pytest.raises(DataError, match="mix_mean"):
        mix_cls(p, None, 0.1)
    with pytest.raises(ConfigError):
        mix_cls(p, c, 0.1, form="convex")


def test_mix_mean_forms():
    p = torch.tensor([[[1.0, 2.0], [3.0, 6.0]]])  # mean token (2, 4)
    assert torch.allclose(mix_mean(p, 1.0), torch.tensor([[[2.0, 4.0], [2.0, 4.0]]]))
    assert torch.allclose(mix_mean(p, 0.5, form="additive"), torch.tensor([[[2.0, 4.0], [4.0, 8.0]]]))
    assert torch.allclose(mix_mean(p, 0.0), p)


# ------------------------------------------------------------------ CLI

def test_cli_ls_encoders_and_weights(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from spatialprobe.cli import app

    for var in ("HF_HOME", "HF_HUB_CACHE", "TORCH_HOME"):
        monkeypatch.setenv(var, str(tmp_path / "cache"))
    monkeypatch.delenv("SPATIALPROBE_WEIGHTS", raising=False)
    r = CliRunner().invoke(app, ["ls", "encoders", "--family", "SAM2"])
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("sam2-")]
    assert [ln.split()[0] for ln in lines] == ["sam2-vit-s", "sam2-vit-b", "sam2-vit-l"]
    assert "768" in lines[0] and "16x16" in lines[0] and "missing" in lines[0]
    r = CliRunner().invoke(app, ["ls", "encoders", "--paper27"])
    assert r.exit_code == 0 and "27 encoders" in r.output and "sam2-vit-s" not in r.output
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "sam2_hiera_small.pt").write_bytes(b"abc")
    r = CliRunner().invoke(app, ["weights", "--family", "SAM2", "--weights-dir", str(tmp_path / "w"), "--checksum"])
    assert r.exit_code == 0, r.output
    import hashlib

    assert f"sam2-vit-s                       present  {tmp_path / 'w' / 'sam2_hiera_small.pt'}" in r.output
    assert hashlib.sha256(b"abc").hexdigest() in r.output
    assert "sam2-vit-b" in r.output and "missing" in r.output and "sam2_hiera_base_plus.pt" in r.output
    assert "1/3 present" in r.output
    r = CliRunner().invoke(app, ["ls", "encoders", "--family", "nope"])
    assert r.exit_code == 2 and "unknown family" in r.output


# ------------------------------------------------------------------ package layers, run-time additions

def test_encoders_package_has_one_way_layers():
    grimp = pytest.importorskip("grimp")
    g = grimp.build_graph("spatialprobe", cache_dir=None)
    enc = sorted(m for m in g.modules if m.startswith("spatialprobe.encoders."))
    deps = {m.rsplit(".", 1)[1]: {d.rsplit(".", 1)[1] for d in g.find_modules_directly_imported_by(m)
                                  if d.startswith("spatialprobe.encoders.")} for m in enc}
    for m in enc:  # no cycle anywhere inside encoders/
        for d in g.find_modules_directly_imported_by(m):
            if d.startswith("spatialprobe.encoders."):
                assert not g.chain_exists(importer=d, imported=m), f"import cycle {m} <-> {d}"
    assert deps["backends"] == set()  # the table names its modules, it imports none of them
    assert deps["spec"] <= {"backends", "layouts"}
    for backend_module in ("timm_backend", "hf_backend", "classical"):
        assert not deps[backend_module] & {"backends", "weights", "variants", "registry"}, backend_module
    assert "registry" not in deps["weights"] | deps["variants"]


def test_backend_set_is_written_once():
    from spatialprobe.encoders import backends, spec as spec_fn
    from spatialprobe.encoders.spec import BACKENDS

    assert BACKENDS is backends.BACKENDS and BACKENDS == tuple(backends.TABLE)
    assert {s.backend for s in E.list_specs()} <= set(BACKENDS)
    assert [s.id for s in E.list_specs() if s.weight_free] == ["sift", "hog", "pixels"]
    assert spec_fn("hog").weight_free and not spec_fn("dinov2").weight_free
    for name in BACKENDS:
        build, cls = backends.load(name)
        assert issubclass(cls, torch.nn.Module) and (build is None) == backends.weight_free(name)
    with pytest.raises(UnknownNameError, match="no backend 'nope'; known: .*hf_dinov2"):
        backends.load("nope")


def test_register_backend_and_add_encoder_build_through_the_factory():
    # run-time additions are process-wide, so this runs in its own interpreter
    code = """
import torch, spatialprobe.encoders as E
from spatialprobe.encoders.timm_backend import TimmEncoder, build_model
from spatialprobe.errors import ConfigError
calls = []
def build(spec, *, path, overrides):
    calls.append((spec.id, path))
    return build_model(spec, path=path, overrides=overrides)
E.register_backend("my_timm", build, TimmEncoder)
s = E.add_encoder("vit-mine", family="Baseline", backend="my_timm", model="vit_tiny_patch16_224",
                  embed_dim=192, kwargs={"img_size": 256}, prefix_tokens=1, cls_tokens=1,
                  weights={"source": "nowhere"})
assert E.spec("vit-mine") is s and s.backend == "my_timm" and not s.weight_free
assert "vit-mine" in E.list_encoders() and E.specs()["vit-mine"] is s
enc = E.get("vit-mine@mix_cls=0.5", pretrained=False)
out = enc(torch.zeros(1, 3, 256, 256, dtype=torch.uint8))
assert out.patch.shape == (1, 256, 192) and calls == [("vit-mine", None)], calls
for row, msg in (({"backend": "nope"}, "call register_backend first"), ({"backend": "timm"}, "already exists")):
    try:
        E.add_encoder("dinov2-vit-b" if msg == "already exists" else "y", family="DINO", embed_dim=8, **row)
    except ConfigError as exc:
        assert msg in str(exc), exc
    else:
        raise AssertionError(row)
print("ok")
"""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_variants_get_variant_moved_with_a_warning():
    from spatialprobe.encoders import registry, variants

    with pytest.warns(DeprecationWarning, match="moved to spatialprobe.encoders.registry"):
        assert variants.get_variant is registry.get_variant
