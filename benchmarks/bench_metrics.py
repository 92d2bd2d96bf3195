"""Benchmark: the shared-pass spatial metrics vs a per-metric baseline structured like the official code.

The baseline re-implements the official iREPA metric code's structure op by op (irepa-spec §2; see the
comment above ``lds_baseline``): one function per metric, each normalising the tokens and building its
own Gram, a cached distance matrix, LDS's 4-neighbour term from shifted grids and its far term from a
masked Gram, SRSS as a Python loop over images with full [T, T] masks, CDS as one boolean-indexed mean
per distance, called in the comparison script's order with the runner's per-metric mean.
The shared pass is :func:`spatialprobe.metrics.spatial_metrics` (one raw Gram per chunk, scaled in place
to cosines, plus O(B·T²) sums; on a CPU that Gram is BLAS's symmetric rank-k update, one triangle).
The "floor" is one batched Gram of the raw tokens on the same input, ``torch.bmm(x, x.transpose(1, 2))``:
what a method that computes all pairwise cosines with a general GEMM has to pay (the shared pass's
symmetric Gram does half its multiply-adds, so on a CPU it can come in below the floor).

Run:  python benchmarks/bench_metrics.py [--sizes 128,256,512,1024] [--threads 2] [--device cpu] [--rounds 3]
Prints a markdown table: time per method, speed-up over the baseline, ratio to the floor, largest
|difference| and peak memory. Each method runs in its own process; with ``--rounds N`` the three
processes are run N times in turn and the best of each is kept (the machine's load is printed).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

METRICS = ("lds", "cds", "srss", "rmsc")


# ---------------------------------------------------------------- per-metric baseline (official structure)
# Written from irepa-spec §2 (line numbers L.. refer to the official `metrics/spatial_metrics.py`), one
# piece per piece of the official code, so that its time is the official algorithm's time:
#   - distances: one [T, T] Manhattan matrix per (H, W, device), built once and cached (L30-56);
#   - LDS (L87-116): normalise (eps 1e-8), the 4-neighbour term from products of the shifted [B, H, W, D]
#     grid, then its own einsum Gram and a masked_fill + sum over the far pairs;
#   - SRSS (L121-196): normalise again (F.normalize's default eps), its own `@` Gram, then a Python loop
#     over the images building full [T, T] boolean anchor/neighbour masks per image, masked products
#     summed per row, three host syncs per image (the two size checks and `valid.any()`) and a boolean
#     index of the valid anchors;
#   - CDS (L201-236): normalise, its own einsum Gram, then per distance d = 1..dmax a boolean mask of the
#     [T, T] matrix, a host sync (`.any()`) and a boolean-indexed gather `G[:, mask]` averaged per image;
#   - RMSC (L241-259): normalise, centre over the tokens, mean squared norm, square root;
#   - the runner (L265-380) calls them in the comparison script's order (lds, srss, cds, rmsc), checks
#     each result's shape and takes `nanmean` if any value is NaN (a host sync per metric), else `mean`.
_DIST_CACHE: dict[tuple[int, int, str], torch.Tensor] = {}


def _distances(h: int, w: int, device) -> torch.Tensor:
    key = (h, w, str(device))
    if key not in _DIST_CACHE:
        ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        coords = torch.stack([ys.flatten(), xs.flatten()], 1)
        _DIST_CACHE[key] = (coords[:, None, :] - coords[None, :, :]).abs().sum(-1)
    return _DIST_CACHE[key]


def _unit(u: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return F.normalize(u.to(dtype=torch.float32), p=2.0, dim=-1, eps=eps)


def _cos_gram(x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("btd,bsd->bts", x, x)


def lds_baseline(u: torch.Tensor, grid, far_dist: int = 6) -> torch.Tensor:
    h, w = grid
    x = _unit(u)
    xg = x.view(x.shape[0], h, w, x.shape[-1])
    vert = (xg[:, 1:] * xg[:, :-1]).sum(-1)  # 4-neighbour pairs by shifting the grid
    horiz = (xg[:, :, 1:] * xg[:, :, :-1]).sum(-1)
    local = torch.cat([vert.flatten(1), horiz.flatten(1)], 1).mean(1)
    g = _cos_gram(x)
    dist = _distances(h, w, u.device)
    far_pairs = (dist > 0) & (dist >= far_dist)
    far = g.masked_fill(~far_pairs, 0.0).sum((1, 2)) / far_pairs.sum().clamp(min=1)
    return local - far


def srss_baseline(u: torch.Tensor, grid, masks: torch.Tensor, d_pos: int = 1, d_pos_min: int = 1,
                  d_neg: int = 6) -> torch.Tensor:
    if masks.dim() != 2 or tuple(masks.shape) != tuple(u.shape[:2]):
        raise ValueError(f"masks must be [B, T]; got {tuple(masks.shape)}")
    h, w = grid
    x = F.normalize(u.to(torch.float32), dim=-1)
    g = x @ x.transpose(1, 2)
    dist = _distances(h, w, u.device)
    near_d = (dist <= d_pos) & (dist >= d_pos_min)
    far_d = dist >= d_neg
    out = []
    for i in range(u.shape[0]):  # one image at a time, full [T, T] masks per image
        fg = masks[i].to(torch.bool)
        if bool(fg.sum() < 2) or bool((~fg).sum() < 1):  # two host syncs
            out.append(torch.tensor(float("nan"), device=u.device))
            continue
        pos = (fg[:, None] & fg[None, :]) & near_d
        neg = (fg[:, None] & (~fg)[None, :]) & far_d
        gi = g[i]
        pc, nc = pos.sum(1), neg.sum(1)
        pm = (gi * pos).sum(1) / pc.clamp_min(1)
        nm = (gi * neg).sum(1) / nc.clamp_min(1)
        valid = fg & (pc > 0) & (nc > 0)
        out.append((pm[valid] - nm[valid]).mean() if valid.any() else torch.tensor(float("nan"), device=u.device))
    return torch.stack(out, 0)


def cds_baseline(u: torch.Tensor, grid, dmax: int = 8) -> torch.Tensor:
    h, w = grid
    g = _cos_gram(_unit(u))
    dist = _distances(h, w, u.device)
    ds, means = [], []
    for d in range(1, dmax + 1):
        m = dist == d
        if m.any():
            means.append(g[:, m].mean(1))
            ds.append(d)
    if not means:
        return torch.zeros(u.shape[0], device=u.device)
    s = torch.stack(means, 1)
    x = torch.tensor(ds, device=u.device, dtype=s.dtype)
    xc = x - x.mean()
    slope = ((s - s.mean(1, keepdim=True)) @ xc) / (xc @ xc).clamp(min=1e-12)
    return -slope


def rmsc_baseline(u: torch.Tensor, grid=None, sqrt: bool = True) -> torch.Tensor:
    x = _unit(u)
    v = (x - x.mean(1, keepdim=True)).square().sum(-1).mean(1)
    return v.sqrt() if sqrt else v


def baseline(u: torch.Tensor, grid, masks: torch.Tensor) -> dict[str, torch.Tensor]:
    fns = {"lds": lambda: lds_baseline(u, grid), "srss": lambda: srss_baseline(u, grid, masks),
           "cds": lambda: cds_baseline(u, grid), "rmsc": lambda: rmsc_baseline(u, grid)}
    out = {}
    for name, fn in fns.items():
        v = fn()
        if v.ndim != 1 or v.shape[0] != u.shape[0]:
            raise RuntimeError(f"{name} must return [B]; got {tuple(v.shape)}")
        out[name] = v
        _ = torch.nanmean(v) if torch.isnan(v).any() else v.mean()  # the runner's per-encoder mean
    return out


# ---------------------------------------------------------------- data
def make_tokens(b: int, grid=(16, 16), d: int = 768, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatially smooth random tokens (a low-resolution field upsampled + noise) and blob FG masks."""
    gen = torch.Generator().manual_seed(seed)
    h, w = grid
    coarse = torch.randn(b, d, 4, 4, generator=gen)
    smooth = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    tokens = (smooth.flatten(2).transpose(1, 2) + 0.7 * torch.randn(b, h * w, d, generator=gen)).contiguous()
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    cy = torch.rand(b, 1, 1, generator=gen) * h
    cx = torch.rand(b, 1, 1, generator=gen) * w
    rad = 3 + torch.rand(b, 1, 1, generator=gen) * (min(h, w) / 2)
    masks = (((yy - cy) ** 2 + (xx - cx) ** 2) <= rad ** 2).reshape(b, h * w)
    return tokens, masks


