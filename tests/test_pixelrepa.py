"""PixelREPA for JiT: the official parameter counts, the seeded masking, the adapter at init, the split
forward, the loss, EMA / checkpoint / --resume, DDP on CPU, the CLI and study wiring, and its teacher row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import spatialprobe
from spatialprobe.cli import app
from spatialprobe.errors import ConfigError
from spatialprobe.train import pixelrepa as P
from spatialprobe.train import presets
from spatialprobe.train.loop import load_run, step_generator, step_losses, train
from spatialprobe.train.models import build, jit
from train_stubs import PatchTeacher, digits_source

ROOT = str(Path(spatialprobe.__file__).resolve().parent.parent)
CPU = torch.device("cpu")


def _n(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------ shapes and counts (meta device)

@pytest.mark.parametrize("name,mta,net", [("jit-b/16", 24_026_112, 131_124_480), ("jit-l/16", 41_991_848, 458_878_688),
                                          ("jit-h/16", 64_944_020, 952_515_648)])
def test_parameter_counts_equal_the_official_ones(name, mta, net):
    with torch.device("meta"):
        plain = build(name, num_classes=1000)
        model = build(name, num_classes=1000, mask_token=True)
        full = P.build_adapter(model, 768, depth=2, num_classes=1000, force_head=True)  # as the official module
        used = P.build_adapter(model, 768, depth=2, num_classes=1000)
    assert _n(model) == net  # official counts with the mask token
    assert _n(plain) == net - model.cfg.hidden  # the method off: plain JiT's count, no mask token
    assert not hasattr(plain, "mask_token")
    assert _n(full) == mta and round(_n(full) / 1e6, 2) == {"jit-b/16": 24.03, "jit-l/16": 41.99,
                                                             "jit-h/16": 64.94}[name]
    if name == "jit-b/16":  # 768-wide adapter, 768-d target: the head is not built (1.18M unused upstream)
        assert used.head is None and _n(full) - _n(used) == 1_182_720
    else:
        assert used.head is not None and _n(used) == mta
    assert len(used.blocks) == 2 and used.in_context_len == 32 and used.y_embedder.embedding_table.num_embeddings == 1001


# ------------------------------------------------------------------ masking

def test_mask_rate_of_a_seeded_draw_is_the_ratio_and_reproducible():
    m = P.draw_mask(2000, 256, 0.2, step_generator(0, 7, 0, CPU))
    assert m.dtype == torch.bool and m.shape == (2000, 256)
    assert abs(m.float().mean().item() - 0.2) < 0.01  # 512k tokens
    assert torch.equal(m, P.draw_mask(2000, 256, 0.2, step_generator(0, 7, 0, CPU)))  # same (seed, step, rank)
    assert not torch.equal(m, P.draw_mask(2000, 256, 0.2, step_generator(0, 8, 0, CPU)))
    assert not torch.equal(m, P.draw_mask(2000, 256, 0.2, step_generator(0, 7, 1, CPU)))
    assert not P.draw_mask(4, 16, 0.0, step_generator(0, 0, 0, CPU)).any()


# ------------------------------------------------------------------ adapter and split forward

def test_b_adapter_maps_its_input_to_itself_at_init():
    torch.manual_seed(0)
    net = build("jit-b/16", num_classes=1000, mask_token=True)
    ad = P.build_adapter(net, 768, depth=2, num_classes=1000)
    assert ad.head is None  # equal widths: the adapter output is its last block's patch tokens
    x = torch.randn(2, 256, 768)
    out = ad(x, torch.rand(2), torch.tensor([3, 1000]))
    assert torch.equal(out, x)  # zero adaLN gates: both blocks are the identity
    assert ad.blocks[0].adaLN_modulation[-1].weight.abs().sum() == 0
    assert abs(net.mask_token.std().item() - 0.02) < 0.005


def _plain_forward(net, z, t, y):
    """JiT's forward written as one loop (the pre-split code), as an independent reference."""
    cfg = net.cfg
    x = net.x_embedder(z) + net.pos_embed
    y_emb = net.y_embedder(y)
    c = net.t_embedder(t) + y_emb
    n_ctx, zs = 0, []
    for i, blk in enumerate(net.blocks):
        if i == cfg.in_context_start:
            x = torch.cat([y_emb.unsqueeze(1).expand(-1, cfg.in_context_len, -1) + net.in_context_posemb, x], 1)
            n_ctx = cfg.in_context_len
        x = blk(x, c, (net.rope_ctx_cos, net.rope_ctx_sin) if n_ctx else (net.rope_cos, net.rope_sin))
        if i + 1 == cfg.encoder_depth and len(net.projectors):
            zs = [p(x[:, n_ctx:]) for p in net.projectors]
    return net.unpatchify(net.final_layer(x[:, n_ctx:], c)), zs


