"""Every default the CLI help shows is the default of the dataclass field that defines it (one definition).

The table below maps each (command, option) that shows a default to its field, independently of the
command modules, so a help text pointing at the wrong field, or a default written into a help text by
hand, fails here. Defaults that are descriptions rather than values are listed with the exact words.
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from spatialprobe.cli import app
from spatialprobe.commands import HelpDefaultsCommand, fill_help_defaults, help_default
from spatialprobe.correlation import CorrelateConfig
from spatialprobe.extract import ExtractConfig
from spatialprobe.fid.digits import DigitsFdConfig
from spatialprobe.fid.evaluator import FidConfig, build_reference
from spatialprobe.inject import InjectConfig
from spatialprobe.metrics.run import MetricsConfig
from spatialprobe.official import OfficialConfig
from spatialprobe.predict import PredictConfig
from spatialprobe.probe import ProbeConfig
from spatialprobe.report.build import ReportConfig
from spatialprobe.viz import VizConfig
from spatialprobe.train.checkpoint import default_ckpt_every
from spatialprobe.train import config as train_config, presets as train_presets
from spatialprobe.train.config import JIT_BLR, MODEL_DEFAULTS, SampleConfig, TrainConfig
from spatialprobe.train.models import names as model_names, variant
from spatialprobe.train.models.common import BackboneConfig

runner = CliRunner()

PER_MODEL = "per model"  #: the default is MODEL_DEFAULTS[model][field] (train)

#: (command, option) -> (where the default is defined, field name, how the value is shown or None)
FIELDS: dict[tuple[str, str], tuple[Any, str, Any]] = {
    ("extract", "--images"): (ExtractConfig, "images", None),
    ("extract", "--resolution"): (ExtractConfig, "resolution", None),
    ("extract", "--dtype"): (ExtractConfig, "dtype", None),
    ("extract", "--batch-size"): (ExtractConfig, "batch_size", {0: "auto"}),
    ("extract", "--workers"): (ExtractConfig, "num_workers", {-1: "min(8, CPUs)"}),
    ("extract", "--shard-size"): (ExtractConfig, "shard_size", None),
    ("extract", "--device"): (ExtractConfig, "device", None),
    ("extract", "--seed"): (ExtractConfig, "seed", None),
    ("probe", "--val-fraction"): (ProbeConfig, "val_fraction", None),
    ("probe", "--pool"): (ProbeConfig, "pool", None),
    ("probe", "--normalize"): (ProbeConfig, "normalize", None),
    ("probe", "--lrs"): (ProbeConfig, "lrs", lambda v: f"{len(v)} from {min(v):g} to {max(v):g}"),
    ("probe", "--weight-decays"): (ProbeConfig, "weight_decays", None),
    ("probe", "--epochs"): (ProbeConfig, "epochs", None),
    ("probe", "--min-steps"): (ProbeConfig, "min_steps", None),
    ("probe", "--batch-size"): (ProbeConfig, "batch_size", None),
    ("probe", "--precision"): (ProbeConfig, "precision", None),
    ("probe", "--seed"): (ProbeConfig, "seed", None),
    ("probe", "--device"): (ProbeConfig, "device", None),
    ("inject", "--alpha"): (InjectConfig, "alphas", None),
    ("inject", "--form"): (InjectConfig, "form", None),
    ("inject", "--mix"): (InjectConfig, "mix", None),
    ("inject", "--resolution"): (InjectConfig, "resolution", None),
    ("inject", "--batch-size"): (InjectConfig, "batch_size", None),
    ("inject", "--device"): (InjectConfig, "device", None),
    ("inject", "--epochs"): (InjectConfig, "epochs", None),
    ("inject", "--seed"): (InjectConfig, "seed", None),
    ("train", "--model"): (TrainConfig, "model", None),
    ("train", "--method"): (TrainConfig, "method", None),
    ("train", "--out"): (TrainConfig, "out", None),
    ("train", "--steps"): (TrainConfig, "steps", None),
    ("train", "--batch-size"): (MODEL_DEFAULTS, "batch_size", PER_MODEL),
    ("train", "--lr"): (MODEL_DEFAULTS, "lr", PER_MODEL),
    ("train", "--weight-decay"): (TrainConfig, "weight_decay", None),
    ("train", "--grad-clip"): (MODEL_DEFAULTS, "grad_clip", PER_MODEL),
    ("train", "--warmup-epochs"): (MODEL_DEFAULTS, "warmup_epochs", PER_MODEL),
    ("train", "--encoder-depth"): (BackboneConfig, "encoder_depth", "variants"),
    ("train", "--hflip"): (MODEL_DEFAULTS, "hflip", PER_MODEL),
    ("train", "--teacher-resolution"): (train_config, "TEACHER_MIN_SIDE", lambda v: f"max({v}, --resolution)"),
    ("train", "--noise-scale"): (train_config, "JIT_NOISE_SCALE",
                                 lambda v: ", ".join(f"{s:g} at {side} px" for side, s in v.items())),
    ("train", "--mask-ratio"): (train_presets, "PIXELREPA_MASK_RATIO", lambda v: f"{v:g} (the pixelrepa preset)"),
    ("train", "--adapter-depth"): (train_presets, "PIXELREPA_DEPTH", lambda v: f"{v} (the pixelrepa preset)"),
    ("train", "--latent-norm"): (TrainConfig, "latent_norm", None),
    ("train", "--seed"): (TrainConfig, "seed", None),
    ("train", "--device"): (TrainConfig, "device", None),
    ("train", "--precision"): (TrainConfig, "precision", None),
    ("train", "--log-every"): (TrainConfig, "log_every", None),
    ("train", "--ckpt-every"): (TrainConfig, "ckpt_every", "cadence"),
    ("train", "--keep-last"): (TrainConfig, "keep_last", None),
    ("train", "--ckpt-minutes"): (TrainConfig, "ckpt_minutes", None),
    ("train", "--workers"): (TrainConfig, "workers", None),
    ("sample", "--n"): (SampleConfig, "n", None),
    ("sample", "--batch-size"): (SampleConfig, "batch_size", None),
    ("sample", "--cfg"): (SampleConfig, "cfg", None),
    ("sample", "--weights"): (SampleConfig, "weights", None),
    ("sample", "--seed"): (SampleConfig, "seed", None),
    ("sample", "--device"): (SampleConfig, "device", None),
    # neither the flag nor the run's recipe: train.config's fallbacks (labels per family)
    ("sample", "--labels"): (train_config, "SAMPLE_LABELS",
                             lambda v: "the run's recipe, else " + ", ".join(f"{f} {x}" for f, x in v.items())),
    ("sample", "--precision"): (train_config, "SAMPLE_PRECISION", lambda v: f"the run's recipe, else {v}"),
    ("sample", "--uint8"): (train_config, "SAMPLE_UINT8", lambda v: f"the run's recipe, else {v}"),
    ("correlate", "--x"): (CorrelateConfig, "x", None),
    ("correlate", "--y"): (CorrelateConfig, "y", None),
    ("correlate", "--n-resamples"): (CorrelateConfig, "n_resamples", None),
    ("correlate", "--confidence"): (CorrelateConfig, "confidence", None),
    ("correlate", "--seed"): (CorrelateConfig, "seed", None),
    ("correlate", "--steps"): (OfficialConfig, "steps", None),
    ("correlate", "--model"): (OfficialConfig, "model", None),
    ("fid", "--metrics"): (FidConfig, "metrics", None),
    ("fid", "--batch-size"): (FidConfig, "batch_size", None),
    ("fid", "--device"): (FidConfig, "device", None),
    ("fid", "--fd-method"): (FidConfig, "fd_method", None),
    ("fid", "--fd-pool"): (FidConfig, "fd_pool", None),
    ("fid-ref", "--resolution"): (build_reference, "resolution", None),
    ("fid-ref", "--pr-images"): (build_reference, "pr_images", None),
    ("fid-ref", "--batch-size"): (FidConfig, "batch_size", None),
    ("fid-ref", "--device"): (FidConfig, "device", None),
    ("fid-ref", "--fd-pool"): (FidConfig, "fd_pool", None),
    ("fid-ref", "--seed"): (FidConfig, "seed", None),
    ("fd-digits", "--seed"): (DigitsFdConfig, "seed", None),
    ("metrics", "--metrics"): (MetricsConfig, "metrics", None),
    ("metrics", "--radii"): (MetricsConfig, "radii", None),
    ("metrics", "--mask-rule"): (MetricsConfig, "mask_rule", None),
    ("metrics", "--mask-filter"): (MetricsConfig, "mask_filter", None),
    ("metrics", "--mask-resolution"): (MetricsConfig, "mask_resolution", None),
    ("metrics", "--chunk-size"): (MetricsConfig, "chunk_size", None),
    ("metrics", "--device"): (MetricsConfig, "device", None),
    ("predict", "--reference"): (PredictConfig, "reference", None),
    ("predict", "--x"): (PredictConfig, "x", None),
    ("predict", "--y"): (PredictConfig, "y", None),
    ("predict", "--confidence"): (PredictConfig, "confidence", None),
    ("predict", "--n-boot"): (PredictConfig, "n_boot", None),
    ("predict", "--seed"): (PredictConfig, "seed", None),
    ("report", "--kind"): (ReportConfig, "kind", None),
    ("report", "--viz-image"): (ReportConfig, "viz_image", None),
    ("report", "--timeout"): (ReportConfig, "timeout", None),
    ("viz", "--n-refs"): (VizConfig, "n_refs", None),
    ("viz", "--gamma"): (VizConfig, "gamma", None),
    ("viz", "--resolution"): (VizConfig, "resolution", None),
    ("viz", "--dpi"): (VizConfig, "dpi", None),
    ("viz", "--device"): (VizConfig, "device", None),
}

#: defaults written as words, not values: (command, option) -> the exact phrases allowed in its help
DESCRIBED: dict[tuple[str, str], tuple[str, ...]] = {
    ("probe", "--labels"): ("[default: labels stored with the features]",),
    ("inject", "--labels"): ("[default: the image source's own]",),
    ("correlate", "--family-col"): ("[default: 'family' if present]",),
    ("fid", "--inception-weights"): ("[default: $SPATIALPROBE_WEIGHTS, then $TORCH_HOME/hub/checkpoints]",),
    ("fid", "--protocol"): ("[default: derived, e.g. adm-in256-50k]",),
    ("fid-ref", "--inception-weights"): ("[default: $SPATIALPROBE_WEIGHTS, then $TORCH_HOME/hub/checkpoints]",),
    ("fid-ref", "--name"): ("[default: from the file name]",),
    ("fd-digits", "--out"): ("[default: print only]",),
    ("fd-digits", "--cache-dir"): ("[default: $SPATIALPROBE_CACHE or ~/.cache/spatialprobe]",),
    ("train", "--latents-dir"): ("(default OUT/latents)",),
    ("train", "--num-classes"): ("(default: from the labels)",),
    # resolved per run in train/loop.py:default_compile (the model and the device), no field holds a value
    ("train", "--compile"): ("[default: on for the full-size models on CUDA, off on CPU and for the tiny ones]",),
    ("sample", "--out"): ("(default RUN/samples-STEP)",),
    ("report", "--template"): ("(default: the packaged one)",),
    ("viz", "--tokens"): ("[default: the official points: centre + seeded ones, see --n-refs]",),
    ("ls encoders", "--weights-dir"): ("(default: $SPATIALPROBE_WEIGHTS, then HF/torch caches)",),
    ("weights", "--weights-dir"): ("(default: $SPATIALPROBE_WEIGHTS, then HF/torch caches)",),
    # The sampler, its step count and the guidance interval depend on the model family and are chosen in
    # the code of train/sample.py (no field or table holds them yet), so their help still spells them out.
    ("sample", "--sampler"): ("sde (default)", "heun (default)"),
    ("sample", "--steps"): ("(default 250 for sde, else 50)",),
    ("sample", "--interval"): ("default 0,1", "default 0.1,1"),
}

#: click shows the default of an option or argument that has one: only CLI-side values, not config fields
CLICK_SHOWN = {("study init", "path"): "study.yaml"}

_SHOWN = re.compile(r"\\?\[default: ((?:[^\[\]]|\[[^\[\]]*\])*)\]")
_MARKER = re.compile(r"\\?\[default: \{default of [^{}]+\}\]")


def _leaves(root_app: typer.Typer):
    def walk(cmd, path):
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                yield from walk(sub, [*path, name])
        else:
            yield " ".join(path), cmd

    yield from walk(typer.main.get_command(root_app), [])


def _key(param) -> str:
    longs = [o for o in getattr(param, "opts", []) if o.startswith("--")]
    return longs[0] if longs and param.param_type_name == "option" else param.name


def _default(where: Any, name: str) -> Any:
    import dataclasses
    import inspect

    if dataclasses.is_dataclass(where):
        f = {f.name: f for f in dataclasses.fields(where)}[name]
        return f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if inspect.ismodule(where):  # a module-level constant (a table or a fallback value)
        return getattr(where, name)
    return inspect.signature(where).parameters[name].default


def _same(shown: str, value: Any) -> bool:
    """``shown`` is how a user types ``value``: 256, 0.95, 1e-05, a,b,c, on/off."""
    if isinstance(value, bool):
        return shown == ("on" if value else "off")
    if isinstance(value, (list, tuple)):
        parts = shown.split(",")
        return len(parts) == len(value) and all(_same(p, v) for p, v in zip(parts, value))
    if isinstance(value, (int, float)):
        try:
            number = int(shown) if isinstance(value, int) else float(shown)
        except ValueError:
            return False
        return number == value
    return shown == str(value)


def _check_per_model(field: str, shown: str) -> list[str]:
    got = dict(part.rsplit(" ", 1) for part in shown.split(", "))
    want = {m: v for m, d in MODEL_DEFAULTS.items() for k, v in d.items() if k == field}
    problems = []
    if set(got) != set(want):
        problems.append(f"models {sorted(got)} != MODEL_DEFAULTS {sorted(want)}")
    for model, value in want.items():
        text = got.get(model, "")
        if value is None and field == "lr":
            ok = text == f"{JIT_BLR:g}*batch/256"
        else:
            ok = _same(text, value)
        if not ok:
            problems.append(f"{model}: shown {text!r}, MODEL_DEFAULTS {value!r}")
    return problems


def _check_variants(shown: str) -> list[str]:
    base, _, rest = shown.partition("; ")
    want_base = _default(BackboneConfig, "encoder_depth")
    others = dict(part.rsplit(" ", 1) for part in rest.split(", ")) if rest else {}
    want = {m: variant(m)["encoder_depth"] for m in model_names()
            if variant(m).get("encoder_depth", want_base) != want_base}
    problems = [] if _same(base, want_base) else [f"shown {base!r}, BackboneConfig {want_base!r}"]
    if {m: int(v) for m, v in others.items()} != want:
        problems.append(f"shown {others}, variants {want}")
    return problems


def _check_cadence(shown: str) -> list[str]:
    """ckpt_every is None (resolved per run): the help shows default_ckpt_every's floor and ceiling."""
    want = (f"{default_ckpt_every(1)}, or a tenth of --steps when that is more, "
            f"at most {default_ckpt_every(10 ** 12)}")
    problems = [] if _default(TrainConfig, "ckpt_every") is None else ["TrainConfig.ckpt_every is no longer None"]
    if shown != want:
        problems.append(f"shown {shown!r}, default_ckpt_every gives {want!r}")
    return problems


