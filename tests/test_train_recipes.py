"""Official recipes, the 512-px models, image sides end to end, and the combinations that cannot be right.

Expected values are written out here from docs/pixelrepa-and-recipes.md §2 and the official READMEs
(iREPA @99ad4ac, JiT, PixelREPA @5181608), independently of spatialprobe.train.recipes.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from spatialprobe.encoders.base import EncoderOutput
from spatialprobe.errors import ConfigError, UnknownNameError
from spatialprobe.train import recipes
from spatialprobe.train.config import SampleConfig, TrainConfig, finalize
from spatialprobe.train.models import build, variant
from spatialprobe.train.recipes import resolve_sample, resolve_train


# ------------------------------------------------------------------------------ helpers (self-contained)


class RandomImages:
    """``n`` seeded random RGB images at ``side`` px with labels 0..9."""

    def __init__(self, n: int = 8, side: int = 64, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (n, 3, side, side), generator=g, dtype=torch.uint8)
        self.labels = [i % 10 for i in range(n)]
        self.label_names = [str(i) for i in range(10)]

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int) -> torch.Tensor:
        return self.images[i]


class PoolTeacher(nn.Module):
    """A weight-free teacher: 4×4 average-pooled pixels on a fixed 16×16 grid from any image side; records
    the sides it was fed."""

    def __init__(self):
        super().__init__()
        self.name, self.embed_dim, self.grid, self.weights_id = "pool-teacher", 3, (16, 16), "none"
        self.sides: list[int] = []

    def __call__(self, images: torch.Tensor) -> EncoderOutput:  # type: ignore[override]
        self.sides.append(int(images.shape[-1]))
        x = F.adaptive_avg_pool2d(images.float() / 255.0, self.grid)
        patch = x.flatten(2).transpose(1, 2)
        return EncoderOutput(patch=patch, prefix=None, grid=self.grid)


def _first_denoise(tmp_path, name, teacher_resolution):
    from spatialprobe.train.loop import train

    teacher = PoolTeacher()
    res = train(model="jit-tiny", method="repa", teacher="pool", images="x", out=str(tmp_path / name), steps=1,
                batch_size=4, workers=0, resolution=64, teacher_resolution=teacher_resolution, hflip=True,
                log_every=1, source=RandomImages(), teachers=[teacher])
    rec = json.loads(res.log_path.read_text().splitlines()[0])
    return rec["denoise_loss"], teacher.sides, json.loads((res.out / "config.json").read_text())


# ------------------------------------------------------------------------------ 1. image sides


def test_model_sees_its_resolution_whatever_the_teacher_side(tmp_path):
    """A 64-px JiT run with a 32-px teacher feeds the model the 64-px images: its step-1 denoising loss equals
    that of the same run with a 64-px teacher (before, the image was loaded at 32 px and enlarged)."""
    d32, sides32, cfg32 = _first_denoise(tmp_path, "t32", 32)
    d64, sides64, _ = _first_denoise(tmp_path, "t64", 64)
    assert sides32 == [32] and sides64 == [64]  # the teacher gets its own side
    assert d32 == d64
    assert cfg32["config"]["teacher_resolution"] == 32 and cfg32["teachers"][0]["grid"] == [16, 16]
    assert cfg32["teachers"][0]["resampled"] is None  # 16x16 teacher grid = the 64/4 student grid


def test_teacher_side_defaults_to_max_256_and_resolution():
    assert finalize(TrainConfig(model="jit-tiny", teacher="hog")).teacher_resolution == 256
    assert finalize(TrainConfig(model="jit-b/32", teacher="hog")).teacher_resolution == 512
    assert finalize(TrainConfig(model="jit-b/16", teacher="hog", resolution=512)).teacher_resolution == 512


def test_dinov2_at_512_gives_native_32x32_tokens():
    """A /14 teacher for a 512-px image gets the official 448-px input and a native 32x32 grid."""
    from spatialprobe import encoders
    from spatialprobe.train.resolution import teacher_overrides

    ov = teacher_overrides("dinov2-vit-b", 512)
    assert ov == {"input_res": 448, "img_size": 448}
    assert teacher_overrides("dinov2-vit-b", 256) == {}
    enc = encoders.get("dinov2-vit-b", pretrained=False, depth=1, **ov)
    assert enc.grid == (32, 32)
    out = enc(torch.randint(0, 256, (1, 3, 512, 512), dtype=torch.uint8))
    assert out.grid == (32, 32) and out.patch.shape == (1, 1024, 768)
    # a /16 classical teacher scales the same way: 512 px -> 32x32
    assert encoders.get("hog", **teacher_overrides("hog", 512)).grid == (32, 32)


def test_resampling_is_logged_and_recorded(caplog):
    from spatialprobe.train.resolution import teacher_record

    with caplog.at_level(logging.INFO, logger="spatialprobe.train.resolution"):
        rec = teacher_record(PoolTeacher(), 256, (8, 8))
    assert rec["resampled"] == "16x16 -> 8x8 (area)" and "resampled" in caplog.text
    assert teacher_record(PoolTeacher(), 512, (16, 16))["resampled"] is None


# ------------------------------------------------------------------------------ 2. the 512 recipe


# official trainable-parameter counts (docs/pixelrepa-and-recipes.md: the /16 JiT nets, 1000 classes)
JIT16 = {"jit-b/16": 131_123_712, "jit-l/16": 458_877_664, "jit-h/16": 952_514_368}
SHAPE = {"b": (768, 128), "l": (1024, 128), "h": (1280, 256)}  # width, bottleneck (JiT-{B,L,H}/{16,32})


@pytest.mark.parametrize("size", ["b", "l", "h"])
def test_jit32_parameter_counts_equal_the_official_configs(size):
    """/32 = the /16 model with 32-px patches: only the p×p bottleneck conv (3·b·p², no bias) and the final
    linear (h·3p² + 3p²) change size."""
    h, b = SHAPE[size]
    dp = 32 ** 2 - 16 ** 2
    official32 = JIT16[f"jit-{size}/16"] + 3 * b * dp + (h + 1) * 3 * dp
    with torch.device("meta"):
        net16 = build(f"jit-{size}/16", num_classes=1000)
        net32 = build(f"jit-{size}/32", num_classes=1000, input_size=512)
    assert sum(p.numel() for p in net16.parameters()) == JIT16[f"jit-{size}/16"]
    assert sum(p.numel() for p in net32.parameters()) == official32
    assert net32.grid == (16, 16) and net32.cfg.patch == 32


def test_noise_scale_is_a_field_used_by_training():
    assert finalize(TrainConfig(model="jit-b/32", method="none")).noise_scale == 2.0
    assert finalize(TrainConfig(model="jit-b/16", method="none")).noise_scale == 1.0
    with pytest.raises(ConfigError, match="JiT option"):
        finalize(TrainConfig(model="sit-tiny", method="none", noise_scale=2.0))
    from spatialprobe.train.loop import step_losses

    torch.manual_seed(0)
    net = build("jit-tiny", num_classes=10)
    with torch.no_grad():  # the zero-initialised head would predict x̂ = 0 whatever the noise
        for p in net.final_layer.parameters():
            p.normal_(0, 0.05)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = torch.zeros(2, dtype=torch.long)
    kw = dict(teachers=[], teacher_images=None, grid=net.grid, spnorm=False, gamma=0.8, proj_coeff=0.0,
              null_class=10, label_dropout=0.0)
    a = step_losses(net, "jit", x, y, generator=torch.Generator().manual_seed(0), noise_scale=1.0, **kw)["denoise"]
    b = step_losses(net, "jit", x, y, generator=torch.Generator().manual_seed(0), noise_scale=2.0, **kw)["denoise"]
    assert a != b


def test_alignment_depth_defaults_by_model_size():
    want = {"sit-b/2": 4, "jit-b/16": 4, "jit-b/32": 4, "sit-l/2": 8, "sit-xl/2": 8, "jit-l/16": 8, "jit-h/16": 8,
            "jit-l/32": 8, "jit-h/32": 8, "sit-tiny": 2, "jit-tiny": 2}
    for m, d in want.items():
        assert variant(m).get("encoder_depth", 8) == d  # 8: the backbone default
        with torch.device("meta"):
            assert build(m, num_classes=10).cfg.encoder_depth == d
    with torch.device("meta"):  # set explicitly (the study's enc8 runs), it stays
        assert build("sit-b/2", num_classes=10, encoder_depth=8).cfg.encoder_depth == 8


# ------------------------------------------------------------------------------ 3. recipes

_SIT = dict(batch_size=256, lr=1e-4, warmup_epochs=0.0, steps=400_000, epochs=None, betas=[0.9, 0.999],
            grad_clip=1.0, ema_decays=[0.9999], label_dropout=0.1, hflip=False, resolution=256, noise_scale=None,
            method="irepa-official-ldm", projector="conv", kernel_size=1, spnorm=True, gamma=0.6, proj_coeff=1.0,
            teacher="pe-vit-g")
_JIT = dict(warmup_epochs=5.0, epochs=600.0, batch_size=1024, lr=2e-4, betas=[0.9, 0.95], grad_clip=0.0,
            ema_decays=[0.9999, 0.9996], label_dropout=0.1, hflip=True, resolution=256, noise_scale=1.0)
_SIT_S = dict(sampler="sde", steps=250, cfg=1.0, interval=[0.0, 1.0], labels="random", precision="fp32",
              uint8="truncate")
_JIT_S = dict(sampler="heun", steps=50, interval=[0.1, 1.0], labels="balanced", precision="bf16", uint8="round")

EXPECTED = {
    "irepa-readme-sit-b": ({**_SIT, "model": "sit-b/2", "encoder_depth": 4}, _SIT_S,
                           dict(protocol="adm", ref="VIRTUAL_imagenet256_labeled.npz", n=50_000)),
    "irepa-readme-sit-xl": ({**_SIT, "model": "sit-xl/2", "encoder_depth": 8}, _SIT_S,
                            dict(protocol="adm", ref="VIRTUAL_imagenet256_labeled.npz", n=50_000)),
    "irepa-readme-jit-b": ({**_JIT, "model": "jit-b/16", "batch_size": 512, "lr": 1e-4, "epochs": 200.0,
                           "encoder_depth": 4, "method": "irepa", "projector": "conv", "kernel_size": 3,
                           "spnorm": True, "gamma": 0.8, "proj_coeff": 0.5, "teacher": "pe-vit-g",
                           "proj_dropout": 0.0},
                           {**_JIT_S, "cfg": 1.0, "interval": [0.0, 1.0]},
                           dict(protocol="jit", ref="jit_in256_stats.npz", n=50_000)),
    "jit-paper-b": ({**_JIT, "model": "jit-b/16", "method": "none", "teacher": None, "proj_dropout": 0.0},
                    {**_JIT_S, "cfg": 3.0}, dict(protocol="jit", ref="jit_in256_stats.npz", n=50_000)),
    "jit-paper-l": ({**_JIT, "model": "jit-l/16", "method": "none", "teacher": None, "proj_dropout": 0.0},
                    {**_JIT_S, "cfg": 2.4}, dict(protocol="jit", ref="jit_in256_stats.npz", n=50_000)),
    "jit-paper-h": ({**_JIT, "model": "jit-h/16", "method": "none", "teacher": None, "proj_dropout": 0.2},
                    {**_JIT_S, "cfg": 2.2}, dict(protocol="jit", ref="jit_in256_stats.npz", n=50_000)),
    "jit-paper-512": ({**_JIT, "model": "jit-b/32", "method": "none", "teacher": None, "proj_dropout": 0.0,
                       "resolution": 512, "noise_scale": 2.0},
                      {**_JIT_S, "cfg": 3.0}, dict(protocol="jit", ref="jit_in512_stats.npz", n=50_000)),
    "pixelrepa-paper-b": ({**_JIT, "model": "jit-b/16", "method": "pixelrepa", "teacher": "dinov2-vit-b-p16",
                           "encoder_depth": 4, "proj_coeff": 0.1, "proj_dropout": 0.0, "mask_ratio": 0.2,
                           "adapter_depth": 2},
                          {**_JIT_S, "cfg": 3.1}, dict(protocol="jit", ref="jit_in256_stats.npz", n=50_000)),
    "pixelrepa-paper-l": ({**_JIT, "model": "jit-l/16", "method": "pixelrepa", "teacher": "dinov2-vit-b-p16",
                           "encoder_depth": 8, "proj_coeff": 0.1, "proj_dropout": 0.0, "mask_ratio": 0.2,
                           "adapter_depth": 2},
                          {**_JIT_S, "cfg": 2.8}, dict(protocol="jit", ref="jit_in256_stats.npz", n=50_000)),
    "pixelrepa-paper-h": ({**_JIT, "model": "jit-h/16", "method": "pixelrepa", "teacher": "dinov2-vit-b-p16",
                           "encoder_depth": 10, "proj_coeff": 0.1, "proj_dropout": 0.2, "mask_ratio": 0.2,
                           "adapter_depth": 2},
                          {**_JIT_S, "cfg": 2.4}, dict(protocol="jit", ref="jit_in256_stats.npz", n=50_000)),
}


def test_every_listed_recipe_is_tested():
    assert set(recipes.names()) == set(EXPECTED)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_recipe_resolves_to_the_official_values(name):
    from spatialprobe.train import pixelrepa

    want_train, want_sample, want_eval = EXPECTED[name]
    r = recipes.get(name)
    assert r.eval == want_eval and r.command and r.family == ("sit" if name.startswith("irepa-readme-sit") else "jit")
    cfg = finalize(resolve_train(None, None, {"recipe": name}))
    assert cfg.recipe == name
    for k, v in want_train.items():
        got = getattr(cfg, k)
        assert got == pytest.approx(v) if isinstance(v, float) else got == v, (k, got, v)
    pix = want_train["method"] == "pixelrepa"
    if pix:  # the adapter and its target: the raw tokens of one teacher, after the JiT encoder blocks
        assert (cfg.projector, cfg.spnorm) == ("mta", False)
        assert cfg.teacher == pixelrepa.OFFICIAL_TEACHER  # DINOv2-B with a 16-px patch at 256 px
        assert cfg.encoder_depth == variant(cfg.model)["in_context_start"]
    else:
        assert cfg.mask_ratio is None and cfg.adapter_depth is None
    with torch.device("meta"):  # the model it builds
        side = cfg.resolution // 8 if name.startswith("irepa-readme-sit") else cfg.resolution
        extra = {"proj_drop": cfg.proj_dropout} if cfg.proj_dropout is not None else {}
        net = build(cfg.model, num_classes=1000, input_size=side, encoder_depth=cfg.encoder_depth,
                    z_dims=[768] if cfg.teacher and not pix else [], projector=cfg.projector,
                    kernel_size=cfg.kernel_size, **extra, **({"mask_token": True} if pix else {}))
        if pix:
            adapter = pixelrepa.build_adapter(net, 768, depth=cfg.adapter_depth, num_classes=1000)
            assert len(adapter.blocks) == want_train["adapter_depth"]
            assert pixelrepa.PixelREPANet(net, adapter, cfg.mask_ratio).mask_ratio == want_train["mask_ratio"]
    assert net.cfg.encoder_depth == want_train.get("encoder_depth", net.cfg.encoder_depth)
    assert net.grid == (16, 16)
    if hasattr(net.cfg, "proj_drop"):  # JiT: the dropout the recipe asks for
        assert net.cfg.proj_drop == cfg.proj_dropout == want_train["proj_dropout"]
    s = resolve_sample(SampleConfig(run="x"), set(), name)
    for k, v in want_sample.items():
        assert getattr(s, k) == v, (k, getattr(s, k), v)


def test_recipe_precedence_defaults_recipe_file_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("batch_size: 64\nlr: 3.0e-4\n")
    cfg = resolve_train(None, f, {"recipe": "jit-paper-b", "lr": 1e-5, "model": "jit-tiny"})
    assert cfg.batch_size == 64 and cfg.lr == 1e-5 and cfg.model == "jit-tiny"  # file over recipe, flag over file
    assert cfg.ema_decays == [0.9999, 0.9996] and cfg.epochs == 600.0  # the rest from the recipe
    # a flag equal to the built-in default still wins: --steps 80 replaces the recipe's 600 epochs
    cfg = resolve_train(None, None, {"recipe": "jit-paper-b", "steps": 80})
    assert cfg.steps == 80 and cfg.epochs is None
    # a ready TrainConfig counts as given where it differs from the defaults
    cfg = resolve_train(TrainConfig(recipe="jit-paper-b", label_dropout=0.2), None, {})
    assert cfg.label_dropout == 0.2 and cfg.batch_size == 1024


def test_recipe_errors():
    with pytest.raises(ConfigError, match="JIT recipe but model 'sit-b/2'"):
        resolve_train(None, None, {"recipe": "jit-paper-b", "model": "sit-b/2"})
    with pytest.raises(UnknownNameError, match="jit-paper-b"):
        resolve_train(None, None, {"recipe": "jit-papr-b"})
    with pytest.raises(ConfigError, match="keep one"):
        resolve_train(None, None, {"recipe": "jit-paper-b", "steps": 5, "epochs": 1.0})


def test_tiny_recipe_run_records_the_recipe_and_samples_by_it(tmp_path):
    """jit-paper-b scaled down to jit-tiny on CPU: the resolved recipe goes into config.json, and `sample`
    takes the recipe's CFG, labels, bf16 and rounding unless given."""
    from spatialprobe.train.loop import train
    from spatialprobe.train.sample import sample

    res = train(recipe="jit-paper-b", model="jit-tiny", resolution=32, steps=2, batch_size=4, workers=0,
                out=str(tmp_path / "run"), images="x", source=RandomImages(8, 32))
    rec = json.loads((res.out / "config.json").read_text())
    assert rec["config"]["recipe"] == "jit-paper-b" and rec["recipe"]["name"] == "jit-paper-b"
    assert rec["config"]["ema_decays"] == [0.9999, 0.9996] and rec["config"]["noise_scale"] == 1.0
    assert rec["config"]["lr"] == pytest.approx(5e-5 * 4 / 256)  # the blr rule follows the given batch
    out = sample(run=str(res.out), n=4, batch_size=4, steps=2, out=str(tmp_path / "s"), png=False)
    srec = json.loads((out / "config.json").read_text())
    assert srec["config"]["cfg"] == 3.0 and srec["labels_rule"] == "balanced"
    assert srec["sampling_precision"] == "bf16" and srec["uint8_rule"] == "round" and srec["recipe"] == "jit-paper-b"
    out = sample(run=str(res.out), n=4, batch_size=4, steps=2, cfg=1.0, precision="fp32", out=str(tmp_path / "s2"),
                 png=False)
    srec = json.loads((out / "config.json").read_text())
    assert srec["config"]["cfg"] == 1.0 and srec["sampling_precision"] == "fp32"


