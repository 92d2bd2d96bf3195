"""Published reference data of the iREPA study (arXiv 2512.10794) and related papers.

Every number comes from the papers or the official repository's figure; the ``source`` columns say
where. Use :func:`load` to get a table as a :class:`pandas.DataFrame` and :func:`tables` to list them.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import pandas as pd

from ..errors import UnknownNameError, did_you_mean


@dataclass(frozen=True)
class ReferenceTable:
    name: str
    file: str
    description: str
    source: str


_TABLES: tuple[ReferenceTable, ...] = (
    ReferenceTable(
        "sit-xl-100k",
        "sit_xl2_100k_points.csv",
        "The 27 encoders of the main correlation figure: LP acc, gFID (SiT-XL/2, REPA, 100K, no CFG) and LDS/CDS/SRSS/RMSC",
        "iREPA repo figure spatial_metrics_comparison-sit-xl-2.png (pixel-read) + arXiv:2512.10794 Fig 4",
    ),
    ReferenceTable(
        "xl-scatter-raw",
        "paper_xl_scatter_points.csv",
        "Raw figure reading behind sit-xl-100k, with reading flags and identity evidence",
        "iREPA repo figure (pixel-read)",
    ),
    ReferenceTable(
        "encoders",
        "paper_encoders.csv",
        "One row per encoder of the 27 (+SAM2-S): family, LP/gFID, metrics, 400K SiT-B/L REPA vs iREPA gFID",
        "arXiv:2512.10794 tables 1,2,4,5,6,8 and figs 2,19; iREPA repo figure",
    ),
    ReferenceTable(
        "correlations",
        "paper_correlations.csv",
        "Every correlation (or bound) the paper reports: per model size, outliers, CMMD, fine-tuning",
        "arXiv:2512.10794 full text",
    ),
    ReferenceTable(
        "injection-ablation",
        "paper_injection_ablation.csv",
        "Global-information (CLS) injection endpoints: LP 70.7->78.5 %, gFID 19.2->25.4; paper vs code formula",
        "arXiv:2512.10794 Sec. 2; iREPA ldm/vision_encoder.py",
    ),
    ReferenceTable(
        "irepa-vs-repa",
        "paper_irepa_vs_repa.csv",
        "iREPA vs REPA result tables (1a/1b/1c, 2, 3a, 3b, 4-10) in long format",
        "arXiv:2512.10794 full text",
    ),
    ReferenceTable(
        "jit-pixelrepa-repa",
        "paper_jit_pixelrepa_repa.csv",
        "JiT tables, PixelREPA headline numbers and curves, REPA headline numbers",
        "arXiv:2511.13720 (JiT), arXiv:2603.14366 (PixelREPA), arXiv:2410.06940 (REPA)",
    ),
)

_BY_NAME = {t.name: t for t in _TABLES}


def tables() -> list[ReferenceTable]:
    """All packaged reference tables, in a stable order."""
    return list(_TABLES)


def names() -> list[str]:
    return [t.name for t in _TABLES]


def _read(file: str) -> pd.DataFrame:
    with resources.files(__package__).joinpath(file).open("r", encoding="utf-8") as fh:
        return pd.read_csv(fh)


def encoder_families() -> dict[str, str]:
    """Encoder id -> family, as the paper groups them (from the ``encoders`` table)."""
    enc = _read("paper_encoders.csv")
    return dict(zip(enc["encoder"], enc["family"]))


def family_of(encoder: object, families: dict[str, str] | None = None) -> str | None:
    """Family of an encoder id; ``a|b`` (ambiguous identity) resolves only if both share a family."""
    if not isinstance(encoder, str) or not encoder.strip():
        return None
    families = encoder_families() if families is None else families
    found = {families.get(part.strip()) for part in encoder.split("|")}
    return found.pop() if len(found) == 1 and None not in found else None


def load(name: str) -> pd.DataFrame:
    """Load a packaged reference table by name (see :func:`names`).

    ``sit-xl-100k`` gets a ``family`` column derived from its ``encoder`` column (empty where the
    encoder is unidentified or ambiguous across families).
    """
    if name not in _BY_NAME:
        raise UnknownNameError(
            f"Unknown reference table {name!r}. Known tables: {', '.join(names())}.{did_you_mean(name, names())}"
        )
    df = _read(_BY_NAME[name].file)
    if name == "sit-xl-100k":
        fams = encoder_families()
        df.insert(2, "family", [family_of(e, fams) for e in df["encoder"]])
    return df
