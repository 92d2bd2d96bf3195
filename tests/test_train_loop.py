"""Integration tests of the training loop on CPU: loss goes down, kill + --resume is bit-exact, the teacher
stays frozen, the logged total is denoise + coeff·proj, and the SiT latent path runs end to end."""

import json

import pytest
import torch

from spatialprobe.errors import ConfigError
from spatialprobe.train import repa
from spatialprobe.train.loop import load_run, step_generator, step_losses, train
from spatialprobe.train.models import build, jit
from train_stubs import PatchTeacher, digits_source


def _log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jit_tiny_irepa_with_a_zoo_teacher_on_builtin_digits_learns(tmp_path):
    res = train(model="jit-tiny", method="irepa", teacher="pixels", images="builtin:digits", out=str(tmp_path),
                steps=100, log_every=1, workers=0, max_images=512, teacher_pretrained=False)
    rec = _log(res.log_path)
    assert [r["step"] for r in rec] == list(range(1, 101))
    first = sum(r["loss"] for r in rec[:10]) / 10
    last = sum(r["loss"] for r in rec[-10:]) / 10
    assert last < first - 0.5
    assert sum(r["proj_loss"] for r in rec[-10:]) < sum(r["proj_loss"] for r in rec[:10])
    for r in rec:  # the logged total is denoise + coeff·proj with iREPA's JiT coefficient 0.5
        assert r["loss"] == pytest.approx(r["denoise_loss"] + 0.5 * r["proj_loss"], rel=1e-5, abs=1e-6)
    cfg = json.loads((tmp_path / "config.json").read_text())["config"]
    assert (cfg["projector"], cfg["kernel_size"], cfg["gamma"], cfg["proj_coeff"], cfg["spnorm"]) == \
        ("conv", 3, 0.8, 0.5, True)
    state = torch.load(res.checkpoint, weights_only=True)
    assert state["step"] == 100 and state["config"]["teacher"] == "pixels" and len(state["emas"]) == 2


class _Killed(Exception):
    pass


def test_killed_and_resumed_run_ends_with_identical_weights(tmp_path):
    src = digits_source(64, 96)
    kw = dict(model="jit-tiny", method="irepa", teacher="stub", images="x", steps=6, ckpt_every=3, log_every=1,
              workers=0, teacher_resolution=64, batch_size=8)
    t = PatchTeacher(16, input_res=64, patch=8)
    full = train(out=str(tmp_path / "full"), source=src, teachers=[t], **kw)

    def kill(step, rec):
        if step == 5:  # after the step-3 checkpoint, before the step-6 one
            raise _Killed

    with pytest.raises(_Killed):
        train(out=str(tmp_path / "cut"), source=src, teachers=[t], callback=kill, **kw)
    with pytest.raises(ConfigError, match="--resume"):  # never silently overwrite a run
        train(out=str(tmp_path / "cut"), source=src, teachers=[t], **kw)
    with pytest.raises(ConfigError, match="proj_coeff"):  # a resume may not change the recipe
        train(out=str(tmp_path / "cut"), source=src, teachers=[t], resume=True, proj_coeff=0.25, **kw)
    resumed = train(out=str(tmp_path / "cut"), source=src, teachers=[t], resume=True, **kw)
    a = torch.load(full.checkpoint, weights_only=True)
    b = torch.load(resumed.checkpoint, weights_only=True)
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for ea, eb in zip(a["emas"], b["emas"]):
        for k in ea:
            assert torch.equal(ea[k], eb[k]), k
    assert [r["step"] for r in _log(resumed.log_path)] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in _log(resumed.log_path)] == [r["loss"] for r in _log(full.log_path)]


def test_teacher_frozen_and_total_is_denoise_plus_coeff_proj():
    torch.manual_seed(0)
    teacher = PatchTeacher(16, input_res=64, patch=8)
    teacher.train()  # even a teacher handed over in train mode with grads on is frozen by the trainer
    teacher.requires_grad_(True)
    repa.freeze(teacher)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    model = build("jit-tiny", z_dims=[16], projector="conv", kernel_size=3, num_classes=10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    imgs = digits_source(64, 8).images
    x = torch.nn.functional.interpolate(imgs.float(), size=32, mode="area") / 127.5 - 1
    y = torch.arange(8) % 10
    kw = dict(teachers=[teacher], teacher_images=imgs, grid=model.grid, spnorm=True, gamma=0.8, proj_coeff=0.5,
              null_class=10, label_dropout=0.1)
    out = step_losses(model, "jit", x, y, generator=step_generator(0, 0, 0, torch.device("cpu")), **kw)
    assert out["loss"].item() == pytest.approx(out["denoise"].item() + 0.5 * out["proj"].item(), rel=1e-6)
    # recompute both parts independently with the same generator draws
    g = step_generator(0, 0, 0, torch.device("cpu"))
    denoise, zs = jit.training_loss(model, x, y, g, 0.1, 10)
    tok = teacher(imgs).patch  # 8x8 grid at 64 px = the student grid: no resampling
    tgt = (tok - 0.8 * tok.mean(1, keepdim=True)) / (tok.std(1, keepdim=True) + 1e-6)
    proj = -torch.nn.functional.cosine_similarity(zs[0], tgt, dim=-1).mean()
    assert out["denoise"].item() == pytest.approx(denoise.item(), rel=1e-6)
    assert out["proj"].item() == pytest.approx(proj.item(), rel=1e-5)
    opt.zero_grad()
    out["loss"].backward()
    opt.step()
    assert not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert model.projectors[0].conv.weight.grad is not None


def test_sit_tiny_latent_path_end_to_end(tmp_path):
    src = digits_source(64, 48)
    res = train(model="sit-tiny", method="repa", teacher="stub", images="x", out=str(tmp_path / "run"), steps=6,
                log_every=1, workers=0, batch_size=8, vae="tiny-random", source=src,
                teachers=[PatchTeacher(16, input_res=64, patch=8)], teacher_resolution=64)
    state = torch.load(res.checkpoint, weights_only=True)
    assert state["family"] == "sit" and state["model_args"]["input_size"] == 8
    assert state["model_args"]["in_channels"] == 4 and len(state["latent"]["scale"]) == 4
    man = next((tmp_path / "run" / "latents").rglob("manifest.json"))
    m = json.loads(man.read_text())
    assert m["ids"] == src.ids and m["resolution"] == 64
    # per-channel normaliser: the cached posterior samples have mean ≈ bias and std ≈ 1/scale
    assert all(s > 0 for s in state["latent"]["scale"])
    rec = _log(res.log_path)
    assert len(rec) == 6 and all(r["proj_loss"] is not None for r in rec)
    assert all(r["loss"] == pytest.approx(r["denoise_loss"] + 0.5 * r["proj_loss"], rel=1e-5) for r in rec)
    model, st = load_run(tmp_path / "run", weights="ema")
    assert st["step"] == 6 and not model.training
    # a second run on the same images reuses the cache (no new fingerprint folder)
    train(model="sit-tiny", method="none", images="x", out=str(tmp_path / "run2"), steps=2, workers=0,
          batch_size=8, vae="tiny-random", source=src, latents_dir=str(tmp_path / "run" / "latents"))
    assert len(list((tmp_path / "run" / "latents").rglob("manifest.json"))) == 1
