"""Bad inputs and faults: each ends in one ``error: ...`` line naming the input, exit code 2, no traceback;
and each silently wrong number of the reliability audit is now an error or a counted NaN.

The CLI cases run in-process (CliRunner) and fail before any heavy work, so the file stays fast.
"""

from __future__ import annotations

import errno
import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from spatialprobe.cli import app

runner = CliRunner()
HAS_CUDA = torch.cuda.is_available()


pytestmark = pytest.mark.usefixtures("fresh_log_handler")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    g = torch.Generator().manual_seed(0)
    ids = ["a0", "a1", "a2", "a3"]
    patch = torch.randn(4, 16, 8, generator=g)
    np.savez(d / "tokens.npz", ids=np.array(ids), patch=patch.numpy(), grid=np.array([4, 4]))
    bad = patch.clone()
    bad[2, 3, 1] = float("nan")
    np.savez(d / "nan_tokens.npz", ids=np.array(ids), patch=bad.numpy(), grid=np.array([4, 4]))
    from spatialprobe import reference

    ref = reference.load("sit-xl-100k")
    ref.to_csv(d / "table.csv", index=False)
    pd.concat([ref, ref.iloc[:5]]).to_csv(d / "dup.csv", index=False)
    (d / "afile.txt").write_text("not a folder\n")
    (d / "bad_extract.yaml").write_text("encoder: hog\nout: features\nlimit: two\n")
    (d / "bad_metrics.yaml").write_text("chunk_size: two\n")
    (d / "bad_train.yaml").write_text("steps: many\n")
    rng = np.random.default_rng(0)
    np.savez(d / "ref64.npz", arr_0=rng.integers(0, 255, (4, 64, 64, 3), dtype=np.uint8))
    np.savez(d / "s32.npz", arr_0=rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8))
    (d / "adir").mkdir()
    (d / "labels_missing.csv").write_text("id,label\nnot-an-image,0\nneither,1\n")
    from spatialprobe.store import write_store

    write_store(d / "store", ids, patch=patch, grid=(4, 4), encoder="toy", labels=[0, 1, 0, 1])
    return d


def assert_clean_error(res, *names: str, code: int = 2) -> str:
    """Exit ``code``, exactly one ``error:`` line that names every one of ``names``, and no traceback."""
    out = res.output + (res.stderr or "")
    assert res.exit_code == code, (res.exit_code, out, res.exception)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in out, out
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, res.stderr
    for n in names:
        assert n.lower() in lines[0].lower(), (n, lines[0])
    return lines[0]


def T(env, name):
    return str(env / name)


