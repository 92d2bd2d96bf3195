"""The executed-notebook report (``spatialprobe report``): ``sections`` and ``build``.

The figures moved to :mod:`spatialprobe.figures` and the similarity maps to :mod:`spatialprobe.viz`;
``report.figures`` and ``report.similarity`` remain as deprecated aliases for one release.
Submodules are imported on use, so importing this package stays light.
"""
