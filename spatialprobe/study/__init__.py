"""``spatialprobe study``: one spec → a resumable plan of nodes (extract → metrics / probe / inject per
encoder; train → sample → fid per encoder × method × seed; then the results table → correlate), run
locally or as cluster jobs through submitit.

    >>> from spatialprobe.study import run_study
    >>> res = run_study(spec="mini", smoke=True, out="runs/mini-smoke")
"""

from __future__ import annotations

from .plan import Node, build_plan
from .runner import StudyConfig, StudyResult, run_study, study_status
from .spec import StudySpec, TEMPLATE, load_spec, parse_spec
from .state import load_resolved, node_state

__all__ = ["Node", "StudyConfig", "StudyResult", "StudySpec", "TEMPLATE", "build_plan", "load_resolved",
           "load_spec", "node_state", "parse_spec", "run_study", "study_status"]
