"""Paper-style figures. One style file (``spatialprobe.mplstyle``); consistent family colours."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

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

    fam = df[family_col] if family_col and family_col in df.columns else pd.Series([None] * len(df), index=df.index)
    colours = family_colours(fam.dropna().unique())
    with use_style():
        fig, axes = plt.subplots(1, len(xs), figsize=(3.0 * len(xs), 3.0), sharey=True, squeeze=False)
        for ax, xname in zip(axes[0], xs):
            sub = df[[xname, y]].apply(pd.to_numeric, errors="coerce")
            ok = sub.notna().all(axis=1)
            xv, yv = sub.loc[ok, xname].to_numpy(float), sub.loc[ok, y].to_numpy(float)
            cols = [colours.get(f, UNKNOWN_COLOUR) if isinstance(f, str) else UNKNOWN_COLOUR for f in fam[ok]]
            ax.scatter(xv, yv, c=cols, s=28, linewidths=0.5, zorder=3)
            if len(xv) >= 2 and np.ptp(xv) > 0:
                slope, icpt = np.polyfit(xv, yv, 1)
                grid = np.linspace(xv.min(), xv.max(), 50)
                ax.plot(grid, slope * grid + icpt, color="#c0392b", lw=1.2, zorder=2)
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
        if out is None:
            return fig
        out = Path(out)
        paths = []
        for ext in formats:
            p = out.with_suffix(f".{ext}")
            fig.savefig(p)
            paths.append(p)
        plt.close(fig)
        return paths


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

    fam = ref[family_col] if family_col and family_col in ref.columns else pd.Series([None] * len(ref), index=ref.index)
    colours = family_colours(fam.dropna().unique())
    with use_style():
        fig, axes = plt.subplots(1, len(xs), figsize=(3.0 * len(xs), 3.2), sharey=True, squeeze=False)
        for ax, xname in zip(axes[0], xs):
            sub = ref[[xname, y]].apply(pd.to_numeric, errors="coerce")
            ok = sub.notna().all(axis=1)
            xv, yv = sub.loc[ok, xname].to_numpy(float), sub.loc[ok, y].to_numpy(float)
            cols = [colours.get(f, UNKNOWN_COLOUR) if isinstance(f, str) else UNKNOWN_COLOUR for f in fam[ok]]
            ax.scatter(xv, yv, c=cols, s=24, linewidths=0.5, zorder=3, alpha=0.85)
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
        if out is None:
            return fig
        out = Path(out)
        paths = []
        for ext in formats:
            p = out.with_suffix(f".{ext}")
            fig.savefig(p)
            paths.append(p)
        plt.close(fig)
        return paths