# (case id, args(env) -> argv, words the error line must contain)
CASES = [
    # metrics
    ("metrics-missing-file", lambda e: ["metrics", "-f", T(e, "missing.npz"), "-o", T(e, "m")], ["missing.npz"]),
    ("metrics-out-is-file", lambda e: ["metrics", "-f", T(e, "tokens.npz"), "-o", T(e, "afile.txt")], ["afile.txt", "file"]),
    ("metrics-radius-0", lambda e: ["metrics", "-f", T(e, "tokens.npz"), "-o", T(e, "m"), "--lds-far", "0"], ["lds_far", ">= 1"]),
    ("metrics-bad-sweep", lambda e: ["metrics", "-f", T(e, "tokens.npz"), "-o", T(e, "m"), "--sweep", "lds_far=a:b"], ["lds_far=a:b"]),
    ("metrics-sweep-name", lambda e: ["metrics", "-f", T(e, "tokens.npz"), "-o", T(e, "m"), "--sweep", "far=2:4"], ["far=2:4"]),
    ("metrics-unknown-metric", lambda e: ["metrics", "-f", T(e, "tokens.npz"), "-o", T(e, "m"), "--metrics", "ldz"], ["ldz"]),
    ("metrics-radii-name", lambda e: ["metrics", "-f", T(e, "tokens.npz"), "-o", T(e, "m"), "--radii", "weird"], ["weird"]),
    ("metrics-non-finite", lambda e: ["metrics", "-f", T(e, "nan_tokens.npz"), "-o", T(e, "m")], ["non-finite", "a2", "nan_tokens.npz"]),
    ("metrics-no-mask-dir", lambda e: ["metrics", "-f", T(e, "tokens.npz"), "-o", T(e, "m"), "--masks", T(e, "nomasks")], ["nomasks"]),
    ("metrics-chunk-0", lambda e: ["metrics", "-f", T(e, "tokens.npz"), "-o", T(e, "m"), "--chunk-size", "0"], ["chunk_size"]),
    ("metrics-config-type", lambda e: ["metrics", "-f", T(e, "tokens.npz"), "-o", T(e, "m"), "--config", T(e, "bad_metrics.yaml")], ["chunk_size", "two", "bad_metrics.yaml"]),
    ("metrics-mask-resolution", lambda e: ["metrics", "-f", T(e, "tokens.npz"), "-o", T(e, "m"), "--mask-resolution", "0"], ["mask_resolution"]),
    # correlate
    ("correlate-duplicates", lambda e: ["correlate", "-t", T(e, "dup.csv"), "--x", "lds", "-o", T(e, "c"), "--no-figure"], ["more than once", "P01", "--allow-duplicates"]),
    ("correlate-unknown-column", lambda e: ["correlate", "-t", T(e, "table.csv"), "--x", "nope", "-o", T(e, "c"), "--no-figure"], ["nope"]),
    ("correlate-missing-table", lambda e: ["correlate", "-t", T(e, "missing.csv"), "-o", T(e, "c")], ["missing.csv"]),
    ("correlate-two-inputs", lambda e: ["correlate", "-t", T(e, "table.csv"), "-r", "sit-xl-100k", "-o", T(e, "c")], ["exactly one"]),
    ("correlate-unknown-reference", lambda e: ["correlate", "-r", "sit-xxl", "-o", T(e, "c")], ["sit-xxl"]),
    ("correlate-confidence", lambda e: ["correlate", "-r", "sit-xl-100k", "--confidence", "1.5", "-o", T(e, "c")], ["confidence", "1.5"]),
    ("correlate-resamples", lambda e: ["correlate", "-r", "sit-xl-100k", "--n-resamples", "10", "-o", T(e, "c")], ["n_resamples"]),
    ("correlate-out-is-file", lambda e: ["correlate", "-r", "sit-xl-100k", "-o", T(e, "afile.txt")], ["afile.txt"]),
    # extract
    ("extract-no-arguments", lambda e: ["extract"], ["--encoder", "--out"]),
    ("extract-config-type", lambda e: ["extract", "--config", T(e, "bad_extract.yaml")], ["limit", "two", "bad_extract.yaml"]),
    ("extract-limit-0", lambda e: ["extract", "-e", "hog", "-o", T(e, "x"), "--limit", "0"], ["--limit"]),
    ("extract-out-is-file", lambda e: ["extract", "-e", "hog", "-o", T(e, "afile.txt")], ["afile.txt"]),
    ("extract-batch-size", lambda e: ["extract", "-e", "hog", "-o", T(e, "x"), "--batch-size", "zero"], ["--batch-size", "zero"]),
    ("extract-shard-size", lambda e: ["extract", "-e", "hog", "-o", T(e, "x"), "--shard-size", "0"], ["--shard-size"]),
    # train (all fail in the config check, before the data or a model is touched)
    ("train-ema-decay", lambda e: ["train", "--teacher", "hog", "--ema-decays", "1.5", "-o", T(e, "t")], ["ema_decays", "1.5", "(0, 1)"]),
    ("train-max-images-0", lambda e: ["train", "--teacher", "hog", "--max-images", "0", "-o", T(e, "t")], ["max_images"]),
    ("train-gamma", lambda e: ["train", "--teacher", "hog", "--gamma", "-1", "-o", T(e, "t")], ["gamma", "-1"]),
    ("train-lr", lambda e: ["train", "--teacher", "hog", "--lr", "-1", "-o", T(e, "t")], ["lr", "-1"]),
    ("train-resolution", lambda e: ["train", "--teacher", "hog", "--resolution", "30", "-o", T(e, "t")], ["resolution=30", "multiple"]),
    ("train-ema-not-number", lambda e: ["train", "--teacher", "hog", "--ema-decays", "abc", "-o", T(e, "t")], ["ema-decays", "abc"]),
    ("train-unknown-model", lambda e: ["train", "--model", "sit-mega", "--teacher", "hog", "-o", T(e, "t")], ["sit-mega"]),
    ("train-config-type", lambda e: ["train", "--config", T(e, "bad_train.yaml"), "-o", T(e, "t")], ["steps", "many"]),
    ("train-no-teacher", lambda e: ["train", "--method", "irepa", "-o", T(e, "t")], ["--teacher"]),
    # sample
    ("sample-n-0", lambda e: ["sample", T(e, "norun"), "--n", "0"], ["n=0"]),
    ("sample-steps-0", lambda e: ["sample", T(e, "norun"), "--steps", "0"], ["steps=0"]),
    ("sample-weights", lambda e: ["sample", T(e, "norun"), "--weights", "best"], ["best"]),
    ("sample-no-run", lambda e: ["sample", T(e, "norun")], ["norun"]),
    ("sample-interval", lambda e: ["sample", T(e, "norun"), "--interval", "0.5"], ["interval"]),
    # inject
    ("inject-alpha-convex", lambda e: ["inject", "-e", "hog", "-i", "builtin", "--alpha", "0,1.5", "-o", T(e, "i")], ["1.5", "[0, 1]"]),
    ("inject-alpha-text", lambda e: ["inject", "-e", "hog", "-i", "builtin", "--alpha", "x", "-o", T(e, "i")], ["--alpha", "x"]),
    ("inject-labels-missing", lambda e: ["inject", "-e", "hog", "-i", "builtin", "--labels", T(e, "labels_missing.csv"), "-o", T(e, "i")], ["labels_missing.csv"]),
    ("inject-two-inputs", lambda e: ["inject", "-e", "hog", "-f", T(e, "store"), "-o", T(e, "i")], ["exactly one"]),
    # fid
    ("fid-other-resolution", lambda e: ["fid", T(e, "s32.npz"), "--ref", T(e, "ref64.npz"), "-o", T(e, "f"), "--random-init"], ["32x32", "64x64", "s32.npz"]),
    ("fid-missing-reference", lambda e: ["fid", T(e, "s32.npz"), "--ref", T(e, "missing.npz"), "-o", T(e, "f")], ["missing.npz"]),
    ("fid-unknown-metric", lambda e: ["fid", T(e, "s32.npz"), "--ref", T(e, "ref64.npz"), "--metrics", "kid", "-o", T(e, "f")], ["kid"]),
    ("fid-ref-resolution", lambda e: ["fid-ref", "builtin", "--resolution", "0", "-o", T(e, "r.npz"), "--random-init"], ["resolution"]),
    ("fid-ref-out-is-folder", lambda e: ["fid-ref", "builtin", "-o", T(e, "adir"), "--random-init"], ["adir", "folder"]),
    # probe
    ("probe-missing-store", lambda e: ["probe", "-f", T(e, "nostore"), "-o", T(e, "p")], ["nostore"]),
    ("probe-val-fraction", lambda e: ["probe", "-f", T(e, "store"), "--val-fraction", "1.5", "-o", T(e, "p")], ["val_fraction"]),
    ("probe-out-is-file", lambda e: ["probe", "-f", T(e, "store"), "-o", T(e, "afile.txt")], ["afile.txt"]),
]
if not HAS_CUDA:
    CASES += [
        ("metrics-cuda-without-gpu", lambda e: ["metrics", "-f", T(e, "tokens.npz"), "-o", T(e, "m"), "--device", "cuda"], ["cuda", "no CUDA device"]),
        ("train-cuda-without-gpu", lambda e: ["train", "--teacher", "hog", "--device", "cuda", "-o", T(e, "t")], ["cuda"]),
        ("probe-cuda-without-gpu", lambda e: ["probe", "-f", T(e, "store"), "--device", "cuda:1", "-o", T(e, "p")], ["cuda:1"]),
    ]


