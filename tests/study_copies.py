"""A finished study folder with one teacher taken out again: the nodes of that teacher (extraction,
properties, training, sampling, scoring) and everything downstream of them (the table, the correlations,
the published results) are removed, so a run on the copy has exactly that teacher's work left to do.

The launcher tests start from a copy of the session's smoke study (conftest ``smoke``) instead of
running the whole study again: the from-scratch run is the fixture itself.
"""

from __future__ import annotations

import shutil
from pathlib import Path

#: the smoke study's cheapest teacher to recompute (its extraction is a reshape of the pixels)
TEACHER = "pixels@mix_mean=0.75"


def copy_without_teacher(study: Path, out: Path, teacher: str = TEACHER) -> list[str]:
    """Copy ``study`` to ``out`` and remove ``teacher``'s nodes and every output of the table and correlate
    steps; returns the removed node names (``kind/key``)."""
    shutil.copytree(study, out, symlinks=True)
    nodes = out / "nodes"
    gone = sorted([*nodes.glob(f"*/{teacher}"), *nodes.glob(f"*/{teacher}.*")])
    assert gone, f"{study} has no nodes of {teacher}"
    names = [f"{p.parent.name}/{p.name}" for p in gone]
    for d in [*gone, nodes / "table", nodes / "correlate", out / "correlate"]:
        shutil.rmtree(d)
    for f in ("results.csv", "results.parquet", "summary.json"):
        (out / f).unlink()
    return names
