"""``correlate``: encoder properties vs generation quality, with uncertainty, table and figure."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import reference as _reference
from .config import comma_list, resolve, sha256_file, write_config
from .errors import ColumnError, ConfigError, DataError
from .io import read_table  # noqa: F401 - re-exported: the table reader lives in spatialprobe.io
from .schema import CONFIG_JSON, CORRELATIONS_CSV, GFID, PROPERTIES
from .stats import correlation_table, lp_acc_scale, numeric_column

log = logging.getLogger(__name__)

DEFAULT_X = PROPERTIES
DEFAULT_Y = (GFID,)


@dataclass
class CorrelateConfig:
    """Options of :func:`correlate` (and ``spatialprobe correlate``)."""

    reference: str | None = None  #: packaged table name, e.g. ``sit-xl-100k``
    table: str | None = None  #: CSV or parquet file of your own results
    x: list[str] = field(default_factory=lambda: list(DEFAULT_X))
    y: list[str] = field(default_factory=lambda: list(DEFAULT_Y))
    family_col: str | None = None  #: default: ``family`` when the table has it
    id_col: str | None = None  #: names dropped rows in warnings; default ``point_id``/``id``/``encoder`` if present
    control: str | None = None  #: partial correlation controlling for this column
    allow_duplicates: bool = False  #: accept repeated ids (the same point twice counts as two points)
    n_resamples: int = 10_000
    confidence: float = 0.95
    seed: int = 0
    out: str | None = None
    figure: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.x, str):
            self.x = comma_list(self.x)
        if isinstance(self.y, str):
            self.y = comma_list(self.y)
        if (self.reference is None) == (self.table is None):
            raise ConfigError("Give exactly one input: --reference NAME (see `spatialprobe ls references`) "
                              "or --table FILE.csv|.parquet.")
        if self.n_resamples < 1000:
            raise ConfigError(f"n_resamples={self.n_resamples} is too few for a stable CI; use >= 1000.")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence={self.confidence} must lie in (0, 1), e.g. 0.95.")


def check_duplicates(df: pd.DataFrame, id_col: str | None, *, allow: bool = False, what: str = "table") -> None:
    """Repeated ids (the same point twice) would count as independent points and shift r, CI and p."""
    if not id_col or id_col not in df.columns:
        return
    ids = df[id_col].astype(str)
    dup = ids[ids.duplicated(keep=False)]
    if dup.empty:
        return
    names = sorted(set(dup))
    msg = (f"{what}: {len(names)} id(s) in column {id_col!r} appear more than once ({', '.join(names[:5])}"
           f"{', ...' if len(names) > 5 else ''}; {len(dup)} rows), so they would count as independent points")
    if not allow:
        raise DataError(msg + ". Remove the repeats (or average them), or pass --allow-duplicates.")
    log.warning("%s (--allow-duplicates).", msg)


def _pick(df: pd.DataFrame, wanted: str | None, candidates: tuple[str, ...]) -> str | None:
    if wanted:
        return wanted
    return next((c for c in candidates if c in df.columns), None)


def correlate(table: pd.DataFrame | str | Path | None = None, *, config: str | Path | None = None,
              **options) -> pd.DataFrame:
    """Correlate each x column with each y column; return the table of :data:`spatialprobe.stats.COLUMNS`.

    ``table`` is a DataFrame or a CSV/parquet path; alternatively pass ``reference="sit-xl-100k"``.
    ``config`` is an optional YAML/JSON file of options; keyword options override it.
    With ``out=DIR`` it writes ``correlations.csv``, ``config.json`` and ``correlation_panel.{png,pdf}``.
    """
    frame = table if isinstance(table, pd.DataFrame) else None
    if table is not None and frame is None:
        options["table"] = str(table)
    if frame is not None:
        options.setdefault("table", "<DataFrame>")
    cfg = resolve(CorrelateConfig, config, **options)
    if cfg.out:
        from .checks import prepare_out_dir

        prepare_out_dir(cfg.out)
    if frame is not None:
        df, source = frame, {"table": "<DataFrame>"}
    elif cfg.reference is not None:
        df = _reference.load(cfg.reference)
        source = {"reference": cfg.reference}
    else:
        df = read_table(cfg.table)
        source = {"table": cfg.table, "sha256": sha256_file(cfg.table)}
    what = repr(source.get("table") or source.get("reference"))
    if not df.index.is_unique:  # rows are named by index label below
        df = df.reset_index(drop=True)
    if df.empty:
        raise DataError(f"Table {what} has no rows (a header only?): nothing to correlate. Pass a table with "
                        "one row per encoder.")
    family_col = _pick(df, cfg.family_col, ("family",))
    id_col = _pick(df, cfg.id_col, ("point_id", "id", "encoder"))
    if id_col is not None and id_col not in df.columns:
        raise ColumnError(f"Id column {id_col!r} is not in the table. Columns: {', '.join(map(str, df.columns))}.")
    labels = (f"{id_col} " + df[id_col].astype(str)) if id_col else ("row " + df.index.astype(str).to_series(index=df.index))
    for col in dict.fromkeys([*cfg.x, *cfg.y, *([cfg.control] if cfg.control else [])]):
        values = numeric_column(df, col, what=f"the table {what}", labels=labels)  # missing or text: named here
        if col == "lp_acc":  # r is scale-free, but not over a mix of two scales
            lp_acc_scale(values, labels, what=f"the table {what}")
    check_duplicates(df, id_col, allow=cfg.allow_duplicates, what=f"table {what}")
    result = correlation_table(df, cfg.x, cfg.y, family_col=family_col, control=cfg.control,
                               id_col=id_col, n_resamples=cfg.n_resamples,
                               confidence=cfg.confidence, seed=cfg.seed)
    if cfg.out:
        out = Path(cfg.out)
        result.to_csv(out / CORRELATIONS_CSV, index=False)
        extra = {"input": source, "family_col": family_col, "rows_in_input": len(df)}
        if cfg.figure:
            from .figures import correlation_panel

            for yname in cfg.y:
                stem = "correlation_panel" if len(cfg.y) == 1 else f"correlation_panel_{yname}"
                paths = correlation_panel(df, cfg.x, yname, result[result["y"] == yname],
                                          family_col=family_col, label_col=cfg.id_col, out=out / stem)
                extra.setdefault("figures", []).extend(str(p) for p in paths)
        write_config(out / CONFIG_JSON, cfg, **extra)
        log.info("wrote %s", out)
    return result
