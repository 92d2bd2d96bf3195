"""The EMA copies cover the denoiser only: the alignment projectors are training-only (sampling skips them), so
they are neither copied nor averaged nor saved in the EMA state. Checkpoints written before, whose EMA state
dicts hold projector keys, still resume (bit-exact) and sample; the disk estimate counts what is written."""

import numpy as np
import pytest
import torch

from spatialprobe.train import budget
from spatialprobe.train import sample as S
from spatialprobe.train.ema import DenoiserEMA, denoiser_state, with_projectors
from spatialprobe.train.loop import load_run, train
from spatialprobe.train.models import build
from train_stubs import PatchTeacher, digits_source


def _no_projectors(keys):
    return {k for k in keys if not k.startswith("projectors.")}


@pytest.mark.parametrize("name", ["jit-tiny", "sit-tiny"])
def test_ema_copies_leave_out_the_projectors_and_average_like_a_per_parameter_lerp(name):
    torch.manual_seed(0)
    model = build(name, num_classes=10, z_dims=[16], projector="mlp")
    ema = DenoiserEMA(model, [0.9, 0.5])
    assert len(ema) == 2 and len(model.projectors) == 1  # the model keeps its projector
    for c in ema:
        assert set(c.state_dict()) == _no_projectors(model.state_dict()) and len(c.projectors) == 0
        assert not c.training and not any(p.requires_grad for p in c.parameters())
    # a copy of the denoiser predicts what the model predicts without projection (what sampling calls)
    size = model.cfg.input_size
    x, t, y = torch.randn(2, model.cfg.in_channels, size, size), torch.full((2,), 0.5), torch.tensor([1, 2])
    with torch.no_grad():
        out, zs = ema.copies[0](x, t, y)
        torch.testing.assert_close(out, model.eval()(x, t, y, project=False)[0], rtol=0, atol=0)
    assert zs == []
    before = [{k: v.clone() for k, v in c.state_dict().items()} for c in ema]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    ema.update()
    params = dict(model.named_parameters())
    buffers = {n for n, _ in ema.copies[0].named_buffers()}
    for c, old, d in zip(ema, before, [0.9, 0.5]):
        for k, v in c.state_dict().items():  # bit for bit the per-parameter lerp; buffers untouched
            assert torch.equal(v, old[k] if k in buffers else old[k].lerp(params[k], 1 - d)), k


def test_state_dict_rule_drops_projector_keys_and_takes_projectors_from_the_raw_model():
    ema_sd = {"blocks.0.w": torch.zeros(2), "projectors.0.0.weight": torch.zeros(3)}
    model_sd = {"blocks.0.w": torch.ones(2), "projectors.0.0.weight": torch.ones(3)}
    assert set(denoiser_state(ema_sd)) == {"blocks.0.w"}
    full = with_projectors(ema_sd, model_sd)
    assert torch.equal(full["blocks.0.w"], torch.zeros(2)) and torch.equal(full["projectors.0.0.weight"], torch.ones(3))


@pytest.fixture(scope="module")
def repa_runs(tmp_path_factory):
    """An uninterrupted 4-step jit-tiny REPA run (checkpoints at 2 and 4), and a second run folder holding
    only its step-2 checkpoint rewritten the way earlier versions wrote it: EMA state dicts with projector
    keys (set to values the raw model does not have, so the test sees which ones are used)."""
    tmp = tmp_path_factory.mktemp("ema")
    src = digits_source(64, 32)
    kw = dict(model="jit-tiny", method="repa", teacher="stub", images="x", steps=4, ckpt_every=2, keep_last=0,
              workers=0, batch_size=8, teacher_resolution=64)
    teacher = PatchTeacher(16, input_res=64, patch=8)
    full = train(out=str(tmp / "full"), source=src, teachers=[teacher], **kw)
    old = torch.load(tmp / "full" / "checkpoints" / "0000002.pt", weights_only=True)
    proj = {k: v + 1.0 for k, v in old["model"].items() if k.startswith("projectors.")}
    assert proj
    old["emas"] = [{**e, **proj} for e in old["emas"]]
    (tmp / "old" / "checkpoints").mkdir(parents=True)
    torch.save(old, tmp / "old" / "checkpoints" / "0000002.pt")
    return dict(tmp=tmp, src=src, kw=kw, teacher=teacher, full=full, old=old, proj=proj)


def test_checkpoint_emas_hold_the_denoiser_and_the_disk_estimate_counts_it(repa_runs):
    state = torch.load(repa_runs["full"].checkpoint, weights_only=True)
    assert len(state["emas"]) == 2 and any(k.startswith("projectors.") for k in state["model"])
    for e in state["emas"]:
        assert set(e) == _no_projectors(state["model"])
    tensors = [state["model"], *state["emas"], *state["opt"]["state"].values()]
    written = sum(v.numel() * v.element_size() for d in tensors for v in d.values())
    est = budget.checkpoint_bytes("jit-tiny", n_emas=2, **state["model_args"]) - budget.CHECKPOINT_OVERHEAD
    assert abs(est - written) < 0.001 * written  # only AdamW's per-parameter step counters are not counted


def test_an_older_checkpoint_with_projectors_in_its_emas_samples_and_resumes_bit_exact(repa_runs):
    tmp, old, proj = repa_runs["tmp"], repa_runs["old"], repa_runs["proj"]
    model, state = load_run(tmp / "old", weights="ema2")
    sd = model.state_dict()
    assert all(torch.equal(sd[k], old["model"][k]) for k in proj)  # the raw model's projectors, not the EMA's
    assert all(torch.equal(sd[k], old["emas"][1][k]) for k in _no_projectors(sd))
    out = S.sample(run=str(tmp / "old"), n=4, batch_size=4, steps=2, sampler="heun", weights="ema",
                   out=str(tmp / "samples"))
    assert np.load(out / "samples.npz")["arr_0"].shape == (4, 32, 32, 3)
    resumed = train(out=str(tmp / "old"), source=repa_runs["src"], teachers=[repa_runs["teacher"]], resume=True,
                    **repa_runs["kw"])
    a = torch.load(repa_runs["full"].checkpoint, weights_only=True)
    b = torch.load(resumed.checkpoint, weights_only=True)
    assert b["step"] == 4 and all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())
    for ea, eb in zip(a["emas"], b["emas"], strict=True):
        assert set(ea) == set(eb) and all(torch.equal(v, eb[k]) for k, v in ea.items())