def test_at_least_40_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clean_error(env, case):
    _, argv, words = case
    assert_clean_error(runner.invoke(app, argv(env)), *words)


# ----------------------------------------------------------------------------- faults while writing

def test_full_disk_names_the_path(env, monkeypatch, tmp_path):
    """ENOSPC in the middle of writing results: 'no space left on device' and the file, not a traceback."""
    def full(self, path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    res = runner.invoke(app, ["metrics", "-f", T(env, "tokens.npz"), "-o", str(tmp_path / "m")])
    assert_clean_error(res, "no space left on device", "per_image.csv")


def test_read_only_out_is_refused_before_computing(env, monkeypatch, tmp_path):
    import spatialprobe.checks as checks
    import spatialprobe.metrics.run as run

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", k.get("dir"))

    computed = []
    monkeypatch.setattr(checks.tempfile, "mkstemp", denied)
    monkeypatch.setattr(run, "spatial_metrics_multi", lambda *a, **k: computed.append(1))
    res = runner.invoke(app, ["metrics", "-f", T(env, "tokens.npz"), "-o", str(tmp_path / "ro")])
    assert_clean_error(res, "not writable", "ro")
    assert not computed


def test_prepare_out_dir_full_disk(monkeypatch, tmp_path):
    import spatialprobe.checks as checks
    from spatialprobe.errors import OutputError

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checks.os, "write", full)
    with pytest.raises(OutputError, match="no space left on device.*'?" + str(tmp_path / "o")):
        checks.prepare_out_dir(tmp_path / "o")


