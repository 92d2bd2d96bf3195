"""Spatial-structure metrics of patch tokens: LDS, CDS, SRSS, RMSC (definitions: irepa-spec §2).

All four come from one shared pass per chunk of images: L2-normalise once, one batched Gram (cosine
matrix), one GEMM that sums the Gram per Manhattan-distance class (the "distance histogram"), and two
masked row sums for SRSS. Every LDS/CDS setting (any radii) is a cheap combination of that histogram, so
a sweep costs one Gram per chunk, not one per setting.

Defaults reproduce the official iREPA code (``metrics/spatial_metrics.py`` as called by the comparison
script): LDS near = the 4-neighbour pairs (d = 1), far = pairs at d >= 6; CDS = −OLS slope of the mean
cosine over d = 1..8; SRSS with positives at 1 <= d <= 1 (FG) and negatives at d >= 6 (BG); RMSC with
the square root. The paper's variant (r_near = r_far = H/2) is :func:`paper_radii`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping, Sequence

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


#: largest one-hot distance table (bytes) used for the histogram GEMM; bigger grids use index_add
ONEHOT_LIMIT = 64 << 20


@functools.lru_cache(maxsize=32)
def _geometry(h: int, w: int, device: str) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Manhattan distances [T, T] (long), the one-hot distance classes [T·T, H+W−1] (fp32; None for
    large grids) and the number of ordered pairs per class [H+W−1] (fp64), for one grid on one device."""
    dev = torch.device(device)
    r = torch.arange(h, device=dev).repeat_interleave(w)
    c = torch.arange(w, device=dev).repeat(h)
    dist = (r[:, None] - r[None, :]).abs() + (c[:, None] - c[None, :]).abs()
    k = h + w - 1
    counts = torch.bincount(dist.reshape(-1), minlength=k).double()
    onehot = None
    if dist.numel() * k * 4 <= ONEHOT_LIMIT:
        onehot = F.one_hot(dist.reshape(-1), k).to(torch.float32)
    return dist, onehot, counts


def _histogram(g: torch.Tensor, h: int, w: int, device: str) -> torch.Tensor:
    """Sum of the Gram ``g`` [c, T, T] per distance class -> [c, H+W−1] fp64 (one GEMM, or index_add)."""
    dist, onehot, counts = _geometry(h, w, device)
    c = g.shape[0]
    flat = g.reshape(c, -1)
    if onehot is not None:
        return (flat @ onehot).double()
    out = torch.zeros(c, counts.numel(), dtype=torch.float64, device=g.device)
    return out.index_add_(1, dist.reshape(-1), flat.double())


@functools.lru_cache(maxsize=64)
def _srss_tables(h: int, w: int, device: str, pos: int, neg: int) -> tuple[torch.Tensor, ...]:
    """Gather tables for SRSS: for each token i the tokens j with d(i, j) <= R = max(pos, neg − 1)
    (padded with i itself): flat Gram index i·T + j [T·P], j [T, P], the pair's distance [T, P] (−1 for
    padding), and the far-negative matrix [d >= neg] [T, T] (for the negative counts)."""
    dist = _geometry(h, w, device)[0]
    t = h * w
    reach = max(pos, neg - 1)
    near = dist <= reach
    p = int(near.sum(1).max())
    # stable sort puts the in-reach tokens first, in index order; padding slots are masked below
    order = torch.sort((~near).to(torch.uint8), dim=1, stable=True).indices[:, :p]
    valid = torch.gather(near, 1, order)
    rows = torch.arange(t, device=dist.device)[:, None]
    j = torch.where(valid, order, rows)
    d = torch.where(valid, torch.gather(dist, 1, order), torch.full_like(order, -1))
    a_neg = ((dist >= neg) & (dist >= 1)).float()
    return (rows * t + j).reshape(-1), j, d, a_neg


