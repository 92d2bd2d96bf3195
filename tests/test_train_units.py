"""Unit tests of the REPA/iREPA pieces, presets and the SiT/JiT backbones (golden values are hand-derived)."""

import math

import pytest
import torch

from spatialprobe.errors import ConfigError, UnknownNameError
from spatialprobe.train import models, presets, repa
from spatialprobe.train.models import jit, sit
from spatialprobe.train.models.common import drop_labels, sincos_1d


# ------------------------------------------------------------------ projectors


def test_conv_k1_equals_linear_with_same_weights():
    torch.manual_seed(0)
    conv = repa.build_projector("conv", 12, 7, kernel_size=1, grid=(3, 4))
    lin = repa.build_projector("linear", 12, 7)
    with torch.no_grad():
        lin.weight.copy_(conv.conv.weight[:, :, 0, 0])
        lin.bias.copy_(conv.conv.bias)
    x = torch.randn(2, 12, 12)
    torch.testing.assert_close(conv(x), lin(x), rtol=1e-5, atol=1e-6)


def test_conv_k3_uses_the_grid_neighbourhood():
    # a 3x3 kernel that copies the left neighbour's channel 0: output at (r, c) = input at (r, c-1), 0 at c=0
    conv = repa.build_projector("conv", 1, 1, kernel_size=3, grid=(2, 3))
    with torch.no_grad():
        conv.conv.weight.zero_()
        conv.conv.weight[0, 0, 1, 0] = 1.0
        conv.conv.bias.zero_()
    x = torch.arange(6, dtype=torch.float32).view(1, 6, 1)  # grid [[0,1,2],[3,4,5]]
    assert conv(x).flatten().tolist() == [0, 0, 1, 0, 3, 4]


@pytest.mark.parametrize("kind,k", [("mlp", 3), ("linear", 3), ("conv", 1), ("conv", 3), ("conv", 5)])
def test_projector_shapes(kind, k):
    p = repa.build_projector(kind, 16, 24, kernel_size=k, grid=(4, 4))
    assert p(torch.randn(3, 16, 16)).shape == (3, 16, 24)


def test_mlp_projector_is_h_2048_2048_d_with_silu():
    p = repa.build_projector("mlp", 16, 24)
    lins = [m for m in p if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lins] == [(16, 2048), (2048, 2048), (2048, 24)]
    assert sum(isinstance(m, torch.nn.SiLU) for m in p) == 2


def test_projector_errors():
    with pytest.raises(ConfigError):
        repa.build_projector("conv", 4, 4, kernel_size=2, grid=(2, 2))
    with pytest.raises(ConfigError):
        repa.build_projector("attention", 4, 4)
    with pytest.raises(ConfigError):
        repa.build_projector("conv", 4, 4)


# ------------------------------------------------------------------ spatial norm


def test_spatial_norm_hand_worked():
    # T = 3 tokens with values 1, 2, 3 in one channel: mean 2, unbiased std 1
    x = torch.tensor([[[1.0], [2.0], [3.0]]])
    torch.testing.assert_close(repa.spatial_norm(x, 1.0), torch.tensor([[[-1.0], [0.0], [1.0]]]) / (1 + 1e-6))
    # γ = 0.5: x − 1 = [0, 1, 2], std still 1
    torch.testing.assert_close(repa.spatial_norm(x, 0.5), torch.tensor([[[0.0], [1.0], [2.0]]]) / (1 + 1e-6))


