"""`spatialprobe viz`: cosine-similarity maps of reference tokens, without and with spatial normalisation."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import cli_errors, config_option, device_option, help_default

CONFIG = "spatialprobe.viz:VizConfig"


def register(app: typer.Typer, ls_app: typer.Typer) -> None:
    @app.command("viz")
    @cli_errors
    def viz_cmd(
        encoder: str = typer.Option(..., "--encoder", "-e", help="Encoder id(s), comma-separated; one figure row each."),
        image: str = typer.Option(..., "--image", "-i",
                                  help="Image file, or a built-in photograph id (skimage/astronaut, chelsea, ...)."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder: similarity.png/.pdf, similarity_maps.npz, config.json."),
        tokens: Optional[str] = typer.Option(None, "--tokens", help="Reference tokens ROW:COL or flat indices, comma-"
                                                                     "separated, e.g. 8:8,3:12 [default: the official "
                                                                     "points: centre + seeded ones, see --n-refs]."),
        n_refs: Optional[int] = typer.Option(None, "--n-refs", help=help_default(CONFIG, "n_refs", "Number of official reference points")),
        gamma: Optional[float] = typer.Option(None, "--gamma", help=help_default(CONFIG, "gamma", "Spatial-normalisation γ")),
        random_init: bool = typer.Option(False, "--random-init", help="Random-init weights (plumbing check; maps mean nothing)."),
        weights_dir: Optional[Path] = typer.Option(None, "--weights-dir", help="Folder with checkpoints."),
        resolution: Optional[int] = typer.Option(None, "--resolution", help=help_default(CONFIG, "resolution", "Centre-crop size")),
        dpi: Optional[int] = typer.Option(None, "--dpi", help=help_default(CONFIG, "dpi", "PNG resolution")),
        device: Optional[str] = device_option(CONFIG),
        config: Optional[Path] = config_option(),
    ) -> None:
        """An image and the cosine-similarity maps of a few reference tokens, on the raw tokens and after
        iREPA's spatial normalisation, one shared colour scale, reference tokens marked (the paper's
        spatial-normalisation figure).

        Examples:

          spatialprobe viz --encoder hog,sift,pixels --image skimage/astronaut --out out/viz

          spatialprobe viz --encoder dinov2-vit-b --image photo.jpg --tokens 8:8,2:13 --gamma 0.6 --out out/viz

          spatialprobe viz --encoder mocov3-vit-l --random-init --image chelsea --out /tmp/viz
        """
        from ..viz import viz

        maps = viz(config=config, encoder=encoder, image=image, out=str(out), tokens=tokens, n_refs=n_refs,
                   gamma=gamma, random_init=True if random_init else None,
                   weights_dir=str(weights_dir) if weights_dir else None, resolution=resolution, dpi=dpi,
                   device=device)
        for m in maps:
            refs = " ".join(f"{r}:{c}" for r, c in m.refs)
            typer.echo(f"{m.encoder:<24} refs {refs}  cosine raw {m.raw.min():+.3f}..{m.raw.max():+.3f}  "
                       f"normalised {m.normed.min():+.3f}..{m.normed.max():+.3f}")
        typer.echo(f"wrote {out / 'similarity.png'} (+ .pdf), {out / 'similarity_maps.npz'}, {out / 'config.json'}")