# ----------------------------------------------------------------------------- item 1: silently wrong

def test_fid_refuses_samples_of_another_resolution_in_python(env):
    from spatialprobe.errors import DataError
    from spatialprobe.fid import evaluate

    with pytest.raises(DataError, match="32x32 pixels but the reference"):
        evaluate(str(env / "s32.npz"), env / "ref64.npz", pretrained=False)


def test_non_square_mask_gets_the_image_crop():
    from PIL import Image

    from spatialprobe.data.preprocess import center_crop_arr
    from spatialprobe.metrics.masks import crop_mask

    for w, h in [(300, 200), (200, 517), (1024, 300)]:
        img = np.zeros((h, w, 3), np.uint8)
        img[:, int(0.55 * w):int(0.65 * w)] = 255  # a vertical bar right of centre, a horizontal one
        img[int(0.3 * h):int(0.4 * h)] = 255
        seen = center_crop_arr(Image.fromarray(img), 256)[..., 0] > 127
        mask = crop_mask(torch.from_numpy(img[..., 0] > 0), 256, (w, h)).numpy()
        assert mask.shape == (256, 256)
        assert (mask != seen).mean() < 1e-3
        # what the old stretch did: off by 7 to 38 % of the pixels
        stretched = torch.nn.functional.interpolate(torch.from_numpy(img[..., 0] > 0).float()[None, None],
                                                    size=(256, 256), mode="nearest-exact")[0, 0].numpy() > 0
        assert (stretched != seen).mean() > 0.05


def test_mask_of_another_aspect_ratio_is_an_error():
    from spatialprobe.errors import DataError
    from spatialprobe.metrics.masks import crop_mask, patch_mask

    with pytest.raises(DataError, match="aspect ratios differ"):
        crop_mask(torch.ones(100, 100, dtype=torch.bool), 256, (300, 200), name="'m.png'")
    with pytest.raises(DataError, match="'m.png' is 150x100"):
        patch_mask(torch.ones(100, 150, dtype=torch.bool), (16, 16), image_size=(200, 200), name="'m.png'")
    # the crop itself and a half-size mask of the same image are fine
    assert crop_mask(torch.ones(256, 256, dtype=torch.bool), 256, (300, 200)).shape == (256, 256)
    assert crop_mask(torch.ones(100, 150, dtype=torch.bool), 256, (300, 200)).shape == (256, 256)