# ---------------------------------------------------------------- measurement (one subprocess per run)
def _status_mib(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> bool:
    try:  # Linux: "5" resets the peak resident set size (VmHWM) to the current one
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _measure(method: str, b: int, threads: int, device: str, repeats: int, queue) -> None:
    torch.set_num_threads(threads)
    from spatialprobe.metrics import spatial_metrics

    tokens, masks = make_tokens(b)
    tokens, masks = tokens.to(device), masks.to(device)
    if method == "baseline":
        fn = lambda: baseline(tokens, (16, 16), masks)  # noqa: E731
    elif method == "floor":
        fn = lambda: {"gram": torch.bmm(tokens, tokens.transpose(1, 2))[:, :1, :1].flatten()}  # noqa: E731
    else:
        fn = lambda: spatial_metrics(tokens, (16, 16), masks)  # noqa: E731
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        _reset_peak_rss()
        base = _status_mib("VmRSS")
    fn(); sync()  # warm-up (caches, allocator); counted in the peak
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    # peak memory on top of the inputs (tokens + masks), MiB
    extra = (torch.cuda.max_memory_allocated() - base) / 2 ** 20 if cuda else _status_mib("VmHWM") - base
    queue.put((min(times), min(cpu), extra, {k: v.cpu().numpy() for k, v in out.items()}))


class _List(list):
    put = list.append


def run_one(method: str, b: int, threads: int, device: str, repeats: int, inline: bool = False):
    if inline:  # in this process: no process start-up, but the peak memory is shared with what ran before
        q = _List()
        _measure(method, b, threads, device, repeats, q)
        return q[0]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_measure, args=(method, b, threads, device, repeats, q))
    p.start()
    res = q.get()
    p.join()
    return res


