"""Paper-style figures. One style file (``spatialprobe.mplstyle``); consistent family colours."""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError
from .schema import PROPERTIES
from .stats import MIN_N_FOR_CI as _MIN_N_FOR_CI
from .stats import describe_r

log = logging.getLogger(__name__)

STYLE = str(resources.files(__package__).joinpath("spatialprobe.mplstyle"))

AXIS_LABELS = {
    "lp_acc": "Linear probe acc. (%)",
    "lds": "LDS",
    "cds": "CDS",
    "srss": "SRSS",
    "rmsc": "RMSC",
    "gfid": "gFID",
}

# fixed family order -> stable colours across every figure
FAMILY_ORDER = ["DINOv2", "DINOv3", "WebSSL", "PE-Core", "PE-Lang", "PE-Spatial", "C-RADIO", "DINO",
                "CLIP", "MoCo v3", "I-JEPA", "MAE", "SAM2", "SigLIP", "SigLIP2", "Classical", "Baseline"]
UNKNOWN_COLOUR = "#9a9a9a"
_UNKNOWN_LABEL = "unidentified"
#: label columns tried in order when a figure is not told which column names its points
_LABEL_COLUMNS = ("encoder", "point_id", "id")


def _is_grey(hex_colour: str) -> bool:
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return max(r, g, b) - min(r, g, b) < 24