def test_spatial_norm_invariants():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 64, 8, generator=g) * 3 + torch.randn(4, 1, 8, generator=g) * 5
    y = repa.spatial_norm(x, 1.0)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.mean(1), torch.zeros(4, 8), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(1), torch.ones(4, 8), atol=1e-5, rtol=0)
    # γ < 1 keeps (1 − γ) of the mean: mean_T y = (1 − γ)·mean_T x / std_T x
    y6 = repa.spatial_norm(x, 0.6)
    torch.testing.assert_close(y6.mean(1), 0.4 * x.mean(1) / (x.std(1) + 1e-6), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y6.std(1), torch.ones(4, 8), atol=1e-5, rtol=0)
    # per image and per channel: scaling one image's channel does not change its normalised tokens
    x2 = x.clone()
    x2[0, :, 3] *= 7.0
    torch.testing.assert_close(repa.spatial_norm(x2, 0.8), repa.spatial_norm(x, 0.8), atol=1e-5, rtol=1e-5)
    # bf16 input is normalised in fp32
    assert repa.spatial_norm(x.bfloat16(), 0.8).dtype == torch.float32


def test_resample_tokens_area_average():
    x = torch.arange(16, dtype=torch.float32).view(1, 16, 1)  # 4x4 grid
    y = repa.resample_tokens(x, (4, 4), (2, 2)).flatten().tolist()
    assert y == [2.5, 4.5, 10.5, 12.5]  # means of the 2x2 blocks
    assert repa.resample_tokens(x, (4, 4), (4, 4)) is x
    assert repa.resample_tokens(torch.randn(2, 9, 5), (3, 3), (4, 4)).shape == (2, 16, 5)


# ------------------------------------------------------------------ loss


def test_projection_loss_values():
    a = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    assert repa.projection_loss([a], [a * 3]).item() == pytest.approx(-1.0)
    assert repa.projection_loss([a], [-a]).item() == pytest.approx(1.0)
    b = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])  # orthogonal token by token
    assert repa.projection_loss([a], [b]).item() == pytest.approx(0.0)
    # mixed: token 1 cos 1, token 2 cos 1/sqrt(2) -> −(1 + 0.7071)/2; two teachers are averaged
    c = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    want = -(1 + 1 / math.sqrt(2)) / 2
    assert repa.projection_loss([a], [c]).item() == pytest.approx(want, rel=1e-6)
    assert repa.projection_loss([a, a], [c, a]).item() == pytest.approx((want - 1) / 2, rel=1e-6)


def test_total_loss():
    assert repa.total_loss(torch.tensor(2.0), torch.tensor(-0.5), 0.5).item() == pytest.approx(1.75)
    assert repa.total_loss(torch.tensor(2.0), None, 0.5).item() == 2.0


# ------------------------------------------------------------------ presets


def test_presets_match_the_official_defaults():
    p = presets.get("irepa", "sit")
    assert (p.projector, p.kernel_size, p.spnorm, p.gamma, p.proj_coeff) == ("conv", 3, True, 0.6, 1.0)
    p = presets.get("irepa", "jit")
    assert (p.projector, p.kernel_size, p.spnorm, p.gamma, p.proj_coeff) == ("conv", 3, True, 0.8, 0.5)
    p = presets.get("irepa-official-ldm", "sit")
    assert (p.projector, p.kernel_size, p.gamma, p.proj_coeff) == ("conv", 1, 0.6, 1.0)
    for fam in ("sit", "jit"):
        r = presets.get("repa", fam)
        assert (r.projector, r.spnorm, r.proj_coeff) == ("mlp", False, 0.5)
        assert presets.get("conv-only", fam).spnorm is False and presets.get("conv-only", fam).projector == "conv"
        assert presets.get("norm-only", fam).spnorm is True and presets.get("norm-only", fam).projector == "mlp"
        assert presets.get("none", fam).align is False
    with pytest.raises(UnknownNameError, match="irepa"):
        presets.get("irepaa", "sit")
    assert "irepa-official-ldm" in presets.format_table()


