"""Training step costs in one run: plain step, teacher forward alone, REPA, iREPA (and PixelREPA) steps.

For each model the same batch goes through: a plain step (no alignment), the teacher's forward alone
(``repa.teacher_targets``: the teacher, resampling and spatial norm), and one step per aligned method. The
alignment overhead of a method is ``aligned step − plain step``; it should be the teacher forward plus a
projector, nothing more, so the table gives it as a ratio to the teacher forward, its excess
``(aligned − plain − teacher)`` as a percentage of the plain step, and the excess beyond the teacher and the
projector's own forward + backward (PixelREPA: its adapter's) ``(aligned − plain − teacher − projector)``,
then also beyond the projector's update (the loop's AdamW, and clipping where the recipe clips, over its
parameters alone) (target <= 10 %). The steps of a model are timed in interleaved rounds
(:func:`seconds_interleaved`: the median of single calls), so that a busy spell of a shared machine does not
land on one of them only.

Host synchronisations per step are counted in a separate, untimed pass: every call of
``Tensor.item/.tolist/.cpu/.numpy/__float__/__int__/__bool__`` (and ``.to('cpu')``) made inside the step
(on CUDA, also what ``torch.cuda.set_sync_debug_mode`` reports); target 0. ``--loop-syncs`` runs the real
training loop (``spatialprobe.train.loop.train``) for a few steps and counts the same calls per step
outside its logging and checkpoint steps, naming the line of each. ``--cache`` times the study's
teacher-token cache (a teacher run again over the same images) where it is importable.

    python benchmarks/bench_train.py --tiny                      # CPU: sit-tiny + jit-tiny, stand-in teacher
    python benchmarks/bench_train.py                             # CUDA: sit-b/2 + jit-b/16, DINOv2-B teacher
    python benchmarks/bench_train.py --tiny --loop-syncs --cache
    python benchmarks/bench_train.py --tiny --adamw              # + torch's AdamW variants (always on CUDA)
    python benchmarks/bench_train.py --batch-selection           # CPU: host cost of a step's batch at n = 1.28M

PixelREPA has a slot in the table: it is measured when ``pixelrepa`` is a training method, and shown as
skipped otherwise.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import types
import warnings
from typing import Any

import torch
import torch.nn as nn

ALIGNED = ("repa", "irepa", "pixelrepa")


# ---------------------------------------------------------------------------- host-synchronisation counter
_SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_SKIP_FILES = (_TORCH_DIR, os.sep + "contextlib.py", os.path.abspath(__file__))


def _caller() -> str:
    """file:line of the first frame outside torch, contextlib and this benchmark."""
    for fr in reversed(traceback.extract_stack()[:-2]):
        if not any(s in fr.filename for s in _SKIP_FILES):
            return f"{os.path.relpath(fr.filename)}:{fr.lineno}"
    return "?"


class SyncCounter:
    """Counts calls that force a device→host copy (a host synchronisation on a GPU), by caller line.

    On a CPU nothing actually waits, but each such call made by the project's code marks a place that
    would stall a GPU step. Calls made by torch itself on CPU tensors (host-side bookkeeping) and calls
    from data-loading code (``torch/utils/data``, host tensors) are not counted."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self._saved: dict[str, object] = {}
        self._cm = None

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def _wrap(self, name: str, orig):
        counter = self

        def wrapped(t, *a, **k):
            if name != "to" or _to_cpu(t, a, k):
                caller = sys._getframe(1).f_code.co_filename
                # torch's own host-side bookkeeping (e.g. AdamW's step counters live on the CPU) is not a
                # device sync; on a GPU, torch internals that do sync are reported by the sync debug mode
                if t.device.type != "cpu" or _TORCH_DIR not in caller:
                    stack = "".join(traceback.format_stack(limit=12))
                    if os.sep + "utils" + os.sep + "data" + os.sep not in stack:
                        counter.calls[f"{name} @ {_caller()}"] += 1
            return orig(t, *a, **k)

        return wrapped

    def __enter__(self) -> SyncCounter:
        for name in _SYNC_METHODS + ("to",):
            orig = getattr(torch.Tensor, name)
            self._saved[name] = orig
            setattr(torch.Tensor, name, self._wrap(name, orig))
        if torch.cuda.is_available():
            self._cm = warnings.catch_warnings(record=True)
            self._records = self._cm.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc) -> None:
        for name, orig in self._saved.items():
            setattr(torch.Tensor, name, orig)
        if self._cm is not None:
            torch.cuda.set_sync_debug_mode("default")
            for w in self._records:
                if "synchroniz" in str(w.message):
                    self.calls[f"cuda sync @ {w.filename}:{w.lineno}"] += 1
            self._cm.__exit__(*exc)