def family_colours(families) -> dict[str, str]:
    """Colour per family: the fixed order first, others after, from qualitative palettes without their
    greys (grey is :data:`UNKNOWN_COLOUR`, the points whose family is unidentified)."""
    import seaborn as sns

    names = [f for f in FAMILY_ORDER] + sorted({str(f) for f in families if isinstance(f, str)} - set(FAMILY_ORDER))
    palette = [c for name in ("tab20", "tab20b") for c in sns.color_palette(name, n_colors=20).as_hex()
               if not _is_grey(c)]
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def _legend_handles(colours: dict, seen, any_unknown: bool, *, unknown_label: str = _UNKNOWN_LABEL) -> list:
    """One dot per family present, in the fixed order, then the grey "unidentified" entry when some
    point has no known family."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="o", color=colours[f], label=f) for f in colours if f in seen]
    if any_unknown:
        handles.append(Line2D([], [], ls="", marker="o", color=UNKNOWN_COLOUR, label=unknown_label))
    return handles


def _known(f) -> bool:
    return isinstance(f, str) and bool(f.strip())


def _label_column(df: pd.DataFrame, label_col: str | None) -> str | None:
    if label_col:
        return label_col if label_col in df.columns else None
    return next((c for c in _LABEL_COLUMNS if c in df.columns and df[c].notna().any()), None)


def _point_labels(df: pd.DataFrame, label_col: str | None, ok) -> list[str] | None:
    """The label of each plotted row (``ok``): the label column, else the point id where it is empty."""
    col = _label_column(df, label_col)
    if col is None:
        return None
    lab = df.loc[ok, col]
    if col != "point_id" and "point_id" in df.columns:
        lab = lab.where(lab.notna(), df.loc[ok, "point_id"])
    return ["" if pd.isna(v) else str(v) for v in lab]


def _texts(ax, xv, yv, labels, *, fontsize: float = 5.5, color: str = "#333333") -> list:
    return [ax.text(x, y, s, fontsize=fontsize, color=color, zorder=6, ha="center", va="center")
            for x, y, s in zip(xv, yv, labels) if s]


#: where a label may go around its point, tried in this order: right, above, left, below, the diagonals,
#: then the directions between (degrees)
_LABEL_ANGLES = (0, 90, 180, 270, 45, 135, 225, 315, 22.5, 157.5, 202.5, 337.5, 67.5, 112.5, 247.5, 292.5)
#: distances (points) from a point's edge to its label, nearest first
_LABEL_STEPS = (1, 4, 8, 13, 19, 26, 34, 44, 56, 70, 86, 104)


def _place_labels(jobs: list, *, marker_pt: float = 3.5, pad_pt: float = 0.8) -> None:
    """Place each axis's point labels so that no two overlap, none covers a point and all stay inside
    the axes, with a thin leader line to a label that had to move away from its point.

    A greedy search, not a force simulation: larger labels first (the new encoders of the prediction
    panel), then those of the most crowded points, each at the nearest free spot of :data:`_LABEL_STEPS`
    × :data:`_LABEL_ANGLES` around its point, tested against the boxes already placed and every point's
    marker in display units. It is deterministic, takes 1.7 s for the reference's 1×5 panel (one draw of
    the figure included), and a placed label never overlaps another, which adjustText's force simulation
    did not give here (7 overlapping pairs on the same panel, in 52 s). Only when no spot within reach is free does a label take the one with the fewest overlaps.
    Runs after the layout is final (the sizes in display units depend on it).
    ``jobs`` = ``[(ax, texts, x_points, y_points)]`` or ``[(ax, texts, x_points, y_points, extra)]``: the
    texts, every point to keep clear, and optionally more to keep clear: ``extra`` = data-unit rectangles
    ``(x0, y0, x1, y1, margin_pt)`` (e.g. an error bar, or a large marker as a zero-size box with a margin).
    """
    from matplotlib.lines import Line2D

    jobs = [j for j in jobs if j[1]]
    if not jobs:
        return
    fig = jobs[0][0].figure
    fig.canvas.draw()
    rend = fig.canvas.get_renderer()
    k = fig.dpi / 72.0
    rm, pad = marker_pt * k, pad_pt * k
    for ax, texts, px, py, *more in jobs:
        ax.set_xlim(ax.get_xlim())  # freeze the limits: the leader lines must not rescale the axes
        ax.set_ylim(ax.get_ylim())
        frame = ax.get_window_extent(rend)
        pts = ax.transData.transform(np.column_stack([np.asarray(px, float), np.asarray(py, float)]))
        pts = pts[np.isfinite(pts).all(axis=1)]
        for t in texts:
            t.set_ha("center")
            t.set_va("center")
        anchors = np.array([ax.transData.transform(t.get_position()) for t in texts])
        sizes = [(b.width, b.height) for b in (t.get_window_extent(rend) for t in texts)]
        near = ((anchors[:, None, :] - pts[None, :, :]) ** 2).sum(-1) < (24 * k) ** 2
        # larger labels first (the new encoders of the prediction panel), then the most crowded points
        order = sorted(range(len(texts)), key=lambda i: (-texts[i].get_fontsize(), -int(near[i].sum()),
                                                         anchors[i][0], anchors[i][1]))
        steps = np.repeat(np.asarray(_LABEL_STEPS, float), len(_LABEL_ANGLES))
        ang = np.radians(np.tile(np.asarray(_LABEL_ANGLES, float), len(_LABEL_STEPS)))
        r = rm + steps * k
        mk = np.column_stack([pts[:, 0] - rm, pts[:, 1] - rm, pts[:, 0] + rm, pts[:, 1] + rm])
        for x0_, y0_, x1_, y1_, m in (more[0] if more else []):
            (a0, b0), (a1, b1) = ax.transData.transform([(x0_, y0_), (x1_, y1_)])
            if np.isfinite([a0, b0, a1, b1]).all():
                mk = np.vstack([mk, [min(a0, a1) - m * k, min(b0, b1) - m * k, max(a0, a1) + m * k, max(b0, b1) + m * k]])
        placed = np.empty((0, 4))
        inv = ax.transData.inverted()
        for i in order:
            x0, y0 = anchors[i]
            w, h = sizes[i]
            cx, cy = x0 + np.cos(ang) * (r + w / 2), y0 + np.sin(ang) * (r + h / 2)
            box = np.column_stack([cx - w / 2 - pad, cy - h / 2 - pad, cx + w / 2 + pad, cy + h / 2 + pad])
            inside = (box[:, 0] >= frame.x0) & (box[:, 2] <= frame.x1) & (box[:, 1] >= frame.y0) & (box[:, 3] <= frame.y1)
            if not inside.any():  # larger than the axes: leave it on its point
                continue
            others = np.vstack([placed, mk])
            hit = ((box[:, None, 0] < others[None, :, 2]) & (box[:, None, 2] > others[None, :, 0])
                   & (box[:, None, 1] < others[None, :, 3]) & (box[:, None, 3] > others[None, :, 1])).sum(1)
            hit = np.where(inside, hit, np.iinfo(np.int64).max)
            j = int(np.argmin(hit))  # the first free spot in search order, else the one with fewest overlaps
            placed = np.vstack([placed, box[j]])
            texts[i].set_position(inv.transform((cx[j], cy[j])))
            if steps[j] > _LABEL_STEPS[1]:  # moved away from its point: a leader line to the box's near edge
                ex = min(max(x0, box[j, 0] + pad), box[j, 2] - pad)
                ey = min(max(y0, box[j, 1] + pad), box[j, 3] - pad)
                (ax0, ay0), (ax1, ay1) = inv.transform((x0, y0)), inv.transform((ex, ey))
                ax.add_line(Line2D([ax0, ax1], [ay0, ay1], color="#8c8c8c", lw=0.4, zorder=2.5))


def use_style():
    """Context manager applying the package style (matplotlib picks a headless backend by itself)."""
    import matplotlib.pyplot as plt

    return plt.style.context(STYLE)


def correlation_panel(df: pd.DataFrame, xs: list[str], y: str, stats: pd.DataFrame, *,
                      family_col: str | None = None, label_col: str | None = None,
                      out: str | Path | None = None, formats: tuple[str, ...] = ("png", "pdf"),
                      labels: bool = True):
    """1×len(xs) panel: each x vs y, least-squares line, Pearson r with its CI in the title (or the
    small-n note below :data:`spatialprobe.stats.MIN_N_FOR_CI`), each point labelled (``label_col``;
    default ``encoder``/``point_id``/``id``), the labels placed apart from each other and the points.

    Points are coloured by family where known and grey ("unidentified" in the legend) where not.
    Returns the written paths (or the figure when ``out`` is None).
    """
    import matplotlib.pyplot as plt

    fam, colours = _families(df, family_col)
    n_pts = len(df)
    side = 3.0 if not labels else min(4.6, 3.0 + 0.06 * max(0, n_pts - 5))  # room for the labels
    jobs = []
    with use_style():
        fig, axes = plt.subplots(1, len(xs), figsize=(side * len(xs), side), sharey=True, squeeze=False)
        seen: set = set()
        unknown = False
        for ax, xname in zip(axes[0], xs):
            r, known, unk = _correlation_axis(ax, df, xname, y, fam, colours, stats, s=28, jobs=jobs,
                                              label_col=label_col, labels=labels)
            seen |= known
            unknown |= unk
            if r is not None:
                ax.set_title(f"{describe_r(r, sep=chr(10) if int(r.n) < _MIN_N_FOR_CI else '  ')}\n"
                             f"ρ = {r.spearman_rho:.2f}, n = {int(r.n)}")
        axes[0][0].set_ylabel(AXIS_LABELS.get(y, y))
        handles = _legend_handles(colours, seen, unknown)
        if handles:
            fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8),
                       bbox_to_anchor=(0.5, -0.02 - 0.05 * ((len(handles) - 1) // 8)))
            fig.tight_layout(rect=(0, 0.08 + 0.05 * ((len(handles) - 1) // 8), 1, 1))
        else:
            fig.tight_layout()
        _place_labels(jobs)
        return _save(fig, out, formats)


def _correlation_axis(ax, df: pd.DataFrame, xname: str, y: str, fam: pd.Series, colours: dict,
                      stats: pd.DataFrame, *, s: int, jobs: list, label_col: str | None, labels: bool):
    """One x-vs-y axis of a correlation figure: the family-coloured points, the fit line, the x label and
    (with ``labels``) the point labels queued in ``jobs`` for placement. Returns the axis' correlation
    row (or None), the known families drawn and whether an unidentified point was drawn."""
    xv, yv, ok = _family_scatter(ax, df, xname, y, fam, colours, s=s)
    _fit_line(ax, xv, yv)
    ax.set_xlabel(AXIS_LABELS.get(xname, xname))
    lab = _point_labels(df, label_col, ok) if labels else None
    if lab:
        jobs.append((ax, _texts(ax, xv, yv, lab), xv, yv))
    row = stats[(stats["x"] == xname) & (stats["y"] == y)]
    known = {f for f in fam[ok] if _known(f)}
    return (row.iloc[0] if len(row) else None), known, any(not _known(f) for f in fam[ok])


def _families(df: pd.DataFrame, family_col: str | None) -> tuple[pd.Series, dict]:
    """Each row's family (None where the table has no family column) and the colour of each family."""
    fam = df[family_col] if family_col and family_col in df.columns else pd.Series([None] * len(df), index=df.index)
    return fam, family_colours(fam.dropna().unique())


