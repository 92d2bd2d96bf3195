"""Official recipes: each one replays a paper's or README's command (training, sampling and evaluation).

``--recipe NAME`` (or ``recipe:`` in a config file, ``training.recipe`` in a study) fills every field the
recipe sets that was not given: defaults < recipe < YAML/JSON file < flags (and keyword arguments). The
resolved config and the recipe's record go into ``config.json``; ``spatialprobe sample`` on the run takes its
sampling fields (sampler, steps, CFG scale and interval, labels, bf16, rounding) from the recipe unless given.

The values, with their sources (iREPA ``99ad4ac``, JiT README, PixelREPA ``5181608``), are in
``docs/pixelrepa-and-recipes.md`` §2; :data:`RECIPES` is that table as data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError, UnknownNameError, did_you_mean

#: fields a recipe may set that this version has no option for, with the value that means "off" (none today:
#: every field of the table is a TrainConfig/SampleConfig field)
_NEUTRAL: dict[str, Any] = {}


@dataclass(frozen=True)
class Recipe:
    """One official recipe."""

    name: str
    family: str                       #: sit | jit: the models it may be used with
    command: str                      #: the official command it reproduces
    source: str                       #: where the values come from
    lr_rule: str                      #: how the learning rate follows the batch
    train: Mapping[str, Any]          #: TrainConfig fields
    sample: Mapping[str, Any]         #: SampleConfig fields
    eval: Mapping[str, Any]           #: evaluation protocol: protocol (adm | jit), ref, n
    notes: str = ""

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["train"], d["sample"], d["eval"] = dict(self.train), dict(self.sample), dict(self.eval)
        return d


# ------------------------------------------------------------------------------------------ the table

_SIT = dict(batch_size=256, lr=1e-4, warmup_epochs=0.0, steps=400_000, betas=[0.9, 0.999], grad_clip=1.0,
            ema_decays=[0.9999], label_dropout=0.1, hflip=False, resolution=256, vae="sd-vae-ft-mse")
_SIT_SAMPLE = dict(sampler="sde", steps=250, cfg=1.0, interval=[0.0, 1.0], labels="random", precision="fp32",
                   uint8="truncate")
_ADM = dict(protocol="adm", ref="VIRTUAL_imagenet256_labeled.npz", n=50_000)
_JIT = dict(lr=None, warmup_epochs=5.0, epochs=600.0, batch_size=1024, betas=[0.9, 0.95], grad_clip=0.0,
            ema_decays=[0.9999, 0.9996], label_dropout=0.1, hflip=True, resolution=256, noise_scale=1.0,
            proj_dropout=0.0)
_JIT_SAMPLE = dict(sampler="heun", steps=50, interval=[0.1, 1.0], labels="balanced", precision="bf16",
                   uint8="round")
_JIT_EVAL = dict(protocol="jit", ref="jit_in256_stats.npz", n=50_000)

_LDM_CMD = ("cd ldm && accelerate launch train.py --config configs/irepa.yaml --model=\"{model}\" "
            "--enc-type=\"pe-vit-g\" --encoder-depth={depth} --data-dir=../data --exp-name=\"{exp}\"; "
            "torchrun --nproc_per_node=8 generate.py --model=\"{model}\" --ckpt=exps/{exp}/checkpoints/0400000.pt "
            "--num-fid-samples=50000 --sample-dir=samples  (ADM evaluator on the samples)")
_JIT_CMD = ("torchrun --nproc_per_node=8 main_jit.py --model {model} --proj_dropout {drop} --P_mean -0.8 --P_std 0.8 "
            "--img_size {side} --noise_scale {noise} --batch_size 128 --blr 5e-5 --epochs 600 --warmup_epochs 5 "
            "--gen_bsz 256 --num_images 50000 --cfg {cfg} --interval_min 0.1 --interval_max 1.0 "
            "--output_dir ${{OUTPUT_DIR}} --resume ${{OUTPUT_DIR}} --data_path ${{IMAGENET_PATH}} --online_eval")
_PR_CMD = ("torchrun --nproc_per_node=8 --nnodes=1 --node_rank=0 main_pixelREPA.py --model {model} --mta {mta} "
           "--proj_dropout {drop} --P_mean -0.8 --P_std 0.8 --img_size 256 --noise_scale 1.0 --batch_size 128 "
           "--blr 5e-5 --epochs 600 --warmup_epochs 5 --gen_bsz 128 --num_images 50000 --cfg {cfg} "
           "--interval_min 0.1 --interval_max 1.0 --output_dir ${{OUTPUT_DIR}} --resume ${{OUTPUT_DIR}} "
           "--data_path ${{IMAGENET_PATH}} --online_eval --eval_freq 10")
_JIT_LR = "lr = 5e-5 x global batch / 256 (JiT's blr); warm-up over 5 epochs, then constant"


def _sit(name: str, model: str, depth: int, exp: str, notes: str) -> Recipe:
    return Recipe(
        name, "sit", _LDM_CMD.format(model=model.upper().replace("SIT", "SiT"), depth=depth, exp=exp),
        "iREPA README (End2End-Diffusion/iREPA@99ad4ac), ldm/train.py and ldm/generate.py defaults",
        "constant 1e-4 (no scaling with the batch), no warm-up",
        {**_SIT, "model": model, "method": "irepa-official-ldm", "teacher": "pe-vit-g", "encoder_depth": depth},
        dict(_SIT_SAMPLE), dict(_ADM), notes)


def _jit_paper(name: str, model: str, cfg: float, drop: float, side: int = 256, noise: float = 1.0) -> Recipe:
    official = {"jit-b/16": "JiT-B/16", "jit-l/16": "JiT-L/16", "jit-h/16": "JiT-H/16", "jit-b/32": "JiT-B/32"}[model]
    return Recipe(
        name, "jit", _JIT_CMD.format(model=official, drop=drop, side=side, noise=noise, cfg=cfg),
        "JiT README (LTH14/JiT): training script and the evaluation CFG of the released models",
        _JIT_LR,
        {**_JIT, "model": model, "method": "none", "teacher": None, "proj_dropout": drop, "resolution": side,
         "noise_scale": noise},
        {**_JIT_SAMPLE, "cfg": cfg},
        {**_JIT_EVAL, "ref": f"jit_in{side}_stats.npz"},
        "plain JiT (no alignment); 8 GPUs x 128 = global batch 1024, lr 2e-4")


def _pixelrepa(name: str, model: str, mta: str, cfg: float, drop: float, depth: int) -> Recipe:
    return Recipe(
        name, "jit", _PR_CMD.format(model=model.replace("jit", "JiT").upper().replace("JIT", "JiT"), mta=mta,
                                    drop=drop, cfg=cfg),
        "PixelREPA README L78-124 (kaist-cvml/PixelREPA@5181608), denoiser_pixelREPA.py, engine_pixelREPA.py",
        _JIT_LR,
        {**_JIT, "model": model, "method": "pixelrepa", "teacher": "dinov2-vit-b-p16", "proj_dropout": drop,
         "encoder_depth": depth, "proj_coeff": 0.1, "mask_ratio": 0.2, "adapter_depth": 2},
        {**_JIT_SAMPLE, "cfg": cfg},
        dict(_JIT_EVAL),
        "aligns the tokens after the JiT encoder blocks (in_context_start) through a 2-block masked adapter; "
        "loss weight 0.1; the EMA covers the JiT net only")


def _rows() -> list[Recipe]:
    return [
        _sit("irepa-readme-sit-b", "sit-b/2", 4, "sitb2-pe-vit-g-irepa",
             "the README's SiT-B/2 iREPA command as run: configs/irepa.yaml leaves the conv kernel at the "
             "argparse default 1 (preset irepa-official-ldm; --kernel-size 3 gives the paper's 3x3)"),
        _sit("irepa-readme-sit-xl", "sit-xl/2", 8, "sitxl2-pe-vit-g-irepa",
             "the README's iREPA command with --model SiT-XL/2 and REPA's XL alignment depth 8 (the study's enc8 "
             "runs); 1x1 conv as run (preset irepa-official-ldm)"),
        Recipe("irepa-readme-jit-b", "jit",
               "cd jit && torchrun --nproc_per_node=4 main_jit.py --config configs/irepa.yaml --model JiT-B/16 "
               "--enc_type=\"pe-vit-g\" --encoder_depth=4 --data_path=../data --output_dir=\"exps/jit-pe-vit-g-irepa\"",
               "iREPA README (End2End-Diffusion/iREPA@99ad4ac), jit/main_jit.py defaults, jit/configs/irepa.yaml",
               _JIT_LR,
               {**_JIT, "model": "jit-b/16", "method": "irepa", "teacher": "pe-vit-g", "batch_size": 512,
                "epochs": 200.0, "encoder_depth": 4},
               {**_JIT_SAMPLE, "cfg": 1.0, "interval": [0.0, 1.0]},
               dict(_JIT_EVAL),
               "4 GPUs x 128 = global batch 512, lr 1e-4, 200 epochs (main_jit.py default); conv 3x3, gamma 0.8, "
               "coeff 0.5; online evaluation without CFG"),
        _jit_paper("jit-paper-b", "jit-b/16", 3.0, 0.0),
        _jit_paper("jit-paper-l", "jit-l/16", 2.4, 0.0),
        _jit_paper("jit-paper-h", "jit-h/16", 2.2, 0.2),
        _jit_paper("jit-paper-512", "jit-b/32", 3.0, 0.0, side=512, noise=2.0),
        _pixelrepa("pixelrepa-paper-b", "jit-b/16", "MTA-B/16", 3.1, 0.0, 4),
        _pixelrepa("pixelrepa-paper-l", "jit-l/16", "MTA-L/16", 2.8, 0.0, 8),
        _pixelrepa("pixelrepa-paper-h", "jit-h/16", "MTA-H/16", 2.4, 0.2, 10),
    ]


RECIPES: dict[str, Recipe] = {r.name: r for r in _rows()}


def names() -> list[str]:
    return list(RECIPES)


def get(name: str) -> Recipe:
    """The recipe called ``name`` (unknown names fail with the valid ones)."""
    key = str(name).strip().lower()
    if key not in RECIPES:
        raise UnknownNameError(f"Unknown recipe {name!r}; use one of {', '.join(RECIPES)} "
                               f"(spatialprobe ls recipes).{did_you_mean(key, list(RECIPES))}")
    return RECIPES[key]


def recipe_record(name: str | None) -> dict[str, Any] | None:
    """The recipe as recorded in ``config.json`` (None without one)."""
    return None if name is None else get(name).as_dict()


# ------------------------------------------------------------------------------------------ applying


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _defaults(cls: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
    return out


def explicit_fields(obj: Any) -> set[str]:
    """Fields of a config object that differ from their dataclass defaults (what a caller set by hand)."""
    d = _defaults(type(obj))
    return {k for k in _field_names(type(obj)) if k not in d or getattr(obj, k) != d[k]}


def apply(cfg: Any, recipe: Recipe, values: Mapping[str, Any], explicit: set[str], *, what: str) -> Any:
    """``cfg`` with every field of ``values`` that is not in ``explicit`` set from the recipe.

    A field this version has no option for fails, unless the recipe's value is the neutral one."""
    have = _field_names(type(cfg))
    missing = {k: v for k, v in values.items() if k not in have and _NEUTRAL.get(k, object()) != v}
    if missing:
        listed = ", ".join(f"{k}={v!r}" for k, v in missing.items())
        raise ConfigError(f"Recipe {recipe.name!r} sets {listed}, which this version's {what} has no option for; "
                          "update spatialprobe, or pick another recipe.")
    changes = {k: (list(v) if isinstance(v, (list, tuple)) else v)
               for k, v in values.items() if k in have and k not in explicit}
    return dataclasses.replace(cfg, **changes)


