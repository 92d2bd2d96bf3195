"""Extraction throughput: the full pipeline vs the bare model forward, same batch size.

Pipeline = ``spatialprobe.extract.extract_one``: DataLoader workers decode + ADM-crop the built-in
photographs, forward (bf16 autocast on GPU), pooled mean, cast, safetensors shards with fsync, done
markers, manifest. Bare = the same encoder called on pre-made uint8 tensors of the same images, same
batch size, no I/O. Target: pipeline ≥ 90 % of bare. The encoder is a random-init timm ViT-B/16 at 256 px
(``dino-vit-b`` built with ``pretrained=False``), so no weights are needed.

    python benchmarks/bench_extract.py                 # 512 images, batch 32 (CPU) / 128 (GPU)
    python benchmarks/bench_extract.py --n 1024 --batch-size 256 --device cuda

``--shared`` measures the shared decoding pass instead: K cheap encoders (default pixels, hog, sift)
over the same JPEG files, one ``extract_many`` pass (each image decoded and cropped once) vs K separate
``extract_one`` runs, plus a decode-only pass (the same DataLoader with no encoder), so the decode share
of the separate runs is measured, not assumed; and K separate runs over ``spatialprobe study``'s
decoded-image cache (one decode into a uint8 memory map, build included). Rounds alternate the modes on
fresh output folders.

    python benchmarks/bench_extract.py --shared --n 96 --rounds 2

``--fingerprint N`` times the content-based image-source fingerprint over N files of 100 kB: the first
call (every file read and hashed), a new process with the hash cache (stat only), and the same after
one file was rewritten.

    python benchmarks/bench_extract.py --fingerprint 20000
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shlex
import sys
import tempfile
import time

import torch

from spatialprobe.data import ImageSource, open_source
from spatialprobe.encoders import get
from spatialprobe.extract import ExtractConfig, decode_workers, extract_many, extract_one
from spatialprobe.data.cache import DecodedCache

# dense bf16 peak (TFLOP/s) of common accelerators, for the utilisation column
PEAK_BF16 = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}


class Repeated(ImageSource):
    """A source repeated until it has at least ``n`` images (ids get a ``#k`` suffix)."""

    kind = "repeated"

    def __init__(self, base: ImageSource, n: int) -> None:
        super().__init__(f"{base.spec}*{n}", base.resolution)
        self.base = base
        reps = -(-n // len(base))
        self.ids = [f"{i}#{r}" for r in range(reps) for i in base.ids][:max(n, len(base))]

    def load_pil(self, i: int):
        return self.base.load_pil(i % len(self.base))


class _Range(ImageSource):
    def __init__(self, base: ImageSource, part: range) -> None:
        super().__init__(f"{base.spec}[{part.start}:{part.stop}]", base.resolution)
        self.base, self.part = base, part
        self.ids = base.ids[part.start:part.stop]

    def load_pil(self, i: int):
        return self.base.load_pil(self.part[i])


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bare_forward(enc, images: torch.Tensor, bs: int, device: str) -> float:
    """Seconds for a forward over ``images`` (uint8 on the host, moved per batch like a loader would)."""
    cuda = device.startswith("cuda")
    pinned = images.pin_memory() if cuda else images
    with torch.inference_mode():
        for a in range(0, min(bs, len(images)), bs):  # warm-up batch
            x = pinned[a:a + bs].to(device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                enc(x).patch.float().mean(1)
        _sync(device)
        t = time.perf_counter()
        for a in range(0, len(images), bs):
            x = pinned[a:a + bs].to(device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                enc(x).patch.float().mean(1)
        _sync(device)
    return time.perf_counter() - t


def flops_per_image(enc, res: int, device: str) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(2, 3, res, res, dtype=torch.uint8, device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        enc(x)
    return fc.get_total_flops() / 2


def write_jpegs(folder: str, n: int) -> None:
    """The built-in photographs as ``n`` JPEG files (quality 90), cycling through them."""
    from spatialprobe.data.preprocess import array_to_pil

    base = open_source("builtin")
    arrays = base._make()
    for k in range(n):
        array_to_pil(arrays[k % len(arrays)]).save(os.path.join(folder, f"img{k:05d}.jpg"), quality=90)


def decode_only(src: ImageSource, cfg: ExtractConfig) -> float:
    """Seconds for the extraction DataLoader (decode + ADM crop + collate) with no encoder."""
    from torch.utils.data import DataLoader

    from spatialprobe.data.loading import SourceItems, collate_items

    workers = cfg.num_workers if cfg.num_workers >= 0 else min(8, os.cpu_count() or 1)
    loader = DataLoader(SourceItems(src, range(len(src))), batch_size=cfg.batch_size or 32, num_workers=workers,
                        collate_fn=collate_items, prefetch_factor=4 if workers > 0 else None)
    t = time.perf_counter()
    for _pos, imgs, _bad in loader:
        assert imgs is not None
    return time.perf_counter() - t


def main_shared(args, device: str) -> None:
    names = [e.strip() for e in args.shared_encoders.split(",") if e.strip()]
    encs = [get(nm, device=device, pretrained=False) for nm in names]
    bs = args.batch_size or 32
    cfg = ExtractConfig(batch_size=bs, num_workers=args.workers, device=device, dtype=args.dtype, shard_size=256)
    cached_cfg = dataclasses.replace(cfg, num_workers=0)
    t_dec = t_sep = t_shared = t_cached = 0.0
    t_each = {nm: 0.0 for nm in names}
    workers = decode_workers(args.workers)
    with tempfile.TemporaryDirectory() as imgdir:
        write_jpegs(imgdir, args.n)
        warm = open_source(imgdir).subset(2)
        for enc in encs:  # first-call costs (imports, allocator) stay out of the timings
            with tempfile.TemporaryDirectory() as out:
                extract_one(enc, warm, out, cfg)
        for r in range(args.rounds):
            src = open_source(imgdir)
            src.fingerprint()  # hash the files once (cached), outside the timings
            t_dec += decode_only(src, cfg)
            for enc, nm in zip(encs, names):
                with tempfile.TemporaryDirectory() as out:
                    t0 = time.perf_counter()
                    res = extract_one(enc, src, out, cfg)
                    dt = time.perf_counter() - t0
                    t_each[nm] += dt
                    t_sep += dt
                    assert res.n_images == len(src), res
            with tempfile.TemporaryDirectory() as out:
                t0 = time.perf_counter()
                res = extract_many(encs, src, out, cfg)
                t_shared += time.perf_counter() - t0
                assert all(x.n_images == len(src) and x.error is None for x in res.values()), res
            with tempfile.TemporaryDirectory() as out:  # what `spatialprobe study` does: separate runs, one decode
                t0 = time.perf_counter()
                cached = DecodedCache(src, os.path.join(out, "cache"), num_workers=args.workers)
                cached.ensure()  # the one-time decode is part of the timing
                for enc in encs:  # reading the memory map needs no decode workers
                    res = extract_one(enc, cached, os.path.join(out, "stores"), cached_cfg)
                    assert res.n_images == len(src), res
                t_cached += time.perf_counter() - t0
    n, k = args.n * args.rounds, len(encs)
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads; encoders {', '.join(names)}; {args.n} JPEG files (the built-in "
          f"photographs cycled), {args.rounds} alternating rounds, batch {bs}, {workers} decode workers, device {device}")
    print(f"command: python {' '.join(shlex.quote(a) for a in sys.argv)}\n")
    print("| mode | seconds | images/s | vs separate |\n|---|---:|---:|---:|")
    print(f"| decode + crop only (no encoder) | {t_dec:.1f} | {n / t_dec:.2f} | |")
    for nm in names:
        print(f"| separate run: {nm} | {t_each[nm]:.1f} | {n / t_each[nm]:.2f} | |")
    print(f"| {k} separate runs (sum) | {t_sep:.1f} | {n / t_sep:.2f} | 1.00× |")
    print(f"| one shared pass (extract_many) | {t_shared:.1f} | {n / t_shared:.2f} | {t_sep / t_shared:.2f}× |")
    print(f"| {k} separate runs over the study's decoded-image cache (build included) | {t_cached:.1f} | "
          f"{n / t_cached:.2f} | {t_sep / t_cached:.2f}× |")
    print(f"\ndecode share of the {k} separate runs: {100 * k * t_dec / t_sep:.1f} % "
          f"({k} × {t_dec:.1f} s of {t_sep:.1f} s); saved by sharing: {t_sep - t_shared:.1f} s "
          f"(decoding {k - 1} times less would save {(k - 1) * t_dec:.1f} s)")


_FP_CHILD = """
import sys, time
from spatialprobe.data import open_source
t = time.perf_counter(); src = open_source(sys.argv[1]); t1 = time.perf_counter(); src.fingerprint()
print(len(src), t1 - t, time.perf_counter() - t1)
"""


def main_fingerprint(n: int) -> None:
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        imgs = os.path.join(tmp, "imgs")
        os.mkdir(imgs)
        for k in range(n):
            with open(os.path.join(imgs, f"{k:06d}.jpg"), "wb") as fh:
                fh.write(os.urandom(100_000))
        env = dict(os.environ, SPATIALPROBE_CACHE=os.path.join(tmp, "cache"))
        rows = []
        for what in ("first (read + sha256 every file)", "new process, unchanged tree (stat + cache)",
                     "new process, one file rewritten"):
            if what.endswith("rewritten"):
                with open(os.path.join(imgs, f"{n // 2:06d}.jpg"), "wb") as fh:
                    fh.write(os.urandom(100_000))
            out = subprocess.run([sys.executable, "-c", _FP_CHILD, imgs], env=env, capture_output=True, text=True,
                                 check=True).stdout.split()
            rows.append((what, float(out[1]), float(out[2])))
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores; {n} files of 100 kB "
          f"({n * 0.1 / 1000:.1f} GB, in the page cache)")
    print(f"command: python {' '.join(shlex.quote(a) for a in sys.argv)}\n")
    print("| fingerprint call | folder walk s | fingerprint s |\n|---|---:|---:|")
    for what, walk, fp in rows:
        print(f"| {what} | {walk:.2f} | {fp:.2f} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default="dino-vit-b")
    ap.add_argument("--n", type=int, default=512, help="images (built-in photographs repeated)")
    ap.add_argument("--batch-size", type=int, default=0, help="0: 32 on CPU, 128 on GPU")
    ap.add_argument("--workers", type=int, default=-1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--rounds", type=int, default=4,
                    help="alternate bare and pipeline in this many rounds, so load from other processes hits both alike")
    ap.add_argument("--shared", action="store_true",
                    help="measure the shared decoding pass of several cheap encoders instead (see above)")
    ap.add_argument("--shared-encoders", default="pixels,hog,sift")
    ap.add_argument("--fingerprint", type=int, default=0, metavar="N",
                    help="time the content-based source fingerprint over N files instead (see above)")
    args = ap.parse_args(argv)
    if args.fingerprint:
        return main_fingerprint(args.fingerprint)

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.shared:
        if args.n == 512 and "--n" not in sys.argv:
            args.n = 96
        if args.rounds == 4 and "--rounds" not in sys.argv:
            args.rounds = 2
        return main_shared(args, device)
    bs = args.batch_size or (128 if device.startswith("cuda") else 32)
    torch.manual_seed(0)
    enc = get(args.encoder, device=device, pretrained=False)
    src = Repeated(open_source("builtin"), args.n)
    images = torch.stack([src.load(i) for i in range(len(src.base))])
    images = images[torch.arange(len(src)) % len(images)]

    # rounds alternate bare / pipeline over disjoint id ranges; each pipeline round is a full run
    # (fingerprint, workers, shards, manifest) of its own
    t_bare = t_pipe = 0.0
    per = -(-len(src) // args.rounds)
    for r in range(args.rounds):
        part = range(r * per, min((r + 1) * per, len(src)))
        t_bare += bare_forward(enc, images[part.start:part.stop], bs, device)
        sub = _Range(src, part)
        with tempfile.TemporaryDirectory() as tmp:
            cfg = ExtractConfig(batch_size=bs, num_workers=args.workers, device=device, dtype=args.dtype,
                                shard_size=256)
            t0 = time.perf_counter()
            res = extract_one(enc, sub, tmp, cfg)
            t_pipe += time.perf_counter() - t0
            assert res.n_images == len(sub), res

    n = len(src)
    bare_ips, pipe_ips = n / t_bare, n / t_pipe
    dev_name = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or platform.machine()
    rows = [("bare forward (pre-made tensors)", f"{bare_ips:.2f}", "100 %"),
            ("full pipeline (decode, crop, forward, store)", f"{pipe_ips:.2f}", f"{100 * pipe_ips / bare_ips:.1f} %")]
    util = ""
    if device.startswith("cuda"):
        peak = next((v for k, v in PEAK_BF16.items() if k in dev_name), None)
        fl = flops_per_image(enc, src.resolution, device)
        if peak:
            util = f"; pipeline = {100 * pipe_ips * fl / (peak * 1e12):.1f} % of the {peak:.0f} TFLOP/s bf16 peak"
        util = f"; {fl / 1e9:.1f} GFLOP/image" + util
    print(f"\nmachine: {dev_name}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads; encoder {args.encoder} (random init), {n} images, "
          f"batch {bs}, store dtype {args.dtype}, {args.rounds} alternating rounds{util}")
    print(f"command: python {' '.join(shlex.quote(a) for a in ([sys.argv[0]] + argv if argv is not None else sys.argv))}\n")
    print("| mode | images/s | of bare |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")


if __name__ == "__main__":
    main()