def _load() -> str:
    try:
        return "load average " + " ".join(f"{v:.1f}" for v in os.getloadavg()) + f" on {os.cpu_count()} cpu"
    except OSError:  # pragma: no cover - not on Linux/macOS
        return "load average unknown"


def measure(sizes: list[int], threads: int, device: str, repeats: int, rounds: int = 1,
            inline: bool = False) -> list[dict]:
    """One row per B: best wall and CPU seconds of the baseline, the shared pass and the raw-Gram floor
    over ``rounds`` alternating rounds (one process per method and round), the largest |difference|
    between the shared pass and the baseline, NaN agreement and the peak memory above the inputs."""
    rows = []
    for b in sizes:
        best: dict[str, tuple] = {}
        for _ in range(rounds):
            for method in ("baseline", "fast", "floor"):
                r = run_one(method, b, threads, device, repeats, inline)
                if method not in best:
                    best[method] = r
                else:  # keep the best time, the values of the first run
                    old = best[method]
                    best[method] = (min(old[0], r[0]), min(old[1], r[1]), old[2], old[3])
        tb, cb, eb, ob = best["baseline"]
        tf, cf, ef, of = best["fast"]
        tg, cg, eg, _ = best["floor"]
        diff = max(float(np.nanmax(np.abs(ob[k].astype(np.float64) - of[k]))) for k in METRICS)
        nan_ok = all(np.array_equal(np.isnan(ob[k]), np.isnan(of[k])) for k in METRICS)
        rows.append({"B": b, "baseline_s": tb, "shared_s": tf, "floor_s": tg, "baseline_cpu_s": cb,
                     "shared_cpu_s": cf, "floor_cpu_s": cg, "speedup": tb / tf, "speedup_cpu": cb / cf,
                     "vs_floor": tf / tg, "vs_floor_cpu": cf / cg, "max_abs_diff": diff, "nan_agree": nan_ok,
                     "baseline_mib": eb, "shared_mib": ef, "floor_mib": eg})
    return rows


def table(rows: list[dict], mem: str = "peak RSS MiB") -> str:
    out = [f"| B | baseline wall s | shared wall s | floor wall s | shared vs baseline (wall) | shared / floor (wall) "
           f"| baseline cpu s | shared cpu s | floor cpu s | shared vs baseline (cpu) | shared / floor (cpu) "
           f"| max abs diff | baseline {mem} | shared {mem} |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['B']} | {r['baseline_s']:.3f} | {r['shared_s']:.3f} | {r['floor_s']:.3f} | {r['speedup']:.1f}x "
                   f"| {r['vs_floor']:.2f}x | {r['baseline_cpu_s']:.3f} | {r['shared_cpu_s']:.3f} | {r['floor_cpu_s']:.3f} "
                   f"| {r['speedup_cpu']:.1f}x | {r['vs_floor_cpu']:.2f}x "
                   f"| {r['max_abs_diff']:.1e}{'' if r['nan_agree'] else ' (NaN mismatch!)'} "
                   f"| {r['baseline_mib']:.0f} | {r['shared_mib']:.0f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="128,256,512,1024", help="batch sizes B (tokens [B, 256, 768])")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1, help="alternate the three methods this many times")
    ap.add_argument("--inline", action="store_true",
                    help="measure in this process (quick check of the script; memory figures not separate)")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    dev_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        (platform.processor() or platform.machine())
    print(f"machine: {dev_name}, {os.cpu_count()} cpu, torch {torch.__version__}, threads {args.threads}, "
          f"device {args.device}; {_load()} at the start")
    print(f"command: python {' '.join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:]))}\n")
    mem = "peak GPU MiB" if args.device.startswith("cuda") else "peak RSS MiB"
    print("inputs: tokens [B, 256, 768] float32 (B·0.75 MiB) + masks; memory = peak above the inputs\n")
    print("wall = best wall-clock of the repeats; cpu = best process CPU time (all threads), which is less\n"
          "sensitive to other jobs sharing the machine; floor = one batched Gram of the raw tokens\n")
    rows = measure(sizes, args.threads, args.device, args.repeats, args.rounds, args.inline)
    print(table(rows, mem))
    print(f"\n{_load()} at the end")


if __name__ == "__main__":
    main()