def problems_of(root_app: typer.Typer) -> list[str]:
    """Every disagreement between a default shown in ``root_app``'s help and the field that defines it."""
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    for path, cmd in _leaves(root_app):
        if not isinstance(cmd, HelpDefaultsCommand):
            problems.append(f"{path}: not a HelpDefaultsCommand, its help would show the default markers")
        raw = {_key(p): (p.help or "") for p in cmd.params}
        fill_help_defaults(cmd)
        for param in cmd.params:
            key = (path, _key(param))
            name = f"{path} {key[1]}"
            text = (param.help or "").replace("\\[", "[")
            # 1. no default written by hand: outside the derived markers, only the listed descriptions
            rest = _MARKER.sub("", raw[key[1]]).replace("\\[", "[")
            for phrase in DESCRIBED.get(key, ()):
                if phrase not in rest:
                    problems.append(f"{name}: the described default {phrase!r} is gone; update DESCRIBED")
                rest = rest.replace(phrase, "")
            if re.search(r"default", rest, re.IGNORECASE):
                problems.append(f"{name}: a default written by hand in {raw[key[1]]!r}; use help_default()")
            # 2. each derived default equals its field
            derived = _MARKER.findall(raw[key[1]])
            shown = [s for s in _SHOWN.findall(text) if f"[default: {s}]" not in DESCRIBED.get(key, ())]
            if len(shown) != len(derived):
                problems.append(f"{name}: shows {shown} but derives {len(derived)} default(s)")
            for value_text in shown:
                if key not in FIELDS:
                    problems.append(f"{name}: shows [default: {value_text}] but the test table has no field for it")
                    continue
                seen.add(key)
                where, field, how = FIELDS[key]
                if how == PER_MODEL:
                    problems += [f"{name}: {p}" for p in _check_per_model(field, value_text)]
                    continue
                if how == "variants":
                    problems += [f"{name}: {p}" for p in _check_variants(value_text)]
                    continue
                if how == "cadence":
                    problems += [f"{name}: {p}" for p in _check_cadence(value_text)]
                    continue
                value = _default(where, field)
                if isinstance(how, dict) and value in how:
                    ok = value_text == how[value]
                elif callable(how):
                    ok = value_text == how(value)
                else:
                    ok = _same(value_text, value)
                if not ok:
                    problems.append(f"{name}: shows [default: {value_text}] but {getattr(where, '__name__', where)}"
                                    f".{field} is {value!r}")
            # 3. a default click shows by itself (the option has a value, not None) is no config field
            flag_off = getattr(param, "is_flag", False) and not param.default
            if param.default is not None and not flag_off and getattr(param, "show_default", True) is not False:
                if CLICK_SHOWN.get(key) != str(param.default):
                    problems.append(f"{name}: click shows default {param.default!r} written in the command; "
                                    "keep the option None and use help_default()")
    if root_app is app:
        missing = sorted(set(FIELDS) - seen)
        if missing:
            problems.append(f"options that no longer show their default: {missing}")
    return problems