def test_config_precedence_defaults_file_cli(tmp_path):
    from spatialprobe.config import resolve
    from spatialprobe.train.config import TrainConfig, finalize

    f = tmp_path / "c.yaml"
    f.write_text("method: irepa\nmodel: sit-xl/2\nproj_coeff: 1.0\nteacher: hog\nsteps: 5\n")
    c = finalize(resolve(TrainConfig, f, proj_coeff=0.5))  # the flag wins over the file (official code: the file)
    assert c.proj_coeff == 0.5 and c.steps == 5 and c.gamma == 0.6 and c.kernel_size == 3
    c = finalize(resolve(TrainConfig, f))
    assert c.proj_coeff == 1.0 and c.lr == 1e-4 and c.grad_clip == 1.0
    with pytest.raises(ConfigError, match="teacher"):
        finalize(TrainConfig(model="jit-tiny", method="irepa"))


# ------------------------------------------------------------------ models


@pytest.mark.parametrize("name,published_m", [("sit-b/2", 130), ("sit-xl/2", 675), ("jit-b/16", 131),
                                              ("jit-l/16", 459), ("jit-h/16", 953)])
def test_full_size_parameter_counts(name, published_m):
    with torch.device("meta"):
        m = models.build(name)
    n = sum(p.numel() for p in m.parameters()) / 1e6
    assert abs(n - published_m) / published_m < 0.01


def test_model_names():
    assert models.canonical("SiT-XL/2") == "sit-xl/2" and models.canonical("jit_b-16") == "jit-b/16"
    with pytest.raises(UnknownNameError, match="Did you mean"):
        models.canonical("sit-xxl/2")