def _family_scatter(ax, df: pd.DataFrame, xname: str, y: str, fam: pd.Series, colours: dict, **kw):
    """Scatter the rows where both columns are numbers, coloured by family; returns their x, y and mask."""
    sub = df[[xname, y]].apply(pd.to_numeric, errors="coerce")
    ok = sub.notna().all(axis=1)
    xv, yv = sub.loc[ok, xname].to_numpy(float), sub.loc[ok, y].to_numpy(float)
    cols = [colours.get(f, UNKNOWN_COLOUR) if _known(f) else UNKNOWN_COLOUR for f in fam[ok]]
    ax.scatter(xv, yv, c=cols, linewidths=0.5, zorder=3, **kw)
    return xv, yv, ok


def _fit_line(ax, xv: np.ndarray, yv: np.ndarray) -> None:
    """The least-squares line over the points' x range (none for fewer than 2 points or a constant x)."""
    if len(xv) >= 2 and np.ptp(xv) > 0:
        slope, icpt = np.polyfit(xv, yv, 1)
        grid = np.linspace(xv.min(), xv.max(), 50)
        ax.plot(grid, slope * grid + icpt, color="#c0392b", lw=1.2, zorder=2)


def _save(fig, out: str | Path | None, formats: tuple[str, ...], dpi: int | None = None):
    """Return ``fig`` when ``out`` is None, else write ``out.<fmt>`` for each format, close, return paths."""
    import matplotlib.pyplot as plt

    if out is None:
        return fig
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in formats:
        p = out.with_suffix(f".{ext}")
        fig.savefig(p, **({"dpi": dpi} if dpi and ext == "png" else {}))
        paths.append(p)
    plt.close(fig)
    return paths


