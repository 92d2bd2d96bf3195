"""``spatialprobe report DIR``: a notebook template, executed in a Jupyter kernel, exported to HTML.

Steps: detect the folder kind (:func:`spatialprobe.report.sections.detect_kind`); read the template
(``templates/report.ipynb`` or ``template=...``); insert a cell tagged ``injected-parameters`` after the
cell tagged ``parameters`` (the papermill convention, done here with nbformat); execute every cell with
nbclient in an ipykernel kernel that runs the current Python interpreter; write ``report.ipynb`` (with
its outputs), ``report.html`` (nbconvert's HTMLExporter; figures are embedded as base64 PNG, so the
file stands alone) and each figure as PDF + PNG under ``DIR/figures/``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..config import comma_list
from ..errors import ConfigError, InputFileError, ReportError
from .sections import FIGURES_DIR
from .sections import load as load_context

log = logging.getLogger(__name__)

TEMPLATE = "report.ipynb"
HTML_TEMPLATE = "report.html.j2"
KERNEL_NAME = "python3"


@dataclass
class ReportConfig:
    """Options of :func:`report` (and ``spatialprobe report``)."""

    dir: str = "."  #: the result folder
    kind: str = "auto"  #: study | predict | correlate | inject | metrics | probe | viz | auto
    template: str | None = None  #: a notebook with a cell tagged ``parameters`` (default: the packaged one)
    viz_encoders: list[str] = field(default_factory=list)  #: compute similarity maps of these encoders first
    viz_image: str = "skimage/astronaut"
    viz_random_init: bool = False
    show_code: bool = False  #: keep the code cells in report.html
    timeout: int = 600  #: seconds per cell
    dpi: int = 110  #: resolution of the figures shown in the report (files under figures/ use the style's)
    html: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.viz_encoders, str):
            self.viz_encoders = comma_list(self.viz_encoders)
        if self.timeout < 1:
            raise ConfigError(f"timeout={self.timeout} must be a positive number of seconds per cell.")


@dataclass
class ReportResult:
    kind: str
    notebook: Path
    html: Path | None
    figures: list[Path]


def template_path(template: str | None = None) -> Path:
    if template is None:
        return Path(str(resources.files(__package__).joinpath("templates", TEMPLATE)))
    p = Path(template)
    if not p.is_file():
        raise InputFileError(f"Report template {str(p)!r} does not exist; pass a .ipynb with a cell tagged "
                             "'parameters', or leave --template out for the packaged one.")
    return p


def inject_parameters(nb, params: dict[str, Any]):
    """Insert ``name = value`` lines as a cell tagged ``injected-parameters`` right after the cell tagged
    ``parameters`` (at the top when there is none); a previous injected cell is replaced."""
    import nbformat

    lines = ["# Parameters of this run"] + [f"{k} = {v!r}" for k, v in params.items()]
    new = nbformat.v4.new_code_cell("\n".join(lines), metadata={"tags": ["injected-parameters"]})
    cells = [c for c in nb.cells if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    at = next((i + 1 for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])), 0)
    cells.insert(at, new)
    nb.cells = cells
    return nb


def kernel_manager(workdir: Path):
    """A kernel manager for a ``python3`` kernelspec that runs this interpreter (``sys.executable``),
    written to a private folder so that whatever ``python3`` spec is installed cannot pick another Python."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    kdir = workdir / "kernels" / KERNEL_NAME
    kdir.mkdir(parents=True, exist_ok=True)
    (kdir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (spatialprobe)", "language": "python"}), encoding="utf-8")
    ksm = KernelSpecManager(kernel_dirs=[str(workdir / "kernels")], ensure_native_kernel=False)
    # IPC sockets in the private folder: nothing listens on TCP, and the kernel does not warn about it
    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm, transport="ipc",
                         ip=str(workdir / "kernel-ipc"))