def _perturb(m):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():  # leave the zero-init regime so every path matters
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("encoder_depth", [1, 2, 3])
def test_split_forward_equals_plain_jit_forward(encoder_depth):
    torch.manual_seed(0)
    net = build("jit-tiny", num_classes=10, z_dims=[16], projector="conv", encoder_depth=encoder_depth,
                mask_token=True)
    _perturb(net)
    z, t, y = torch.randn(3, 3, 32, 32), torch.rand(3), torch.tensor([1, 2, 10])
    want, zs_want = _plain_forward(net, z, t, y)
    tokens, c, y_emb, zs = net.forward_encoder(z, t, y)
    assert tokens.shape == (3, 64, 64) and net.split_at == net.cfg.in_context_start == 2
    got, zs_got = net.forward_decoder(tokens, c, y_emb, zs)
    assert torch.equal(got, want) and torch.equal(net(z, t, y)[0], want)
    assert len(zs_got) == 1 and torch.equal(zs_got[0], zs_want[0])


def test_pixelrepa_net_denoises_exactly_as_jit_and_masks_only_the_adapter_input():
    torch.manual_seed(0)
    net = build("jit-tiny", num_classes=10, mask_token=True)
    _perturb(net)
    ad = P.build_adapter(net, 64, depth=2, num_classes=10)
    pix = P.PixelREPANet(net, ad, 0.2)
    z, t, y = torch.randn(3, 3, 32, 32), torch.rand(3), torch.tensor([1, 2, 10])
    x_hat, (aligned,) = pix(z, t, y, mask_generator=step_generator(0, 0, 0, CPU))
    assert torch.equal(x_hat, net(z, t, y)[0])  # the denoising path sees the unmasked tokens
    tokens = net.forward_encoder(z, t, y)[0]
    mask = P.draw_mask(3, 64, 0.2, step_generator(0, 0, 0, CPU))
    want = ad(torch.where(mask[..., None], net.mask_token, tokens), t, y)
    assert torch.equal(aligned, want) and 0 < mask.sum() < mask.numel()
    # gradients reach the mask token, the adapter and the encoder blocks through the alignment loss
    P.alignment_loss([aligned], [torch.randn(3, 64, 64)]).backward()
    assert net.mask_token.grad.abs().sum() > 0 and net.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in ad.parameters())
    assert net.blocks[-1].attn.qkv.weight.grad is None  # the decoder half is not on the alignment path


def test_total_is_denoise_plus_point_one_times_one_minus_cos():
    torch.manual_seed(0)
    teacher = PatchTeacher(16, input_res=64, patch=8)
    net = build("jit-tiny", num_classes=10, mask_token=True)
    pix = P.PixelREPANet(net, P.build_adapter(net, 16, depth=2, num_classes=10), 0.2)
    imgs = digits_source(64, 8).images
    x = F.interpolate(imgs.float(), size=32, mode="area") / 127.5 - 1
    y = torch.arange(8) % 10
    out = step_losses(pix, "jit", x, y, teachers=[teacher], teacher_images=imgs, grid=net.grid, spnorm=False,
                      gamma=0.8, proj_coeff=0.1, generator=step_generator(0, 0, 0, CPU), null_class=10,
                      label_dropout=0.1, method="pixelrepa")
    # by hand: the same draws in the same order (t, noise, label dropout, then the mask)
    g = step_generator(0, 0, 0, CPU)
    denoise, zs = jit.training_loss(pix, x, y, g, 0.1, 10, mask_generator=g)
    tgt = teacher(imgs).patch  # 8x8 grid at 64 px = the student grid
    align = (1 - F.cosine_similarity(zs[0], tgt, dim=-1)).mean()
    assert out["denoise"].item() == pytest.approx(denoise.item(), rel=1e-6)
    assert out["proj"].item() == pytest.approx(align.item(), rel=1e-5) and 0 < out["proj"].item() < 2
    assert out["loss"].item() == pytest.approx(out["denoise"].item() + 0.1 * out["proj"].item(), rel=1e-6)