def _check_radii(s: Mapping[str, int]) -> dict[str, int]:
    unknown = sorted(set(s) - set(RADII))
    if unknown:
        raise ConfigError(f"Unknown metric parameter(s) {', '.join(unknown)}; valid: {', '.join(RADII)}.")
    out = {**OFFICIAL_RADII, **{k: int(v) for k, v in s.items()}}
    if out["lds_near"] < 1 or out["lds_far"] < 1 or out["cds_dmax"] < 1 or out["srss_pos"] < 1 or out["srss_neg"] < 1:
        raise ConfigError(f"Metric radii must be >= 1 (distances count grid steps); got {out}.")
    return out


def _lds_cds(hist: torch.Tensor, counts: torch.Tensor, s: Mapping[str, int], want: set[str]) -> dict[str, torch.Tensor]:
    """LDS and CDS of a chunk from its distance histogram ``hist`` [c, K] (sum of G per class, fp64)."""
    out: dict[str, torch.Tensor] = {}
    k = counts.numel()
    d = torch.arange(k, device=hist.device)
    if "lds" in want:
        near = (d >= 1) & (d <= s["lds_near"])
        far = d >= max(s["lds_far"], 1)
        # an empty near or far set (a radius beyond the grid) leaves LDS undefined: NaN. (The official
        # code clamps the far count to 1, so a far radius beyond the grid silently returns the near mean.)
        n_far = counts[far].sum()
        lds = hist[:, near].sum(1) / counts[near].sum() - hist[:, far].sum(1) / n_far.clamp_min(1)
        out["lds"] = lds if float(n_far) > 0 else torch.full_like(lds, float("nan"))
    if "cds" in want:
        sel = (d >= 1) & (d <= s["cds_dmax"]) & (counts > 0)
        x = d[sel].double()
        if x.numel() < 2:  # no distance or one distance: the slope is undefined (the official code gives 0)
            out["cds"] = torch.full((hist.shape[0],), float("nan"), dtype=torch.float64, device=hist.device)
        else:
            wts = (x - x.mean()) / ((x - x.mean()) ** 2).sum()
            out["cds"] = -(hist[:, sel] / counts[sel]) @ wts
    return out


def _srss(g: torch.Tensor, fg: torch.Tensor, tables: tuple[torch.Tensor, ...], pos: int, neg: int) -> torch.Tensor:
    """SRSS of a chunk from its cosine Gram ``g`` [c, T, T] and boolean FG masks ``fg`` [c, T].

    Positives are gathered from the local window; the far-negative sum is the BG row sum of the Gram
    minus its near part (both exact in fp32 up to rounding), so no [c, T, T] temporaries are made."""
    flat, j, d, a_neg = tables
    c, t, _ = g.shape
    p = j.shape[1]
    gl = g.reshape(c, t * t)[:, flat].reshape(c, t, p)
    fgj = fg[:, j]  # [c, T, P]
    pos_w = fgj & ((d >= 1) & (d <= pos))
    near_bg = (~fgj) & ((d >= 0) & (d < neg))
    bgf = (~fg).to(g.dtype)
    pos_sum = (gl * pos_w).sum(-1).double()
    neg_sum = torch.bmm(g, bgf.unsqueeze(-1)).squeeze(-1).double() - (gl * near_bg).sum(-1).double()
    pos_cnt = pos_w.sum(-1)
    neg_cnt = bgf @ a_neg  # a_neg is symmetric: row i of A·bg
    valid = fg & (pos_cnt > 0) & (neg_cnt > 0)
    diff = torch.where(valid, pos_sum / pos_cnt.clamp_min(1) - neg_sum / neg_cnt.double().clamp_min(1), 0.0)
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


