"""`spatialprobe fid` (score samples with the ADM protocol) and `spatialprobe fid-ref` (build a reference)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import cli_errors, split_list, config_option, help_default

CONFIG = "spatialprobe.fid.evaluator:FidConfig"
#: options of `fid-ref` that are parameters of the function, not FidConfig fields
BUILD_REFERENCE = "spatialprobe.fid.evaluator:build_reference"

_WEIGHTS_HELP = ("Inception weights file (weights-inception-2015-12-05-6726825d.pth) or a folder holding it "
                 "[default: $SPATIALPROBE_WEIGHTS, then $TORCH_HOME/hub/checkpoints]. Never downloaded.")


def register(app: typer.Typer, ls_app: typer.Typer) -> None:
    @app.command("fid")
    @cli_errors
    def fid_cmd(
        samples: str = typer.Argument(..., help="ADM .npz (arr_0 uint8 [N,H,W,3]), a folder of PNGs, or the "
                                                "output folder of `spatialprobe sample`."),
        ref: Path = typer.Option(..., "--ref", help="Reference .npz (mu, sigma, mu_s, sigma_s, arr_0), e.g. ADM's "
                                                    "VIRTUAL_imagenet256_labeled.npz or one from `spatialprobe fid-ref`; "
                                                    "with --protocol jit a torch-fidelity statistics file (mu, sigma), "
                                                    "e.g. jit_in256_stats.npz."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder: fid.json (result) and config.json."),
        inception_weights: Optional[str] = typer.Option(None, "--inception-weights", help=_WEIGHTS_HELP),
        metrics: Optional[str] = typer.Option(None, "--metrics", help=help_default(CONFIG, "metrics", "Comma-separated subset of "
                                                                "fid,sfid,is,precision,recall; --protocol jit "
                                                                "scores fid and is only")),
        num_samples: Optional[int] = typer.Option(None, "--num-samples", "-n", help="Use only the first N samples."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help=help_default(CONFIG, "batch_size", "Images per forward")),
        device: Optional[str] = typer.Option(None, "--device", help=help_default(CONFIG, "device", "auto, cpu, cuda or cuda:N")),
        protocol: Optional[str] = typer.Option(None, "--protocol", help="adm (the ADM evaluator, for SiT/REPA/iREPA "
                                               "numbers), jit (torch-fidelity as JiT and PixelREPA: FID against "
                                               "a mu/sigma stats file, IS over 10 splits shuffled with seed 2020; "
                                               "id jit-fidelity-...), or another protocol id to record with the ADM "
                                               "evaluator [default: derived, e.g. adm-in256-50k]."),
        fd_method: Optional[str] = typer.Option(None, "--fd-method", help=help_default(CONFIG, "fd_method", "sqrtm (ADM) or eigh (same value, "
                                                                  "~10x faster on CPU)")),
        fd_encoder: Optional[str] = typer.Option(None, "--fd-encoder", help="Also a Fréchet distance on this zoo "
                                                 "encoder's pooled features (FD-DINOv2 style), e.g. dinov2-vit-b."),
        fd_pool: Optional[str] = typer.Option(None, "--fd-pool", help=help_default(CONFIG, "fd_pool", "mean (patch tokens) or cls")),
        weights_dir: Optional[str] = typer.Option(None, "--weights-dir", help="Weights folder for --fd-encoder."),
        random_init: bool = typer.Option(False, "--random-init", help="Random-init Inception (plumbing tests only: "
                                         "the numbers mean nothing)."),
        no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
        config: Optional[Path] = config_option(),
    ) -> None:
        """Score generated samples with the ADM evaluator's protocol: FID, sFID, IS (splits of 5000),
        precision/recall (k = 3), on torch-fidelity's port of the TF-2015 Inception. The result records the
        protocol id, the sample count, and the sha256 of the reference and of the Inception weights.

        Examples:

          spatialprobe fid samples.npz --ref VIRTUAL_imagenet256_labeled.npz --out eval/

          spatialprobe fid runs/sit-b/samples/ --ref ref.npz --inception-weights ~/weights/ --out eval/ --metrics fid,is
        """
        from ..fid import evaluate

        if protocol == "jit":
            from ..fid.fidelity import evaluate_jit

            rec = evaluate_jit(samples, ref, out=out, inception_weights=inception_weights,
                               metrics=split_list(metrics), num_samples=num_samples, batch_size=batch_size,
                               device=device, pretrained=not random_init, progress=not no_progress)
        else:
            rec = evaluate(samples, ref, out=out, config=config, inception_weights=inception_weights,
                           metrics=split_list(metrics), num_samples=num_samples, batch_size=batch_size,
                           device=device, protocol=None if protocol == "adm" else protocol, fd_method=fd_method,
                           fd_encoder=fd_encoder, fd_pool=fd_pool, encoder_weights_dir=weights_dir,
                           pretrained=False if random_init else None, progress=False if no_progress else None)
        typer.echo(f"protocol {rec['protocol']}  samples {rec['num_samples']}  reference sha256 "
                   f"{(rec['reference']['sha256'] or '-')[:12]}…")
        for k, v in rec["metrics"].items():
            typer.echo(f"{k:<12} {v:.4f}")
        for k, why in rec["skipped"].items():
            typer.echo(f"{k:<12} skipped: {why}")
        typer.echo(f"wrote {out / 'fid.json'}, {out / 'config.json'}")

    @app.command("fid-ref")
    @cli_errors
    def fid_ref_cmd(
        images: str = typer.Argument(..., help="Real images: an .npz with arr_0, a folder, an ImageNet-style tree, "
                                               "a list file, or builtin."),
        out: Path = typer.Option(..., "--out", "-o", help="Reference .npz to write."),
        name: Optional[str] = typer.Option(None, "--name", help="Short tag for protocol ids, e.g. in256 "
                                           "[default: from the file name]."),
        resolution: Optional[int] = typer.Option(None, "--resolution", "-r", help=help_default(
            BUILD_REFERENCE, "resolution", "ADM centre crop size for image folders")),
        pr_images: Optional[int] = typer.Option(None, "--pr-images", help=help_default(
            BUILD_REFERENCE, "pr_images", "Images kept in arr_0 for precision/recall (a seeded random subset)")),
        inception_weights: Optional[str] = typer.Option(None, "--inception-weights", help=_WEIGHTS_HELP),
        num_images: Optional[int] = typer.Option(None, "--num-images", "-n", help="Use only the first N images."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help=help_default(CONFIG, "batch_size", "Images per forward")),
        device: Optional[str] = typer.Option(None, "--device", help=help_default(CONFIG, "device", "auto, cpu, cuda or cuda:N")),
        fd_encoder: Optional[str] = typer.Option(None, "--fd-encoder", help="Also store this zoo encoder's pooled "
                                                 "statistics (fd_<encoder>_mu/_sigma)."),
        fd_pool: Optional[str] = typer.Option(None, "--fd-pool", help=help_default(CONFIG, "fd_pool", "mean or cls")),
        weights_dir: Optional[str] = typer.Option(None, "--weights-dir", help="Weights folder for --fd-encoder."),
        random_init: bool = typer.Option(False, "--random-init", help="Random-init Inception (plumbing tests only)."),
        seed: Optional[int] = typer.Option(None, "--seed", help=help_default(CONFIG, "seed", "Seed of the arr_0 subset")),
        no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
        config: Optional[Path] = config_option(),
    ) -> None:
        """Build an ADM-format reference .npz from real images: mu/sigma (pool_3) and mu_s/sigma_s (sFID) over
        all images, arr_0 = up to --pr-images images for precision/recall, plus a meta record.

        Examples:

          spatialprobe fid-ref /data/imagenet/train --name in256 --out ref_in256.npz

          spatialprobe fid-ref builtin --resolution 64 --pr-images 8 --random-init --out /tmp/ref.npz
        """
        from ..fid import build_reference

        given = {k: v for k, v in (("pr_images", pr_images), ("resolution", resolution)) if v is not None}
        meta = build_reference(images, out, config=config, name=name, **given,
                               inception_weights=inception_weights, num_samples=num_images, batch_size=batch_size,
                               device=device, fd_encoder=fd_encoder, fd_pool=fd_pool, encoder_weights_dir=weights_dir,
                               pretrained=False if random_init else None, seed=seed,
                               progress=False if no_progress else None)
        typer.echo(f"wrote {meta['path']}: {meta['num_images']} images ({meta['pr_images']} in arr_0), "
                   f"tag {meta['name']}, sha256 {meta['sha256'][:12]}…")