# ------------------------------------------------------------------ training loop: EMA, checkpoint, resume

class _Killed(Exception):
    pass


def test_ema_excludes_the_adapter_and_resume_after_a_kill_is_bit_identical(tmp_path):
    src = digits_source(64, 96)
    kw = dict(model="jit-tiny", method="pixelrepa", teacher="stub", images="x", steps=6, ckpt_every=3, log_every=1,
              workers=0, teacher_resolution=64, batch_size=8, proj_dropout=0.2)
    t = PatchTeacher(16, input_res=64, patch=8)
    full = train(out=str(tmp_path / "full"), source=src, teachers=[t], **kw)
    a = torch.load(full.checkpoint, weights_only=True)
    cfg = a["config"]
    assert (cfg["method"], cfg["mask_ratio"], cfg["adapter_depth"], cfg["proj_coeff"], cfg["projector"],
            cfg["encoder_depth"]) == ("pixelrepa", 0.2, 2, 0.1, "mta", 2)
    assert a["model_args"]["mask_token"] is True and a["model_args"]["z_dims"] == []
    assert a["model_args"]["proj_drop"] == 0.2
    # the EMAs hold exactly the JiT net (mask token included), never an adapter weight
    assert "mask_token" in a["model"] and a["adapter"]
    for ema in a["emas"]:
        assert set(ema) == set(a["model"])
        assert not set(ema) & {f"adapter.{k}" for k in a["adapter"]} and not any("adapter" in k for k in ema)
    # one optimiser over JiT + adapter: its state covers both
    n_jit = sum(1 for k, v in build("jit-tiny", **a["model_args"]).named_parameters())
    assert len(a["opt"]["state"]) == n_jit + len(a["adapter"])
    # the disk estimate counts the adapter and its AdamW state (to AdamW's per-parameter step counters)
    from spatialprobe.train import budget

    written = sum(v.numel() * v.element_size() for d in [a["model"], *a["emas"], a["adapter"], *a["opt"]["state"].values()]
                  for v in d.values())
    extra = budget.adapter_bytes("jit-tiny", out_dim=16, depth=2, **a["model_args"])
    assert extra == sum(v.numel() * v.element_size() for v in a["adapter"].values())
    est = budget.checkpoint_bytes("jit-tiny", n_emas=2, extra_bytes=extra, **a["model_args"]) - budget.CHECKPOINT_OVERHEAD
    assert abs(est - written) < 0.001 * written
    rec = _log(full.log_path)
    for r in rec:
        assert r["loss"] == pytest.approx(r["denoise_loss"] + 0.1 * r["proj_loss"], rel=1e-5, abs=1e-6)

    def kill(step, rec):
        if step == 5:  # after the step-3 checkpoint, before the step-6 one
            raise _Killed

    with pytest.raises(_Killed):
        train(out=str(tmp_path / "cut"), source=src, teachers=[t], callback=kill, **kw)
    with pytest.raises(ConfigError, match="mask_ratio"):  # a resume may not change the recipe
        train(out=str(tmp_path / "cut"), source=src, teachers=[t], resume=True, **{**kw, "mask_ratio": 0.3})
    resumed = train(out=str(tmp_path / "cut"), source=src, teachers=[t], resume=True, **kw)
    b = torch.load(resumed.checkpoint, weights_only=True)
    assert a["step"] == b["step"] == 6
    for part in ("model", "adapter"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    for ea, eb in zip(a["emas"], b["emas"]):
        assert all(torch.equal(ea[k], eb[k]) for k in ea)
    for i, st in a["opt"]["state"].items():
        assert all(torch.equal(st[k], b["opt"]["state"][i][k]) for k in st)
    assert [r["loss"] for r in _log(resumed.log_path)] == [r["loss"] for r in rec]

    # sampling rebuilds the JiT net alone (mask token included), never the adapter
    model, state = load_run(tmp_path / "full", weights="ema")
    assert type(model).__name__ == "JiT" and hasattr(model, "mask_token") and "opt" not in state
    assert not any(isinstance(m, P.MaskedTransformerAdapter) for m in model.modules())


def test_two_rank_gloo_pixelrepa_run_trains_and_resumes(tmp_path):
    import shutil

    def run(out, *extra):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_", "TORCHELASTIC"))}
        env.update(OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "spatialprobe.cli", "train", "--model", "jit-tiny", "--method", "pixelrepa", "--teacher",
               "pixels", "--images", "builtin:digits", "--max-images", "32", "--batch-size", "8", "--workers", "0",
               "--device", "cpu", "--steps", "4", "--ckpt-every", "2", "--log-every", "1", "--out", str(out), *extra]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
        assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
        return r

    full = tmp_path / "run"
    r = run(full)
    assert r.stdout.count("step 4: loss") == 1 and "unused" not in r.stderr.lower()
    rec = _log(full / "log.jsonl")
    assert [x["step"] for x in rec] == [1, 2, 3, 4] and all(x["proj_loss"] is not None for x in rec)
    a = torch.load(full / "checkpoints" / "0000004.pt", weights_only=True)
    assert a["adapter"] and a["config"]["method"] == "pixelrepa"

    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    (cut / "checkpoints" / "0000004.pt").unlink()
    (cut / "log.jsonl").write_text("".join(ln + "\n" for ln in (cut / "log.jsonl").read_text().splitlines()[:2]))
    r = run(cut, "--resume")
    assert r.stderr.count("resumed") == 1
    b = torch.load(cut / "checkpoints" / "0000004.pt", weights_only=True)
    for part in ("model", "adapter"):
        assert all(torch.equal(v, b[part][k]) for k, v in a[part].items()), part
    assert [x["loss"] for x in _log(cut / "log.jsonl")] == [x["loss"] for x in rec]


# ------------------------------------------------------------------ configuration errors, CLI, presets, study

def test_pixelrepa_on_sit_is_one_clear_cli_error(tmp_path):
    res = CliRunner().invoke(app, ["train", "--method", "pixelrepa", "--model", "sit-b/2", "--teacher", "hog",
                                   "--out", str(tmp_path / "x")])
    assert res.exit_code != 0
    msg = res.output
    assert "pixelrepa" in msg and "jit" in msg and "Traceback" not in msg, msg
    assert msg.count("Error") <= 1 and not (tmp_path / "x").exists()


@pytest.mark.parametrize("over,match", [
    (dict(method="irepa", mask_ratio=0.3), "mask_ratio applies to --method pixelrepa"),
    (dict(adapter_depth=3, method="repa"), "adapter_depth applies"),
    (dict(projector="conv"), "--projector"),
    (dict(spnorm=True), "--spnorm"),
    (dict(teacher="hog,pixels"), "one teacher"),
    (dict(encoder_depth=3), "encoder blocks"),
    (dict(mask_ratio=1.0), "mask_ratio"),
    (dict(adapter_depth=0), "adapter_depth"),
    (dict(model="sit-tiny", method="repa", proj_dropout=0.2), "JiT models only"),
])
def test_bad_combinations_are_config_errors(over, match):
    from spatialprobe.train.config import TrainConfig, finalize

    kw = dict(model="jit-tiny", method="pixelrepa", teacher="hog", **{})
    kw.update(over)
    with pytest.raises(ConfigError, match=match):
        finalize(TrainConfig(**kw))


def test_preset_listed_and_overridable():
    from spatialprobe.train.config import TrainConfig, finalize

    out = CliRunner().invoke(app, ["ls", "presets"]).output
    row = next(ln for ln in out.splitlines() if ln.startswith("pixelrepa"))
    assert "jit" in row and "0.1" in row and "mask ratio 0.2" in row and "depth-2" in row
    pre = presets.get("pixelrepa", "jit")
    assert (pre.mask_ratio, pre.adapter_depth, pre.proj_coeff, pre.spnorm) == (0.2, 2, 0.1, False)
    c = finalize(TrainConfig(model="jit-b/16", method="pixelrepa", teacher="dinov2-vit-b-p16", mask_ratio=0.3,
                             adapter_depth=4, proj_coeff=0.5, proj_dropout=0.2))
    assert (c.mask_ratio, c.adapter_depth, c.proj_coeff, c.proj_dropout, c.encoder_depth) == (0.3, 4, 0.5, 0.2, 4)
    assert finalize(TrainConfig(method="irepa", teacher="hog")).mask_ratio is None  # other methods: untouched
    help_text = CliRunner().invoke(app, ["train", "--help"], terminal_width=200).output
    for opt in ("--mask-ratio", "--adapter-depth", "--proj-dropout"):
        assert opt in help_text


def test_study_accepts_three_methods_and_adds_the_repa_minus_pixelrepa_column():
    from spatialprobe.study import parse_spec
    from spatialprobe.study.plan import correlate_targets

    spec = parse_spec({"encoders": ["hog"], "training": {"methods": ["repa", "irepa", "pixelrepa"]}})
    ys = correlate_targets(spec)
    q = spec.quality_col
    assert ys == [f"{q}_repa", f"{q}_irepa", f"{q}_pixelrepa", f"{q}_repa_minus_irepa", f"{q}_repa_minus_pixelrepa"]
    with pytest.raises(ConfigError, match="training.methods 'pixelrepa'.*jit"):
        parse_spec({"encoders": ["hog"], "training": {"model": "sit-tiny", "methods": ["repa", "pixelrepa"]}})


# ------------------------------------------------------------------ the PixelREPA teacher

def test_teacher_row_resamples_patch_kernel_and_position_embedding_from_the_release_file(tmp_path, monkeypatch):
    import timm
    from timm.layers import resample_abs_pos_embed, resample_patch_embed

    import spatialprobe.encoders as E

    for var in ("HF_HOME", "HF_HUB_CACHE", "TORCH_HOME"):
        monkeypatch.setenv(var, str(tmp_path / "cache"))
    monkeypatch.delenv("SPATIALPROBE_WEIGHTS", raising=False)
    s = E.spec("pixelrepa-dinov2")
    assert (s.id, s.input_res, s.patch, s.grid, s.embed_dim) == ("dinov2-vit-b-p16", 256, 16, (16, 16), 768)
    assert s.weights.files == E.spec("dinov2-vit-b").weights.files  # the same release file as iREPA's DINOv2-B
    torch.manual_seed(0)  # a depth-1 stand-in for dinov2_vitb14_pretrain.pth: 14-px kernel, 37x37 positions
    release = timm.create_model("vit_base_patch14_dinov2", depth=1, img_size=518, num_classes=0).state_dict()
    release = {**release, "mask_token": torch.zeros(1, 768)}  # the torch hub layout
    torch.save(release, tmp_path / "dinov2_vitb14_pretrain.pth")
    enc = E.get("dinov2-vit-b-p16", weights_dir=str(tmp_path), depth=1)
    kernel = resample_patch_embed(release["patch_embed.proj.weight"], [16, 16], interpolation="bicubic",
                                  antialias=True)
    pos = resample_abs_pos_embed(release["pos_embed"], [16, 16], num_prefix_tokens=1, interpolation="bicubic",
                                 antialias=True)
    assert torch.equal(enc.model.patch_embed.proj.weight, kernel) and torch.equal(enc.model.pos_embed, pos)
    out = enc(torch.zeros(1, 3, 256, 256, dtype=torch.uint8))
    assert out.patch.shape == (1, 256, 768) and out.grid == (16, 16)