def test_every_shown_default_is_the_field_default():
    assert problems_of(app) == []


def test_help_output_shows_the_filled_defaults():
    for path, _ in _leaves(app):
        out = runner.invoke(app, [*path.split(), "--help"]).output
        assert "{default of" not in out, (path, out)
        assert "…" not in out  # no option text cut with an ellipsis
    out = runner.invoke(app, ["probe", "--help"]).output
    assert f"[default: {ProbeConfig.batch_size}]" in out and "[default: 0.2]" in out


def _one_command_app(help_text: str) -> typer.Typer:
    """A stand-in for ``extract`` with one ``--resolution`` option of the given help."""
    fake = typer.Typer()

    @fake.command("extract", cls=HelpDefaultsCommand)
    def extract(resolution: int = typer.Option(None, "--resolution", help=help_text)) -> None:
        """Stand-in."""

    @fake.command("other", cls=HelpDefaultsCommand)
    def other() -> None:
        """Stand-in."""

    return fake


@pytest.mark.parametrize("help_text, complaint", [
    ("ADM centre-crop size [default: 257].", "written by hand"),
    ("ADM centre-crop size (default 256).", "written by hand"),
    (help_default("spatialprobe.extract:ExtractConfig", "shard_size", "ADM centre-crop size"), "ExtractConfig.resolution is 256"),
])
def test_a_default_that_disagrees_is_caught(help_text, complaint):
    problems = problems_of(_one_command_app(help_text))
    assert any(complaint in p for p in problems), problems


def test_a_field_change_reaches_the_help(monkeypatch):
    import dataclasses

    field = {f.name: f for f in dataclasses.fields(ExtractConfig)}["shard_size"]
    monkeypatch.setattr(field, "default", 4096)
    out = runner.invoke(app, ["extract", "--help"]).output
    assert "[default: 4096]" in out and "[default: 1024]" not in out


def test_building_the_cli_stays_light():
    code = ("import sys, typer, spatialprobe.cli as c; typer.main.get_command(c.app); "
            "print([m for m in ('torch', 'numpy', 'pandas', 'scipy') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
