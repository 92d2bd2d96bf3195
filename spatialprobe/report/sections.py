"""The sections of ``spatialprobe report``, called from the report notebook template.

Each section function takes the :class:`Context` of one result folder and returns something a Jupyter
kernel displays: a table, a list of figures (each also written as PDF + PNG under ``DIR/figures/``), or
an :class:`Absent` line saying which data the folder lacks and how to make them. A section never
vanishes silently.

Folder kinds (:func:`detect_kind`): ``study`` (``study.yaml`` + ``results.csv``), ``predict``
(``predictions.csv``), ``correlate`` (``correlations.csv``), ``inject`` (``injection.csv``), ``metrics``
(``summary.csv`` + ``per_image.csv``), ``probe`` (``result.json`` + ``grid.csv``) and ``viz``
(``similarity_maps.npz``).
"""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from ..errors import DataError, InputFileError
from ..io import read_table
from ..schema import (COMPARED_WITH_REPA, CONFIG_JSON, CORRELATIONS_CSV, FID_JSON, GRID_CSV, INJECTION_CSV,
                      MANIFEST_JSON, METHOD_LABELS, PER_IMAGE_CSV, PLAN_JSON, PREDICTIONS_CSV, PROPERTIES, QUALITY,
                      RESULT_JSON, RESULTS_CSV, SIMILARITY_MAPS_NPZ, STUDY_YAML, SUMMARY_CSV)
from .findings import MIN_N_FOR_CI

log = logging.getLogger(__name__)

KINDS = ("study", "predict", "correlate", "inject", "metrics", "probe", "viz")
#: the files that mark each kind, in detection order
MARKERS: dict[str, tuple[str, ...]] = {
    "study": (STUDY_YAML, RESULTS_CSV),
    "predict": (PREDICTIONS_CSV,),
    "correlate": (CORRELATIONS_CSV,),
    "inject": (INJECTION_CSV,),
    "metrics": (SUMMARY_CSV, PER_IMAGE_CSV),
    "probe": (RESULT_JSON, GRID_CSV),
    "viz": (SIMILARITY_MAPS_NPZ,),
}
#: section titles, in report order (the HTML test checks each one is there)
SECTIONS = ("What was found", "What was run", "Results", "Correlations",
            "REPA − iREPA and REPA − PixelREPA per encoder",
            "Injection curves", "Similarity maps", "Outliers and leave-one-family-out",
            "Appendix: checksums and fingerprints")
#: what a missing value prints as in every report table
MISSING = "–"
#: folders of a result folder that hold no current results (outputs moved aside by ``study run``)
WITHDRAWN_DIR = "withdrawn"
FIGURES_DIR = "figures"
MAX_JSON_FILES = 200


def detect_kind(path: str | Path) -> str:
    """The kind of result folder ``path`` is (see the module docstring)."""
    d = Path(path)
    if not d.exists():
        raise InputFileError(f"Result folder {str(d)!r} does not exist; pass the --out folder of a "
                             "study, correlate, metrics, probe, inject, predict or viz run.")
    if not d.is_dir():
        raise InputFileError(f"{str(d)!r} is a file; pass the result folder that holds it ({str(d.parent)!r}).")
    for kind in KINDS:
        if all((d / f).is_file() for f in MARKERS[kind]):
            return kind
    if (d / "study.yaml").is_file() and (d / "plan.json").is_file():
        withdrawn = " (its earlier results were withdrawn: see withdrawn/)" if (d / "withdrawn").is_dir() else ""
        raise DataError(f"{str(d)!r} is an unfinished study: it has no results.csv yet{withdrawn}. Run "
                        f"`spatialprobe study status {d}` to see which nodes are missing or failed, and rerun "
                        "`spatialprobe study run SPEC --out DIR` to resume.")
    expected = "; ".join(f"{k}: {' + '.join(v)}" for k, v in MARKERS.items())
    raise DataError(f"{str(d)!r} is not a spatialprobe result folder: none of the known files is there "
                    f"({expected}). Point `spatialprobe report` at the --out folder of one of those commands.")


class Absent:
    """One line standing in for a section whose data the folder does not hold."""

    def __init__(self, message: str) -> None:
        self.message = message

    def _repr_markdown_(self) -> str:
        return f"*Not in this folder:* {self.message}"

    def __repr__(self) -> str:
        return f"Not in this folder: {self.message}"


@dataclass
class Context:
    """One result folder, its kind, its JSON records and where figures go."""

    dir: Path
    kind: str
    dpi: int = 110
    records: dict[str, dict] = field(default_factory=dict)  #: relative path -> parsed config.json/manifest.json
    figures: list[Path] = field(default_factory=list)

    @property
    def figures_dir(self) -> Path:
        return self.dir / FIGURES_DIR

    def file(self, name: str) -> Path:
        return self.dir / name


def load(path: str | Path, *, kind: str = "auto", dpi: int = 110) -> Context:
    """Open a result folder: detect (or check) its kind and read every ``config.json`` / ``manifest.json``
    below it (the provenance)."""
    import warnings

    with warnings.catch_warnings():  # tqdm.auto in a kernel without ipywidgets: plain bars are fine
        warnings.simplefilter("ignore")
        import tqdm.auto  # noqa: F401
    d = Path(path)
    found = detect_kind(d)
    if kind not in ("auto", None, found):
        if kind not in KINDS:
            raise DataError(f"kind {kind!r} is not one of {', '.join(KINDS)} (or auto).")
        if not all((d / f).is_file() for f in MARKERS[kind]):
            raise DataError(f"{str(d)!r} is not a {kind} folder (needs {' + '.join(MARKERS[kind])}); it looks like a "
                            f"{found} folder.")
        found = kind
    ctx = Context(dir=d, kind=found, dpi=dpi)
    for p in sorted(_walk_json(d))[:MAX_JSON_FILES]:
        _read_record(ctx, p, str(p.relative_to(d)))
    # feature stores a metrics run read live elsewhere: their manifests hold the weights checksums
    for rec in list(ctx.records.values()):
        for inp in rec.get("inputs") or []:
            path = Path(inp["path"]) if isinstance(inp, dict) and inp.get("path") else None
            if path is not None and (path / MANIFEST_JSON).is_file():
                _read_record(ctx, path / MANIFEST_JSON, str(path / MANIFEST_JSON))
    return ctx


