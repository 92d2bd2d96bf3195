"""Batched linear probe: accuracy on separable / shuffled data, closed-form first step, batched = separate
heads, determinism, label sources and their errors, the store path and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spatialprobe.errors import ConfigError, DataError, StoreError
from spatialprobe.probe import ProbeConfig, fit_heads, load_labels, probe, stratified_split

SMALL = dict(lrs=(1e-3, 1e-2, 1e-1), weight_decays=(0.0,), epochs=5, batch_size=64, progress=False, device="cpu")


def blobs(n=400, d=16, c=4, sep=6.0, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(c, d)) * sep
    y = np.arange(n) % c
    x = means[y] + rng.normal(size=(n, d))
    return x.astype(np.float32), y


def test_separable_data_is_learned_perfectly():
    x, y = blobs()
    tr, va = stratified_split(y, 0.25, seed=0)
    res = fit_heads(x[tr], y[tr], x[va], y[va], **SMALL)
    assert res.best_val_acc >= 0.99
    assert len(res.grid) == 3 and res.n_classes == 4
    assert 0.0 <= min(r["val_acc"] for r in res.grid) <= res.best_val_acc <= 1.0


def test_shuffled_labels_give_chance():
    x, _ = blobs(n=800, c=4)
    y = np.random.default_rng(1).integers(0, 4, size=800)  # independent of x
    tr, va = stratified_split(y, 0.3, seed=0)
    res = fit_heads(x[tr], y[tr], x[va], y[va], **SMALL)
    assert res.best_val_acc < 0.36  # chance 0.25; a 3-head max over 240 val samples stays well below


def test_first_step_matches_closed_form():
    # one full-batch step from zero weights: softmax(0) = 1/C, so grad W = X^T (1/C - onehot(y)) / N
    x, y = blobs(n=40, d=5, c=3)
    lr = 0.05
    res = fit_heads(x, y, x, y, lrs=(lr,), weight_decays=(0.0,), epochs=1, batch_size=40, normalize="none",
                    progress=False, device="cpu")
    onehot = np.eye(3)[y]
    expected_w = -lr * x.astype(np.float64).T @ (1 / 3 - onehot) / 40
    expected_b = -lr * (1 / 3 - onehot).mean(0)
    np.testing.assert_allclose(res.weight.numpy(), expected_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.bias.numpy(), expected_b, rtol=1e-5, atol=1e-7)


def test_batched_heads_equal_separately_trained_heads():
    x, y = blobs(n=300, d=12, c=3, sep=1.0)
    tr, va = stratified_split(y, 0.3, seed=0)
    kw = dict(epochs=3, batch_size=32, seed=3, progress=False, device="cpu")
    grid = fit_heads(x[tr], y[tr], x[va], y[va], lrs=(1e-3, 3e-2), weight_decays=(0.0, 1e-2), **kw).grid
    for row in grid:
        one = fit_heads(x[tr], y[tr], x[va], y[va], lrs=(row["lr"],), weight_decays=(row["weight_decay"],), **kw)
        assert one.grid[0]["val_acc"] == pytest.approx(row["val_acc"], abs=1e-6)
        assert one.grid[0]["train_acc"] == pytest.approx(row["train_acc"], abs=1e-6)


def test_deterministic_with_a_seed():
    x, y = blobs(n=300, sep=0.7)
    a = fit_heads(x[:200], y[:200], x[200:], y[200:], seed=7, **SMALL)
    b = fit_heads(x[:200], y[:200], x[200:], y[200:], seed=7, **SMALL)
    assert a.grid == b.grid
    assert torch.equal(a.weight, b.weight)


def test_stratified_split_is_per_class_and_seeded():
    y = np.repeat([0, 1, 2], [10, 20, 5])
    tr, va = stratified_split(y, 0.2, seed=0)
    assert sorted(np.bincount(y[va]).tolist()) == [1, 2, 4]
    assert set(tr) | set(va) == set(range(len(y))) and not set(tr) & set(va)
    np.testing.assert_array_equal(va, stratified_split(y, 0.2, seed=0)[1])


def test_bad_inputs_raise_clear_errors():
    x, y = blobs(n=40)
    with pytest.raises(DataError, match="one class"):
        fit_heads(x, np.zeros(40, dtype=int), x, y, **SMALL)
    with pytest.raises(DataError, match="NaN"):
        bad = x.copy()
        bad[0, 0] = np.nan
        fit_heads(bad, y, x, y, **SMALL)
    with pytest.raises(ConfigError, match="precision"):
        fit_heads(x, y, x, y, precision="fp8", **SMALL)
    with pytest.raises(ConfigError, match="pool"):
        ProbeConfig(pool="max")


# ------------------------------------------------------------------------------ store + labels


@pytest.fixture()
def store(tmp_path):
    from spatialprobe.store import write_store

    x, y = blobs(n=120, d=8, c=3)
    ids = [f"img{i:03d}" for i in range(120)]
    path = write_store(tmp_path / "store", ids, pooled=torch.from_numpy(x), grid=(1, 1), encoder="toy")
    return path, ids, y


def write_csv(path, ids, labels, header=True):
    lines = (["id,label"] if header else []) + [f"{i},{l}" for i, l in zip(ids, labels)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_probe_store_with_csv_labels_writes_result(store, tmp_path):
    path, ids, y = store
    csv = write_csv(tmp_path / "labels.csv", ids, y)
    res = probe(features=str(path), labels=str(csv), out=str(tmp_path / "P"), lrs=(1e-2, 1e-1),
                weight_decays=(0.0,), min_steps=50, device="cpu")
    assert res.best_val_acc >= 0.95
    out = json.loads((tmp_path / "P" / "result.json").read_text())
    assert 0 <= out["best_val_acc"] <= 1 and len(out["grid"]) == 2
    assert out["protocol"]["pool"] == "mean" and out["protocol"]["split"]["kind"] == "stratified"
    assert {"normalization", "epochs", "batch_size", "seed"} <= set(out["protocol"])
    assert (tmp_path / "P" / "grid.csv").is_file() and (tmp_path / "P" / "config.json").is_file()


def test_probe_with_given_validation_labels(store, tmp_path):
    path, ids, y = store
    train = write_csv(tmp_path / "train.csv", ids[:90], y[:90])
    val = write_csv(tmp_path / "val.csv", ids[90:], y[90:], header=False)
    res = probe(features=str(path), labels=str(train), val_labels=str(val), lrs=(1e-1,), weight_decays=(0.0,),
                min_steps=30, device="cpu")
    assert (res.n_train, res.n_val) == (90, 30) and res.best_val_acc >= 0.95


def test_wrong_label_files(store, tmp_path):
    path, ids, y = store
    kw = dict(features=str(path), lrs=(1e-1,), weight_decays=(0.0,), min_steps=5, device="cpu")
    with pytest.raises(DataError, match="lack 20 of 120"):
        probe(labels=str(write_csv(tmp_path / "missing.csv", ids[:100], y[:100])), **kw)
    assert probe(labels=str(tmp_path / "missing.csv"), ignore_missing=True, **kw).n_train + \
        probe(labels=str(tmp_path / "missing.csv"), ignore_missing=True, **kw).n_val == 100
    with pytest.raises(DataError, match="one class"):
        probe(labels=str(write_csv(tmp_path / "one.csv", ids, [2] * 120)), **kw)
    with pytest.raises(DataError, match="not an integer"):
        probe(labels=str(write_csv(tmp_path / "text.csv", ids, ["cat"] * 120)), **kw)
    with pytest.raises(DataError, match="share no id"):
        probe(labels=str(write_csv(tmp_path / "other.csv", ["x1", "x2"], [0, 1])), ignore_missing=True, **kw)
    with pytest.raises(StoreError, match="CLS"):
        probe(labels=str(tmp_path / "missing.csv"), pool="cls", ignore_missing=True, **kw)


def test_csv_reader_accepts_float_integers_and_tsv(tmp_path):
    p = tmp_path / "l.tsv"
    p.write_text("a\t1.0\nb\t0\n")
    assert load_labels(str(p))[0] == {"a": 1, "b": 0}


def test_cls_pooling_reads_the_prefix(tmp_path):
    from spatialprobe.store import write_store

    x, y = blobs(n=90, d=6, c=3)
    patch = torch.randn(90, 4, 6)  # label-free patch tokens; the label lives in the CLS only
    path = write_store(tmp_path / "s", [str(i) for i in range(90)], patch=patch, prefix=torch.from_numpy(x)[:, None],
                       grid=(2, 2), encoder="toy", labels=y.tolist())
    kw = dict(features=str(path), lrs=(1e-1,), weight_decays=(0.0,), min_steps=40, device="cpu")
    assert probe(pool="cls", **kw).best_val_acc >= 0.95
    assert probe(pool="mean", **kw).best_val_acc < 0.7


def test_builtin_digits_labels_join_by_id(tmp_path):
    from spatialprobe.data import open_source
    from spatialprobe.store import write_store

    src = open_source("builtin:digits")
    ids, y = list(src.ids[:300]), np.asarray(src.labels[:300])
    feats = torch.from_numpy(np.eye(10, dtype=np.float32)[y] * 3) + 0.3 * torch.randn(300, 10,
                                                                                     generator=torch.Generator().manual_seed(0))
    path = write_store(tmp_path / "d", ids[::-1], pooled=feats.flip(0), grid=(1, 1), encoder="toy")  # other order
    res = probe(features=str(path), labels="builtin:digits", ignore_missing=True, lrs=(1e-1,), weight_decays=(0.0,),
                min_steps=50, device="cpu")
    assert res.n_classes == 10 and res.best_val_acc >= 0.95


def test_cli_probe_and_error_exit(store, tmp_path):
    from typer.testing import CliRunner

    from spatialprobe.cli import app

    path, ids, y = store
    csv = write_csv(tmp_path / "labels.csv", ids, y)
    r = CliRunner().invoke(app, ["probe", "--features", str(path), "--labels", str(csv), "--lrs", "0.01,0.1",
                                 "--weight-decays", "0", "--min-steps", "40", "--device", "cpu", "--out",
                                 str(tmp_path / "P")])
    assert r.exit_code == 0, r.output
    assert "best_val_acc" in r.output and (tmp_path / "P" / "result.json").is_file()
    bad = write_csv(tmp_path / "bad.csv", ids, ["x"] * len(ids))
    r = CliRunner().invoke(app, ["probe", "--features", str(path), "--labels", str(bad), "--out", str(tmp_path / "Q")])
    assert r.exit_code == 2 and "not an integer" in r.output
