"""The loop's AdamW: fused where the device has it, the same update as torch's per-parameter loop up to float
rounding, and an optimizer state saved by the per-parameter loop (earlier checkpoints) resumes fused."""

import copy

import torch

from spatialprobe.train.loop import load_optimizer_state, make_optimizer
from spatialprobe.train.models import build


def _model_with_grads(seed=0):
    torch.manual_seed(seed)
    return build("jit-tiny", num_classes=10, z_dims=[16], projector="mlp")


def _set_grads(model, step):
    g = torch.Generator().manual_seed(100 + step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)


def _loop_adamw(model):
    """AdamW as the loop built it before: torch's per-parameter loop, same groups."""
    decay = [p for n, p in model.named_parameters() if not (p.ndim < 2 or n.endswith(".bias"))]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or n.endswith(".bias")]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=1e-3, betas=(0.9, 0.95), foreach=False)


def test_adamw_is_fused_on_cpu_and_matches_the_per_parameter_loop():
    a, b = _model_with_grads(), _model_with_grads()
    fused, ref = make_optimizer(a, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01), _loop_adamw(b)
    assert fused.defaults["fused"] is True
    assert [len(g["params"]) for g in fused.param_groups] == [len(g["params"]) for g in ref.param_groups]
    for s in range(5):
        _set_grads(a, s)
        _set_grads(b, s)
        fused.step()
        ref.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_a_per_parameter_loop_state_resumes_fused():
    a, b = _model_with_grads(), _model_with_grads()
    ref = _loop_adamw(a)
    for s in range(3):
        _set_grads(a, s)
        ref.step()
    saved = copy.deepcopy(ref.state_dict())  # as read from a checkpoint: no tensor shared with ``ref``
    assert saved["param_groups"][0]["fused"] is None  # what earlier checkpoints hold
    b.load_state_dict(a.state_dict())
    opt = make_optimizer(b, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01)
    load_optimizer_state(opt, saved)
    assert all(g["fused"] is True for g in opt.param_groups)  # the saved groups' choice did not win
    assert all(st["step"].dtype == torch.float32 and float(st["step"]) == 3 for st in opt.state.values())
    _set_grads(a, 3)
    _set_grads(b, 3)
    ref.step()
    opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