def test_epochs_set_the_steps(tmp_path):
    from spatialprobe.train.config import steps_for_epochs
    from spatialprobe.train.loop import train

    assert steps_for_epochs(600, 1_281_167, 1024) == 600 * 1251  # JiT: whole batches per epoch
    res = train(model="jit-tiny", method="none", epochs=2, batch_size=4, workers=0, out=str(tmp_path / "r"),
                images="x", source=RandomImages(10, 32))
    assert res.step == 2 * (10 // 4)


# ------------------------------------------------------------------------------ 5. combinations refused


def test_sit_hflip_is_refused():
    with pytest.raises(ConfigError, match="latents are cached unflipped"):
        finalize(TrainConfig(model="sit-tiny", method="none", hflip=True))


def test_double_spatial_norm_is_refused():
    with pytest.raises(ConfigError, match="normalises the target again"):
        finalize(TrainConfig(model="jit-tiny", method="irepa", teacher="hog@spnorm=0.6"))
    # either normalisation alone is fine
    assert not finalize(TrainConfig(model="jit-tiny", method="irepa", teacher="hog@spnorm=0.6", spnorm=False)).spnorm
    assert finalize(TrainConfig(model="jit-tiny", method="repa", teacher="hog@spnorm=0.6")).method == "repa"


def test_heun_corrector_guides_by_t_cur():
    """REPA's ldm/samplers.py decides CFG for Heun's corrector by t_cur: with interval [0, 0.5] and the grid
    1 -> 0.5 -> 0, the corrector at t_next = 0.5 of the first step is unguided (t_cur = 1)."""
    from spatialprobe.train.sample import sit_ode, sit_velocity_fn

    calls = []

    class Net(nn.Module):
        def forward(self, x, t, y, project=True):
            calls.append(x.shape[0])
            return torch.zeros_like(x), []

    y = torch.zeros(2, dtype=torch.long)
    fn = sit_velocity_fn(Net(), y, null_class=10, cfg=2.0, interval=(0.0, 0.5))
    sit_ode(fn, torch.zeros(2, 4), steps=2, heun=True)
    assert calls == [2, 2, 4]  # step 1: predictor and corrector unguided; step 2 (Euler, t = 0.5): guided


def test_sampling_labels_follow_the_family():
    from spatialprobe.train.sample import FAMILY_LABELS, random_labels

    assert FAMILY_LABELS == {"sit": "random", "jit": "balanced"}
    a = random_labels(1000, 1000, seed=0)
    assert a.tolist() == torch.randint(0, 1000, (1000,), generator=torch.Generator().manual_seed(0)).tolist()
    assert len(set(a.tolist())) < 1000  # not balanced
    with pytest.raises(ConfigError, match="balanced or random"):
        SampleConfig(labels="sorted")


def test_uint8_rounding_vs_truncation():
    from spatialprobe.train.sample import images_to_uint8

    x = torch.tensor([-1.0, 0.0, 0.999, 1.0]).view(1, 1, 1, 4)
    assert images_to_uint8(x, "truncate").flatten().tolist() == [0, 127, 254, 255]
    assert images_to_uint8(x, "round").flatten().tolist() == [0, 128, 255, 255]


def test_study_training_recipe():
    """``training.recipe`` in a study: validated, the recipe's model when none is given, a model of the other
    family refused, and passed to every training run through its options; a study without it is unchanged."""
    from spatialprobe.study import parse_spec

    s = parse_spec({"encoders": ["hog"], "training": {"recipe": "irepa-readme-sit-b", "steps": 3}})
    assert s.training.model == "sit-b/2" and s.training.options["recipe"] == "irepa-readme-sit-b"
    s = parse_spec({"encoders": ["hog"], "training": {"recipe": "jit-paper-b", "model": "jit-tiny"}})
    assert s.training.model == "jit-tiny" and s.training.options == {"recipe": "jit-paper-b"}
    with pytest.raises(ConfigError, match="jit recipe"):
        parse_spec({"encoders": ["hog"], "training": {"recipe": "jit-paper-b", "model": "sit-tiny"}})
    with pytest.raises(UnknownNameError, match="jit-paper-b"):
        parse_spec({"encoders": ["hog"], "training": {"recipe": "jit-papr-b"}})
    assert "recipe" not in parse_spec({"encoders": ["hog"], "training": {}}).training.options


def test_ls_recipes_prints_every_recipe_with_its_official_command():
    from typer.testing import CliRunner

    from spatialprobe.cli import app

    res = CliRunner().invoke(app, ["ls", "recipes"])
    assert res.exit_code == 0, res.output
    for name in EXPECTED:
        assert f"\n{name}  (" in "\n" + res.output
    assert res.output.count("  official: ") == len(EXPECTED)
    assert "main_jit.py --model JiT-B/32" in res.output and "--noise_scale 2.0" in res.output
