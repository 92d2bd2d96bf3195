"""`spatialprobe ls encoders` and `spatialprobe weights`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from ._common import cli_errors


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}TB"


def _check_pipeline_files(weights_dir: Optional[Path]) -> list:
    """--check for the FID Inception and the SD-VAE ft-MSE, when they are on disk."""
    from ..encoders.weights import FileCheck
    from ..errors import WeightsNotFoundError
    from ..fid.inception import check_inception_weights, inception_weights_candidates
    from ..train.vae import check_vae, find_vae

    out = []
    cands = inception_weights_candidates(weights_dir if weights_dir and weights_dir.is_dir() else None)
    if weights_dir and weights_dir.is_dir():
        cands += inception_weights_candidates(None)
    inc = next((p for p in cands if p.is_file()), None)
    if inc is not None:
        problem = check_inception_weights(inc)
        out.append(FileCheck("fid-inception", inc, problem is None, "inception-fidelity", problem or ""))
    try:
        vae = find_vae(str(weights_dir) if weights_dir else None)
    except WeightsNotFoundError:
        vae = None
    if vae is not None:
        problem = check_vae(vae)
        out.append(FileCheck("sd-vae-ft-mse", vae, problem is None, "diffusers" if vae.is_dir() else "vae-file",
                             problem or ""))
    return out


def register(app: typer.Typer, ls_app: typer.Typer) -> None:
    @ls_app.command("encoders")
    @cli_errors
    def ls_encoders(
        ids: Optional[list[str]] = typer.Argument(None, help="Only these ids, aliases or variants (BASE@name=value)."),
        family: Optional[str] = typer.Option(None, "--family", "-f", help="Only this family, e.g. DINOv2, SAM2, PE-Core."),
        paper27: bool = typer.Option(False, "--paper27", help="Only the 27 encoders of the paper's correlation study."),
        weights_dir: Optional[Path] = typer.Option(None, "--weights-dir", "-w",
                                                   help="Folder with checkpoints (default: $SPATIALPROBE_WEIGHTS, then HF/torch caches)."),
    ) -> None:
        """List the encoder zoo: id, family, embed dim, parameters, token grid at 256 px, input size and
        whether the weights are on disk (weight-free encoders say 'n/a').

        Examples:

          spatialprobe ls encoders

          spatialprobe ls encoders --family SAM2

          spatialprobe ls encoders --paper27 --weights-dir ~/weights

          spatialprobe ls encoders dinov2-vit-b@mix_cls=0.1 hog@mix_mean=0.25

        A variant (an id with transforms, BASE@name=value: mix_cls, mix_mean, layer, spnorm) is its own row
        with the base's dim, grid and weights.
        """
        from ..encoders import list_specs, spec
        from ..encoders.spec import aliases
        from ..encoders.variants import base_spec
        from ..encoders.weights import locate

        rows = [spec(i) for i in ids] if ids else list_specs(family=family, paper27=paper27)
        al: dict[str, list[str]] = {}
        for a, i in aliases().items():
            al.setdefault(i, []).append(a)
        typer.echo(f"{'id':<32} {'family':<11} {'dim':>5} {'params':>8} {'grid':>6} {'input':>6} {'27':>3} "
                   f"{'weights':<8} aliases")
        for s in rows:
            status = "n/a" if s.weight_free else ("present" if locate(base_spec(s.id), weights_dir).present
                                                  else "missing")
            params = "-" if not s.params_m else (f"{s.params_m / 1000:.2f}B" if s.params_m >= 1000 else f"{s.params_m:.1f}M")
            grid = f"{s.grid[0]}x{s.grid[1]}"
            typer.echo(f"{s.id:<32} {s.family:<11} {s.embed_dim:>5} {params:>8} {grid:>6} {s.input_res:>6} "
                       f"{'yes' if s.in_paper_27 else '':>3} {status:<8} {','.join(al.get(s.id, []))}")
        typer.echo(f"\n{len(rows)} encoders")

    @app.command("weights")
    @cli_errors
    def weights_cmd(
        weights_dir: Optional[Path] = typer.Option(None, "--weights-dir", "-w",
                                                   help="Folder with checkpoints (default: $SPATIALPROBE_WEIGHTS, then HF/torch caches)."),
        encoder: Optional[str] = typer.Option(None, "--encoder", "-e",
                                              help="Only this encoder (id, alias or variant BASE@name=value)."),
        family: Optional[str] = typer.Option(None, "--family", "-f", help="Only this family."),
        paper27: bool = typer.Option(False, "--paper27", help="Only the paper's 27 encoders."),
        checksum: bool = typer.Option(False, "--checksum", help="Compute the sha256 of present files (slow for big files; cached)."),
        check: bool = typer.Option(False, "--check", help="Open every file found without loading its values (headers / meta "
                                   "device), recognise its release layout and run the strict key/shape check; exit 1 if any is wrong."),
        verify: bool = typer.Option(False, "--verify", help="Compare the sha256 of every file found with the digest pinned in "
                                    "encoders.yaml; exit 1 on a mismatch."),
    ) -> None:
        """Show, for each encoder, where its weights file is expected, whether it is present (path, size,
        sha256 when known or with --checksum) and where to get it. Nothing is downloaded.

        Examples:

          spatialprobe weights --paper27

          spatialprobe weights --encoder sam2 --weights-dir ~/weights --checksum

          spatialprobe weights --encoder dinov2-vit-b@mix_cls=0.1   (a variant reads its base's weights)

          spatialprobe weights --check --weights-dir ~/weights   (before a long extraction: is every file right?)

          spatialprobe weights --check --verify --paper27
        """
        from ..encoders import list_specs, spec
        from ..encoders.variants import base_spec
        from ..encoders.weights import check_all, locate, sha256

        rows = [spec(encoder)] if encoder else list_specs(family=family, paper27=paper27)
        if check or verify:
            results, missing = check_all([base_spec(r.id) for r in rows], weights_dir, check=check, verify=verify)
            if check and not (encoder or family or paper27):
                results += _check_pipeline_files(weights_dir)
            for r in results:
                tag = "ok " if r.ok else "BAD"
                lay = f" ({r.layout})" if r.layout else ""
                sha = f"  sha256 {r.sha_status}" if r.sha_status else ""
                line = f"{tag} {r.id:<32} {r.path}{lay}{sha}"
                typer.echo(line + (f"\n    {r.problem}" if r.problem else ""))
            bad = sum(not r.ok for r in results)
            typer.echo(f"\n{len(results) - bad}/{len(results)} file(s) ok, {bad} wrong, {len(missing)} encoder(s) "
                       f"without a file (see `spatialprobe weights`).")
            if bad:
                raise typer.Exit(1)
            return
        n_present = 0
        for s in rows:
            if s.weight_free:
                continue
            loc = locate(base_spec(s.id), weights_dir)
            if loc.present:
                n_present += 1
                sha = sha256(loc.path) if checksum else (s.weights.sha256 or "")
                sha_txt = f"  sha256 {sha}" + ("" if checksum or not sha else " (expected)")
                typer.echo(f"{s.id:<32} present  {loc.path}  {_human(_size(loc.path))}{sha_txt}")
            else:
                files = ", ".join(s.weights.files) or f"{s.id}.safetensors"
                root = weights_dir or os.environ.get("SPATIALPROBE_WEIGHTS")
                first = files.split(", ")[0]
                where = f" at {Path(root) / first}" if root else f" in $SPATIALPROBE_WEIGHTS/ (e.g. $SPATIALPROBE_WEIGHTS/{first})"
                gated = "  [gated]" if s.weights.gated else ""
                typer.echo(f"{s.id:<32} missing  expected {files}{where}{gated}\n{'':<42}get: {s.weights.source}")
        total = sum(not s.weight_free for s in rows)
        typer.echo(f"\n{n_present}/{total} present. Search order: --weights-dir, $SPATIALPROBE_WEIGHTS "
                   f"(flat or <id>/), Hugging Face cache, torch hub cache, ~/.cache/clip.")