def test_correlate_duplicates_inf_and_control(caplog):
    from spatialprobe import reference
    from spatialprobe.correlation import correlate
    from spatialprobe.errors import DataError

    df = reference.load("sit-xl-100k")
    dup = pd.concat([df, df.iloc[:5]])
    with pytest.raises(DataError, match="more than once"):
        correlate(dup, x=["lds"], n_resamples=1000, figure=False)
    assert correlate(dup, x=["lds"], n_resamples=1000, allow_duplicates=True).loc[0, "n"] == 32
    one = correlate(df, x=["lds"], n_resamples=1000)
    inf = df.copy()
    inf.loc[inf.index[0], "lds"] = np.inf
    with caplog.at_level(logging.WARNING, logger="spatialprobe"):
        r = correlate(inf, x=["lds"], n_resamples=1000).iloc[0]
    assert r["n"] == 26 and np.isfinite(r["pearson_r"]) and "NaN or inf: P01" in caplog.text
    assert r["pearson_r"] != one.loc[0, "pearson_r"]
    dropped = correlate(df.iloc[1:], x=["lds"], n_resamples=1000).iloc[0]  # same numbers as dropping the row
    for k in ("pearson_r", "pearson_p_perm", "loo_min", "loo_max"):
        assert r[k] == pytest.approx(dropped[k])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="spatialprobe"):
        t = correlate(df, x=["lds", "cds"], control="lds", n_resamples=1000)
    assert math.isnan(t.loc[0, "partial_r"]) and np.isfinite(t.loc[1, "partial_r"])
    assert "undefined" in caplog.text


def test_correlate_prints_partial_r(env, tmp_path):
    res = runner.invoke(app, ["correlate", "-t", T(env, "table.csv"), "--x", "lds,cds", "--control", "lp_acc",
                              "--n-resamples", "1000", "-o", str(tmp_path / "c"), "--no-figure"])
    assert res.exit_code == 0, res.output
    head = res.stdout.splitlines()[0]
    assert "control" in head and "partial_r" in head


def test_radii_beyond_the_grid_are_nan_with_a_warning(env, caplog):
    from spatialprobe.metrics import compute_metrics, spatial_metrics

    with caplog.at_level(logging.WARNING, logger="spatialprobe"):
        s = compute_metrics(features=[str(env / "tokens.npz")], sweep=["lds_far=2:8"], metrics=["lds"]).summary
    # the 4x4 grid's largest distance is 6: far >= 7 has no pair
    lds = dict(zip(s["lds_far"], s["lds"]))
    assert all(np.isfinite(lds[f]) for f in range(2, 7)) and all(math.isnan(lds[f]) for f in (7, 8))
    assert (s.set_index("lds_far").loc[[7, 8], "lds_nan"] == 4).all()
    assert "lds_far=7 is beyond the largest distance 6" in caplog.text and "valid: 1..6" in caplog.text
    assert torch.isnan(spatial_metrics(torch.randn(2, 256, 4), (16, 16), cds_dmax=1)["cds"]).all()
    assert torch.isnan(spatial_metrics(torch.randn(2, 256, 4), (16, 16), lds_far=31)["lds"]).all()


def test_all_zero_token_map_is_nan_and_counted(tmp_path, caplog):
    from spatialprobe.metrics import compute_metrics, spatial_metrics

    x = torch.randn(3, 16, 8)
    x[1] = 0
    m = spatial_metrics(x, (4, 4))
    assert all(math.isnan(m[k][1].item()) and np.isfinite(m[k][0].item()) for k in ("lds", "cds", "rmsc"))
    np.savez(tmp_path / "z.npz", ids=np.array(["p", "q", "r"]), patch=x.numpy())
    with caplog.at_level(logging.WARNING, logger="spatialprobe"):
        s = compute_metrics(features=[str(tmp_path / "z.npz")]).summary.iloc[0]
    assert s["lds_nan"] == 1 and s["lds_n"] == 2 and "all-zero tokens" in caplog.text


def test_non_finite_tokens_name_the_images():
    from spatialprobe.errors import DataError
    from spatialprobe.metrics import spatial_metrics

    x = torch.randn(3, 16, 4)
    x[2, 0, 0] = float("inf")
    with pytest.raises(DataError, match=r"non-finite.*batch index 2"):
        spatial_metrics(x, (4, 4))


