"""`spatialprobe extract`: encoder features into a resumable, fingerprinted feature store."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import cli_errors, config_option, device_option, help_default

CONFIG = "spatialprobe.extract:ExtractConfig"


def register(app: typer.Typer, ls_app: typer.Typer) -> None:
    @app.command("extract")
    @cli_errors
    def extract_cmd(
        encoder: Optional[str] = typer.Option(None, "--encoder", "-e",
                                              help="Encoder id(s), comma-separated, e.g. sam2 or hog,dinov2-vit-b "
                                                   "(required unless --config names it)."),
        images: Optional[str] = typer.Option(None, "--images", "-i",
                                             help=help_default(CONFIG, "images", "builtin | builtin:digits | builtin:lfw | a folder "
                                                               "(recursive; <class>/<img> trees get labels) | a list file")),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Root folder; stores go to OUT/<encoder>/<fingerprint>/ "
                                                                       "(required unless --config names it)."),
        resolution: Optional[int] = typer.Option(None, "--resolution", help=help_default(CONFIG, "resolution", "ADM centre-crop size")),
        dtype: Optional[str] = typer.Option(None, "--dtype", help=help_default(CONFIG, "dtype", "Storage dtype of tokens: fp16 | bf16 | fp32")),
        batch_size: Optional[str] = typer.Option(None, "--batch-size", "-b", help=help_default(CONFIG, "batch_size", "Images per forward, or 'auto'", show={0: "auto"})),
        workers: Optional[int] = typer.Option(None, "--workers", help=help_default(CONFIG, "num_workers", "Decode workers", show={-1: "min(8, CPUs)"})),
        shard_size: Optional[int] = typer.Option(None, "--shard-size", help=help_default(CONFIG, "shard_size", "Images per shard")),
        limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N images."),
        pooled_only: bool = typer.Option(False, "--pooled-only", help="Store only mean-pooled features (for linear probes)."),
        no_prefix: bool = typer.Option(False, "--no-prefix", help="Do not store prefix (CLS) tokens."),
        force: bool = typer.Option(False, "--force", help="Replace an existing store whose fingerprint differs."),
        skip_bad: bool = typer.Option(False, "--skip-bad", help="Exit 0 even when some images could not be decoded."),
        device: Optional[str] = device_option(CONFIG),
        random_init: bool = typer.Option(False, "--random-init",
                                         help="Random weights instead of a checkpoint (smoke tests, benchmarks); recorded in the fingerprint."),
        seed: Optional[int] = typer.Option(None, "--seed", help=help_default(CONFIG, "seed", "Seed of --random-init")),
        weights_dir: Optional[Path] = typer.Option(None, "--weights-dir", help="Folder with checkpoints (nothing is downloaded)."),
        config: Optional[Path] = config_option(),
    ) -> None:
        """Extract patch tokens (and pooled / CLS features) of one or more encoders into a feature store:
        id-keyed safetensors shards plus a manifest with the config, versions, git revision, weights
        checksum and image-source fingerprint.

        Safe to interrupt: run the same command again and it resumes, recomputing only unfinished shards.

        A store with another fingerprint is never silently reused (--force replaces it); an identical one makes the command a no-op.

        Several encoders (--encoder pixels,hog,sift) share one decoding pass: each image is decoded and
        centre-cropped once and fed to every encoder; each store equals that of a separate run.

        Another process already writing the same OUT/<encoder> makes the command stop with an error (a lock); --force builds the new store beside the old one and swaps it in only when complete, so an interrupted --force loses nothing.

        Several GPUs: torchrun --nproc_per_node 8 -m spatialprobe.cli extract ... (ranks take disjoint shards; any world size can resume).

        Undecodable images are recorded and listed; the command then exits 1 unless --skip-bad.

        Examples:

          spatialprobe extract --encoder hog --images builtin --out features/

          spatialprobe extract --encoder sam2,dinov2-vit-b --images /data/imagenet/val --out features/ --dtype bf16

          spatialprobe extract --encoder dinov2-vit-b --images builtin --random-init --limit 8 --out /tmp/f
        """
        import logging

        from ..extract import extract
        from ..errors import ConfigError

        from ..checks import check_range

        if config is None and (encoder is None or out is None):
            missing = " and ".join(n for n, v in (("--encoder", encoder), ("--out", out)) if v is None)
            raise ConfigError(f"extract needs {missing}: say which encoder(s) to run and where the store goes, "
                              "e.g. `spatialprobe extract --encoder hog --images builtin --out features/` "
                              "(see `spatialprobe ls encoders`).")
        check_range("--workers", workers, 0)  # -1 (auto) is the default, not a value to type; the rest: check_config
        bs = None
        if batch_size is not None:
            if batch_size.strip().lower() == "auto":
                bs = 0
            else:
                try:
                    bs = int(batch_size)
                except ValueError:
                    raise ConfigError(f"--batch-size {batch_size!r}: give a positive integer or 'auto'.") from None
                if bs < 1:
                    raise ConfigError(f"--batch-size {batch_size!r}: give a positive integer or 'auto'.")
        results = extract(config=config, encoder=encoder, images=images, out=str(out) if out else None,
                          resolution=resolution, dtype=dtype, batch_size=bs, num_workers=workers,
                          shard_size=shard_size, limit=limit, pooled_only=pooled_only or None,
                          prefix=False if no_prefix else None, force=force or None, skip_bad=skip_bad or None,
                          device=device, random_init=random_init or None, seed=seed,
                          weights_dir=str(weights_dir) if weights_dir else None)
        logging.getLogger("spatialprobe").debug("results: %s", results)
        failed = [r for r in results if r.error]
        bad = [(r.encoder, i, why) for r in results for i, why in r.bad]
        for r in results:
            if r.error:
                typer.echo(f"{r.encoder:<20} FAILED: {r.error}")
            else:
                what = "up to date (reused)" if r.reused else f"{len(r.computed_shards)} shard(s) computed, {r.seconds:.1f} s"
                typer.echo(f"{r.encoder:<20} {r.n_images} images -> {r.path}  [{what}]")
        computed = [r for r in results if r.computed_shards]
        if len(computed) > 1:
            typer.echo(f"({len(computed)} encoders, one shared decoding pass: each image decoded and cropped once)")
        if bad:
            seen = sorted({(i, why) for _, i, why in bad})
            typer.echo(f"\n{len(seen)} image(s) could not be decoded and were left out:", err=True)
            for i, why in seen:
                typer.echo(f"  {i}: {why}", err=True)
        if failed:
            typer.secho(f"error: {len(failed)} of {len(results)} encoder(s) failed: "
                        + ", ".join(r.encoder for r in failed), err=True, fg=typer.colors.RED)
            raise typer.Exit(2)
        if bad and not skip_bad:
            typer.echo("error: undecodable images (listed above); fix or remove them, or pass --skip-bad.", err=True)
            raise typer.Exit(1)
