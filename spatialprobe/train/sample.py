"""Samplers and ``spatialprobe sample``.

Time conventions differ by family and each sampler keeps its own:

- SiT (t = 1 noise, t = 0 data; the model gives the velocity v of ``x_t = (1 − t)x + tε``):
  :func:`sit_sde` Euler–Maruyama on ``linspace(1, 0.04, N)`` then a deterministic mean step to 0 (the REPA
  default, N = 250), and :func:`sit_ode` Euler or Heun on ``linspace(1, 0, N + 1)`` (Heun except the last step).
  Guidance ``v = v_u + w(v_c − v_u)`` is active iff ``low ≤ t ≤ high``.
- JiT (t = 0 noise, t = 1 data; the model predicts x̂ and ``v = (x̂ − z)/max(1 − t, 0.05)``): :func:`jit_ode`
  Heun on ``linspace(0, 1, N + 1)`` with a final Euler step (N = 50). Guidance on x̂ is active iff
  ``t < high`` and (``low == 0`` or ``t > low``).

In Heun's corrector the SiT sampler decides guidance by the step's own time ``t_cur`` (as REPA's
``ldm/samplers.py``), not by ``t_next``. Labels are class-balanced (``i mod num_classes``, JiT's evaluation) or
random (``randint``, REPA's ``generate.py``), by default per family or from the run's recipe. Output:
``samples.npz`` with ``arr_0`` uint8 [N, H, W, 3] (ADM layout) and ``labels``, plus PNGs.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable

import torch

from ..errors import ConfigError
from ..schema import CONFIG_JSON, SAMPLES_NPZ
from .config import SAMPLE_LABELS, SAMPLE_PRECISION, SAMPLE_UINT8

log = logging.getLogger(__name__)

VelocityFn = Callable[..., torch.Tensor]  # (x, t[, t_guide]) -> dx/dt in the family's own time


# ------------------------------------------------------------------ SiT (t = 1 noise)


def sit_score(v: torch.Tensor, x: torch.Tensor, t: float) -> torch.Tensor:
    """Score of the linear path from the velocity: s = (−(1 − t)·v − x)/t."""
    return (-(1 - t) * v - x) / t


@torch.no_grad()
def sit_sde(fn: VelocityFn, x: torch.Tensor, *, steps: int = 250, t_last: float = 0.04,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Euler–Maruyama for dx = (v − ½g²s)dt + g dW̄ with g² = 2t, from t = 1 to ``t_last`` in ``steps − 1``
    stochastic steps, then one deterministic mean step to t = 0 (NFE = ``steps``)."""
    ts = torch.linspace(1.0, t_last, steps, dtype=torch.float64).tolist() + [0.0]
    for i in range(steps):
        t, t_next = ts[i], ts[i + 1]
        dt = t_next - t
        v = fn(x, t)
        drift = v - t * sit_score(v, x, t)  # ½·g² = t
        if i < steps - 1:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + drift * dt + math.sqrt(2 * t) * math.sqrt(abs(dt)) * noise
        else:
            x = x + drift * dt
    return x


@torch.no_grad()
def sit_ode(fn: VelocityFn, x: torch.Tensor, *, steps: int = 50, heun: bool = True) -> torch.Tensor:
    """Probability-flow ODE dx/dt = v from t = 1 to 0 on ``linspace(1, 0, steps + 1)``; Heun (2nd order) except
    for the last step, or Euler."""
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
    for i in range(steps):
        t, t_next = ts[i], ts[i + 1]
        v = fn(x, t)
        x_next = x + (t_next - t) * v
        if heun and i < steps - 1:  # the corrector guides (or not) by t_cur, as REPA's euler_sampler
            x_next = x + (t_next - t) * 0.5 * (v + fn(x_next, t_next, t))
        x = x_next
    return x


# ------------------------------------------------------------------ JiT (t = 0 noise)


@torch.no_grad()
def jit_ode(fn: VelocityFn, z: torch.Tensor, *, steps: int = 50, method: str = "heun") -> torch.Tensor:
    """JiT's ODE from t = 0 (noise) to 1 on ``linspace(0, 1, steps + 1)``: Heun for the first ``steps − 1``
    intervals and Euler for the last (NFE = 2·steps − 1), or Euler throughout."""
    if method not in ("heun", "euler"):
        raise ConfigError(f"JiT sampler {method!r} must be heun or euler.")
    ts = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64).tolist()
    for i in range(steps):
        t, t_next = ts[i], ts[i + 1]
        v = fn(z, t)
        z_next = z + (t_next - t) * v
        if method == "heun" and i < steps - 1:
            z_next = z + (t_next - t) * 0.5 * (v + fn(z_next, t_next))
        z = z_next
    return z


# ------------------------------------------------------------------ guidance


def sit_guidance_active(t: float, interval: tuple[float, float]) -> bool:
    """SiT time: guidance iff low ≤ t ≤ high (t = 1 is noise)."""
    return interval[0] <= t <= interval[1]