def resolve_train(config: Any, config_file: str | Path | None, overrides: Mapping[str, Any]):
    """The TrainConfig of a run: defaults < recipe < config file < overrides (non-None keyword arguments).

    ``config`` (a ready TrainConfig) counts as given in the fields that differ from the defaults."""
    from ..config import load_config_file, resolve
    from .config import TrainConfig
    from .models import canonical, family

    given = {k for k, v in overrides.items() if v is not None}
    if config is None:
        config = resolve(TrainConfig, config_file, **overrides)
        explicit = set(given)
        if config_file is not None and not isinstance(config_file, TrainConfig):
            explicit |= {str(k).replace("-", "_") for k in load_config_file(config_file)}
    else:
        explicit = explicit_fields(config) | given
        if given:
            config = dataclasses.replace(config, **{k: overrides[k] for k in given})
    if config.recipe is None:
        return config
    r = get(config.recipe)
    config = dataclasses.replace(config, recipe=r.name)
    if "model" in explicit:
        fam = family(canonical(config.model))
        if fam != r.family:
            raise ConfigError(f"Recipe {r.name!r} is a {r.family.upper()} recipe but model {config.model!r} is a "
                              f"{fam.upper()} model: pick a {fam} recipe (spatialprobe ls recipes) or a {r.family} "
                              "model.")
    values = dict(r.train)
    if {"steps", "epochs"} <= explicit and config.epochs is not None:
        raise ConfigError(f"Both steps ({config.steps}) and epochs ({config.epochs}) are given: keep one.")
    if "steps" in explicit:  # a length given by hand replaces the recipe's, whichever unit it uses
        values.pop("epochs", None)
        explicit = explicit | {"epochs"}
    if "epochs" in explicit:
        values.pop("steps", None)
    return apply(config, r, values, explicit, what="training")


