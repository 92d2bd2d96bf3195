"""Spatial-structure metrics of patch tokens: LDS, CDS, SRSS, RMSC (definitions: irepa-spec §2).

All four come from one shared pass per chunk of images: one batched Gram of the RAW tokens (fp32; on a
CPU a symmetric rank-k update, half the multiply-adds of a general GEMM, with the chunks spread over
torch's threads), scaled in place to cosines by the norms on its diagonal (no normalised copy of the
tokens); the cosines within the largest radius any setting needs, gathered once and summed per
Manhattan-distance class; and one GEMM for the row sums and the BG row sums. Far sets (LDS far, SRSS negatives) are totals minus the
window, so every LDS/CDS/SRSS setting (any radii) is a cheap combination of the same sums and a sweep
costs one Gram per chunk, not one per setting.

Defaults reproduce the official iREPA code (``metrics/spatial_metrics.py`` as called by the comparison
script): LDS near = the 4-neighbour pairs (d = 1), far = pairs at d >= 6; CDS = −OLS slope of the mean
cosine over d = 1..8; SRSS with positives at 1 <= d <= 1 (FG) and negatives at d >= 6 (BG); RMSC with
the square root. The paper's variant (r_near = r_far = H/2) is :func:`paper_radii`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ..schema import SPATIAL_METRICS
from ..tokens import SPNORM_EPS, spatial_norm  # noqa: F401 - re-exported (the one definition lives in tokens)

log = logging.getLogger(__name__)

METRICS = SPATIAL_METRICS
#: the official settings (``spatial_metrics_comparison.py``); also the keyword defaults below
OFFICIAL_RADII = {"lds_near": 1, "lds_far": 6, "cds_dmax": 8, "srss_pos": 1, "srss_neg": 6}
RADII = tuple(OFFICIAL_RADII)
NORM_EPS = 1e-8  # F.normalize eps used by the official code


def paper_radii(grid: tuple[int, int]) -> dict[str, int]:
    """The paper's radii (App. B): r_near = r_far = H/2 (``min(H, W) // 2`` for non-square grids).

    LDS near is ``0 < d < r_near`` (so ``lds_near = r - 1``, inclusive), far ``d >= r_far``; SRSS
    positives at ``d <= r_near`` and negatives at ``d >= r_far``. CDS keeps ``dmax = 8``.
    """
    r = max(1, min(grid) // 2)
    return {"lds_near": max(1, r - 1), "lds_far": r, "cds_dmax": 8, "srss_pos": r, "srss_neg": r}


@functools.lru_cache(maxsize=32)
def _geometry(h: int, w: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Manhattan distances [T, T] (long) and the number of ordered pairs per distance class [H+W−1]
    (fp64), for one grid on one device."""
    dev = torch.device(device)
    r = torch.arange(h, device=dev).repeat_interleave(w)
    c = torch.arange(w, device=dev).repeat(h)
    dist = (r[:, None] - r[None, :]).abs() + (c[:, None] - c[None, :]).abs()
    counts = torch.bincount(dist.reshape(-1), minlength=h + w - 1).double()
    return dist, counts


@functools.lru_cache(maxsize=64)
def _window(h: int, w: int, device: str, reach: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                              torch.Tensor, tuple[int, ...]]:
    """The local window of every token: the grid shifts (Δr, Δc) with |Δr| + |Δc| <= ``reach``, sorted by
    distance, so that the slots at distance <= k are the prefix ``[0, ends[k])`` for every token.

    Returns the flat Gram index ``i·T + j`` [T·P] (j = i for a shift that leaves the grid), j [T, P],
    the in-grid flag [T, P] (bool), the same as fp32 (a multiplicative mask), and ``ends`` (k = 0..reach).
    """
    dev = torch.device(device)
    t = h * w
    shifts = sorted((abs(dr) + abs(dc), dr, dc) for dr in range(1 - h, h) for dc in range(1 - w, w)
                    if abs(dr) + abs(dc) <= reach)
    d, dr, dc = (torch.tensor(v, device=dev) for v in zip(*shifts))
    r = torch.arange(h, device=dev).repeat_interleave(w)[:, None] + dr
    c = torch.arange(w, device=dev).repeat(h)[:, None] + dc
    inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
    rows = torch.arange(t, device=dev)[:, None]
    j = torch.where(inside, r * w + c, rows)
    ends = tuple(torch.bincount(d, minlength=reach + 1).cumsum(0).tolist())
    return (rows * t + j).reshape(-1), j, inside, inside.to(torch.float32), ends


