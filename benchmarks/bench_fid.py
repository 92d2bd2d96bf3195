"""Inception feature throughput for FID (images/s through the ADM-protocol Inception, pool + spatial + logits).

Random uint8 images at 256 px (resized inside to 299 px, as the ADM graph does), random-init weights
(``build_inception(pretrained=False)``: the same graph and cost, no weights file needed), fp32 without
TF32 as the FID protocol runs it (``feature_pass`` turns TF32 off).

    python benchmarks/bench_fid.py                       # CUDA: 2048 images, batch 256
    python benchmarks/bench_fid.py --device cpu --n 8 --batch 4
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch


def measure(n: int, batch: int, device: str, res: int = 256) -> dict:
    from spatialprobe.fid.inception import build_inception

    model = build_inception(device=device, pretrained=False)
    gen = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (min(n, batch), 3, res, res), dtype=torch.uint8, generator=gen).to(device)
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    prev = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.inference_mode():
            model(imgs)  # warm-up (cudnn autotune, allocator)
            sync()
            t0 = time.perf_counter()
            done = 0
            while done < n:
                out = model(imgs[:min(batch, n - done)])
                done += min(batch, n - done)
            sync()
            sec = time.perf_counter() - t0
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev
    assert out["pool"].shape[1] == 2048
    return {"n": n, "batch": batch, "seconds": sec, "images_per_s": n / sec}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: default)")
    a = ap.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    if a.threads:
        torch.set_num_threads(a.threads)
    name = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or platform.machine()
    r = measure(a.n, a.batch, device)
    print(f"machine: {name}, {os.cpu_count()} CPU cores, torch {torch.__version__}; Inception (ADM graph, random "
          f"init), fp32 no TF32, 256 px input resized to 299")
    print(f"command: python benchmarks/bench_fid.py {' '.join(argv if argv is not None else sys.argv[1:])}\n")
    print("| stage | images | batch | seconds | images/s |\n|---|---:|---:|---:|---:|")
    print(f"| Inception features (pool, spatial, logits) | {r['n']} | {r['batch']} | {r['seconds']:.2f} "
          f"| {r['images_per_s']:.1f} |")


if __name__ == "__main__":
    main()
