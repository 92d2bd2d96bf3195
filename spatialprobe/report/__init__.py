"""Figures and reports.

``figures``: the shared style and family colours; ``similarity``: the spatial-normalisation maps
(``spatialprobe viz``); ``sections`` and ``build``: the executed-notebook report (``spatialprobe report``).
Submodules are imported on use, so importing this package stays light.
"""
