"""Encoder variants (``BASE@name=value``): parsing, errors, tokens, fingerprints, extract, train, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import spatialprobe.encoders as E
from spatialprobe.cli import app
from spatialprobe.tokens import mix_cls, mix_mean
from spatialprobe.errors import ConfigError, UnknownNameError
from spatialprobe.metrics import spatial_norm

runner = CliRunner()


def _images(n: int = 2, res: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, res, res), generator=g, dtype=torch.uint8)


def test_parse_canonical_id_resolves_aliases_and_orders_transforms():
    v = E.parse_variant("dinov2@spnorm=1.0@mix_cls=.10")
    assert v.base == "dinov2-vit-b"
    assert v.transforms == (("mix_cls", 0.1), ("spnorm", 1.0))
    assert v.id == "dinov2-vit-b@mix_cls=0.1@spnorm=1"
    assert E.parse_variant(v.id) == v  # the canonical id parses to itself
    assert E.parse_variant("dinov2-vit-b@layer=8").transforms == (("layer", 8),)
    assert isinstance(E.parse_variant("dinov2-vit-b@layer=8").transforms[0][1], int)
    assert E.parse_variant("pixel").id == "pixels" and E.parse_variant("pixel").transforms == ()
    assert E.is_variant("hog@mix_mean=0.25") and not E.is_variant("hog") and not E.is_variant(None)
    s = E.spec("dinov2@mix_cls=0.1")
    base = E.spec("dinov2-vit-b")
    assert s.id == "dinov2-vit-b@mix_cls=0.1" and s.family == base.family and s.weights == base.weights
    assert s.embed_dim == base.embed_dim and not s.in_paper_27


@pytest.mark.parametrize("name, words", [
    ("hog@blur=1", ["unknown transform 'blur'", "mix_cls", "mix_mean", "layer", "spnorm"]),
    ("hog@mix_mean", ["needs a value"]),
    ("hog@mix_mean=abc", ["not a number"]),
    ("hog@mix_mean=1.5", ["[0, 1]"]),
    ("hog@mix_mean=nan", ["[0, 1]"]),
    ("hog@mix_mean=0.1@mix_mean=0.2", ["given twice"]),
    ("dinov2@mix_cls=0.1@mix_mean=0.1", ["cannot be combined"]),
    ("hog@mix_cls=0.1", ["no CLS token", "hog@mix_mean=0.1"]),
    ("hog@layer=3", ["weight-free"]),
    ("dinov2@layer=-1", [">= 0"]),
    ("dinov2@layer=1.5", ["not a number"]),
    ("@mix_cls=0.1", ["no base encoder"]),
])
def test_bad_variants_fail_with_one_clear_error(name, words):
    with pytest.raises(ConfigError) as exc:
        E.parse_variant(name)
    for w in words:
        assert w in str(exc.value)


def test_unknown_base_names_the_closest_matches():
    with pytest.raises(UnknownNameError, match="dinov2-vit-b"):
        E.get("dinov2-vit-bb@mix_cls=0.1", pretrained=False)


def test_mix_mean_variant_tokens_name_and_fingerprint():
    x = _images()
    base, var = E.get("hog"), E.get("hog@mix_mean=0.25")
    assert isinstance(var, E.VariantEncoder)
    assert var.name == "hog@mix_mean=0.25" and var.spec.id == var.name and var.weights_id == base.weights_id
    assert (var.embed_dim, var.grid) == (base.embed_dim, base.grid)
    ob, ov = base(x), var(x)
    torch.testing.assert_close(ov.patch, mix_mean(ob.patch, 0.25))
    assert not torch.allclose(ov.patch, ob.patch)
    fp = var.fingerprint()
    assert fp["base"] == "hog" and fp["transforms"] == [["mix_mean", 0.25]]
    assert E.get("hog@mix_mean=0.5").fingerprint() != fp
    # the preprocess / forward_tokens split gives the same tokens as the call
    torch.testing.assert_close(var.forward_tokens(var.preprocess(x)).patch, ov.patch)


def test_mixed_dinov2_teacher_is_the_official_dinov2mixed_before_spnorm():
    """α·CLS + (1−α)·patch on the final-norm tokens, then the training loop's spatial normalisation."""
    from spatialprobe.train import repa

    x = _images(2, 224)
    base = E.get("dinov2-vit-b", pretrained=False, depth=1)
    var = E.get("dinov2-vit-b@mix_cls=0.1", pretrained=False, depth=1)
    ob, ov = base(x), var(x)
    torch.testing.assert_close(ov.patch, 0.1 * ob.cls[:, None] + 0.9 * ob.patch)
    torch.testing.assert_close(ov.prefix, ob.prefix)  # the CLS itself is passed through
    tgt = repa.teacher_targets(var, x, (16, 16), spnorm=True, gamma=0.6)
    torch.testing.assert_close(tgt, spatial_norm(mix_cls(ob.patch, ob.cls, 0.1), 0.6))
    # any α, not only the official 0.1
    torch.testing.assert_close(E.get("dinov2-vit-b@mix_cls=0.5", pretrained=False, depth=1)(x).patch,
                               0.5 * ob.cls[:, None] + 0.5 * ob.patch)


