"""Dense HOG: the batched numpy pass (``spatialprobe.encoders.classical.dense_hog``) vs the per-image
scikit-image loop it replaced, on the same images, in one run.

Input: the built-in photographs through the ``hog`` encoder's own preprocessing (resize to 256 px,
ITU-R 601 gray, uint8), cycled to ``--n`` images. "skimage loop" calls ``skimage.feature.hog`` per image
(8 orientations, 4-px cells, 1×1 blocks, L2-Hys) and regroups the cells into 16-px patches, exactly as
the encoder did before; "batched" is one ``dense_hog`` call over the whole stack. Modes alternate over
``--rounds`` rounds; the table gives the total per mode. The run also reports the largest absolute
difference between the two results and whether they are bit-identical.

    python benchmarks/bench_hog.py                # 200 images, 1 thread, 2 rounds
    python benchmarks/bench_hog.py --n 512 --threads 2
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time

import numpy as np
import torch


def skimage_loop(gray: np.ndarray, cell: int = 16, orientations: int = 8, sub: int = 4) -> np.ndarray:
    """The previous implementation: one skimage call per image."""
    from skimage.feature import hog

    out = []
    for g in gray:
        h, w = g.shape
        f = hog(g, orientations=orientations, pixels_per_cell=(sub, sub), cells_per_block=(1, 1),
                feature_vector=False)
        k = cell // sub
        f = f.reshape(h // cell, k, w // cell, k, orientations).transpose(0, 2, 1, 3, 4)
        out.append(f.reshape((h // cell) * (w // cell), k * k * orientations).astype(np.float32))
    return np.stack(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="images (the built-in photographs cycled)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (numpy's element-wise ops use one)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from spatialprobe.data import open_source
    from spatialprobe.encoders import get
    from spatialprobe.encoders.classical import _gray, dense_hog

    enc = get("hog")
    src = open_source("builtin")
    photos = torch.stack([src.load(i) for i in range(len(src))])
    gray = _gray(enc.preprocess(photos))  # [n_photos, 256, 256] uint8, what the encoder feeds to HOG
    gray = np.ascontiguousarray(gray[np.arange(args.n) % len(gray)])

    dense_hog(gray[:2]), skimage_loop(gray[:2])  # imports and one-time tables stay out of the timings
    t_old = t_new = 0.0
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        old = skimage_loop(gray)
        t1 = time.perf_counter()
        new = dense_hog(gray)
        t2 = time.perf_counter()
        t_old += t1 - t0
        t_new += t2 - t1
    n = args.n * args.rounds
    diff = float(np.abs(new - old).max())
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, numpy "
          f"{np.__version__}, torch {torch.__version__}, {torch.get_num_threads()} torch threads; {args.n} gray "
          f"images of {gray.shape[1]}x{gray.shape[2]} px, {args.rounds} alternating rounds")
    print(f"command: python {' '.join(shlex.quote(a) for a in ([sys.argv[0]] + argv if argv is not None else sys.argv))}\n")
    print("| method | seconds per round | ms / image | speed-up |\n|---|---:|---:|---:|")
    print(f"| skimage `hog`, one call per image | {t_old / args.rounds:.2f} | {1000 * t_old / n:.1f} | 1.0× |")
    print(f"| `dense_hog`, one batched call | {t_new / args.rounds:.2f} | {1000 * t_new / n:.1f} | "
          f"{t_old / t_new:.1f}× |")
    print(f"\nmax abs difference: {diff:.1e}; bit-identical: {np.array_equal(new, old)}")


if __name__ == "__main__":
    main()