def test_probe_remaps_sparse_label_ids(tmp_path, caplog):
    from spatialprobe.errors import DataError
    from spatialprobe.probe import contiguous_labels, probe
    from spatialprobe.store import write_store

    g = torch.Generator().manual_seed(0)
    lab = [0, 5, 10] * 8
    feats = torch.randn(24, 4, 6, generator=g) + torch.tensor(lab, dtype=torch.float32)[:, None, None]
    names = [f"class{i}" for i in range(11)]
    write_store(tmp_path / "s", [f"i{k}" for k in range(24)], patch=feats, grid=(2, 2), encoder="toy",
                labels=lab, label_names=names)
    res = probe(features=str(tmp_path / "s"), lrs=[0.1], weight_decays=[0.0], epochs=2, min_steps=10)
    assert res.n_classes == 3
    assert res.protocol["class_ids"] == [0, 5, 10]
    assert res.protocol["class_names"] == ["class0", "class5", "class10"]
    with pytest.raises(DataError, match="label id.*12 have no class name"):
        contiguous_labels(np.array([0, 12]), names, "labels 'x'")


def test_sample_picks_weights_that_have_learned(caplog):
    from spatialprobe.train.sample import choose_weights

    short = {"config": {"ema_decays": [0.9999, 0.9996]}, "step": 80}
    with caplog.at_level(logging.WARNING, logger="spatialprobe"):
        assert choose_weights("auto", short) == "model"
    assert "99 % the random initialisation" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="spatialprobe"):
        assert choose_weights("ema", short) == "ema"  # explicit: honoured, with a warning
    assert "--weights model" in caplog.text
    assert choose_weights("auto", {"config": {"ema_decays": [0.9999]}, "step": 100_000}) == "ema"
    assert choose_weights("model", short) == "model"


def test_train_ranges_in_python():
    from spatialprobe.errors import ConfigError
    from spatialprobe.train.config import SampleConfig, TrainConfig, finalize

    for bad in (dict(ema_decays=[1.5]), dict(ema_decays=[0.0]), dict(max_images=0), dict(gamma=-1.0),
                dict(lr=-1.0), dict(resolution=30), dict(betas=[0.9, 1.2]), dict(encoder_depth=99)):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            finalize(TrainConfig(teacher="hog", **bad))
    for bad in (dict(n=0), dict(steps=0), dict(batch_size=0), dict(weights="best")):
        with pytest.raises(ConfigError):
            SampleConfig(**bad)


def test_inject_alpha_range_in_python():
    from spatialprobe.errors import ConfigError
    from spatialprobe.inject import InjectConfig

    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        InjectConfig(encoder="hog", images="builtin", alphas=[0.5, 1.5])
    assert InjectConfig(encoder="hog", images="builtin", alphas=[0.5, 1.5], form="additive").alphas == (0.5, 1.5)


def test_config_value_of_wrong_type(tmp_path):
    from spatialprobe.config import resolve
    from spatialprobe.errors import ConfigError
    from spatialprobe.probe import ProbeConfig

    (tmp_path / "c.yaml").write_text("epochs: two\n")
    with pytest.raises(ConfigError, match=r"epochs='two' in config file .*c\.yaml.* must be an integer"):
        resolve(ProbeConfig, tmp_path / "c.yaml")
    (tmp_path / "c.yaml").write_text("lrs: [1e-3, fast]\n")
    with pytest.raises(ConfigError, match="lrs"):
        resolve(ProbeConfig, tmp_path / "c.yaml")
    (tmp_path / "c.yaml").write_text("lrs: [1e-3, 1e-2]\nepochs: 3\n")  # YAML reads 1e-3 as a string
    cfg = resolve(ProbeConfig, tmp_path / "c.yaml")
    assert cfg.lrs == (1e-3, 1e-2) and cfg.epochs == 3


# ----------------------------------------------------------------------------- item 4: small truths

def test_help_shows_defaults_and_is_not_cut():
    for cmd in (["extract"], ["metrics"], ["correlate"], ["fid"], ["sample"]):
        out = runner.invoke(app, [*cmd, "--help"]).output
        assert "[default:" in out or "default" in out
        assert " .\n" not in out and " . " not in out.replace("...", ""), out  # a swallowed [default: x]
        assert "%%" not in out
        assert "…" not in out  # no option text cut with an ellipsis
    out = runner.invoke(app, ["extract", "--help"]).output
    assert "--weights-dir" in out and "--random-init" in out and "[default: 256]" in out
    assert ">= 25 % FG" in runner.invoke(app, ["metrics", "--help"]).output