def test_layer_and_spnorm_variants():
    x = _images(1, 224)
    tapped = E.get("dinov2-vit-b@layer=0", pretrained=False, depth=2)
    direct = E.get("dinov2-vit-b", pretrained=False, depth=2, layers=0)
    out = tapped(x)
    assert out.layer == "block-0" and tapped.layer == 0
    torch.testing.assert_close(out.patch, direct(x).patch)
    with pytest.raises(ConfigError, match="0..1"):
        E.get("dinov2-vit-b@layer=5", pretrained=False, depth=2)
    with pytest.raises(ConfigError, match="pass one of them"):
        E.get("dinov2-vit-b@layer=0", pretrained=False, depth=2, layers=1)
    px = E.get("pixels")(_images())
    torch.testing.assert_close(E.get("pixels@spnorm=0.8")(_images()).patch, spatial_norm(px.patch, 0.8))


def test_extract_keys_variant_stores_by_canonical_id(tmp_path):
    from spatialprobe.extract import extract

    kw = dict(images="builtin:digits", limit=8, resolution=32, shard_size=8, batch_size=4, num_workers=0,
              dtype="fp32", out=str(tmp_path))
    res = extract(encoder="pixels,pixels@mix_mean=0.5", **kw)
    assert [r.encoder for r in res] == ["pixels", "pixels@mix_mean=0.5"]
    a, b = (json.loads((r.path / "manifest.json").read_text()) for r in res)
    assert a["fingerprint"] != b["fingerprint"] and b["encoder"] == "pixels@mix_mean=0.5"
    assert b["fingerprint_inputs"]["encoder"]["extra"]["transforms"] == [["mix_mean", 0.5]]
    assert res[1].path.parent == tmp_path / "pixels@mix_mean=0.5"
    # an alias spelling lands in the same (canonical) store and is a no-op
    (again,) = extract(encoder="pixel@mix_mean=0.50", **kw)
    assert again.path == res[1].path and again.computed_shards == []


def test_cli_ls_weights_and_errors():
    res = runner.invoke(app, ["ls", "encoders", "dinov2-vit-b@mix_cls=0.1", "hog@mix_mean=0.25"], terminal_width=160)
    assert res.exit_code == 0, res.output
    rows = {ln.split()[0]: ln for ln in res.output.splitlines()[1:] if ln.strip() and not ln.endswith("encoders")}
    assert set(rows) == {"dinov2-vit-b@mix_cls=0.1", "hog@mix_mean=0.25"}
    assert "DINOv2" in rows["dinov2-vit-b@mix_cls=0.1"] and "n/a" in rows["hog@mix_mean=0.25"]
    res = runner.invoke(app, ["weights", "--encoder", "dinov2@mix_cls=0.1", "--weights-dir", "/nonexistent"])
    assert res.exit_code == 0 and "dinov2-vit-b@mix_cls=0.1" in res.output
    assert E.spec("dinov2-vit-b").weights.files[0] in res.output  # the base's file
    res = runner.invoke(app, ["ls", "encoders", "hog@blur=2"])
    assert res.exit_code == 2 and "error:" in res.output and "mix_mean" in res.output
    assert "Traceback" not in res.output


def test_cli_train_with_a_variant_teacher(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--model", "jit-tiny", "--method", "irepa", "--teacher", "pixel@mix_mean=0.1",
                              "--images", "builtin:digits", "--steps", "2", "--max-images", "16", "--batch-size", "4",
                              "--workers", "0", "--out", str(out)])
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())
    assert [t["name"] for t in cfg["teachers"]] == ["pixels@mix_mean=0.1"]
    res = runner.invoke(app, ["train", "--model", "jit-tiny", "--method", "irepa", "--teacher", "hog@mix_cls=0.1",
                              "--images", "builtin:digits", "--steps", "2", "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2 and "mix_mean" in res.output