def jit_guidance_active(t: float, interval: tuple[float, float]) -> bool:
    """JiT time: guidance iff t < high and (low == 0 or t > low) (t = 0 is noise)."""
    lo, hi = interval
    return t < hi and (lo == 0 or t > lo)


def sit_velocity_fn(net, y: torch.Tensor, *, null_class: int, cfg: float = 1.0,
                    interval: tuple[float, float] = (0.0, 1.0)) -> VelocityFn:
    """(x, t[, t_guide]) -> guided SiT velocity (guidance on all latent channels), guided iff ``t_guide``
    (default ``t``) is inside the interval."""

    def fn(x: torch.Tensor, t: float, t_guide: float | None = None) -> torch.Tensor:
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.float32)
        if cfg != 1.0 and sit_guidance_active(t if t_guide is None else t_guide, interval):
            v = net(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([y, torch.full_like(y, null_class)]),
                    project=False)[0]
            v_c, v_u = v.chunk(2)
            return v_u + cfg * (v_c - v_u)
        return net(x, tt, y, project=False)[0]

    return fn


def jit_velocity_fn(net, y: torch.Tensor, *, null_class: int, cfg: float = 1.0,
                    interval: tuple[float, float] = (0.1, 1.0), t_eps: float = 0.05) -> VelocityFn:
    """(z, t) -> JiT velocity from the guided x̂: (x̂ − z)/max(1 − t, t_eps)."""

    def fn(z: torch.Tensor, t: float) -> torch.Tensor:
        tt = torch.full((z.shape[0],), t, device=z.device, dtype=torch.float32)
        if cfg != 1.0 and jit_guidance_active(t, interval):
            xh = net(torch.cat([z, z]), torch.cat([tt, tt]), torch.cat([y, torch.full_like(y, null_class)]),
                     project=False)[0]
            x_c, x_u = xh.chunk(2)
            x_hat = x_u + cfg * (x_c - x_u)
        else:
            x_hat = net(z, tt, y, project=False)[0]
        return (x_hat - z) / max(1.0 - t, t_eps)

    return fn


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """Class-balanced labels: 0, 1, ..., C−1, 0, 1, ... (every prefix is as balanced as possible)."""
    return torch.arange(n) % num_classes


def random_labels(n: int, num_classes: int, seed: int = 0) -> torch.Tensor:
    """Uniform random labels (REPA's ``generate.py``: ``randint(0, C)``), from a generator seeded by ``seed``."""
    return torch.randint(0, num_classes, (n,), generator=torch.Generator().manual_seed(seed))


#: the official label distribution of each family's evaluation
FAMILY_LABELS = SAMPLE_LABELS


def images_to_uint8(x: torch.Tensor, mode: str = "truncate") -> torch.Tensor:
    """[−1, 1] images -> uint8: ``truncate`` (ADM, ``((x + 1)·127.5)`` clamped and cast) or ``round`` (JiT:
    ``round(clip((x + 1)/2·255, 0, 255))``)."""
    if mode == "round":
        return torch.round(((x.float() + 1) / 2 * 255).clamp(0, 255)).to(torch.uint8)
    from .vae import to_uint8

    return to_uint8(x)


# ------------------------------------------------------------------ driver

#: an EMA still made of more than this fraction of the random initialisation has not learned yet
EMA_INIT_LIMIT = 0.1


def ema_init_fraction(decay: float, step: int) -> float:
    """Weight of the initial (random) parameters in an EMA after ``step`` updates: ``decay ** step``."""
    return float(decay) ** int(step)


def choose_weights(requested: str, state: dict) -> str:
    """The weights to sample from. ``auto`` takes the first EMA unless the run is too short for it (its
    decay ** steps > :data:`EMA_INIT_LIMIT`: EMA 0.9999 after 80 steps is 99 % the random init and gives
    flat grey images); then the raw model, with a note. An explicit EMA that has not moved is used, with a
    warning."""
    decays = list((state.get("config") or {}).get("ema_decays") or [])
    step = int(state.get("step", 0))
    k = {"auto": 0, "ema": 0, "ema1": 0, "ema2": 1}.get(requested)
    if k is None or k >= len(decays):
        return "model" if requested == "auto" and not decays else requested
    frac = ema_init_fraction(decays[k], step)
    if frac <= EMA_INIT_LIMIT:
        return "ema" if requested == "auto" else requested
    why = (f"after {step} step{'' if step == 1 else 's'} the EMA (decay {decays[k]:g}) is still {100 * frac:.0f} % the random "
           f"initialisation")
    if requested == "auto":
        log.warning("%s: sampling from the raw model weights (--weights model); pass --weights ema to force the EMA.", why)
        return "model"
    log.warning("%s: samples will look like noise or flat grey; --weights model uses the trained weights.", why)
    return requested


