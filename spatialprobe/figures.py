"""Paper-style figures. One style file (``spatialprobe.mplstyle``); consistent family colours."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError
from .schema import PROPERTIES

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


def family_colours(families) -> dict[str, str]:
    """Colour per family: the fixed order first, others after, all from one qualitative palette."""
    import seaborn as sns

    names = [f for f in FAMILY_ORDER] + sorted({str(f) for f in families if isinstance(f, str)} - set(FAMILY_ORDER))
    palette = sns.color_palette("tab20", n_colors=max(len(names), 20)).as_hex()
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def use_style():
    """Context manager applying the package style (matplotlib picks a headless backend by itself)."""
    import matplotlib.pyplot as plt

    return plt.style.context(STYLE)


def correlation_panel(df: pd.DataFrame, xs: list[str], y: str, stats: pd.DataFrame, *,
                      family_col: str | None = None, out: str | Path | None = None,
                      formats: tuple[str, ...] = ("png", "pdf")):
    """1×len(xs) panel: each x vs y, least-squares line, Pearson r with its CI in the title.

    Points are coloured by family where known and grey where not. Returns the written paths
    (or the figure when ``out`` is None).
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fam, colours = _families(df, family_col)
    with use_style():
        fig, axes = plt.subplots(1, len(xs), figsize=(3.0 * len(xs), 3.0), sharey=True, squeeze=False)
        for ax, xname in zip(axes[0], xs):
            xv, yv, _ = _family_scatter(ax, df, xname, y, fam, colours, s=28)
            _fit_line(ax, xv, yv)
            row = stats[(stats["x"] == xname) & (stats["y"] == y)]
            if len(row):
                r = row.iloc[0]
                ax.set_title(f"r = {r.pearson_r:.3f}  [{r.pearson_ci_low:.2f}, {r.pearson_ci_high:.2f}]\n"
                             f"ρ = {r.spearman_rho:.2f}, n = {int(r.n)}")
            ax.set_xlabel(AXIS_LABELS.get(xname, xname))
        axes[0][0].set_ylabel(AXIS_LABELS.get(y, y))
        present = [f for f in colours if f in set(fam.dropna())]
        handles = [Line2D([], [], ls="", marker="o", color=colours[f], label=f) for f in present]
        if fam.isna().any() and present:
            handles.append(Line2D([], [], ls="", marker="o", color=UNKNOWN_COLOUR, label="unidentified"))
        if handles:
            fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8),
                       bbox_to_anchor=(0.5, -0.02 - 0.05 * ((len(handles) - 1) // 8)))
            fig.tight_layout(rect=(0, 0.08 + 0.05 * ((len(handles) - 1) // 8), 1, 1))
        else:
            fig.tight_layout()
        return _save(fig, out, formats)


def _families(df: pd.DataFrame, family_col: str | None) -> tuple[pd.Series, dict]:
    """Each row's family (None where the table has no family column) and the colour of each family."""
    fam = df[family_col] if family_col and family_col in df.columns else pd.Series([None] * len(df), index=df.index)
    return fam, family_colours(fam.dropna().unique())


def _family_scatter(ax, df: pd.DataFrame, xname: str, y: str, fam: pd.Series, colours: dict, **kw):
    """Scatter the rows where both columns are numbers, coloured by family; returns their x, y and mask."""
    sub = df[[xname, y]].apply(pd.to_numeric, errors="coerce")
    ok = sub.notna().all(axis=1)
    xv, yv = sub.loc[ok, xname].to_numpy(float), sub.loc[ok, y].to_numpy(float)
    cols = [colours.get(f, UNKNOWN_COLOUR) if isinstance(f, str) else UNKNOWN_COLOUR for f in fam[ok]]
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
                     family_col: str | None = "family", out: str | Path | None = None,
                     formats: tuple[str, ...] = ("png", "pdf"), dpi: int | None = None):
    """Several correlation panels stacked: one row per y (e.g. ``gfid_repa`` above ``gfid_irepa``), one
    column per x, each with its points (family colours), least-squares line and r with its CI.

    ``tables[y]`` holds the points of row y (columns ``xs`` and ``y``); ``stats[y]`` the rows of the
    correlation table for that y.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    ys = list(tables)
    fams = pd.concat([t[family_col] for t in tables.values() if family_col and family_col in t.columns]
                     or [pd.Series([], dtype=object)])
    colours = family_colours(fams.dropna().unique())
    with use_style():
        fig, axes = plt.subplots(len(ys), len(xs), figsize=(2.9 * len(xs), 2.7 * len(ys)), squeeze=False)
        seen: set = set()
        for i, y in enumerate(ys):
            df, st = tables[y], stats[y]
            fam = _families(df, family_col)[0]
            for j, xname in enumerate(xs):
                ax = axes[i][j]
                if xname not in df.columns or y not in df.columns:
                    ax.set_axis_off()
                    continue
                xv, yv, ok = _family_scatter(ax, df, xname, y, fam, colours, s=24)
                seen.update(f for f in fam[ok] if isinstance(f, str))
                _fit_line(ax, xv, yv)
                row = st[(st["x"] == xname) & (st["y"] == y)]
                if len(row):
                    r = row.iloc[0]
                    ax.set_title(f"r = {r.pearson_r:.3f}  [{r.pearson_ci_low:.2f}, {r.pearson_ci_high:.2f}]")
                ax.set_xlabel(AXIS_LABELS.get(xname, xname))
                if j == 0:
                    ax.set_ylabel(AXIS_LABELS.get(y, y))
        handles = [Line2D([], [], ls="", marker="o", color=colours[f], label=f) for f in colours if f in seen]
        if handles:
            fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), bbox_to_anchor=(0.5, 0.0))
            fig.tight_layout(rect=(0, 0.04 + 0.03 * ((len(handles) - 1) // 8), 1, 1))
        else:
            fig.tight_layout()
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
        ax.axvline(0, color="black", lw=0.7)
        ax.set_yticks(pos, labels)
        ax.set_xlabel("Pearson r")
        handles, names = ax.get_legend_handles_labels()
        fig.legend(handles, names, loc="lower center", ncol=2)
        fig.tight_layout(rect=(0, 0.48 / height, 1, 1))
        return _save(fig, out, formats, dpi)


HIGHLIGHT_COLOUR = "#d62728"


def prediction_panel(ref: pd.DataFrame, xs: list[str], y: str, predictions: pd.DataFrame, *,
                     confidence: float = 0.95, family_col: str | None = None, out: str | Path | None = None,
                     formats: tuple[str, ...] = ("png", "pdf")):
    """1×len(xs) panel of ``spatialprobe predict``: the reference points (family colours), their
    least-squares line with the t-based prediction band, and each new encoder as a labelled star at its
    predicted gFID with its prediction interval as an error bar.

    Returns the written paths (or the figure when ``out`` is None).
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from scipy import stats as sstats

    fam, colours = _families(ref, family_col)
    with use_style():
        fig, axes = plt.subplots(1, len(xs), figsize=(3.0 * len(xs), 3.2), sharey=True, squeeze=False)
        for ax, xname in zip(axes[0], xs):
            xv, yv, _ = _family_scatter(ax, ref, xname, y, fam, colours, s=24, alpha=0.85)
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
                ax.annotate(f"{row['encoder']}\n{row['pred_gfid']:.1f} [{row['pi_low']:.1f}, {row['pi_high']:.1f}]",
                            (row["value"], row["pred_gfid"]), xytext=(5, 5), textcoords="offset points",
                            fontsize=7, color=HIGHLIGHT_COLOUR, zorder=6)
            ax.set_xlabel(AXIS_LABELS.get(xname, xname))
        axes[0][0].set_ylabel(AXIS_LABELS.get(y, y))
        present = [f for f in colours if f in set(fam.dropna())]
        handles = [Line2D([], [], ls="", marker="*", markersize=10, color=HIGHLIGHT_COLOUR,
                          markeredgecolor="black", label="new encoder (pred. ± PI)")]
        handles += [Line2D([], [], ls="", marker="o", color=colours[f], label=f) for f in present]
        if fam.isna().any():
            handles.append(Line2D([], [], ls="", marker="o", color=UNKNOWN_COLOUR, label="reference (unidentified)"))
        rows = (len(handles) - 1) // 8
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), bbox_to_anchor=(0.5, 0.0))
        fig.tight_layout(rect=(0, 0.1 + 0.06 * rows, 1, 1))
        return _save(fig, out, formats)