def _bare(ax) -> None:
    """An image axis: no ticks, grid or spines."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for sp in ax.spines.values():
        sp.set_visible(False)


def similarity_figure(maps, *, out: str | Path | None = None, formats: tuple[str, ...] = ("png", "pdf"),
                      dpi: int | None = None, cmap: str = "viridis"):
    """The spatial-normalisation figure: one row per encoder; left half the image and the cosine map of
    each reference token on the raw tokens, right half the same after spatial normalisation. One colour
    scale for every map (global min/max), reference tokens marked by a red star.

    ``maps`` is a list of :class:`spatialprobe.viz.SimilarityMaps`.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    if not maps:
        raise DataError("similarity_figure needs at least one encoder's maps.")
    n_ref = max(len(m.refs) for m in maps)
    vmin = float(min(min(m.raw.min(), m.normed.min()) for m in maps))
    vmax = float(max(max(m.raw.max(), m.normed.max()) for m in maps))
    norm = Normalize(vmin=vmin, vmax=vmax)
    half = 1 + n_ref
    with use_style():
        fig = plt.figure(figsize=(1.25 * (2 * half) + 1.2, 1.35 * len(maps) + 0.5))
        gs = fig.add_gridspec(len(maps), 2 * half + 2, width_ratios=[1] * half + [0.18] + [1] * half + [0.08],
                              wspace=0.06, hspace=0.12)
        im = None
        for row, m in enumerate(maps):
            h, w = m.grid
            for side, (arr, label) in enumerate(((m.raw, "w/o spatial normalisation"),
                                                 (m.normed, f"w/ spatial normalisation (γ = {m.gamma:g})"))):
                c0 = side * (half + 1)
                ax = fig.add_subplot(gs[row, c0])
                if m.image is not None:
                    s = m.image.shape[0]
                    ax.imshow(m.image)
                    for k, (r, c) in enumerate(m.refs):
                        ax.plot((c + 0.5) * s / w, (r + 0.5) * s / h, marker="*", color="red", ms=7, mec="white", mew=0.4)
                _bare(ax)
                if side == 0:
                    ax.set_ylabel(m.encoder, fontsize=8)
                if row == 0:
                    ax.set_title(label, loc="left", fontsize=8)
                for k, (r, c) in enumerate(m.refs):
                    ax = fig.add_subplot(gs[row, c0 + 1 + k])
                    im = ax.imshow(arr[k], cmap=cmap, norm=norm, interpolation="nearest")
                    ax.plot(c, r, marker="*", color="red", ms=7, mec="white", mew=0.4)
                    _bare(ax)
        cax = fig.add_subplot(gs[:, -1])
        cb = fig.colorbar(im, cax=cax)
        cb.set_label("Cosine similarity")
        return _save(fig, out, formats, dpi)