def sample(config=None, *, config_file=None, **overrides) -> Path:
    """Generate images from a training run; returns the output folder (``samples.npz``, ``png/``, ``config.json``).

    ``config`` is a :class:`~spatialprobe.train.config.SampleConfig`, or pass ``config_file`` + overrides.
    """
    import dataclasses

    import numpy as np
    from tqdm.auto import tqdm

    from ..config import resolve, write_config
    from ..runtime import resolve_device
    from .config import SampleConfig
    from .loop import load_run
    from .vae import decode, to_uint8

    from ..config import load_config_file
    from .recipes import explicit_fields, resolve_sample

    given = {k for k, v in overrides.items() if v is not None}
    if config is None:
        config = resolve(SampleConfig, config_file, **overrides)
        explicit = given | ({str(k).replace("-", "_") for k in load_config_file(config_file)} if config_file else set())
    else:
        explicit = explicit_fields(config) | given
        if overrides:
            config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    c = config
    from ..checks import check_device

    check_device(c.device)
    device = resolve_device(c.device)
    model, state = load_run(c.run, weights="ema" if c.weights == "auto" else c.weights, device=device)
    weights = choose_weights(c.weights, state)
    if weights != (c.weights if c.weights != "auto" else "ema"):
        model, state = load_run(c.run, weights=weights, device=device)
    fam = state["family"]
    c = resolve_sample(c, explicit, (state.get("config") or {}).get("recipe"))  # defaults < recipe < file < flags
    sampler = c.sampler or ("sde" if fam == "sit" else "heun")
    valid = ("sde", "ode-euler", "ode-heun") if fam == "sit" else ("heun", "euler")
    if sampler not in valid:
        raise ConfigError(f"Sampler {sampler!r} does not fit a {fam} model; use one of {', '.join(valid)}.")
    steps = c.steps or (250 if sampler == "sde" else 50)
    interval = tuple(c.interval) if c.interval else ((0.0, 1.0) if fam == "sit" else (0.1, 1.0))
    if len(interval) != 2:
        raise ConfigError(f"interval {c.interval!r} needs two numbers: low,high.")
    out = Path(c.out) if c.out else Path(state["path"]).parent.parent / f"samples-{state['step']:07d}"
    from ..checks import prepare_out_dir

    prepare_out_dir(out)
    num_classes = int(state["model_args"]["num_classes"])
    label_rule = c.labels or FAMILY_LABELS[fam]
    labels = balanced_labels(c.n, num_classes) if label_rule == "balanced" else random_labels(c.n, num_classes, c.seed)
    precision = c.precision or SAMPLE_PRECISION
    uint8 = c.uint8 or SAMPLE_UINT8
    noise_scale = float((state.get("config") or {}).get("noise_scale") or 1.0)  # JiT; runs before it had 1.0
    vae = None
    if fam == "sit":
        from .vae import load_vae

        lat = state["latent"]
        vae, _ = load_vae(lat["vae"], weights_dir=c.weights_dir, device=device)
        scale, bias = torch.tensor(lat["scale"]), torch.tensor(lat["bias"])
    mc = model.cfg
    images = []
    import contextlib

    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    for b0 in tqdm(range(0, c.n, c.batch_size), desc=f"sample {sampler}", unit="batch"):
        y = labels[b0:b0 + c.batch_size].to(device)
        g = torch.Generator(device=device).manual_seed(c.seed * 1_000_003 + b0)
        x0 = torch.randn((len(y), mc.in_channels, mc.input_size, mc.input_size), generator=g, device=device)
        if fam == "sit":
            fn = sit_velocity_fn(model, y, null_class=model.null_class, cfg=c.cfg, interval=interval)
            with autocast:
                if sampler == "sde":
                    z = sit_sde(fn, x0, steps=steps, generator=g)
                else:
                    z = sit_ode(fn, x0, steps=steps, heun=sampler == "ode-heun")
            x = decode(vae, z.float(), scale, bias)
        else:
            fn = jit_velocity_fn(model, y, null_class=model.null_class, cfg=c.cfg, interval=interval)
            with autocast:
                x = jit_ode(fn, x0 * noise_scale, steps=steps, method=sampler)
        images.append(images_to_uint8(x, uint8).permute(0, 2, 3, 1).cpu())
    arr = torch.cat(images).numpy()
    np.savez(out / SAMPLES_NPZ, arr_0=arr, labels=labels.numpy())
    if c.png:
        from PIL import Image

        (out / "png").mkdir(exist_ok=True)
        for i, im in enumerate(arr):
            Image.fromarray(im).save(out / "png" / f"{i:06d}_{int(labels[i])}.png")
    write_config(out / CONFIG_JSON, c, checkpoint=state["path"], step=state["step"], family=fam, weights_used=weights,
                 sampler=sampler, steps=steps, interval=list(interval), labels_rule=label_rule,
                 sampling_precision=precision, uint8_rule=uint8, noise_scale=noise_scale,
                 recipe=(state.get("config") or {}).get("recipe"))
    log.info("wrote %d samples to %s", len(arr), out)
    return out