def test_inject_checks_labels_before_the_encoder_pass(env, monkeypatch, tmp_path):
    import spatialprobe.inject as inj

    called = []
    monkeypatch.setattr(inj, "_encoder_chunks", lambda *a, **k: called.append(1))
    res = runner.invoke(app, ["inject", "-e", "hog", "-i", "builtin", "--labels", T(env, "labels_missing.csv"),
                              "-o", str(tmp_path / "i")])
    line = assert_clean_error(res, "labels_missing.csv")
    assert not called
    assert "--ignore-missing" not in line  # inject has no such flag


def test_injection_figure_marks_random_init_and_shows_error_bars(env, monkeypatch, tmp_path):
    import matplotlib.figure

    import spatialprobe.inject as inj

    seen = {}

    def grab(fig, path, *a, **k):
        seen["title"] = fig._suptitle.get_text() if fig._suptitle else ""
        seen["bars"] = sum(len(ax.containers) for ax in fig.axes)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", grab)
    table = inj.inject(features=str(env / "store"), alphas=[0.0, 0.5], epochs=1, min_steps=5, lrs=[0.1],
                       weight_decays=[0.0], random_init=False, out=str(tmp_path / "i"))
    assert "lp_acc_se" in table and not table["random_init"].any()
    assert "RANDOM INIT" not in seen["title"] and seen["bars"] == 2
    table["random_init"] = True
    inj.injection_figure(table, tmp_path / "j")
    assert "RANDOM INIT" in seen["title"]


def test_full_disk_while_saving_a_checkpoint(monkeypatch, tmp_path):
    """torch.save reports a full disk as a RuntimeError from its zip writer: still one clear error."""
    import spatialprobe.checks as checks
    from spatialprobe.errors import OutputError
    from spatialprobe.train import checkpoint

    def failing(obj, f, *a, **k):
        open(f, "wb").write(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(checkpoint.torch, "save", failing)
    monkeypatch.setattr(checks, "_nearly_full", lambda folder, margin=0: True)
    with pytest.raises(OutputError, match=r"checkpoint: no space left on device while writing .*0000010\.pt"):
        checkpoint.save_checkpoint({"x": 1}, tmp_path / "0000010.pt")
    assert not list(tmp_path.iterdir())  # no half-written temporary left behind


def test_non_finite_features_name_the_images_in_probe_and_inject(tmp_path):
    from spatialprobe.errors import DataError
    from spatialprobe.inject import inject
    from spatialprobe.probe import probe
    from spatialprobe.store import write_store

    x = torch.randn(8, 4, 3)
    x[5, 1, 2] = float("nan")
    write_store(tmp_path / "s", [f"im{k}" for k in range(8)], patch=x, grid=(2, 2), encoder="toy",
                labels=[0, 1] * 4, dtype="fp32")
    with pytest.raises(DataError, match="non-finite.*im5"):
        probe(features=str(tmp_path / "s"))
    with pytest.raises(DataError, match="non-finite.*im5"):
        inject(features=str(tmp_path / "s"), alphas=[0.0])


@pytest.mark.parametrize("field, value, name", [("shard_size", 0, "--shard-size"), ("limit", 0, "--limit"),
                                                ("resolution", 4, "--resolution"), ("batch_size", -2, "--batch-size"),
                                                ("num_workers", -3, "--workers")])
def test_extract_checks_ranges_from_the_python_api_and_config_files(tmp_path, field, value, name):
    from spatialprobe.errors import ConfigError
    from spatialprobe.extract import extract

    with pytest.raises(ConfigError, match=name):
        extract(encoder="pixels", images="builtin", out=str(tmp_path / "f"), **{field: value})
    cfg = tmp_path / "extract.yaml"
    cfg.write_text(f"encoder: pixels\nimages: builtin\nout: {tmp_path / 'g'}\n{field}: {value}\n")
    res = runner.invoke(app, ["extract", "--config", str(cfg)])
    assert_clean_error(res, name)
    assert not (tmp_path / "g" / "pixels").exists()  # refused before any image was read