def _check_radii(s: Mapping[str, int]) -> dict[str, int]:
    unknown = sorted(set(s) - set(RADII))
    if unknown:
        raise ConfigError(f"Unknown metric parameter(s) {', '.join(unknown)}; valid: {', '.join(RADII)}.")
    out = {**OFFICIAL_RADII, **{k: int(v) for k, v in s.items()}}
    if out["lds_near"] < 1 or out["lds_far"] < 1 or out["cds_dmax"] < 1 or out["srss_pos"] < 1 or out["srss_neg"] < 1:
        raise ConfigError(f"Metric radii must be >= 1 (distances count grid steps); got {out}.")
    return out


def _lds_cds(hw: torch.Tensor, total: torch.Tensor, counts: torch.Tensor, s: Mapping[str, int],
             want: set[str]) -> dict[str, torch.Tensor]:
    """LDS and CDS of a chunk from the sum of cosines per distance class inside the window ``hw``
    [c, R+1] (fp64) and the sum over all pairs ``total`` [c] (fp64); the far set d >= lds_far is the
    total minus the classes below it, so the window only has to reach ``lds_far − 1``."""
    out: dict[str, torch.Tensor] = {}
    if "lds" in want:
        near, far = s["lds_near"], max(s["lds_far"], 1)
        # an empty near or far set (a radius beyond the grid) leaves LDS undefined: NaN. (The official
        # code clamps the far count to 1, so a far radius beyond the grid silently returns the near mean.)
        n_far = counts[far:].sum()
        far_mean = (total - hw[:, :far].sum(1)) / n_far.clamp_min(1)
        lds = hw[:, 1:near + 1].sum(1) / counts[1:near + 1].sum() - far_mean
        out["lds"] = lds if float(n_far) > 0 else torch.full_like(lds, float("nan"))
    if "cds" in want:
        k = min(s["cds_dmax"], counts.numel() - 1, hw.shape[1] - 1)
        x = torch.arange(1, k + 1, device=hw.device, dtype=torch.float64)
        if x.numel() < 2:  # no distance or one distance: the slope is undefined (the official code gives 0)
            out["cds"] = torch.full((hw.shape[0],), float("nan"), dtype=torch.float64, device=hw.device)
        else:
            wts = (x - x.mean()) / ((x - x.mean()) ** 2).sum()
            out["cds"] = -(hw[:, 1:k + 1] / counts[1:k + 1]) @ wts
    return out