def correlation_grid(tables: dict[str, pd.DataFrame], xs: list[str], stats: dict[str, pd.DataFrame], *,
                     family_col: str | None = "family", label_col: str | None = None,
                     out: str | Path | None = None, formats: tuple[str, ...] = ("png", "pdf"),
                     dpi: int | None = None, labels: bool = True):
    """Several correlation panels stacked: one row per y (e.g. ``gfid_repa`` above ``gfid_irepa``), one
    column per x, each with its points (family colours, grey = unidentified; labelled as in
    :func:`correlation_panel`), least-squares line and r with its CI (or the small-n note).

    ``tables[y]`` holds the points of row y (columns ``xs`` and ``y``); ``stats[y]`` the rows of the
    correlation table for that y.
    """
    import matplotlib.pyplot as plt

    ys = list(tables)
    fams = pd.concat([t[family_col] for t in tables.values() if family_col and family_col in t.columns]
                     or [pd.Series([], dtype=object)])
    colours = family_colours(fams.dropna().unique())
    n_pts = max((len(t) for t in tables.values()), default=0)
    grow = 1.0 if not labels else min(1.5, 1.0 + 0.02 * max(0, n_pts - 5))  # room for the labels
    jobs = []
    with use_style():
        fig, axes = plt.subplots(len(ys), len(xs), figsize=(2.9 * grow * len(xs), 2.7 * grow * len(ys)),
                                 squeeze=False)
        seen: set = set()
        unknown = False
        for i, y in enumerate(ys):
            df, st = tables[y], stats[y]
            fam = _families(df, family_col)[0]
            for j, xname in enumerate(xs):
                ax = axes[i][j]
                if xname not in df.columns or y not in df.columns:
                    ax.set_axis_off()
                    continue
                r, known, unk = _correlation_axis(ax, df, xname, y, fam, colours, st, s=24, jobs=jobs,
                                                  label_col=label_col, labels=labels)
                seen |= known
                unknown |= unk
                if r is not None:
                    ax.set_title(describe_r(r, sep="\n" if int(r.n) < _MIN_N_FOR_CI else "  ")
                                 + f"{chr(10) if int(r.n) < _MIN_N_FOR_CI else ', '}n = {int(r.n)}")
                if j == 0:
                    ax.set_ylabel(AXIS_LABELS.get(y, y))
        handles = _legend_handles(colours, seen, unknown)
        if handles:
            fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), bbox_to_anchor=(0.5, 0.0))
            fig.tight_layout(rect=(0, 0.04 + 0.03 * ((len(handles) - 1) // 8), 1, 1))
        else:
            fig.tight_layout()
        _place_labels(jobs)
        return _save(fig, out, formats, dpi)


def paired_difference(df: pd.DataFrame, a: str, b: str, *, label_col: str = "encoder", family_col: str | None = "family",
                      out: str | Path | None = None, formats: tuple[str, ...] = ("png", "pdf"), dpi: int | None = None):
    """Horizontal bars of ``a − b`` per row (e.g. gFID REPA − gFID iREPA per encoder), sorted, coloured by
    family; positive = ``b`` is lower (better for gFID)."""
    import matplotlib.pyplot as plt

    d = df.assign(_diff=pd.to_numeric(df[a], errors="coerce") - pd.to_numeric(df[b], errors="coerce"))
    d = d.dropna(subset=["_diff"]).sort_values("_diff")
    fam, colours = _families(d, family_col)
    cols = [colours.get(f, UNKNOWN_COLOUR) if isinstance(f, str) else UNKNOWN_COLOUR for f in fam]
    with use_style():
        fig, ax = plt.subplots(figsize=(5.0, 0.28 * len(d) + 1.0))
        ax.barh(np.arange(len(d)), d["_diff"], color=cols)
        ax.set_yticks(np.arange(len(d)), [str(v) for v in d[label_col]])
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlabel(f"{AXIS_LABELS.get(a, a)} − {AXIS_LABELS.get(b, b)}")
        fig.tight_layout()
        return _save(fig, out, formats, dpi)


def injection_curves(table: pd.DataFrame, *, metrics: tuple[str, ...] = PROPERTIES,
                     out: str | Path | None = None, formats: tuple[str, ...] = ("png", "pdf"), dpi: int | None = None):
    """LP accuracy and each spatial metric against the injection strength α, one line per encoder."""
    import matplotlib.pyplot as plt

    present = [m for m in metrics if m in table.columns and pd.to_numeric(table[m], errors="coerce").notna().any()]
    if not present or "alpha" not in table.columns:
        raise DataError("injection_curves needs an 'alpha' column and at least one of " + ", ".join(metrics) + ".")
    groups = list(table.groupby("encoder", sort=False)) if "encoder" in table.columns else [("", table)]
    with use_style():
        fig, axes = plt.subplots(1, len(present), figsize=(2.6 * len(present), 2.6), squeeze=False)
        for ax, m in zip(axes[0], present):
            for name, g in groups:
                g = g.sort_values("alpha")
                yv = pd.to_numeric(g[m], errors="coerce") * (100 if m == "lp_acc" else 1)
                ax.plot(g["alpha"], yv, marker="o", ms=3, label=str(name))
            ax.set_xlabel("α (global-token mix)")
            ax.set_ylabel(AXIS_LABELS.get(m, m))
        if len(groups) > 1 or groups[0][0]:
            axes[0][0].legend()
        fig.tight_layout()
        return _save(fig, out, formats, dpi)


def robustness_figure(stats: pd.DataFrame, *, out: str | Path | None = None, formats: tuple[str, ...] = ("png", "pdf"),
                      dpi: int | None = None):
    """Per (x, y): Pearson r with its bootstrap CI (thick), the leave-one-out range and the
    leave-one-family-out range (thin, offset), so a correlation carried by one point or family shows."""
    import matplotlib.pyplot as plt

    s = stats.reset_index(drop=True)
    labels = [f"{AXIS_LABELS.get(x, x)} vs {AXIS_LABELS.get(y, y)}" if s["y"].nunique() > 1 else AXIS_LABELS.get(x, x)
              for x, y in zip(s["x"], s["y"])]
    pos = np.arange(len(s))[::-1]
    with use_style():
        # the y labels take their own width, and the legend a fixed half inch under the axis at any row count
        height = 0.42 * len(s) + 1.5
        fig, ax = plt.subplots(figsize=(3.4 + 0.068 * max(map(len, labels), default=10), height))
        ax.hlines(pos, s["pearson_ci_low"], s["pearson_ci_high"], color="#34495e", lw=4, alpha=0.45, label="95 % bootstrap CI")
        ax.hlines(pos + 0.22, s["loo_min"], s["loo_max"], color="#e67e22", lw=1.6, label="leave-one-out range")
        if "lofo_min" in s and s["lofo_min"].notna().any():
            ax.hlines(pos - 0.22, s["lofo_min"], s["lofo_max"], color="#8e44ad", lw=1.6, label="leave-one-family-out range")
        ax.plot(s["pearson_r"], pos, "o", color="black", ms=4, label="Pearson r", zorder=3)
        for y0, (_, row) in zip(pos, s.iterrows()):  # no bar below MIN_N_FOR_CI: say why instead
            if "n" in row and pd.notna(row["n"]) and int(row["n"]) < _MIN_N_FOR_CI:
                ax.annotate(f"n = {int(row['n'])}: too small for a CI", (row["pearson_r"], y0), xytext=(5, 3),
                            textcoords="offset points", fontsize=6, color="#555555")
        ax.axvline(0, color="black", lw=0.7)
        ax.set_yticks(pos, labels)
        ax.set_xlabel("Pearson r")
        handles, names = ax.get_legend_handles_labels()
        fig.legend(handles, names, loc="lower center", ncol=2)
        fig.tight_layout(rect=(0, 0.48 / height, 1, 1))
        return _save(fig, out, formats, dpi)


HIGHLIGHT_COLOUR = "#d62728"


def prediction_panel(ref: pd.DataFrame, xs: list[str], y: str, predictions: pd.DataFrame, *,
                     confidence: float = 0.95, family_col: str | None = None, label_col: str | None = None,
                     out: str | Path | None = None, formats: tuple[str, ...] = ("png", "pdf"),
                     labels: bool = True):
    """1×len(xs) panel of ``spatialprobe predict``: the reference points (family colours, grey =
    unidentified, each labelled), their least-squares line with the t-based prediction band, and each new
    encoder as a labelled star at its predicted gFID with its prediction interval as an error bar. The
    labels are placed apart from each other and from the points.

    Returns the written paths (or the figure when ``out`` is None).
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from scipy import stats as sstats

    fam, colours = _families(ref, family_col)
    side = 3.0 if not labels else min(4.6, 3.0 + 0.06 * max(0, len(ref) - 5))
    jobs = []
    with use_style():
        fig, axes = plt.subplots(1, len(xs), figsize=(side * len(xs), side + 0.2), sharey=True, squeeze=False)
        seen: set = set()
        unknown = False
        for ax, xname in zip(axes[0], xs):
            xv, yv, ok = _family_scatter(ax, ref, xname, y, fam, colours, s=24, alpha=0.85)
            seen.update(f for f in fam[ok] if _known(f))
            unknown |= any(not _known(f) for f in fam[ok])
            new = predictions[predictions["x"] == xname]
            lo_x = min([xv.min(), *new["value"]]) if len(xv) else 0.0
            hi_x = max([xv.max(), *new["value"]]) if len(xv) else 1.0
            if len(xv) >= 3 and np.ptp(xv) > 0:
                n = len(xv)
                slope, icpt = np.polyfit(xv, yv, 1)
                s = np.sqrt(((yv - (icpt + slope * xv)) ** 2).sum() / (n - 2))
                pad = 0.05 * (hi_x - lo_x)
                grid = np.linspace(lo_x - pad, hi_x + pad, 100)
                half = sstats.t.ppf(0.5 + confidence / 2, n - 2) * s * np.sqrt(
                    1 + 1 / n + (grid - xv.mean()) ** 2 / ((xv - xv.mean()) ** 2).sum())
                fit = icpt + slope * grid
                ax.fill_between(grid, fit - half, fit + half, color="#c0392b", alpha=0.12, lw=0, zorder=1)
                ax.plot(grid, fit, color="#c0392b", lw=1.2, zorder=2)
                r = np.corrcoef(xv, yv)[0, 1]
                ax.set_title(f"reference r = {r:.3f}, n = {n}")
            for _, row in new.iterrows():
                ax.errorbar(row["value"], row["pred_gfid"],
                            yerr=[[row["pred_gfid"] - row["pi_low"]], [row["pi_high"] - row["pred_gfid"]]],
                            fmt="none", ecolor=HIGHLIGHT_COLOUR, elinewidth=1.0, capsize=2.5, zorder=4)
                ax.scatter([row["value"]], [row["pred_gfid"]], marker="*", s=150, c=HIGHLIGHT_COLOUR,
                           edgecolors="black", linewidths=0.6, zorder=5)
            ax.set_xlabel(AXIS_LABELS.get(xname, xname))
            texts = _texts(ax, xv, yv, _point_labels(ref, label_col, ok) or []) if labels else []
            texts += _texts(ax, new["value"], new["pred_gfid"],
                            [f"{e}\n{g:.1f} [{lo:.1f}, {hi:.1f}]" for e, g, lo, hi in
                             zip(new["encoder"], new["pred_gfid"], new["pi_low"], new["pi_high"])],
                            fontsize=7, color=HIGHLIGHT_COLOUR)
            keep_clear = [(v, lo, v, hi, 1.5) for v, lo, hi in zip(new["value"], new["pi_low"], new["pi_high"])]
            keep_clear += [(v, g, v, g, 7.0) for v, g in zip(new["value"], new["pred_gfid"])]  # the stars
            jobs.append((ax, texts, xv, yv, keep_clear))
        axes[0][0].set_ylabel(AXIS_LABELS.get(y, y))
        handles = [Line2D([], [], ls="", marker="*", markersize=10, color=HIGHLIGHT_COLOUR,
                          markeredgecolor="black", label="new encoder (pred. ± PI)")]
        handles += _legend_handles(colours, seen, unknown, unknown_label=f"reference ({_UNKNOWN_LABEL})")
        rows = (len(handles) - 1) // 8
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), bbox_to_anchor=(0.5, 0.0))
        fig.tight_layout(rect=(0, 0.1 + 0.06 * rows, 1, 1))
        _place_labels(jobs)
        return _save(fig, out, formats)