def _auto_chunk(t: int) -> int:
    # ~8 MiB of Gram per chunk (32 images at T = 256): cache-friendly on CPU, bounded on GPU
    return max(1, min(64, (8 << 20) // (4 * t * t)))


def spatial_metrics_multi(tokens: torch.Tensor, grid: tuple[int, int], masks: torch.Tensor | None = None, *,
                          settings: Sequence[Mapping[str, int]] = ({},),
                          metrics: Iterable[str] = METRICS,
                          chunk_size: int | None = None) -> list[dict[str, torch.Tensor]]:
    """:func:`spatial_metrics` for several radius settings at once, sharing one Gram per chunk.

    ``settings`` is a list of mappings of radius overrides (keys of :data:`OFFICIAL_RADII`); the result
    has one ``{metric: Tensor[B]}`` dict per setting, in the same order.
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
    if not bool(torch.isfinite(tokens).all()):
        bad = (~torch.isfinite(tokens.reshape(b, -1))).any(1).nonzero().flatten().tolist()
        raise DataError(f"tokens are non-finite (NaN or inf) for {len(bad)} of {b} image(s) (batch index "
                        f"{', '.join(map(str, bad[:10]))}{' ...' if len(bad) > 10 else ''}); the input is broken, "
                        "not the metric: re-extract those images (fp16 overflow? try fp32).")
    sets = [_check_radii(s) for s in settings]
    wanted = set(want)
    dev = tokens.device
    counts = _geometry(h, w, str(dev))[2]
    counts = counts.to(dev)
    need_gram = bool(wanted & {"lds", "cds", "srss"})
    chunk = chunk_size or _auto_chunk(t)
    parts: list[list[dict[str, torch.Tensor]]] = [[] for _ in sets]
    for i in range(0, b, chunk):
        x = tokens[i:i + chunk].to(torch.float32)
        c = x.shape[0]
        res: list[dict[str, torch.Tensor]] = [{} for _ in sets]
        if not need_gram:  # RMSC alone: no Gram needed
            rmsc = _rmsc_direct(x)
            for r in res:
                r["rmsc"] = rmsc
        else:
            # Gram of the raw tokens, then scaled to cosines: same as normalising first (F.normalize,
            # eps 1e-8) without writing a normalised copy of the tokens
            g = torch.bmm(x, x.transpose(1, 2))
            inv = 1.0 / torch.diagonal(g, dim1=1, dim2=2).sqrt().clamp_min(NORM_EPS)
            g.mul_(inv[:, :, None]).mul_(inv[:, None, :])
            hist = _histogram(g, h, w, str(dev))  # sum of cosines per distance class
            for r, s in zip(res, sets):
                r.update(_lds_cds(hist, counts, s, wanted))
            if "rmsc" in wanted:
                # mean_t |x̂_t − x̄|² = mean_t |x̂_t|² − |x̄|² = trace(G)/T − sum(G)/T²; recomputed directly
                # where it is small, so cancellation never costs more than ~1e-6
                rmsc2 = hist[:, 0] / t - hist.sum(1) / (t * t)
                small = rmsc2 < 1e-2
                rmsc = rmsc2.clamp_min(0).sqrt()
                if bool(small.any()):
                    rmsc[small] = _rmsc_direct(x[small])
                for r in res:
                    r["rmsc"] = rmsc
            if "srss" in wanted:
                cache: dict[tuple[int, int], torch.Tensor] = {}
                for r, s in zip(res, sets):
                    key = (s["srss_pos"], s["srss_neg"])
                    if key not in cache:
                        cache[key] = _srss(g, masks[i:i + chunk], _srss_tables(h, w, str(dev), *key), *key)
                    r["srss"] = cache[key]
        zero = x.reshape(c, -1).abs().amax(1) == 0  # an all-zero token map has no structure: undefined
        if bool(zero.any()):
            for r in res:
                for k in r:
                    r[k] = torch.where(zero.to(r[k].device), torch.full_like(r[k], float("nan")), r[k])
        for p, r in zip(parts, res):
            p.append(r)
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
        chunk_size: images per chunk (Gram memory chunk·T²·4 bytes); default ~8 MiB of Gram.

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