def test_sincos_first_position_is_sin0_cos1():
    e = sincos_1d(8, torch.tensor([0.0, 1.0]))
    assert e[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    # position 1, first frequency ω_0 = 1: sin(1), cos(1)
    assert e[1, 0].item() == pytest.approx(math.sin(1.0)) and e[1, 4].item() == pytest.approx(math.cos(1.0))


@pytest.mark.parametrize("name", ["sit-tiny", "jit-tiny"])
def test_adaln_zero_init_outputs_zero_and_projects_at_encoder_depth(name):
    m = models.build(name, z_dims=[24, 8], projector="conv", num_classes=10)
    c = m.cfg
    x = torch.randn(2, c.in_channels, c.input_size, c.input_size)
    out, zs = m(x, torch.rand(2), torch.tensor([3, 10]))  # 10 = the null class
    assert out.shape == x.shape and torch.count_nonzero(out) == 0  # zero-initialised final layer
    t = c.grid[0] * c.grid[1]
    assert [z.shape for z in zs] == [(2, t, 24), (2, t, 8)]


def test_sit_projection_taps_the_hidden_state_after_block_k():
    m = models.build("sit-tiny", z_dims=[64], projector="linear", num_classes=10, encoder_depth=1)
    with torch.no_grad():
        m.projectors[0].weight.copy_(torch.eye(64))
        m.projectors[0].bias.zero_()
    seen = {}
    m.blocks[0].register_forward_hook(lambda mod, inp, out: seen.setdefault("h", out))
    _, zs = m(torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([0, 1]))
    torch.testing.assert_close(zs[0], seen["h"])


def test_jit_aligns_patch_tokens_only_after_in_context_start():
    # encoder_depth 3 > in_context_start 2: 4 in-context tokens are in the sequence and must be dropped
    m = models.build("jit-tiny", z_dims=[64], projector="linear", num_classes=10, encoder_depth=3)
    with torch.no_grad():
        m.projectors[0].weight.copy_(torch.eye(64))
        m.projectors[0].bias.zero_()
    seen = {}
    m.blocks[2].register_forward_hook(lambda mod, inp, out: seen.setdefault("h", out))
    _, zs = m(torch.randn(2, 3, 32, 32), torch.rand(2), torch.tensor([0, 1]))
    assert seen["h"].shape[1] == 4 + 64
    torch.testing.assert_close(zs[0], seen["h"][:, 4:])


def test_rope_is_relative_and_identity_on_in_context_tokens():
    hd = 16
    cos, sin = jit.rope_tables(hd, (4, 4), n_prefix=2)
    assert torch.all(cos[:2] == 1) and torch.all(sin[:2] == 0)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(hd, generator=g), torch.randn(hd, generator=g)

    def dot(i, j):  # positions as grid indices (row, col) -> token index 2 + r*4 + c
        a, b = 2 + i[0] * 4 + i[1], 2 + j[0] * 4 + j[1]
        return (jit.apply_rope(q, cos[a], sin[a]) * jit.apply_rope(k, cos[b], sin[b])).sum()

    # the score depends only on the offset: (0,0)-(1,2) equals (2,1)-(3,3)
    assert dot((0, 0), (1, 2)).item() == pytest.approx(dot((2, 1), (3, 3)).item(), abs=1e-5)
    assert dot((0, 0), (1, 2)).item() != pytest.approx(dot((0, 0), (2, 1)).item(), abs=1e-3)
    # rotation preserves norms
    assert jit.apply_rope(q, cos[7], sin[7]).norm().item() == pytest.approx(q.norm().item(), rel=1e-5)
    with pytest.raises(ValueError):
        jit.rope_tables(6, (2, 2))


def test_jit_swiglu_hidden_sizes():
    for name, hidden in [("jit-b/16", 2048), ("jit-l/16", 2730), ("jit-h/16", 3413)]:
        with torch.device("meta"):
            m = models.build(name)
        assert m.blocks[0].mlp.w3.in_features == hidden


def test_label_dropout_rate_and_null_class():
    g = torch.Generator().manual_seed(0)
    y = drop_labels(torch.zeros(20000, dtype=torch.long), 0.1, 1000, g)
    assert set(y.unique().tolist()) == {0, 1000}
    assert abs((y == 1000).float().mean().item() - 0.1) < 0.01


def test_sit_loss_is_linear_path_v_mse():
    # a net that returns exactly ε − x makes the loss zero; returning 0 gives E|ε − x|²
    x = torch.randn(4, 4, 8, 8)

    class Oracle(torch.nn.Module):
        def forward(self, x_t, t, y):
            tb = t.view(-1, 1, 1, 1)
            eps = (x_t - (1 - tb) * x) / tb
            return eps - x, []

    g = torch.Generator().manual_seed(3)
    loss, _ = sit.training_loss(Oracle(), x, torch.zeros(4, dtype=torch.long), g, null_class=10)
    assert loss.item() < 1e-8


def test_jit_loss_is_v_loss_of_x_prediction():
    x = torch.rand(4, 3, 8, 8) * 2 - 1

    class Perfect(torch.nn.Module):
        def forward(self, z, t, y):
            return x, []

    class Zero(torch.nn.Module):
        def forward(self, z, t, y):
            self.z, self.t = z, t
            return torch.zeros_like(z), []

    g = torch.Generator().manual_seed(0)
    assert jit.training_loss(Perfect(), x, torch.zeros(4, dtype=torch.long), g, null_class=10)[0].item() < 1e-10
    zero = Zero()
    loss, _ = jit.training_loss(zero, x, torch.zeros(4, dtype=torch.long), torch.Generator().manual_seed(0),
                                null_class=10)
    # x̂ = 0: v̂ − v = −x/max(1−t, 0.05) per sample
    d = (1 - zero.t).clamp_min(0.05).view(-1, 1, 1, 1)
    assert loss.item() == pytest.approx(((x / d) ** 2).mean(dim=(1, 2, 3)).mean().item(), rel=1e-5)
    # the objective draws logit-normal t: median sigmoid(−0.8), and logit(t) has std 0.8
    big = Zero()
    jit.training_loss(big, torch.zeros(20000, 3, 1, 1), torch.zeros(20000, dtype=torch.long),
                      torch.Generator().manual_seed(1), null_class=10)
    assert big.t.median().item() == pytest.approx(1 / (1 + math.exp(0.8)), abs=0.01)
    assert torch.logit(big.t).std().item() == pytest.approx(0.8, abs=0.02)