def _to_cpu(t: torch.Tensor, a, k) -> bool:
    dev = k.get("device", a[0] if a else None)
    return t.device.type != "cpu" and (dev == "cpu" or (isinstance(dev, torch.device) and dev.type == "cpu"))


# ---------------------------------------------------------------------------- teachers
class TinyTeacher(nn.Module):
    """CPU stand-in with the teacher interface: uint8 images -> ``.patch`` [B, T, D] on a ``.grid``.

    A p×p patchifier and two transformer layers (random init, frozen): a forward comparable to a tiny
    student's, so the CPU overhead ratio measures something."""

    def __init__(self, dim: int = 64, input_res: int = 64, patch: int = 8) -> None:
        super().__init__()
        self.name, self.embed_dim, self.input_res = "tiny-teacher", dim, input_res
        self.grid = (input_res // patch, input_res // patch)
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        layer = nn.TransformerEncoderLayer(dim, 4, 4 * dim, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor):
        x = images.float() / 127.5 - 1
        h = self.blocks(self.embed(x).flatten(2).transpose(1, 2))
        return types.SimpleNamespace(patch=h, grid=self.grid, prefix=None, layer="final")


def make_teacher(tiny: bool, device: torch.device, name: str | None = None):
    if tiny and not name:
        return TinyTeacher().to(device)
    from spatialprobe import encoders

    t = encoders.get(name or "dinov2-vit-b", pretrained=False, device=str(device))
    t.eval()
    return t


# ---------------------------------------------------------------------------- one training step
def available_methods() -> set[str]:
    from spatialprobe.train import presets

    return set(presets.METHODS)


class Step:
    """One training step as the loop does it: losses (teacher targets, denoising, projection), backward, and
    the loop's update (its AdamW, the family's gradient clipping and EMA decays: SiT clips at 1.0 and keeps
    one EMA, JiT does not clip and keeps two); on fixed inputs so only the step is measured."""

    def __init__(self, model: str, method: str, teacher, *, batch: int, device: torch.device, compile_: bool,
                 img_res: int) -> None:
        from spatialprobe.train import pixelrepa, presets
        from spatialprobe.train.config import MODEL_DEFAULTS
        from spatialprobe.train.ema import DenoiserEMA
        from spatialprobe.train.loop import make_optimizer
        from spatialprobe.train.models import build, family

        self.fam = family(model)
        recipe = MODEL_DEFAULTS[self.fam]
        self.grad_clip, self.decays = recipe["grad_clip"], list(recipe["ema_decays"])
        pre = presets.get(method, self.fam)
        self.pre = pre
        self.teachers = [teacher] if pre.align else []
        extra = {"encoder_depth": 4} if model in ("sit-b/2", "jit-b/16") else {}
        self.method = method
        if method == pixelrepa.METHOD:  # no projector: the masked adapter aligns instead
            kw = dict(num_classes=1000, z_dims=[], mask_token=True, **extra)
        else:
            kw = dict(num_classes=1000, z_dims=[t.embed_dim for t in self.teachers], projector=pre.projector,
                      kernel_size=pre.kernel_size, **extra)
        self.model = build(model, **kw).to(device)
        self.emas = DenoiserEMA(self.model, self.decays)
        run = types.SimpleNamespace(method=method, adapter_depth=pre.adapter_depth, mask_ratio=pre.mask_ratio)
        trainee, self.adapter = pixelrepa.attach(self.model, run, self.teachers)
        self.net = torch.compile(trainee) if compile_ else trainee
        self.opt = make_optimizer(trainee, lr=1e-4, betas=recipe["betas"], weight_decay=0.0)
        self.params = [p for p in trainee.parameters() if p.requires_grad]
        self.ac = torch.bfloat16 if device.type == "cuda" else None
        side, ch = self.model.cfg.input_size, self.model.cfg.in_channels
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(batch, ch, side, side, generator=gen).to(device)
        if self.fam == "jit":
            self.x = self.x.clamp(-1, 1)
        self.y = torch.randint(0, 1000, (batch,), generator=gen).to(device)
        self.imgs = torch.randint(0, 256, (batch, 3, img_res, img_res), dtype=torch.uint8, generator=gen).to(device)
        self.device, self.s = device, 0

    def __call__(self) -> None:
        from spatialprobe.train.loop import apply_update, step_generator, step_losses

        pre = self.pre
        out = step_losses(self.net, self.fam, self.x, self.y, teachers=self.teachers, teacher_images=self.imgs,
                          grid=self.model.grid, spnorm=pre.spnorm, gamma=pre.gamma, proj_coeff=pre.proj_coeff,
                          generator=step_generator(0, self.s, 0, self.device), null_class=1000,
                          label_dropout=0.1, autocast_dtype=self.ac, method=self.method)
        self.opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        apply_update(self.params, self.opt, self.grad_clip, self.emas)
        self.s += 1


def _projector_pass(st: Step):
    """Forward + backward of the step's projector(s) alone on student-shaped tokens (what alignment adds to
    the student besides the teacher)."""
    m = st.model
    z = torch.randn(st.x.shape[0], m.grid[0] * m.grid[1], m.cfg.hidden, device=st.x.device, requires_grad=True)
    t = torch.rand(st.x.shape[0], device=st.x.device)

    def run():
        ctx = torch.autocast(z.device.type, dtype=st.ac) if st.ac else contextlib.nullcontext()
        with ctx:
            if st.adapter is not None:  # PixelREPA: the masked transformer adapter takes the projector's place
                loss = st.adapter(z, t, st.y).float().square().mean()
            else:
                loss = sum(p(z).float().square().mean() for p in m.projectors)
        loss.backward()

    return run


def _projector_update(st: Step):
    """The update the step's projector(s) (PixelREPA: adapter) add: the loop's AdamW and, when the family's
    recipe clips, gradient clipping over their parameters alone (on a copy, with fixed random gradients)."""
    from spatialprobe.train.config import MODEL_DEFAULTS
    from spatialprobe.train.loop import make_optimizer

    mods = copy.deepcopy(nn.ModuleList([st.adapter] if st.adapter is not None else list(st.model.projectors)))
    params = [p for p in mods.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(p.device)
    opt = make_optimizer(mods, lr=1e-4, betas=MODEL_DEFAULTS[st.fam]["betas"], weight_decay=0.0)

    def run():
        if st.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, st.grad_clip)
        opt.step()

    return run


def seconds_per_call(fn, *, steps: int, warmup: int, device: torch.device, rounds: int = 3) -> float:
    """Best over ``rounds`` of the mean time of ``steps`` calls (after ``warmup`` calls)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(rounds):
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        sync()
        best = min(best, (time.perf_counter() - t0) / steps)
    return best


def syncs_per_call(fn, n: int = 2) -> tuple[float, collections.Counter]:
    with SyncCounter() as c:
        for _ in range(n):
            fn()
    return c.total / n, c.calls


def seconds_interleaved(fns: dict, *, steps: int, warmup: int, device: torch.device, rounds: int) -> dict:
    """The median time of one call of every function of ``fns``, over ``rounds`` × ``steps`` single calls
    (synchronised around each on CUDA), the rounds taken in turn (round r of each function, then round r + 1).

    Interleaved, a busy spell of a shared machine hits every function alike instead of the one measured
    during it; the median of single calls ignores the odd slow call (a page-faulting allocation, another
    job's burst), which in a mean of a few calls can move a 200 ms jit-tiny REPA step by 20 ms, half a plain
    step. Differences between the functions of one call are what the table reports."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(steps):
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_model(model: str, *, tiny: bool, batch: int, steps: int, warmup: int, device: torch.device,
                compile_: bool, teacher_name: str | None = None, methods=("none",) + ALIGNED,
                rounds: int = 3) -> list[dict]:
    """Rows for one model: plain, teacher forward, then each aligned method (skipped when unavailable).
    Every step of the model (and each projector pass) is timed in the same interleaved rounds."""
    from spatialprobe.train import repa

    teacher = make_teacher(tiny, device, teacher_name)
    img_res = teacher.input_res if tiny and not teacher_name else 256
    have = available_methods()
    rows: list[dict] = []
    make = lambda m: Step(model, m, teacher, batch=batch, device=device, compile_=compile_, img_res=img_res)  # noqa: E731
    fns: dict[str, Any] = {}
    aligned: dict[str, Step] = {}
    if "none" in methods:
        st = fns["none"] = make("none")
        fns["teacher"] = lambda st=st: repa.teacher_targets(teacher, st.imgs, st.model.grid, spnorm=True, gamma=0.6,
                                                            autocast_dtype=st.ac)
    for m in methods:
        if m == "none" or m not in have or (m == "pixelrepa" and not model.startswith("jit")):
            continue  # pixelrepa: a pixel-space (JiT) method only
        st = fns[m] = aligned[m] = make(m)
        fns[f"{m}:projector"] = _projector_pass(st)
        fns[f"{m}:projector update"] = _projector_update(st)
    sec = seconds_interleaved(fns, steps=steps, warmup=warmup, device=device, rounds=rounds)
    plain, tfwd = sec.get("none"), sec.get("teacher")
    if plain is not None:
        rows.append({"model": model, "what": "plain step (no alignment)", "s": plain, "batch": batch,
                     "syncs": syncs_per_call(fns["none"])[0]})
        rows.append({"model": model, "what": "teacher forward alone", "s": tfwd, "batch": batch, "syncs": None})
    for m in methods:
        if m == "none":
            continue
        if m not in have:
            rows.append({"model": model, "what": f"{m} step", "s": None, "batch": batch, "syncs": None,
                         "note": f"skipped: no '{m}' training method in this version"})
            continue
        if m not in aligned:
            continue
        n, where = syncs_per_call(aligned[m])
        proj, upd = sec[f"{m}:projector"], sec[f"{m}:projector update"]
        row = {"model": model, "what": f"{m} step", "s": sec[m], "batch": batch, "syncs": n,
               "sync_sites": dict(where), "projector_s": proj, "projector_update_s": upd}
        if plain is not None and tfwd:
            row["overhead_s"] = sec[m] - plain
            row["overhead_vs_teacher"] = (sec[m] - plain) / tfwd
            row["excess_pct_of_plain"] = 100 * (sec[m] - plain - tfwd) / plain
            row["excess_beyond_projector_pct"] = 100 * (sec[m] - plain - tfwd - proj) / plain
            row["excess_beyond_projector_update_pct"] = 100 * (sec[m] - plain - tfwd - proj - upd) / plain
        rows.append(row)
    return rows


def format_rows(rows: list[dict]) -> str:
    out = ["| model | step | batch | ms/step | steps/s | images/s | alignment overhead ms | overhead / teacher fwd "
           "| excess over teacher, % of plain step | projector (PixelREPA: adapter) fwd+bwd ms | excess over teacher "
           "+ projector fwd+bwd, % of plain step | projector update (AdamW, clip) ms | excess over teacher + "
           "projector fwd+bwd+update, % of plain step | host syncs/step |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["s"] is None:
            out.append(f"| {r['model']} | {r['what']} | {r['batch']} | – | – | – | – | – | – | – | – | – | – "
                       f"| {r.get('note', '')} |")
            continue
        ov = r.get("overhead_s")
        cells = ["", "", ""] if ov is None else \
            [f"{1e3 * ov:.1f}", f"{r['overhead_vs_teacher']:.2f}", f"{r['excess_pct_of_plain']:+.0f} %"]
        cells += ["" if r.get("projector_s") is None else f"{1e3 * r['projector_s']:.1f}",
                  "" if ov is None else f"{r['excess_beyond_projector_pct']:+.0f} %",
                  "" if r.get("projector_update_s") is None else f"{1e3 * r['projector_update_s']:.1f}",
                  "" if ov is None else f"{r['excess_beyond_projector_update_pct']:+.0f} %"]
        syncs = "" if r["syncs"] is None else f"{r['syncs']:g}"
        out.append(f"| {r['model']} | {r['what']} | {r['batch']} | {1e3 * r['s']:.1f} | {1 / r['s']:.2f} "
                   f"| {r['batch'] / r['s']:.0f} | {' | '.join(cells)} | {syncs} |")
    return "\n".join(out)


# ---------------------------------------------------------------------------- the real loop's syncs
def loop_syncs(steps: int = 8) -> dict:
    """Run ``train()`` (jit-tiny, iREPA, the built-in digits, a pixel teacher) for ``steps`` steps, logging only
    at step 1 and the last, and count host-sync calls per step; returns the per-step counts of the steps
    that neither log nor checkpoint, with the lines that made them.

    The run has no ``callback``, as a study's runs: a callback receives each step's loss as a float (one
    host copy per step, by design). Steps are told apart by wrapping the loop's update
    (``loop.apply_update``): interval k runs from the end of update k − 1 to the end of update k, so it holds
    the rest of the loop body of step k − 1 (logging, checkpoints) and step k; an interval is counted when
    neither step logs."""
    from spatialprobe.train import loop

    counts: list[collections.Counter] = []
    counter = SyncCounter()
    orig = loop.apply_update

    def counted(*a, **k):
        out = orig(*a, **k)
        counts.append(collections.Counter(counter.calls))
        return out

    loop.apply_update = counted
    try:
        with tempfile.TemporaryDirectory() as tmp, counter:
            loop.train(model="jit-tiny", method="irepa", teacher="pixels", images="builtin:digits", out=tmp,
                       steps=steps, log_every=10 * steps, ckpt_every=10 * steps, workers=0, max_images=64,
                       batch_size=8, teacher_pretrained=False)
    finally:
        loop.apply_update = orig
    # counts[i] is the running total at the end of step i + 1; steps 1 and `steps` log
    quiet = {k: counts[k - 1] - counts[k - 2] for k in range(3, steps)}
    sites: collections.Counter[str] = collections.Counter()
    for c in quiet.values():
        sites.update(c)
    n = max(1, len(quiet))
    return {"steps": sorted(quiet), "per_step": sum(sites.values()) / n,
            "sites": {k: v / n for k, v in sites.most_common()}}


# ---------------------------------------------------------------------------- AdamW implementations
def adamw_rows(model: str, device: torch.device, *, steps: int = 5, rounds: int = 3) -> list[dict]:
    """torch's three AdamW implementations (per-parameter loop, foreach, fused) over the parameters of the
    model's REPA step (model + MLP projector), with fixed random gradients: the time of one ``step()`` and the
    largest parameter difference to the per-parameter loop after the timed steps. The loop uses fused
    (:func:`spatialprobe.train.loop.make_optimizer`); this is the measurement behind that choice."""
    from spatialprobe.train.config import MODEL_DEFAULTS
    from spatialprobe.train.models import build, family

    extra = {"encoder_depth": 4} if model in ("sit-b/2", "jit-b/16") else {}
    net = build(model, num_classes=1000, z_dims=[768], projector="mlp", **extra).to(device)
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=gen).to(device) for p in net.parameters()]
    betas = tuple(MODEL_DEFAULTS[family(model)]["betas"])
    params, fns = {}, {}
    for impl, kw in (("loop", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        ps = [p.detach().clone().requires_grad_(True) for p in net.parameters()]
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        try:
            opt = torch.optim.AdamW(ps, lr=1e-4, betas=betas, weight_decay=0.0, **kw)
        except RuntimeError:
            continue  # no such kernel on this device
        params[impl], fns[impl] = ps, opt.step
    sec = seconds_interleaved(fns, steps=steps, warmup=2, device=device, rounds=rounds)
    ref = params["loop"]
    row = {"model": model, "numel": sum(p.numel() for p in ref), "tensors": len(ref)}
    for impl in ("loop", "foreach", "fused"):
        row[impl] = sec.get(impl)
        if impl in params and impl != "loop":
            row[f"{impl}_diff"] = max(float((a - b).abs().max()) for a, b in zip(params[impl], ref))
    return [row]


def format_adamw(rows: list[dict]) -> str:
    out = ["| model + REPA projector (768-d teacher) | parameters | tensors | per-parameter loop ms | foreach ms | fused ms "
           "| max abs diff foreach / fused vs loop (same steps) |", "|---|---:|---:|---:|---:|---:|---|"]
    ms = lambda v: "–" if v is None else f"{1e3 * v:.2f}"  # noqa: E731
    for r in rows:
        diffs = " / ".join("–" if r.get(f"{k}_diff") is None else f"{r[f'{k}_diff']:.1e}" for k in ("foreach", "fused"))
        out.append(f"| {r['model']} | {r['numel'] / 1e6:.2f} M | {r['tensors']} | {ms(r['loop'])} | {ms(r['foreach'])} "
                   f"| {ms(r['fused'])} | {diffs} |")
    return "\n".join(out)


# ---------------------------------------------------------------------------- teacher-token cache
def cache_bench(device: torch.device, batch: int = 16, tiny: bool = True) -> list[dict]:
    """Teacher forward over the same images: batched and uncached, through the study's token cache cold
    (first run: encodes image by image) and warm (a later run of the same teacher over the same images)."""
    from spatialprobe.train import repa
    from spatialprobe.train.teacher_cache import cached_teacher

    teacher = make_teacher(tiny, device)
    res = teacher.input_res if tiny else 256
    imgs = torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(1)).to(device)
    grid = teacher.grid
    fwd = lambda t: repa.teacher_targets(t, imgs, grid, spnorm=True, gamma=0.6)  # noqa: E731
    plain = seconds_per_call(lambda: fwd(teacher), steps=3, warmup=1, device=device)
    rows = [{"what": "teacher forward, batched, no cache", "s": plain}]
    cold = []
    for r in range(3):  # a fresh cache each time: every image is a miss
        ct = cached_teacher(teacher, f"bench-cold-{r}-{time.time()}", 256)
        cold.append(seconds_per_call(lambda: fwd(ct), steps=1, warmup=0, device=device, rounds=1))
    rows.append({"what": "through the token cache, first run (all misses)", "s": min(cold)})
    ct = cached_teacher(teacher, f"bench-warm-{time.time()}", 256)
    fwd(ct)
    rows.append({"what": "through the token cache, same images again (all hits)",
                 "s": seconds_per_call(lambda: fwd(ct), steps=3, warmup=0, device=device)})
    rows[-1]["syncs"] = syncs_per_call(lambda: fwd(ct), 1)[0]
    for r in rows:
        r["batch"] = batch
    return rows


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


# ---------------------------------------------------------------------------- batch selection (host side, CPU)


def _per_step_positions(step: int, global_batch: int, n: int, seed: int, rank: int = 0, world: int = 1) -> list[int]:
    """Batch selection before the per-epoch cache: a randperm(n) drawn at every step (the old batch_positions)."""
    per = global_batch // world
    start = step * global_batch + rank * per
    out: list[int] = []
    perms: dict[int, torch.Tensor] = {}
    for pos in range(start, start + per):
        e, j = divmod(pos, n)
        if e not in perms:
            perms[e] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + e))
        out.append(int(perms[e][j]))
    return out


