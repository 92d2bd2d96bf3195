"""`spatialprobe metrics`: LDS, CDS, SRSS and RMSC per image and per encoder."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..schema import SPATIAL_METRICS
from ._common import cli_errors, split_list, config_option, help_default

CONFIG = "spatialprobe.metrics.run:MetricsConfig"


def register(app: typer.Typer, ls_app: typer.Typer) -> None:
    @app.command("metrics")
    @cli_errors
    def metrics_cmd(
        features: List[Path] = typer.Option(..., "--features", "-f",
                                            help="Feature store folder or token file (.safetensors/.pt/.npz with "
                                                 "ids and patch [N,T,D], optional grid), or official:DIR[:enc1,enc2] (an official "
                                                 "iREPA collection); repeat for more encoders."),
        masks: Optional[Path] = typer.Option(None, "--masks", help="Folder of <image-id>.png FG/BG masks (enables SRSS)."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder: per_image.csv/.parquet, summary.csv, config.json."),
        metrics: Optional[str] = typer.Option(None, "--metrics", help=help_default(CONFIG, "metrics", "Comma list of lds,cds,srss,rmsc")),
        radii: Optional[str] = typer.Option(None, "--radii", help=help_default(CONFIG, "radii", "Base radii: 'official' (released code: "
                                                                  "LDS near d=1, far d>=6; SRSS 1/6) or 'paper' (r = H/2)")),
        lds_near: Optional[int] = typer.Option(None, "--lds-near", help="LDS near pairs 1 <= d <= N (official: 1)."),
        lds_far: Optional[int] = typer.Option(None, "--lds-far", help="LDS far pairs d >= N (official: 6)."),
        cds_dmax: Optional[int] = typer.Option(None, "--cds-dmax", help="CDS fits d = 1..N (official: 8)."),
        srss_pos: Optional[int] = typer.Option(None, "--srss-pos", help="SRSS FG positives at 1 <= d <= N (official: 1)."),
        srss_neg: Optional[int] = typer.Option(None, "--srss-neg", help="SRSS BG negatives at d >= N (official: 6)."),
        sweep: Optional[List[str]] = typer.Option(None, "--sweep", help="Radius sweep NAME=a:b[:step] or NAME=a,b,c, "
                                                                      "e.g. lds_far=2:8; repeat for a grid."),
        mask_rule: Optional[str] = typer.Option(None, "--mask-rule", help=help_default(CONFIG, "mask_rule", "Patch is FG if 'any' pixel is "
                                                                          "(official) or a 'majority' is")),
        mask_filter: Optional[bool] = typer.Option(None, "--mask-filter/--no-mask-filter",
                                                   help=help_default(CONFIG, "mask_filter", "Official filter: SRSS only for images with "
                                                                     ">= 25 % FG and >= 25 % BG patches (64 of 256)")),
        mask_resolution: Optional[int] = typer.Option(None, "--mask-resolution",
                                                      help=help_default(CONFIG, "mask_resolution", "Masks are resized (nearest) to this size")),
        mask_channel: Optional[int] = typer.Option(None, "--mask-channel", help="Channel of colour masks (0=R .. 3=A)."),
        allow_missing: Optional[bool] = typer.Option(None, "--allow-missing",
                                                     help="Skip ids that have features but no mask (or the reverse) "
                                                          "instead of failing."),
        encoder: Optional[str] = typer.Option(None, "--encoder", help="Encoder name for a single token file without one; with "
                                                                "official:DIR, the encoders to read (comma list)."),
        chunk_size: Optional[int] = typer.Option(None, "--chunk-size", help=help_default(CONFIG, "chunk_size", "Images read per chunk")),
        device: Optional[str] = typer.Option(None, "--device", help=help_default(CONFIG, "device", "cpu or cuda[:i]")),
        config: Optional[Path] = config_option(),
    ) -> None:
        """Spatial-structure metrics of patch tokens (LDS, CDS, SRSS, RMSC): one value per image, then per
        encoder the nan-mean, std, n and NaN count. Masks join features by image id.

        Examples:

          spatialprobe metrics --features store/dinov2-vit-b --out out/metrics

          spatialprobe metrics -f tokens.safetensors --masks masks/ --sweep lds_far=2:8 --out out/sweep
        """
        from ..data.official import is_official

        if any(is_official(str(f)) for f in features):  # an official iREPA collection, joined by id
            from ..official import compute_official_metrics as run
        else:
            from ..metrics import compute_metrics as run

        res = run(config=config, features=[str(f) for f in features],
                  masks=str(masks) if masks else None, out=str(out), metrics=split_list(metrics),
                  radii=radii, lds_near=lds_near, lds_far=lds_far, cds_dmax=cds_dmax, srss_pos=srss_pos,
                  srss_neg=srss_neg, sweep=sweep or None, mask_rule=mask_rule, mask_filter=mask_filter,
                  mask_resolution=mask_resolution, mask_channel=mask_channel,
                  allow_missing=allow_missing, encoder=encoder, chunk_size=chunk_size, device=device)
        s = res.summary
        cols = ["encoder", "setting", "n_images"] + [c for m in SPATIAL_METRICS if m in s
                                                     for c in (m, f"{m}_nan")]
        typer.echo(s[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        typer.echo(f"\nwrote {out / 'per_image.csv'} (+ .parquet), {out / 'summary.csv'}, {out / 'config.json'}")