def resolve_sample(config: Any, explicit: set[str], recipe_name: str | None):
    """A SampleConfig with the fields of the run's recipe that were not given."""
    if not recipe_name:
        return config
    r = get(recipe_name)
    return apply(config, r, r.sample, explicit, what="sampling")


# ------------------------------------------------------------------------------------------ listing


def _show(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ",".join(_show(x) for x in v)
    return str(v)


def format_table() -> str:
    """Every recipe with its fields and the official command it reproduces (``spatialprobe ls recipes``)."""
    blocks = []
    for r in RECIPES.values():
        t, s, e = r.train, r.sample, r.eval
        length = f"{_show(t['epochs'])} epochs" if t.get("epochs") else f"{t['steps']:,} steps"
        lines = [
            f"{r.name}  ({r.family})",
            f"  model {t['model']} @ {t['resolution']} px, method {t['method']}, teacher {t.get('teacher') or '-'}",
            f"  global batch {t['batch_size']}, {r.lr_rule}; {length}; warm-up {_show(t['warmup_epochs'])} epochs",
            "  align depth " + _show(t.get("encoder_depth", "size default")) + ", projector/γ/coeff from the method"
            + (f" (coeff {_show(t['proj_coeff'])})" if "proj_coeff" in t else "")
            + (f", proj dropout {_show(t['proj_dropout'])}" if "proj_dropout" in t else "")
            + (f", noise scale {_show(t['noise_scale'])}" if "noise_scale" in t else "")
            + f", EMA {_show(t['ema_decays'])}",
            f"  sample {s['sampler']} {s['steps']} steps, CFG {_show(s['cfg'])} on [{_show(s['interval'])}], "
            f"{s['labels']} labels, {s['precision']}, uint8 by {'rounding' if s['uint8'] == 'round' else 'truncation'}",
            f"  evaluate: {e['protocol']} protocol against {e['ref']}, {e['n']:,} samples",
            f"  official: {r.command}",
        ]
        if r.notes:
            lines.append(f"  note: {r.notes}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
