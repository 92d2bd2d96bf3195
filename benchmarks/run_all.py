"""Every GPU benchmark in one command, with the rows written into BENCHMARKS.md under the GPU's name.

    python benchmarks/run_all.py --gpu                  # one GPU, <= 10 minutes; writes BENCHMARKS.md
    python benchmarks/run_all.py --dry-run --out /tmp/B.md   # the same plumbing on CPU at tiny sizes, seconds

Steps (each a benchmark script of this folder, or the CLI):

1. extraction images/s and fraction of the bf16 peak, ViT-B (``dino-vit-b``) and ViT-L (``dinov2-vit-l``),
   random init — ``bench_extract.py``;
2. SiT-B/2 and JiT-B/16 steps/s without and with alignment (plain, teacher forward, REPA, iREPA,
   PixelREPA when it exists), host syncs per step, the training loop's syncs and the teacher-token
   cache — ``bench_train.py``;
3. spatial metrics on the GPU against the per-metric baseline and the raw-Gram floor — ``bench_metrics.py``;
4. Inception feature throughput for FID — ``bench_fid.py``;
5. the mini study with ``--device cuda`` (``spatialprobe study run mini``), given the time that is left.

With ``--gpu`` every step runs in its own process with a time limit taken from the total budget
(``--budget``, default 540 s), so one failure or overrun does not cost the others; a step that fails or
runs out of time is written as such. ``--dry-run`` (alias ``--tiny``) runs the same steps in this
process on the CPU at tiny sizes (the study only plans: ``--dry-run``) to check the plumbing; its rows
are not measurements and go under a heading that says so. The section for a heading is replaced when
it exists already, so rerunning on the same GPU updates its rows.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import importlib.util
import io
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass
class Step:
    key: str
    title: str
    script: str | None  #: a file of benchmarks/, or None for the CLI
    gpu: list[str] | None  #: arguments on the GPU (None: not run there)
    tiny: list[str] | None  #: arguments in the dry run (None: skipped there, with ``tiny_note``)
    budget_s: int = 120  #: the most this step may take on the GPU
    tiny_note: str = ""
    needs_out: bool = False  #: append ``--out <tmp dir>`` (the study)
    tail: int | None = None  #: keep only the last lines of the output (the study's node listing is long)
    result: dict = field(default_factory=dict)


def steps() -> list[Step]:
    return [
        Step("extract-b", "Extraction, ViT-B (dino-vit-b, random init): pipeline vs bare forward, share of bf16 peak",
             "bench_extract.py", ["--encoder", "dino-vit-b", "--n", "2048", "--batch-size", "256", "--device", "cuda",
                                  "--rounds", "2"],
             ["--encoder", "pixels", "--n", "8", "--batch-size", "4", "--rounds", "1", "--device", "cpu",
              "--workers", "0"], budget_s=90),
        Step("extract-l", "Extraction, ViT-L (dinov2-vit-l, random init): pipeline vs bare forward, share of bf16 peak",
             "bench_extract.py", ["--encoder", "dinov2-vit-l", "--n", "2048", "--batch-size", "256", "--device",
                                  "cuda", "--rounds", "2"],
             None, budget_s=90, tiny_note="same script and path as ViT-B; not repeated in the dry run"),
        Step("train", "Training steps: SiT-B/2 and JiT-B/16, batch 256, bf16, plain vs aligned",
             "bench_train.py", ["--steps", "10", "--loop-syncs", "--cache"],
             ["--tiny", "--models", "sit-tiny", "--steps", "1", "--methods", "none,irepa,pixelrepa"], budget_s=180),
        Step("metrics", "Spatial metrics on the device: shared pass vs per-metric baseline vs raw-Gram floor",
             "bench_metrics.py", ["--device", "cuda", "--sizes", "128,1024", "--repeats", "5"],
             ["--sizes", "4", "--repeats", "1", "--threads", "1", "--inline"], budget_s=60),
        Step("fid", "Inception feature throughput for FID (fp32, no TF32)",
             "bench_fid.py", ["--device", "cuda", "--n", "4096", "--batch", "256"],
             ["--device", "cpu", "--n", "2", "--batch", "2", "--threads", "1"], budget_s=60),
        Step("study", "The mini study (spatialprobe study run mini)",
             None, ["study", "run", "mini", "--device", "cuda"],
             ["study", "run", "mini", "--device", "cpu", "--dry-run"], budget_s=10_000, needs_out=True, tail=12),
    ]


# ---------------------------------------------------------------------------- running one step
def _command(step: Step, args: list[str]) -> str:
    if step.script is None:
        return "spatialprobe " + " ".join(shlex.quote(a) for a in args)
    return f"python benchmarks/{step.script} " + " ".join(shlex.quote(a) for a in args)


def _run_subprocess(step: Step, args: list[str], limit: float) -> tuple[str, str, float]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    argv = [sys.executable, str(HERE / step.script)] + args if step.script else \
        [sys.executable, "-m", "spatialprobe.cli"] + args
    t0 = time.perf_counter()
    try:
        p = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(1.0, limit))
        status = "ok" if p.returncode == 0 else f"failed (exit {p.returncode}): {_last_error(p.stderr)}"
        return status, p.stdout, time.perf_counter() - t0
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return f"timed out after {limit:.0f} s", out, time.perf_counter() - t0


def _last_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip() and "\r" not in ln]
    return lines[-1][:300] if lines else "no message"


def _run_inline(step: Step, args: list[str]) -> tuple[str, str, float]:
    buf = io.StringIO()
    t0 = time.perf_counter()
    status = "ok"
    with contextlib.redirect_stdout(buf):
        try:
            if step.script is None:
                import typer

                from spatialprobe.cli import app

                typer.main.get_command(app).main(args, prog_name="spatialprobe", standalone_mode=False)
            else:
                spec = importlib.util.spec_from_file_location(f"_bench_{step.key}", HERE / step.script)
                mod = importlib.util.module_from_spec(spec)
                sys.modules[spec.name] = mod
                try:
                    spec.loader.exec_module(mod)
                    mod.main(args)
                finally:
                    sys.modules.pop(spec.name, None)
        except SystemExit as exc:
            if exc.code not in (0, None):
                status = f"failed (exit {exc.code})"
        except Exception as exc:  # noqa: BLE001 - one step's failure is recorded, the others still run
            status = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    return status, buf.getvalue(), time.perf_counter() - t0


def _keep(stdout: str) -> list[str]:
    """The lines worth recording: everything but progress bars, blank runs and the scripts' own command lines
    (the section gives the exact command)."""
    out: list[str] = []
    for ln in stdout.splitlines():
        if "\r" in ln or ln.startswith("command:"):
            continue
        if not ln.strip() and (not out or not out[-1].strip()):
            continue
        out.append(ln.rstrip())
    while out and not out[-1].strip():
        out.pop()
    return out


# ---------------------------------------------------------------------------- BENCHMARKS.md
def render(heading: str, intro: list[str], done: list[Step]) -> str:
    lines = [heading, "", *intro, ""]
    for s in done:
        r = s.result
        lines.append(f"### {s.title}")
        lines.append("")
        if r.get("skipped"):
            lines += [f"Skipped: {r['skipped']}", ""]
            continue
        lines.append(f"Command: `{r['command']}` ({r['status']}, {r['seconds']:.0f} s)")
        lines.append("")
        body = r["lines"]
        if body:
            lines += body + [""]
    return "\n".join(lines).rstrip() + "\n"


def write_section(path: Path, heading: str, text: str) -> None:
    """Replace the section that starts with ``heading`` (up to the next ``## `` heading) or insert it before
    the test-suite section (at the end when there is none)."""
    old = path.read_text() if path.is_file() else "# Benchmarks\n"
    lines = old.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.strip() == heading.strip()), None)
    if start is not None:
        end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
        new = lines[:start] + text.rstrip().splitlines() + [""] + lines[end:]
    else:
        at = next((i for i, ln in enumerate(lines) if ln.startswith("## Test suite")), len(lines))
        new = lines[:at] + ([""] if at and lines[at - 1].strip() else []) + text.rstrip().splitlines() + [""] + lines[at:]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(new).rstrip() + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--gpu", action="store_true", help="run every benchmark on the GPU and record the rows")
    mode.add_argument("--dry-run", "--tiny", dest="dry_run", action="store_true",
                      help="the same steps on the CPU at tiny sizes, in this process (checks the plumbing)")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="the Markdown file to write (default: "
                                                                      "the repository's BENCHMARKS.md)")
    ap.add_argument("--budget", type=float, default=540.0, help="total seconds for --gpu (default 540)")
    ap.add_argument("--only", default=None, help="comma list of step keys: extract-b, extract-l, train, "
                                                 "metrics, fid, study")
    a = ap.parse_args(argv)

    import torch

    if a.gpu and not torch.cuda.is_available():
        print("run_all --gpu needs a CUDA device; use --dry-run to check the plumbing on the CPU.", file=sys.stderr)
        return 2
    todo = steps()
    if a.only:
        keep = {k.strip() for k in a.only.split(",")}
        todo = [s for s in todo if s.key in keep]
    today = _dt.date.today().isoformat()
    if a.gpu:
        name = torch.cuda.get_device_name()
        heading = f"## GPU: {name}"
        intro = [f"Measured by `python benchmarks/run_all.py --gpu` on {today}: one {name}, "
                 f"{os.cpu_count()} CPU cores, torch {torch.__version__}, CUDA {torch.version.cuda}. "
                 "Random-init weights throughout (the cost of a forward does not depend on the weights)."]
    else:
        name = platform.processor() or platform.machine()
        heading = "## Dry run of `benchmarks/run_all.py` (CPU, tiny sizes: not a measurement)"
        intro = [f"`python benchmarks/run_all.py --dry-run` on {today} ({name}, {os.cpu_count()} CPU cores): "
                 "every step at tiny sizes to check that the GPU command runs end to end; the figures mean "
                 "nothing."]
    t_start = time.perf_counter()
    done: list[Step] = []
    failed = 0
    with tempfile.TemporaryDirectory(prefix="run_all-") as tmp:
        for s in todo:
            args = s.gpu if a.gpu else s.tiny
            if args is None:
                s.result = {"skipped": s.tiny_note or "not run in this mode"}
                done.append(s)
                continue
            args = list(args) + (["--out", str(Path(tmp) / s.key)] if s.needs_out else [])
            left = a.budget - (time.perf_counter() - t_start)
            if a.gpu and left < 20:
                s.result = {"skipped": f"no time left in the {a.budget:.0f} s budget"}
                done.append(s)
                continue
            print(f"[run_all] {s.key}: {_command(s, args)}", file=sys.stderr, flush=True)
            if a.gpu:
                status, out, sec = _run_subprocess(s, args, min(s.budget_s, left))
            else:
                status, out, sec = _run_inline(s, args)
            failed += status != "ok"
            cmd = _command(s, [x for x in args if not x.startswith(tmp)]).replace(" --out", " --out DIR")
            kept = _keep(out)
            s.result = {"command": cmd, "status": status, "seconds": sec,
                        "lines": kept[-s.tail:] if s.tail else kept}
            print(f"[run_all] {s.key}: {status} in {sec:.1f} s", file=sys.stderr, flush=True)
            done.append(s)
    total = time.perf_counter() - t_start
    intro.append("")
    intro.append(f"All steps took {total:.0f} s{'' if not failed else f'; {failed} step(s) did not finish (see each)'}.")
    text = render(heading, intro, done)
    write_section(Path(a.out), heading, text)
    print(text)
    print(f"[run_all] wrote {a.out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