@functools.lru_cache(maxsize=64)
def _srss_counts(h: int, w: int, device: str, pos: int, neg: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[T, T] fp32 indicators of the SRSS positive ring (1 <= d <= pos) and of the near set (d < neg):
    times a mask they count each anchor's positives and its BG tokens below the negative radius."""
    dist = _geometry(h, w, device)[0]
    return ((dist >= 1) & (dist <= pos)).to(torch.float32), (dist < neg).to(torch.float32)


def _srss(gl: torch.Tensor, bg_row: torch.Tensor, fg: torch.Tensor, window: tuple, counts: tuple,
          pos: int, neg: int) -> torch.Tensor:
    """SRSS of a chunk from the window cosines ``gl`` [c, T, P] (0 off the grid), the BG row sums of the
    cosine Gram ``bg_row`` [c, T] (Σ_j cos(i, j)·[j is BG]) and boolean FG masks ``fg`` [c, T].

    Positives are the FG slots at 1 <= d <= pos of the window; the far-negative sum is the BG row sum
    minus the BG slots at d < neg, so no [c, T, T] temporary is made; the counts are two small GEMMs."""
    _, j, _, _, ends = window
    c, t, _ = gl.shape
    top = len(ends) - 1
    p0, p1 = ends[0], ends[min(pos, top)]
    n_near = ends[min(neg - 1, top)]  # slots at d < neg (d = 0 is the anchor itself, FG: never counted)
    n = max(p1, n_near)
    fgf = fg.to(torch.float32)
    bgf = 1.0 - fgf
    bgj = bgf.index_select(1, j[:, :n].reshape(-1)).view(c, t, n)  # BG indicator of each window slot
    pos_sum = (gl[..., p0:p1] * (1.0 - bgj[..., p0:p1])).sum(-1)
    near_bg = (gl[..., :n_near] * bgj[..., :n_near]).sum(-1)
    ring, near = counts
    pos_cnt = fgf @ ring  # the indicators are symmetric: row i of ring · fg
    neg_cnt = bgf.sum(1, keepdim=True) - bgf @ near
    neg_sum = bg_row.double() - near_bg.double()
    valid = fg & (pos_cnt > 0.5) & (neg_cnt > 0.5)
    diff = torch.where(valid, pos_sum.double() / pos_cnt.clamp_min(1) - neg_sum / neg_cnt.clamp_min(1), 0.0)
    nvalid = valid.sum(1)
    val = diff.sum(1) / nvalid.clamp_min(1)
    undefined = (fg.sum(1) < 2) | ((~fg).sum(1) < 1) | (nvalid == 0)
    return torch.where(undefined, torch.full_like(val, float("nan")), val)


def max_distance(grid: tuple[int, int]) -> int:
    """Largest Manhattan distance between two cells of an ``(H, W)`` grid: ``H + W − 2``."""
    return int(grid[0]) + int(grid[1]) - 2


def undefined_radii(setting: Mapping[str, int], grid: tuple[int, int]) -> dict[str, str]:
    """``{metric: reason}`` for the metrics a radius setting leaves undefined (NaN) on ``grid``: a far or
    negative radius beyond the grid's largest distance, or a CDS fit over fewer than two distances."""
    s = _check_radii(setting)
    dmax = max_distance(grid)
    g = f"{grid[0]}x{grid[1]}"
    out: dict[str, str] = {}
    if s["lds_far"] > dmax:
        out["lds"] = f"lds_far={s['lds_far']} is beyond the largest distance {dmax} of the {g} grid (valid: 1..{dmax})"
    if min(s["cds_dmax"], dmax) < 2:
        out["cds"] = (f"cds_dmax={s['cds_dmax']} fits fewer than two distances on the {g} grid, so the slope is "
                      f"undefined (valid: 2..{dmax})")
    if s["srss_neg"] > dmax:
        out["srss"] = f"srss_neg={s['srss_neg']} is beyond the largest distance {dmax} of the {g} grid (valid: 1..{dmax})"
    return out


def _rmsc_direct(x: torch.Tensor) -> torch.Tensor:
    xh = F.normalize(x.to(torch.float32), dim=-1, eps=NORM_EPS)
    return (xh - xh.mean(1, keepdim=True)).pow(2).sum(-1).mean(-1).sqrt().double()


@functools.lru_cache(maxsize=1)
def _numpy_blas():
    """threadpoolctl's handle on the BLAS libraries numpy calls (to run them on one thread per call), or
    None where threadpoolctl is missing or finds none."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - a dependency of scikit-learn, which spatialprobe needs
        return None
    ctl = ThreadpoolController().select(user_api="blas")
    return ctl if ctl.lib_controllers else None


@functools.lru_cache(maxsize=4)
def _pool(n: int, pid: int) -> ThreadPoolExecutor:
    """``n`` worker threads, one pool per process (``pid``: a forked child gets its own, as the parent's
    threads do not exist there)."""
    return ThreadPoolExecutor(n, thread_name_prefix="spatialprobe-metrics")


def _raw_gram(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``x xᵀ`` per image for fp32 tokens ``x`` [c, T, D], into ``out`` [c, T, T] if given.

    On a GPU one ``torch.bmm``. On a CPU numpy's matmul of each image with its own transpose, which numpy
    hands to BLAS as a symmetric rank-k update (syrk): one triangle, half the multiply-adds of a general
    GEMM, mirrored into the other (so ``out`` is exactly symmetric). BLAS uses the threads it is allowed:
    :func:`spatial_metrics_multi` runs chunks on ``torch.get_num_threads()`` threads with BLAS on one."""
    if x.device.type != "cpu":
        return torch.bmm(x, x.transpose(1, 2), out=out)
    if out is None:
        out = x.new_empty(x.shape[0], x.shape[1], x.shape[1])
    xn = x.detach().contiguous().numpy()
    # overflow (finite tokens too large for fp32 squares) shows as inf on the diagonal and is handled there
    with np.errstate(all="ignore"):
        np.matmul(xn, xn.transpose(0, 2, 1), out=out.numpy())
    return out


def _cosine_gram(x: torch.Tensor, out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine Gram of fp32 tokens ``x`` [c, T, D] from ONE Gram of the raw tokens (:func:`_raw_gram`).

    cos(i, j) = G_ij / (‖x_i‖‖x_j‖) with the squared norms read off G's diagonal, scaled in place: the
    same values as ``F.normalize`` (eps 1e-8: a norm below it is clamped, so a zero token has cosine 0
    with every token) followed by a Gram, without writing a normalised copy of the tokens (which costs
    more than the Gram itself on a CPU). Returns ``(cos [c, T, T], squared norms [c, T])``."""
    g = _raw_gram(x, out)
    sq = torch.diagonal(g, dim1=1, dim2=2).clone()
    inv = sq.sqrt().clamp_min_(NORM_EPS).reciprocal_()
    g.mul_(inv[:, :, None]).mul_(inv[:, None, :])
    return g, sq


@functools.lru_cache(maxsize=1)
def _last_level_cache_bytes() -> int:
    """Size of the CPU's largest cache (Linux sysfs); 32 MiB where it cannot be read."""
    best = 0
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            v = f.read_text().strip().upper()
            best = max(best, int(v[:-1]) << {"K": 10, "M": 20, "G": 30}[v[-1]] if v[-1] in "KMG" else int(v))
        except (OSError, ValueError):
            continue
    return best or 32 << 20


def _auto_chunk(t: int, device: torch.device) -> int:
    """Images per chunk. Per image the pass holds its fp32 Gram (4·T² bytes) and the window gathered
    from it (at most as much again). On a CPU the chunk's Gram is sized to a quarter of the last-level
    cache, so the post-processing that re-reads it right after the GEMM hits the cache while the
    tokens stream through the rest (32 images at T = 256 on a 32 MiB cache); on a GPU the chunk only
    bounds memory: an eighth of the free memory, so one launch covers a whole batch of a study."""
    per_image = 4 * t * t
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(1, free // 8 // per_image)
    return max(1, _last_level_cache_bytes() // 4 // per_image)


class NonFiniteTokensError(DataError):
    """Some images' tokens are NaN or inf; ``rows`` are their batch indices (callers that know the
    images' ids name them instead)."""

    def __init__(self, message: str, rows: list[int]):
        super().__init__(message)
        self.rows = rows


def _nonfinite_error(tokens: torch.Tensor) -> NonFiniteTokensError:
    b = tokens.shape[0]
    bad = (~torch.isfinite(tokens.reshape(b, -1))).any(1).nonzero().flatten().tolist()
    return NonFiniteTokensError(
        f"tokens are non-finite (NaN or inf) for {len(bad)} of {b} image(s) (batch index "
        f"{', '.join(map(str, bad[:10]))}{' ...' if len(bad) > 10 else ''}); the input is broken, "
        "not the metric: re-extract those images (fp16 overflow? try fp32).", bad)


def _reach(sets: Sequence[Mapping[str, int]], wanted: set[str], grid_max: int) -> int:
    """Window radius the pass needs: LDS near and classes below far, CDS up to dmax, SRSS positives and the
    BG slots below the negative radius; never beyond the grid's largest distance."""
    r = 0
    for s in sets:
        if "lds" in wanted:
            r = max(r, s["lds_near"], s["lds_far"] - 1)
        if "cds" in wanted:
            r = max(r, s["cds_dmax"])
        if "srss" in wanted:
            r = max(r, s["srss_pos"], s["srss_neg"] - 1)
    return min(r, grid_max)


def spatial_metrics_multi(tokens: torch.Tensor, grid: tuple[int, int], masks: torch.Tensor | None = None, *,
                          settings: Sequence[Mapping[str, int]] = ({},),
                          metrics: Iterable[str] = METRICS,
                          chunk_size: int | None = None) -> list[dict[str, torch.Tensor]]:
    """:func:`spatial_metrics` for several radius settings at once, sharing one Gram per chunk.

    ``settings`` is a list of mappings of radius overrides (keys of :data:`OFFICIAL_RADII`); the result
    has one ``{metric: Tensor[B]}`` dict per setting, in the same order.

    Per chunk of images: one batched Gram of the raw tokens, scaled in place to cosines
    (:func:`_cosine_gram`); the cosines within the largest radius any setting needs are gathered once
    (a window of grid shifts sorted by distance) and summed per distance class; the sum over all pairs
    and the BG row sums are one reduction / one GEMM over the Gram. LDS's far set, SRSS's far negatives
    and RMSC are totals minus window parts, so no [c, T, T] temporary is made and every radius setting
    is a cheap combination of the same sums.
    """
    if tokens.ndim != 3:
        raise DataError(f"tokens must be [B, T, D]; got shape {tuple(tokens.shape)}.")
    if not tokens.is_floating_point():
        raise DataError(f"tokens must be a float tensor; got {tokens.dtype}.")
    try:
        h, w = (int(v) for v in grid)
    except (TypeError, ValueError):
        raise DataError(f"grid must be (H, W); got {grid!r}.") from None
    b, t, _ = tokens.shape
    if h * w != t:
        raise DataError(f"grid {h}x{w} has {h * w} cells but tokens have T={t}; pass the grid the tokens "
                        f"were extracted on (T = H*W, row-major).")
    want = [m.lower() for m in metrics]
    bad = sorted(set(want) - set(METRICS))
    if bad:
        raise ConfigError(f"Unknown metric(s) {', '.join(bad)}; valid: {', '.join(METRICS)}.")
    if masks is not None:
        if tuple(masks.shape) != (b, t):
            raise DataError(f"masks must be [B, T] = [{b}, {t}]; got {tuple(masks.shape)}.")
        masks = masks.to(device=tokens.device, dtype=torch.bool)
    elif "srss" in want:
        want = [m for m in want if m != "srss"]
        if not want:
            raise DataError("SRSS needs FG/BG masks: pass masks [B, T] (CLI: --masks DIR).")
    sets = [_check_radii(s) for s in settings]
    wanted = set(want)
    dev = tokens.device
    key = str(dev)
    counts = _geometry(h, w, key)[1]
    need_gram = bool(wanted & {"lds", "cds", "srss"})
    window = _window(h, w, key, _reach(sets, wanted, h + w - 2)) if need_gram else None
    if window is not None:
        # one-hot of each window slot's distance class [P, R+1], from the prefix ends
        ends = window[4]
        slot_d = torch.bucketize(torch.arange(ends[-1], device=dev), torch.tensor(ends, device=dev), right=True)
        classes = F.one_hot(slot_d, len(ends)).double()
    chunk = chunk_size or _auto_chunk(t, dev)
    # On a CPU the chunks run on torch.get_num_threads() threads, each chunk's Gram on one BLAS thread:
    # a threaded BLAS scales poorly on one 256 x 256 product, and the many small post-Gram operations of
    # one chunk parallelise worse than whole chunks do. At least one chunk per thread.
    blas = _numpy_blas() if dev.type == "cpu" and need_gram else None
    n = torch.get_num_threads() if blas is not None else 1
    if n > 1 and chunk_size is None:
        chunk = max(1, min(chunk, -(-b // n)))
    starts = range(0, b, chunk)
    n = max(1, min(n, len(starts)))
    bufs: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(n if need_gram and b else 0):
        bufs.put(torch.empty(min(chunk, b), t, t, device=dev))
    srss_counts = {(s["srss_pos"], s["srss_neg"]): _srss_counts(h, w, key, s["srss_pos"], s["srss_neg"])
                   for s in sets} if "srss" in wanted else {}

    def one_chunk(i: int) -> list[dict[str, torch.Tensor]]:
        buf = bufs.get() if need_gram else None
        try:
            with torch.no_grad():  # grad mode is per thread; the metrics are never differentiated
                return chunk_metrics(i, buf)
        finally:
            if buf is not None:
                bufs.put(buf)

    def chunk_metrics(i: int, buf: torch.Tensor | None) -> list[dict[str, torch.Tensor]]:
        x = tokens[i:i + chunk].to(torch.float32)
        c = x.shape[0]
        res: list[dict[str, torch.Tensor]] = [{} for _ in sets]
        zero = None
        if not need_gram:  # RMSC alone: no Gram needed
            if not bool(torch.isfinite(x).all()):
                raise _nonfinite_error(tokens)
            zero = x.reshape(c, -1).abs().amax(1) == 0
            rmsc = _rmsc_direct(x)
            for r in res:
                r["rmsc"] = rmsc
        else:
            g, sq = _cosine_gram(x, buf[:c])
            # one host sync per chunk: a non-finite squared norm (NaN/inf tokens, or finite ones too large
            # for fp32 squares) and images whose Gram diagonal is all zero (all-zero maps, or underflow)
            nonfinite, maybe_zero = torch.stack([(~torch.isfinite(sq)).any(), (sq == 0).all(1).any()]).tolist()
            if nonfinite:
                if not bool(torch.isfinite(x).all()):
                    raise _nonfinite_error(tokens)
                # finite tokens whose squares overflow (|x| > ~1e19): scale those tokens by a power of two
                # below their largest entry (exact; cosines are scale-free) and redo the chunk's Gram
                big = ~torch.isfinite(sq)
                e = torch.frexp(x.abs().amax(-1)).exponent
                x = torch.where(big[..., None], torch.ldexp(x, -e[..., None].to(x.dtype)), x)
                g, sq = _cosine_gram(x, buf[:c])
            if maybe_zero:  # the exact rule: an all-zero token map has no structure
                zero = x.reshape(c, -1).abs().amax(1) == 0
            idx, j, inside, insidef, ends = window
            gl = g.view(c, t * t).index_select(1, idx).view(c, t, -1).mul_(insidef)  # window cosines, 0 off-grid
            m = masks[i:i + chunk] if "srss" in wanted else None
            if m is None:
                rows = g.sum(-1)
            else:  # row sums and BG row sums in one GEMM (the Gram is symmetric: column sums = row sums)
                v = torch.ones(c, 2, t, device=dev)
                v[:, 1].masked_fill_(m, 0.0)
                rows, bg_row = torch.bmm(v, g).unbind(1)
            total = rows.double().sum(1)  # sum of cosines over all ordered pairs
            hw = gl.sum(1).double() @ classes  # sum of cosines per distance class 0..R
            for r, s in zip(res, sets):
                r.update(_lds_cds(hw, total, counts, s, wanted))
            if "rmsc" in wanted:
                # mean_t |x̂_t − x̄|² = mean_t |x̂_t|² − |x̄|² = trace(G)/T − sum(G)/T²; recomputed directly
                # where it is small, so cancellation never costs more than ~1e-6
                rmsc2 = hw[:, 0] / t - total / (t * t)
                small = rmsc2 < 1e-2
                rmsc = rmsc2.clamp_min(0).sqrt()
                if bool(small.any()):
                    rmsc[small] = _rmsc_direct(x[small])
                for r in res:
                    r["rmsc"] = rmsc
            if m is not None:
                cache: dict[tuple[int, int], torch.Tensor] = {}
                for r, s in zip(res, sets):
                    k = (s["srss_pos"], s["srss_neg"])
                    if k not in cache:
                        cache[k] = _srss(gl, bg_row, m, window, srss_counts[k], *k)
                    r["srss"] = cache[k]
        if zero is not None:
            for r in res:
                for k in r:
                    r[k] = torch.where(zero.to(r[k].device), torch.full_like(r[k], float("nan")), r[k])
        return res

    # BLAS on one thread per chunk when chunks run in parallel, on torch's threads for a single chunk
    with blas.limit(limits=1 if n > 1 else torch.get_num_threads()) if blas is not None else contextlib.nullcontext():
        chunks = list(_pool(n, os.getpid()).map(one_chunk, starts)) if n > 1 else [one_chunk(i) for i in starts]
    parts = [[res[k] for res in chunks] for k in range(len(sets))]
    out = []
    for p in parts:
        out.append({m: torch.cat([r[m] for r in p]).to(torch.float32) if p else
                    torch.empty(0, device=dev) for m in METRICS if m in wanted})
    return out


def spatial_metrics(tokens: torch.Tensor, grid: tuple[int, int], masks: torch.Tensor | None = None, *,
                    metrics: Iterable[str] = METRICS, lds_near: int = 1, lds_far: int = 6, cds_dmax: int = 8,
                    srss_pos: int = 1, srss_neg: int = 6, chunk_size: int | None = None) -> dict[str, torch.Tensor]:
    """Per-image spatial-structure metrics of patch tokens.

    Args:
        tokens: ``[B, T, D]`` patch tokens, any float dtype (computed in fp32), on CPU or GPU.
        grid: ``(H, W)`` with ``T = H·W``, tokens row-major; non-square grids are fine.
        masks: optional ``[B, T]`` bool foreground masks (needed for SRSS; SRSS is skipped without them).
        metrics: any of ``"lds", "cds", "srss", "rmsc"``.
        lds_near: LDS near set ``1 <= d <= lds_near`` (official 1: the 4-neighbour pairs).
        lds_far: LDS far set ``d >= lds_far`` over ordered pairs (official 6).
        cds_dmax: CDS fits ``d = 1..cds_dmax`` (distances absent from the grid are skipped; CDS is NaN when
            fewer than two remain).
        srss_pos: SRSS positives are FG tokens at ``1 <= d <= srss_pos`` from a FG anchor.
        srss_neg: SRSS negatives are BG tokens at ``d >= srss_neg``.
        chunk_size: images per chunk (Gram memory chunk·T²·4 bytes); default: on a CPU a quarter of the
            last-level cache of Gram and at least one chunk per torch thread, on a GPU an eighth of the
            free memory.

    Returns:
        ``{metric: float32 Tensor[B]}`` on the tokens' device. LDS is NaN when its near or far pair set
        is empty (a radius beyond the grid, :func:`undefined_radii`), CDS when fewer than two distances
        are fitted; SRSS is NaN when an image has < 2 FG or no BG tokens, or no anchor with both a
        positive and a negative. Every metric is NaN for an all-zero token map. Non-finite tokens are an
        error. Distance is Manhattan on the grid; tokens are L2-normalised (eps 1e-8).

    Example:
        >>> m = spatial_metrics(torch.randn(4, 256, 768), (16, 16))
        >>> sorted(m)
        ['cds', 'lds', 'rmsc']
    """
    s = {"lds_near": lds_near, "lds_far": lds_far, "cds_dmax": cds_dmax, "srss_pos": srss_pos, "srss_neg": srss_neg}
    return spatial_metrics_multi(tokens, grid, masks, settings=[s], metrics=metrics, chunk_size=chunk_size)[0]


def aggregate(values: torch.Tensor) -> dict[str, float]:
    """One value per encoder: ``nanmean`` over images, with ``std`` (nan-aware, N−1), ``n`` (finite values)
    and ``n_nan`` (images where the metric was undefined)."""
    v = values.detach().double().cpu()
    finite = ~torch.isnan(v)
    n = int(finite.sum())
    vals = v[finite]
    mean = float(vals.mean()) if n else float("nan")
    std = float(vals.std(unbiased=True)) if n > 1 else float("nan")
    return {"mean": mean, "std": std, "n": n, "n_nan": int((~finite).sum())}