def _read_record(ctx: Context, p: Path, key: str) -> None:
    try:
        ctx.records[key] = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("provenance: %s is not readable JSON (%s); left out", p, exc)


def _walk_json(d: Path, depth: int = 5) -> Iterable[Path]:
    for name in (CONFIG_JSON, MANIFEST_JSON, PLAN_JSON, RESULT_JSON, FID_JSON):
        p = d / name
        if p.is_file():
            yield p
    if depth:
        for sub in sorted(d.iterdir()):
            if sub.is_dir() and sub.name not in (FIGURES_DIR, WITHDRAWN_DIR) and not sub.name.startswith(".") \
                    and not sub.name.endswith(".partial"):
                yield from _walk_json(sub, depth - 1)


# ------------------------------------------------------------------------------------------ helpers


def _display_png(fig, dpi: int):
    from IPython.display import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return Image(data=buf.getvalue(), format="png")


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v) or v is pd.NA or v is pd.NaT:
        return MISSING
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.4g}"
    return str(v)


def table_html(df: pd.DataFrame) -> str:
    """A table as the report shows it: no index column, ``–`` for a missing value, numbers to 4 significant
    digits, long cells wrapped and a wide table scrolled sideways inside the page (never cut at its edge)."""
    import html

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False, name=None))
    return ('<div class="sp-table" style="max-width:100%;overflow-x:auto">'
            "<style>.sp-table td{overflow-wrap:break-word;max-width:40em}</style>"
            '<table style="font-size:12px;border-collapse:collapse">'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")


class Table:
    """A DataFrame displayed by :func:`table_html` (the frame itself stays in ``.df``)."""

    def __init__(self, df: pd.DataFrame) -> None:
        self.df = df

    def _repr_html_(self) -> str:
        return table_html(self.df)

    def __repr__(self) -> str:
        return self.df.to_string(index=False, na_rep=MISSING)


def render(parts) -> None:
    """Display a section's result: one object or a list of them (tables, figures, notes); a DataFrame is
    shown without its index, with ``–`` for missing values, inside a sideways-scrolling box."""
    from IPython.display import display

    for part in parts if isinstance(parts, list) else [parts]:
        display(Table(part) if isinstance(part, pd.DataFrame) else part)


def show(ctx: Context, fig, name: str):
    """Write ``figures/<name>.pdf`` and ``.png`` (the style's print resolution) and return a PNG at the
    report's screen resolution for display; the figure is closed."""
    import matplotlib.pyplot as plt

    from ..figures import use_style

    ctx.figures_dir.mkdir(parents=True, exist_ok=True)
    with use_style():
        for ext in ("pdf", "png"):
            p = ctx.figures_dir / f"{name}.{ext}"
            fig.savefig(p)
            ctx.figures.append(p)
        img = _display_png(fig, ctx.dpi)
    plt.close(fig)
    return img


def _copy_figure(ctx: Context, src_stem: Path, name: str):
    """A figure another command already drew (``<stem>.png`` / ``.pdf``): copied to ``figures/``, PNG shown."""
    from IPython.display import Image

    ctx.figures_dir.mkdir(parents=True, exist_ok=True)
    for ext in ("pdf", "png"):
        s = src_stem.with_suffix(f".{ext}")
        if s.is_file():
            t = ctx.figures_dir / f"{name}.{ext}"
            shutil.copyfile(s, t)
            ctx.figures.append(t)
    return Image(filename=str(src_stem.with_suffix(".png")))


def _read_csv(p: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(p)
    except Exception as exc:  # noqa: BLE001 - the folder's file is the user's input
        raise DataError(f"{str(p)!r} could not be read as CSV: {exc}") from exc


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        v = [x for x in v if x not in (None, "")]
        return ", ".join(map(_fmt, v)) if len(v) <= 12 else f"[{len(v)} items]"
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)[:200]
    return str(v)


def _flatten(obj: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, obj


# ------------------------------------------------------------------------------------------ header


def header(ctx: Context):
    from IPython.display import Markdown

    files = sorted(p.name for p in ctx.dir.iterdir()  # not the report itself, nor hidden files (a study's .lock)
                   if p.is_file() and not p.name.startswith(("report.", ".")))
    return Markdown(f"**Folder:** `{ctx.dir.resolve()}`  \n**Kind:** {ctx.kind}  \n"
                    f"**Files:** {', '.join(f'`{f}`' for f in files)}")


# ------------------------------------------------------------------------------------------ provenance

_PROV_KEY = re.compile(r"(protocol|sha256|weights_id|weights$|fingerprint|checksum|preprocess)", re.I)
_ENV_KEYS = ("spatialprobe", "git_revision", "python", "numpy", "scipy", "pandas", "torch", "timm")


def _short(src: str) -> str:
    """A record's path as shown: relative to the folder, or the last three parts of an outside path."""
    p = Path(src)
    return src if not p.is_absolute() else "…/" + "/".join(p.parts[-3:])


def provenance(ctx: Context) -> pd.DataFrame | Absent:
    """What was run: the folder's resolved options, package versions, input and weights checksums and
    protocol ids, from every ``config.json`` / ``manifest.json`` below the folder."""
    if not ctx.records:
        return Absent(f"no config.json or manifest.json under {str(ctx.dir)!r}, so versions, checksums and "
                      "protocol ids are unknown (spatialprobe commands write config.json next to their results).")
    rows: dict[tuple[str, str], dict[str, Any]] = {}

    def add(section: str, key: str, value: Any, source: str) -> None:
        if value is None or value == "" or value == [] or value == {}:
            return
        text = _fmt(value)
        r = rows.setdefault((section, key, text), {"section": section, "item": key, "value": text, "sources": []})
        if source not in r["sources"]:
            r["sources"].append(source)

    top = ctx.records.get(CONFIG_JSON) or ctx.records.get("study.json") or {}
    for k, v in _flatten(top.get("config", {})):
        add("options", k, v, CONFIG_JSON)
    for src, rec in ctx.records.items():
        env = rec.get("environment") or {}
        for k in _ENV_KEYS:
            add("versions", k, env.get(k), src)
        inp = rec.get("input")
        if isinstance(inp, dict):
            for k, v in inp.items():
                add("inputs", k, v, src)
        who = f"{rec['encoder']}: " if isinstance(rec.get("encoder"), str) and src.endswith(MANIFEST_JSON) else ""
        for k, v in _flatten({kk: vv for kk, vv in rec.items() if kk not in ("config", "environment", "ids", "shards",
                                                                             "rows", "grid_results", "labels")}):
            leaf = k.rsplit(".", 1)[-1]
            if _PROV_KEY.search(leaf) and not isinstance(v, (list, dict)):
                add("checksums & protocols", who + k, v, src)
        for k, v in _flatten(rec.get("config", {})):
            leaf = k.rsplit(".", 1)[-1]
            if _PROV_KEY.search(leaf) and src != CONFIG_JSON:
                add("checksums & protocols", k, v, src)
        enc = rec.get("encoder")
        if isinstance(enc, dict) and enc.get("weights_id"):
            add("checksums & protocols", f"weights {enc.get('name', '?')}", enc["weights_id"], src)
    out = pd.DataFrame(list(rows.values()))
    plan = ctx.records.get("plan.json") or {}
    whose = []
    for item, srcs in zip(out["item"], out["sources"]):
        m = re.match(r"^([^:]+): ", str(item))
        encs = {m.group(1)} if m else {e for e in (_encoder_of_source(x, plan) for x in srcs) if e}
        whose.append(next(iter(encs)) if len(encs) == 1 else
                     ("(shared by several encoders and runs)" if encs else "(the run)"))
    out["encoder"] = whose
    short = [[_short(x) for x in s] for s in out["sources"]]
    out["sources"] = [", ".join(s[:3]) + (f" (+{len(s) - 3})" if len(s) > 3 else "") for s in short]
    order = {"options": 0, "inputs": 1, "versions": 2, "checksums & protocols": 3}
    return out.sort_values(["section", "item"], key=lambda c: c.map(order) if c.name == "section" else c,
                           kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------------------------------ data loading


def correlate_points(folder: Path, records: dict | None = None) -> tuple[pd.DataFrame | None, str | None, str]:
    """The points behind a correlate folder, from its ``config.json``: the packaged reference or the
    input table. Returns (points or None, family column, a note on where they came from)."""
    cfg_path = folder / CONFIG_JSON
    rec = (records or {}).get(CONFIG_JSON) if records is not None else None
    if rec is None and cfg_path.is_file():
        rec = json.loads(cfg_path.read_text(encoding="utf-8"))
    rec = rec or {}
    inp = rec.get("input") or {}
    family_col = rec.get("family_col")
    if inp.get("reference"):
        from .. import reference

        return reference.load(inp["reference"]), family_col, f"packaged reference {inp['reference']!r}"
    if inp.get("official") and (folder / "official_table.csv").is_file():  # correlate --official
        return (_read_csv(folder / "official_table.csv"), family_col or "family",
                f"the official collection {inp['official']!r} (official_table.csv)")
    table = inp.get("table")
    if table and table != "<DataFrame>":
        p = _find_table(Path(table), folder)
        if p is not None:
            return read_table(p), family_col, f"table {str(p)!r}"
        return None, family_col, f"the input table {table!r} is no longer on disk"
    return None, family_col, "config.json does not name the input table"


def _find_table(p: Path, folder: Path) -> Path | None:
    """The input table as recorded; a relative path was relative to where the command ran, so it is also
    tried below each parent of the folder. A study's correlate folder falls back to ``correlate/table.csv``
    (the study's published wide table)."""
    if p.is_file():
        return p
    if not p.is_absolute():
        for base in folder.resolve().parents:
            if (base / p).is_file():
                return base / p
    wide = folder.parent / "table.csv"
    if folder.parent.name == "correlate" and wide.is_file():
        return wide
    return None


def _correlate_folders(ctx: Context) -> dict[str, Path]:
    """y name -> correlate folder (the folder itself, or a study's ``correlate/<y>/``)."""
    if ctx.kind == "correlate":
        return {"": ctx.dir}
    base = ctx.dir / "correlate"
    if ctx.kind == "study" and base.is_dir():
        return {p.name: p for p in sorted(base.iterdir()) if (p / CORRELATIONS_CSV).is_file()}
    return {}


def _no_correlations(ctx: Context) -> str:
    if ctx.kind == "study":
        return ("no correlations: the study wrote no correlate/<y>/correlations.csv (each needs at least 3 encoders "
                "with that quality column; `spatialprobe study status` shows which nodes ran).")
    return (f"no correlations: a {ctx.kind} folder holds no correlations.csv "
            "(run `spatialprobe correlate --table results.csv --out DIR` on a table with a quality column).")


def _all_stats(ctx: Context) -> pd.DataFrame | None:
    frames = [_read_csv(p / CORRELATIONS_CSV) for p in _correlate_folders(ctx).values()]
    return pd.concat(frames, ignore_index=True) if frames else None


def _quality_col(df: pd.DataFrame) -> str | None:
    return next((c for c in QUALITY if c in df.columns and pd.to_numeric(df[c], errors="coerce").notna().any()), None)


# ------------------------------------------------------------------------------------------ results


def results(ctx: Context):
    """The folder's main table (study results averaged over seeds, correlations, metric summary, probe
    result, injection table, predictions), plus the figure the command drew when only it can draw it."""
    from IPython.display import Markdown

    k, d = ctx.kind, ctx.dir
    if k == "study":
        df = _read_csv(d / RESULTS_CSV)
        keys = [c for c in ("encoder", "family", "method") if c in df.columns]
        num = [c for c in (*PROPERTIES, *QUALITY) if c in df.columns]
        agg = df.groupby(keys, dropna=False, sort=False)[num].mean(numeric_only=True).reset_index() if keys else df
        if "seed" in df.columns and keys:
            agg.insert(len(keys), "n_seeds", df.groupby(keys, dropna=False, sort=False)["seed"].nunique().to_numpy())
        return [Markdown(f"`results.csv`: {len(df)} rows (encoder × method × seed); mean over seeds:"), agg.round(4)]
    if k == "correlate":
        stats = _read_csv(d / CORRELATIONS_CSV)
        pts, _, note = correlate_points(d, ctx.records)
        out = [Markdown("`correlations.csv`:"), stats.round(3)]
        if pts is not None:
            out += [Markdown(f"Points ({note}, {len(pts)} rows):"), pts.round(4)]
        else:
            out.append(Absent(f"the points behind the correlations: {note}."))
        return out
    if k == "metrics":
        return [Markdown("`summary.csv` (per encoder and radius setting):"), _read_csv(d / SUMMARY_CSV).round(4)]
    if k == "probe":
        res = json.loads((d / RESULT_JSON).read_text(encoding="utf-8"))
        best = {kk: v for kk, v in res.items() if not isinstance(v, (list, dict))}
        best.update({f"best.{kk}": v for kk, v in (res.get("best") or {}).items()})
        grid = _read_csv(d / GRID_CSV)
        return [pd.DataFrame({"item": list(best), "value": [_fmt(v) for v in best.values()]}),
                Markdown("`grid.csv` (every head of the grid):"), grid.round(4)]
    if k == "inject":
        return [Markdown("`injection.csv` (one row per α):"), _read_csv(d / INJECTION_CSV).round(4)]
    if k == "predict":
        pred = _read_csv(d / PREDICTIONS_CSV)
        out = [Markdown("`predictions.csv` (per new encoder and property: OLS prediction, 95 % interval, rank):"),
               pred.round(3)]
        notes = predict_notes(d, pred, ctx.records.get(CONFIG_JSON))
        if notes:
            out.append(Markdown("\n".join(f"- **{kind}:** {text}" for kind, text in notes)))
        if (d / "prediction_panel.png").is_file():
            out.append(_copy_figure(ctx, d / "prediction_panel", "prediction_panel"))
        return out
    if k == "viz":
        from ..viz import load_maps

        maps = load_maps(d / SIMILARITY_MAPS_NPZ)
        return pd.DataFrame([{"encoder": m.encoder, "refs": " ".join(f"{r}:{c}" for r, c in m.refs), "gamma": m.gamma,
                              "raw_min": m.raw.min(), "raw_max": m.raw.max(), "normed_min": m.normed.min(),
                              "normed_max": m.normed.max()} for m in maps]).round(4)
    raise DataError(f"unknown report kind {k!r}")  # pragma: no cover - load() checks the kind


def predict_notes(folder: Path, pred: pd.DataFrame, rec: dict | None = None) -> list[tuple[str, str]]:
    """The caveats ``predict`` printed (protocol differences from the reference) and an extrapolation
    notice for every prediction whose property lies outside the reference points' range."""
    if rec is None and (folder / CONFIG_JSON).is_file():
        rec = json.loads((folder / CONFIG_JSON).read_text(encoding="utf-8"))
    rec = rec or {}
    notes = [("caveat", f"the protocol differs from the reference's or was not recorded, so the x-axes may not be "
                        f"comparable: {c}") for c in rec.get("caveats") or []]
    ref_in = rec.get("reference_input") or {}
    ref = None
    try:
        if ref_in.get("reference"):
            from .. import reference

            ref = reference.load(ref_in["reference"])
        elif ref_in.get("table") and Path(ref_in["table"]).is_file():
            from ..correlation import read_table

            ref = read_table(ref_in["table"])
    except Exception as exc:  # noqa: BLE001 - the notice is extra; say why it is missing
        notes.append(("note", f"the reference could not be read to check for extrapolation ({exc})."))
    if ref is None:
        if not ref_in:
            notes.append(("note", "config.json does not name the reference, so extrapolation was not checked."))
        return notes
    for _, r in pred.iterrows():
        col = r.get("x")
        if col not in ref.columns:
            continue
        xr = pd.to_numeric(ref[col], errors="coerce").dropna()
        v = pd.to_numeric(pd.Series([r.get("value")]), errors="coerce").iloc[0]
        if len(xr) and pd.notna(v) and not xr.min() <= v <= xr.max():
            notes.append(("extrapolation", f"{r['encoder']}: {col} = {v:.4g} lies outside the reference range "
                                           f"[{xr.min():.4g}, {xr.max():.4g}]; its prediction extends the line "
                                           "beyond the data."))
    return notes


# ------------------------------------------------------------------------------------------ correlations


def _method_groups(names: Iterable[str]) -> list[list[str]]:
    """The y columns as figure groups: one quality's methods together (REPA, iREPA, PixelREPA), their gaps to
    REPA together, any other column alone."""
    names = list(names)
    present, groups = set(names), []
    for q in QUALITY:
        for cols in ([f"{q}_{m}" for m in ("repa", *COMPARED_WITH_REPA)],
                     [f"{q}_repa_minus_{m}" for m in COMPARED_WITH_REPA]):
            g = [c for c in cols if c in present]
            if g:
                groups.append(g)
    used = {y for g in groups for y in g}
    return groups + [[y] for y in names if y not in used]


def _method_pairs(names: Iterable[str]) -> list[tuple[str, str]]:
    """[('gfid_repa', 'gfid_irepa'), ('gfid_repa', 'gfid_pixelrepa')] for the first quality with REPA and another
    method both present (the fd_digits equivalents likewise)."""
    s = set(names)
    for q in QUALITY:
        pairs = [(f"{q}_repa", f"{q}_{m}") for m in COMPARED_WITH_REPA if f"{q}_repa" in s and f"{q}_{m}" in s]
        if pairs:
            return pairs
    return []


def correlations(ctx: Context):
    """Correlation panels with the CI of r in every title: the methods of a study in one figure (REPA above
    iREPA above PixelREPA), their gaps to REPA in another."""
    from ..figures import correlation_grid

    folders = _correlate_folders(ctx)
    if not folders:
        return Absent(_no_correlations(ctx))
    tables: dict[str, pd.DataFrame] = {}
    stats: dict[str, pd.DataFrame] = {}
    missing, family = [], "family"
    for name, folder in folders.items():
        st = _read_csv(folder / CORRELATIONS_CSV)
        pts, fam, note = correlate_points(folder, ctx.records if folder == ctx.dir else None)
        family = fam or family
        if pts is None:
            missing.append(f"{name or folder.name}: {note}")
            continue
        for y in st["y"].unique():
            if y in pts.columns:
                tables[str(y)] = pts
                stats[str(y)] = st[st["y"] == y]
    if not tables:
        return Absent("the correlation points are not on disk (" + "; ".join(missing) + ").")
    groups = _method_groups(tables)
    order = [y for g in groups for y in g]
    xs = [x for x in PROPERTIES if any(x in stats[y]["x"].values for y in order)]
    xs += [x for y in order for x in stats[y]["x"].unique() if x not in xs]
    out = []
    for g in groups:
        fig = correlation_grid({y: tables[y] for y in g}, xs, {y: stats[y] for y in g}, family_col=family)
        out.append(show(ctx, fig, "correlations_" + "_vs_".join(g) if len(g) > 1 else f"correlations_{g[0]}"))
    if missing:
        out.append(Absent("some points are not on disk: " + "; ".join(missing)))
    return out


def methods_per_encoder(ctx: Context):
    """REPA − iREPA and REPA − PixelREPA of the quality metric per encoder (positive: the other method reaches
    the lower, better gFID / FD), one bar figure per pair, and the methods side by side in one table."""
    from ..figures import paired_difference

    df = None
    if ctx.kind == "study":
        res = _read_csv(ctx.dir / RESULTS_CSV)
        q = _quality_col(res)
        methods = set(res["method"].astype(str)) if "method" in res.columns else set()
        if q and "repa" in methods and methods & set(COMPARED_WITH_REPA):
            keys = ["encoder"] + (["family"] if "family" in res.columns else [])
            sub = res[res["method"].isin(["repa", *COMPARED_WITH_REPA])]
            wide = sub.pivot_table(index=keys, columns="method", values=q, aggfunc="mean").reset_index()
            wide = wide.rename(columns={m: f"{q}_{m}" for m in ("repa", *COMPARED_WITH_REPA)})
            wide.columns.name = None
            df = wide.dropna(subset=[c for c in wide.columns if c not in keys], how="all")
    else:
        for folder in _correlate_folders(ctx).values():
            pts, _, _ = correlate_points(folder, ctx.records if folder == ctx.dir else None)
            if pts is not None and _method_pairs(pts.columns):
                df = pts
                break
    pairs = _method_pairs(df.columns) if df is not None else []
    if not pairs:
        return Absent(f"no REPA − iREPA or REPA − PixelREPA comparison: this {ctx.kind} folder has no quality "
                      "numbers for REPA and another method (a study with methods repa and irepa or pixelrepa, "
                      "or a table with gfid_repa and gfid_irepa columns).")
    label = "encoder" if "encoder" in df.columns else df.columns[0]
    family = "family" if "family" in df.columns else None
    figs = [show(ctx, paired_difference(df, a, b, label_col=label, family_col=family), "repa_minus_" + b.rsplit("_", 1)[1])
            for a, b in pairs]
    cols = [pairs[0][0]] + [b for _, b in pairs]
    tab = df[[c for c in (label, "family", *cols) if c in df.columns]].copy()
    for a, b in pairs:
        tab[f"{a} − {b}"] = pd.to_numeric(tab[a], errors="coerce") - pd.to_numeric(tab[b], errors="coerce")
    first = f"{pairs[0][0]} − {pairs[0][1]}"
    return [*figs, tab.sort_values(first, ascending=False).round(3)]


#: the section's earlier name (REPA − iREPA only), kept for reports built from an older template
repa_minus_irepa = methods_per_encoder


# ------------------------------------------------------------------------------------------ injection


def injection(ctx: Context):
    """LP accuracy and spatial metrics against the injection strength α."""
    from ..figures import injection_curves

    files = [ctx.dir / INJECTION_CSV] if ctx.kind == "inject" else _current(ctx, ctx.dir.glob(f"**/{INJECTION_CSV}"))
    if not files:
        return Absent(f"no injection curves: no injection.csv in this {ctx.kind} folder "
                      "(run `spatialprobe inject --encoder ENC --images DIR --labels L --out DIR`).")
    table = pd.concat([_read_csv(f) for f in files], ignore_index=True)
    return show(ctx, injection_curves(table), "injection_curves")


# ------------------------------------------------------------------------------------------ similarity


def _current(ctx: Context, paths: Iterable[Path]) -> list[Path]:
    """``paths`` without withdrawn or unfinished outputs; in a study, only node folders of its current plan
    that are done (a node of an encoder the spec dropped is not a current result)."""
    plan = ctx.records.get("plan.json") if ctx.kind == "study" else None
    done = {f"nodes/{n['kind']}/{n['key']}" for n in (plan or {}).get("nodes", []) if n.get("state") == "done"}
    out = []
    for p in sorted(paths):
        parts = p.relative_to(ctx.dir).parts
        if WITHDRAWN_DIR in parts or any(q.endswith(".partial") for q in parts):
            continue
        if plan is not None and parts[0] == "nodes" and "/".join(parts[:3]) not in done:
            continue
        out.append(p)
    return out


def _maps_files(ctx: Context) -> list[Path]:
    from ..viz import MAPS_FILE

    return sorted(p for p in ctx.dir.glob(f"**/{MAPS_FILE}") if FIGURES_DIR not in p.relative_to(ctx.dir).parts)


def similarity(ctx: Context, encoders: list[str] | None = None, image: str = "skimage/astronaut",
               random_init: bool = False):
    """Similarity maps from ``similarity_maps.npz`` files in the folder; with ``encoders`` (e.g. the
    weight-free ``hog``, ``pixels``) they are computed first into ``DIR/similarity/``."""
    from ..figures import similarity_figure
    from ..viz import load_maps, viz

    if encoders:
        viz(encoder=list(encoders), image=image, random_init=random_init, out=str(ctx.dir / "similarity"))
    files = _maps_files(ctx)
    if not files:
        return Absent("no similarity maps: no similarity_maps.npz in this folder (run `spatialprobe viz --encoder "
                      f"ENC --image IMG --out {ctx.dir}/similarity`, or `spatialprobe report --viz-encoders hog,pixels`).")
    out = []
    for f in files:
        stem = "similarity" if len(files) == 1 else "similarity_" + "_".join(f.relative_to(ctx.dir).parent.parts)
        out.append(show(ctx, similarity_figure(load_maps(f)), stem))
    return out


# ------------------------------------------------------------------------------------------ robustness


def influence(points: pd.DataFrame, x: str, y: str, id_col: str | None) -> dict[str, Any]:
    """The row whose removal moves Pearson r the most, and r without it."""
    from ..stats import pearson

    sub = points[[x, y]].apply(pd.to_numeric, errors="coerce")
    ok = sub.notna().all(axis=1).to_numpy()
    xv, yv = sub[x].to_numpy(float)[ok], sub[y].to_numpy(float)[ok]
    ids = (points[id_col].astype(str).to_numpy()[ok] if id_col else np.arange(len(points))[ok].astype(str))
    if len(xv) < 4:
        return {"most_influential": None, "r_without_it": np.nan}
    r = pearson(xv, yv)
    loo = np.array([pearson(np.delete(xv, i), np.delete(yv, i)) for i in range(len(xv))])
    i = int(np.argmax(np.abs(loo - r)))
    return {"most_influential": ids[i], "r_without_it": loo[i]}


def robustness(ctx: Context):
    """Does one point or one family carry a correlation? r with its CI next to the leave-one-out and
    leave-one-family-out ranges, and the single most influential point of each pair."""
    from ..figures import robustness_figure

    stats = _all_stats(ctx)
    if stats is None or not len(stats):
        return Absent("no outlier or leave-one-family-out checks: " + _no_correlations(ctx).split(": ", 1)[1])
    rows = []
    for folder in _correlate_folders(ctx).values():
        st = _read_csv(folder / CORRELATIONS_CSV)
        pts, _, _ = correlate_points(folder, ctx.records if folder == ctx.dir else None)
        id_col = None
        if pts is not None:
            id_col = next((c for c in ("encoder", "point_id", "id") if c in pts.columns), None)
            if id_col == "encoder" and "point_id" in pts.columns and pts["encoder"].isna().any():
                id_col = "point_id"
        for _, r in st.iterrows():
            inf = influence(pts, r["x"], r["y"], id_col) if pts is not None and {r["x"], r["y"]} <= set(pts.columns) \
                else {"most_influential": None, "r_without_it": np.nan}
            rows.append({"x": r["x"], "y": r["y"], "n": r["n"], "pearson_r": r["pearson_r"],
                         "ci": MISSING if pd.isna(r["pearson_ci_low"]) else f"[{r['pearson_ci_low']:.2f}, {r['pearson_ci_high']:.2f}]",
                         "loo": MISSING if pd.isna(r["loo_min"]) else f"[{r['loo_min']:.2f}, {r['loo_max']:.2f}]",
                         "lofo": "-" if pd.isna(r.get("lofo_min")) else f"[{r['lofo_min']:.2f}, {r['lofo_max']:.2f}]",
                         **inf})
    tab = pd.DataFrame(rows)
    fig = show(ctx, robustness_figure(stats), "robustness")
    return [fig, tab.round(3)]


# ------------------------------------------------------------------------------------------ the finding


def _stats_table(ctx: Context) -> pd.DataFrame | None:
    stats = _all_stats(ctx)
    return stats if stats is not None and len(stats) else None


def study_notes(ctx: Context) -> list[str]:
    """What a reader must know before trusting a study's numbers: nodes that failed or were blocked,
    outputs withdrawn because the current plan no longer backs them, random-init rows joined to published
    numbers."""
    if ctx.kind != "study":
        return []
    notes = []
    plan = ctx.records.get("plan.json") or {}
    bad = [n for n in plan.get("nodes", []) if n.get("state") in ("failed", "blocked")]
    if bad:
        errs = []
        for n in bad[:8]:
            err = {}
            ep = ctx.dir / "nodes" / n["kind"] / f"{n['key']}.error.json"
            if ep.is_file():
                try:
                    err = json.loads(ep.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    err = {}
            errs.append(f"`{n['name']}` {n['state']}" + (f" ({err['error'][:160]})" if err.get("error") else ""))
        notes.append(f"**{len(bad)} node(s) failed or were blocked**, so their numbers are missing below: "
                     + "; ".join(errs) + (" …" if len(bad) > 8 else "") + f". `spatialprobe study status {ctx.dir}`.")
    wd = ctx.dir / WITHDRAWN_DIR
    if wd.is_dir():
        for rec_path in sorted(wd.glob("*/withdrawn.json")):
            try:
                rec = json.loads(rec_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            items = "; ".join(f"`{r['path']}` ({r['reason']})" for r in rec.get("withdrawn", []))
            notes.append(f"**Withdrawn on {rec.get('time', '?')}** (moved to `{rec_path.parent.relative_to(ctx.dir)}/`,"
                         f" not shown here): {items}")
    res = _read_csv(ctx.dir / RESULTS_CSV) if (ctx.dir / RESULTS_CSV).is_file() else None
    if res is not None and "quality_note" in res.columns and res["quality_note"].notna().any():
        for _, r in res[res["quality_note"].notna()].iterrows():
            notes.append(f"**{r['encoder']}:** {r['quality_note']}")
    return notes


def findings(ctx: Context):
    """The first section: which property predicts quality best under each method (r with its CI, or the
    small-n note) and REPA against iREPA and PixelREPA per teacher, with any failure or withdrawal said first."""
    from IPython.display import Markdown

    from . import findings as F

    out: list[Any] = []
    notes = study_notes(ctx)
    if notes:
        out.append(Markdown("\n".join(f"- ⚠ {n}" for n in notes)))
    stats = _stats_table(ctx)
    if ctx.kind == "predict":
        pred = _read_csv(ctx.dir / PREDICTIONS_CSV)
        notes = predict_notes(ctx.dir, pred, ctx.records.get(CONFIG_JSON))
        outside = {t.split(" = ")[0] for k, t in notes if k == "extrapolation"}  # "encoder: property"
        level = ((ctx.records.get(CONFIG_JSON) or {}).get("config") or {}).get("confidence", 0.95)
        lines = []
        for enc, g in pred.groupby("encoder", sort=False):
            # the property whose reference line fits best (largest |r|) gives the headline prediction
            best = g.assign(_r=pd.to_numeric(g["ref_r"], errors="coerce").abs()).sort_values(
                "_r", ascending=False, kind="stable").iloc[0]
            extra = (" — **extrapolated**: its value lies outside the reference range"
                     if f"{enc}: {best['x']}" in outside else "")
            lines.append(f"- **{enc}**: predicted gFID {best['pred_gfid']:.3g} from {best['x']} (the best-fitting "
                         f"reference line, r = {best['ref_r']:.2f}; {100 * float(level):g} % interval "
                         f"[{best['pi_low']:.3g}, {best['pi_high']:.3g}]), rank {int(best['rank'])} among "
                         f"{int(best['n_ref'])} reference encoders{extra}.")
        out.append(Markdown("\n".join(lines) if lines else "No predictions in `predictions.csv`."))
        return out
    if stats is None:
        out.append(Absent(_no_correlations(ctx)))
    else:
        best = F.best_predictors(stats)
        lines = []
        for _, b in best.iterrows():
            target = F.target_words(b["method"], str(b["y"]))
            lines.append(f"- **{b['method']}**: **{b['x']}** predicts {target} best — {b['text']}; {b['direction']}.")
        small = best["n"].lt(F.MIN_N_FOR_CI).any() if len(best) else False
        if small:
            lines.append(f"- With fewer than {F.MIN_N_FOR_CI} encoders a bootstrap CI and a permutation p say "
                         "nothing reliable, so none is shown; add encoders (a full, not `--smoke`, run) for intervals.")
        out.append(Markdown("\n".join(lines) if lines else "No correlation could be computed."))
    if ctx.kind == "study":
        res = _read_csv(ctx.dir / RESULTS_CSV)
        for m in COMPARED_WITH_REPA:
            cmp_ = F.repa_vs(res, m)
            if cmp_ is not None and len(cmp_):
                out.append(Markdown(f"**REPA vs {METHOD_LABELS[m]} per teacher** ({cmp_.attrs['quality']}, mean over "
                                    f"seeds): {F.versus_line(cmp_)}."))
                out.append(cmp_.round(3))
    return out


def _words_list(v: Any) -> str:
    return ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def _images_count(ctx: Context) -> str:
    plan = ctx.records.get("plan.json") or {}
    ns = set()
    for n in plan.get("nodes", []):
        if n.get("kind") == "extract":
            done = ctx.records.get(f"nodes/extract/{n['key']}/done.json")
            if done is None:
                p = ctx.dir / "nodes" / "extract" / n["key"] / "done.json"
                if p.is_file():
                    done = json.loads(p.read_text(encoding="utf-8"))
            if done and (done.get("summary") or {}).get("n_images") is not None:
                ns.add(int(done["summary"]["n_images"]))
    return "/".join(map(str, sorted(ns))) if ns else "?"


def what_was_run(ctx: Context):
    """The run in plain words: for a study, from its resolved ``study.yaml`` (encoders, images and their
    count, model, steps, batch, seeds, smoke or full, quality protocol); otherwise the command's options."""
    from IPython.display import Markdown

    if ctx.kind != "study":
        rec = ctx.records.get(CONFIG_JSON) or {}
        cfg = rec.get("config") or {}
        if not cfg:
            return Absent("no config.json in this folder, so the options of the run are unknown.")
        parts = [f"`{k}` = {_fmt(v)}" for k, v in cfg.items() if _fmt(v) not in ("None", "", "{}")]
        notes = rec.get("notes") or []
        text = f"A **{ctx.kind}** run with " + ", ".join(parts) + "."
        if notes:
            text += "\n\n" + "\n".join(f"- {n}" for n in notes)
        return Markdown(text)
    import yaml

    spec = yaml.safe_load((ctx.dir / "study.yaml").read_text(encoding="utf-8")) or {}
    plan = ctx.records.get("plan.json") or {}
    smoke = plan.get("smoke")
    encs = spec.get("encoders") or []
    enc_words = ", ".join(f"{e.get('id')}" + (" (random init)" if e.get("random_init") else "") for e in encs
                          if isinstance(e, dict))
    p = spec.get("properties") or {}
    lines = [f"Study **{spec.get('name', '?')}**, "
             + {True: "a **smoke** run (`--smoke`: the spec's quick overrides; numbers are for checking the "
                      "pipeline, not for conclusions)",
                False: "a **full** run (no `--smoke`)", None: "smoke or full not recorded"}[smoke] + ".",
             f"- **Encoders ({len(encs)}):** {enc_words}.",
             f"- **Properties** measured on `{p.get('images')}`, {_images_count(ctx)} images"
             + (f" (the first {p['limit']})" if p.get("limit") else "") + f" at {p.get('resolution')} px: "
             + ", ".join(k for k in ("metrics", "probe", "inject") if p.get(k) is not None) + "."]
    t = spec.get("training")
    if t:
        fid = t.get("fid") or {}
        proto = fid.get("protocol", "digits")
        qual = ("the toy digits FD (`fd_digits`, a Fréchet distance on a small digits CNN; not gFID)"
                if proto == "digits" else f"gFID against the ADM reference `{fid.get('ref')}`")
        res_path = ctx.dir / RESULTS_CSV
        if res_path.is_file():
            res = _read_csv(res_path)
            if "protocol" in res.columns and res["protocol"].notna().any():
                qual += f"; protocol `{_words_list(sorted(res['protocol'].dropna().astype(str).unique()))}`"
        base = (f" + the no-alignment baseline (seeds {_words_list(t.get('baseline_seeds') or t.get('seeds'))})"
                if t.get("baseline") else "")
        lines += [f"- **Training:** model `{t.get('model')}`, methods {_words_list(t.get('methods'))}{base}; "
                  f"{t.get('steps')} steps, batch {t.get('batch_size') or 'default'}, seeds "
                  f"{_words_list(t.get('seeds'))}, on `{t.get('images')}`"
                  + (f" (options: {_fmt(t.get('options'))})" if t.get("options") else "") + ".",
                  f"- **Samples:** {_fmt(t.get('sample'))}; **quality:** {qual}."]
    elif spec.get("known_gfid"):
        lines.append(f"- **Quality:** published numbers from `{spec['known_gfid']}` (column "
                     f"`{spec.get('known_gfid_col', 'gfid')}`); nothing was trained.")
    c = spec.get("correlate") or {}
    lines.append(f"- **Correlations:** {_words_list(c.get('x'))} against each quality column; Pearson r with a "
                 f"{100 * float(c.get('confidence', 0.95)):g} % bootstrap CI ({c.get('n_resamples')} resamples; "
                 f"none below n = {MIN_N_FOR_CI}).")
    lines.append(f"- **Where:** device `{spec.get('device')}`, launcher `{spec.get('launcher')}`.")
    return Markdown("\n".join(lines))


def _encoder_of_source(src: str, plan: dict) -> str:
    parts = Path(src).parts
    if len(parts) >= 3 and parts[0] == "nodes":
        for n in plan.get("nodes", []):
            if n.get("kind") == parts[1] and n.get("key") == parts[2]:
                if n.get("encoder"):
                    return n["encoder"]
                return "(the results table and correlations)" if n.get("kind") in ("table", "correlate") else "none"
    return ""


def appendix(ctx: Context):
    """Checksums, fingerprints, versions and options, grouped by encoder (a study's node folders say whose
    they are; other records are the run's own)."""
    from IPython.display import Markdown

    prov = provenance(ctx)
    if isinstance(prov, Absent):
        return prov
    out: list[Any] = []
    for who, g in prov.groupby("encoder", sort=True):
        out += [Markdown(f"**{who}**"), g.drop(columns=["encoder"])]
    return out