def _kernel_env() -> dict[str, str]:
    """The kernel imports this very spatialprobe (its parent folder goes first on PYTHONPATH) and draws
    with the inline backend (a caller's ``MPLBACKEND=Agg`` would turn figures into text)."""
    import spatialprobe

    env = dict(os.environ)
    root = str(Path(spatialprobe.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop("MPLBACKEND", None)
    # tqdm.auto in a kernel without ipywidgets warns, then draws plain bars; the bars are enough
    env["PYTHONWARNINGS"] = ",".join(w for w in (env.get("PYTHONWARNINGS"), "ignore:IProgress not found") if w)
    return env


def execute_notebook(nb, *, cwd: str | Path, timeout: int = 600, figure_dpi: int | None = None):
    """Run every cell of ``nb`` in a fresh kernel of this interpreter (cwd = ``cwd``); returns ``nb``.

    ``figure_dpi`` sets the resolution of the inline figures (e.g. 80 to keep a stored notebook small).

    A failing cell raises :class:`~spatialprobe.errors.ReportError` naming the cell and the error; the
    outputs up to that cell stay in ``nb``.
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    with tempfile.TemporaryDirectory(prefix="spatialprobe-kernel-") as tmp:
        km = kernel_manager(Path(tmp))
        client = NotebookClient(nb, timeout=timeout, kernel_name=KERNEL_NAME, km=km,
                                resources={"metadata": {"path": str(cwd)}}, coalesce_streams=True,
                                record_timing=False, shutdown_kernel="immediate", extra_arguments=[] if figure_dpi is None else [
                                    "--InlineBackend.print_figure_kwargs="
                                    f"{{'bbox_inches': 'tight', 'dpi': {int(figure_dpi)}}}"])
        try:
            client.execute(env=_kernel_env())
        except CellExecutionError as exc:
            parts = str(exc).split("-" * 18)  # nbclient frames the failing cell's source with dashes
            src = " ".join(parts[1].split()) if len(parts) > 2 else ""
            raise ReportError(f"a notebook cell failed with {exc.ename}: {exc.evalue}"
                              + (f" (cell: {src[:160]})" if src else "")) from None
        finally:  # nbclient leaves a kernel it was handed running (it would outlive us and warn on exit)
            if km.has_kernel:
                km.shutdown_kernel(now=True)
    return nb


def run_notebook(path: str | Path, *, out: str | Path | None = None, timeout: int = 600,
                 figure_dpi: int | None = 80) -> Path:
    """Execute a notebook top to bottom in a fresh kernel (cwd: a temporary folder) and write it with its
    outputs to ``out`` (default: in place), e.g. to refresh ``notebooks/*.ipynb``; figures are stored at
    ``figure_dpi``. Returns the path written."""
    import nbformat
    from nbformat.corpus.words import generate_corpus_id

    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"Notebook {str(p)!r} does not exist.")
    nb = nbformat.read(p, as_version=4)
    if (nb.nbformat, nb.nbformat_minor) < (4, 5):  # cell ids are required from 4.5 on
        nb.nbformat_minor = 5
    for cell in nb.cells:
        cell.setdefault("id", generate_corpus_id())
    with tempfile.TemporaryDirectory(prefix="spatialprobe-nb-") as cwd:
        execute_notebook(nb, cwd=cwd, timeout=timeout, figure_dpi=figure_dpi)
    target = Path(out) if out else p
    nbformat.write(nb, target)
    return target


def to_html(nb, *, show_code: bool = False) -> str:
    """A self-contained HTML page: nbconvert's lab template without its CDN scripts; the outputs' PNGs
    are base64 data URIs, the CSS is inline."""
    from nbconvert import HTMLExporter

    tpl_dir = str(resources.files(__package__).joinpath("templates"))
    exporter = HTMLExporter(template_name="lab", template_file=HTML_TEMPLATE, extra_template_paths=[tpl_dir],
                            exclude_input=not show_code, exclude_input_prompt=True, exclude_output_prompt=True,
                            embed_images=True)
    body, _ = exporter.from_notebook_node(nb)
    return body


def report(dir: str | Path | None = None, *, config: str | Path | None = None, **options) -> ReportResult:
    """Render, execute and export the report of one result folder (see the module docstring).

    Example: ``report("out/correlate")`` writes ``out/correlate/report.ipynb``, ``report.html`` and
    ``figures/*.pdf|png``.
    """
    import nbformat

    from ..config import resolve

    if dir is not None:
        options["dir"] = str(dir)
    cfg = resolve(ReportConfig, config, **options)
    d = Path(cfg.dir)
    kind = load_context(d, kind=cfg.kind).kind  # a wrong folder or kind fails here, before any kernel starts
    tpl = template_path(cfg.template)
    try:
        nb = nbformat.read(tpl, as_version=4)
    except Exception as exc:  # noqa: BLE001 - a broken template is the user's file
        raise InputFileError(f"Report template {str(tpl)!r} is not a readable notebook: {exc}") from exc
    params = {"report_dir": str(d.resolve()), "kind": kind, "similarity_encoders": list(cfg.viz_encoders),
              "similarity_image": cfg.viz_image, "similarity_random_init": bool(cfg.viz_random_init),
              "figure_dpi": int(cfg.dpi)}
    inject_parameters(nb, params)
    nb.metadata["title"] = f"spatialprobe report: {d.resolve().name} ({kind})"
    nb.metadata["spatialprobe"] = {"parameters": params, "template": str(tpl)}
    fig_dir = d / FIGURES_DIR
    before = {p: p.stat().st_mtime_ns for p in fig_dir.glob("*")} if fig_dir.is_dir() else {}
    log.info("report: executing %s for a %s folder", tpl.name, kind)
    nb_path = d / "report.ipynb"
    try:
        execute_notebook(nb, cwd=d, timeout=cfg.timeout)
    except ReportError as exc:
        nbformat.write(nb, nb_path)
        raise ReportError(f"{exc} The notebook up to that cell is in {str(nb_path)!r}.") from None
    nbformat.write(nb, nb_path)
    html_path = None
    if cfg.html:
        html_path = d / "report.html"
        html_path.write_text(to_html(nb, show_code=cfg.show_code), encoding="utf-8")
    figures = sorted(p for p in fig_dir.glob("*") if p.is_file() and before.get(p) != p.stat().st_mtime_ns) \
        if fig_dir.is_dir() else []
    log.info("wrote %s%s and %d figure files", nb_path, f", {html_path}" if html_path else "", len(figures))
    return ReportResult(kind=kind, notebook=nb_path, html=html_path, figures=figures)