def bench_batch_selection(n: int = 1_281_167, batch: int = 256, steps: int = 50) -> list[tuple[str, float]]:
    """Host milliseconds per step to pick one rank's batch of dataset positions, before (a permutation of all
    n images per step) and after (one permutation per epoch, cached); both give the same positions."""
    from spatialprobe.train.loop import EpochPermutations, batch_positions

    rows = []
    for name, fn in (("per-step randperm (before)", lambda s: _per_step_positions(s, batch, n, 0)),
                     ("per-epoch cached (after)", None)):
        perms = EpochPermutations(n, 0)
        f = fn or (lambda s, perms=perms: batch_positions(s, batch, n, 0, perms=perms))
        f(0)  # the epoch's one permutation (the after row) is drawn here, outside the timing
        t0 = time.perf_counter()
        for s in range(1, steps + 1):
            f(s)
        rows.append((name, 1000 * (time.perf_counter() - t0) / steps))
    assert _per_step_positions(7, batch, n, 0) == batch_positions(7, batch, n, 0)
    return rows


def main_batch_selection(sizes: list[int], batch: int) -> None:
    torch.set_num_threads(2)
    machine = f"CPU ({platform.processor() or platform.machine()})"
    print(f"machine: {machine}; torch {torch.__version__}\n\ncommand: `python {' '.join(sys.argv)}`\n")
    print("| batch selection | n | batch | host ms / step | one randperm(n), ms |\n|---|---|---|---|---|")
    for n in sizes:
        t0 = time.perf_counter()
        torch.randperm(n, generator=torch.Generator().manual_seed(0))
        perm_ms = 1000 * (time.perf_counter() - t0)
        for name, ms in bench_batch_selection(n, batch):
            print(f"| {name} | {n} | {batch} | {ms:.3f} | {perm_ms:.1f} |")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="CPU, sit-tiny and jit-tiny with a stand-in teacher")
    ap.add_argument("--models", default=None, help="comma list (default: sit-tiny,jit-tiny with --tiny, "
                                                   "else sit-b/2,jit-b/16)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="timed steps per round (default 5 with --tiny, else 20)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds per step, taken in turn across the "
                    "steps of a model; the median call is kept (default 6 with --tiny, else 3)")
    ap.add_argument("--teacher", default=None, help="zoo id of the teacher (random init); default dinov2-vit-b "
                                                    "on GPU, a stand-in with --tiny")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--methods", default="none," + ",".join(ALIGNED))
    ap.add_argument("--threads", type=int, default=1, help="torch threads on CPU (1: tiny models gain nothing from a second thread, and a shared machine makes threads wait on each other)")
    ap.add_argument("--loop-syncs", action="store_true", help="also count host syncs in train() itself")
    ap.add_argument("--cache", action="store_true", help="also time the study's teacher-token cache")
    ap.add_argument("--adamw", action="store_true", help="also time torch's AdamW implementations (loop, foreach, "
                    "fused) over each model's REPA parameters (always on CUDA)")
    ap.add_argument("--batch-selection", action="store_true", help="only the host cost of picking a step's batch "
                    "of dataset positions, before and after the per-epoch permutation cache (CPU)")
    ap.add_argument("--n", default="12800,1281167", help="dataset sizes of --batch-selection, comma-separated")
    a = ap.parse_args(argv)
    if a.batch_selection:
        main_batch_selection([int(v) for v in a.n.split(",")], a.batch or 256)
        return {}
    device = torch.device("cuda" if torch.cuda.is_available() and not a.tiny else "cpu")
    if not a.tiny and device.type != "cuda":
        sys.exit("bench_train measures SiT-B/2 and JiT-B/16 on a GPU; use --tiny for the CPU sizes.")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(a.threads)
    models = (a.models or ("sit-tiny,jit-tiny" if a.tiny else "sit-b/2,jit-b/16")).split(",")
    batch = a.batch or (8 if a.tiny else 256)
    steps = a.steps or (5 if a.tiny else 20)
    methods = tuple(m.strip() for m in a.methods.split(",") if m.strip())
    load = " ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print(f"machine: {machine(device)}; torch {torch.__version__}; load average {load} at the start\n")
    print(f"command: `python {' '.join(['benchmarks/bench_train.py'] + (argv if argv is not None else sys.argv[1:]))}`\n")
    rows = []
    for m in models:
        rows += bench_model(m, tiny=a.tiny, batch=batch, steps=steps, warmup=2 if a.tiny else 5, device=device,
                            compile_=a.compile, teacher_name=a.teacher, methods=methods,
                            rounds=a.rounds or (6 if a.tiny else 3))
    print(format_rows(rows))
    sites = collections.Counter()
    for r in rows:
        sites.update(r.get("sync_sites", {}))
    if sites:
        print("\nhost-sync calls inside the aligned steps (per counted pass of 2 steps):")
        for k, v in sites.most_common():
            print(f"- {k}: {v}")
    result = {"rows": rows, "machine": machine(device)}
    if a.loop_syncs:
        ls = loop_syncs()
        result["loop_syncs"] = ls
        print(f"\ntrain() (jit-tiny, iREPA): {ls['per_step']:g} host-sync call(s) per step outside logging and "
              f"checkpoints (steps {ls['steps'][0]}-{ls['steps'][-1]}):")
        for k, v in ls["sites"].items():
            print(f"- {k}: {v:g} per step")
    if a.adamw or device.type == "cuda":
        ar = [r for m in models for r in adamw_rows(m, device, rounds=a.rounds or 3)]
        result["adamw"] = ar
        print("\n" + format_adamw(ar))
    if a.cache:
        cr = cache_bench(device, tiny=a.tiny)
        result["cache"] = cr
        print("\n| teacher tokens for the same batch | batch | ms | host syncs |\n|---|---:|---:|---:|")
        for r in cr:
            print(f"| {r['what']} | {r['batch']} | {1e3 * r['s']:.1f} | {r.get('syncs', '')} |")
    load = " ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print(f"\nload average {load} at the end")
    return result


if __name__ == "__main__":
    main()
