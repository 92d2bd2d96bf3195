"""Batched linear-probe heads vs scikit-learn LogisticRegression, one fit per grid point.

Data: N = 20,000 × D = 768 structured features, 100 balanced classes: class means in a 96-dim
subspace plus correlated noise (a decaying spectrum, like real encoder features), 80/20 stratified split.
Both sides see the same standardised features (train mean/std).

- spatialprobe: the 13-lr DINOv2 grid (1e-5 … 1e-1) at weight decay 1e-3 as 13 heads trained at once
  (fp32, and bf16 matrix products), then the whole default grid (13 lr × 3 weight decays = 39 heads);
  10 epochs, batch 128, SGD momentum 0.9, cosine schedule.
- scikit-learn: 13 LogisticRegression(lbfgs, multinomial) fits, one per grid point; sklearn has no
  learning rate, so its grid is 13 inverse regularisation strengths C = 10^-4 … 10^2 (log-spaced),
  tol 1e-4, max_iter 100 (its defaults).

Run: ``python benchmarks/bench_probe.py`` (``--quick`` for a 4,000-sample smoke run).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings

import numpy as np


def make_features(n: int = 20_000, d: int = 768, c: int = 100, k: int = 96, seed: int = 0):
    """Class means in a k-dim subspace + correlated noise with a decaying spectrum."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    rng.shuffle(y)
    basis, _ = np.linalg.qr(rng.normal(size=(d, k)))
    means = rng.normal(size=(c, k)) * 0.5 @ basis.T                      # [c, d]
    mix, _ = np.linalg.qr(rng.normal(size=(d, d)))
    spec = np.geomspace(3.0, 0.3, d)                                      # noise std per direction
    noise = (rng.normal(size=(n, d)) * spec) @ mix.T
    return (means[y] + noise).astype(np.float32), y.astype(np.int64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4,000 samples, 3 sklearn fits (smoke run)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    from sklearn.linear_model import LogisticRegression

    from spatialprobe.probe import DEFAULT_LRS, DEFAULT_WDS, fit_heads, stratified_split

    torch.set_num_threads(args.threads)
    n = 4_000 if args.quick else 20_000
    x, y = make_features(n=n)
    tr, va = stratified_split(y, 0.2, seed=0)
    mean, std = x[tr].mean(0), x[tr].std(0)
    xs = (x - mean) / std

    rows = []
    # the 13-lr grid at weight decay 1e-3 (one column of the default grid), then the whole default grid
    for precision, wds in (("fp32", (1e-3,)), ("bf16", (1e-3,)), ("bf16", DEFAULT_WDS)):
        t = time.perf_counter()
        res = fit_heads(x[tr], y[tr], x[va], y[va], lrs=DEFAULT_LRS, weight_decays=wds, epochs=10,
                        batch_size=128, seed=0, device="cpu", precision=precision, progress=False)
        sec = time.perf_counter() - t
        rows.append((f"spatialprobe batched heads ({precision}, wd {'/'.join(f'{w:g}' for w in wds)})",
                     len(res.grid), sec, res.best_val_acc,
                     f"lr={res.best['lr']:g}, wd={res.best['weight_decay']:g}"))

    cs = np.logspace(-4, 2, 13)
    if args.quick:
        cs = cs[[4, 8, 12]]
    accs, iters = [], []
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter is part of what is measured
        for cval in cs:
            clf = LogisticRegression(C=cval, max_iter=100, tol=1e-4).fit(xs[tr], y[tr])
            accs.append(float((clf.predict(xs[va]) == y[va]).mean()))
            iters.append(int(np.max(clf.n_iter_)))
    sk_sec = time.perf_counter() - t
    best = int(np.argmax(accs))
    rows.append(("sklearn LogisticRegression per grid point (lbfgs)", len(cs), sk_sec, accs[best],
                 f"C={cs[best]:.3g}; lbfgs iterations {min(iters)}–{max(iters)}"))

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(l.split(":", 1)[1].strip() for l in fh if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"\nmachine: {cpu}, {args.threads} threads, torch {torch.__version__}, python {platform.python_version()}")
    print(f"command: python benchmarks/bench_probe.py{' --quick' if args.quick else ''}")
    print(f"data: N={n} x D=768, 100 classes, {len(tr)} train / {len(va)} val\n")
    print("| method | fits | seconds | best val acc | best setting | speed-up vs sklearn |")
    print("|---|---:|---:|---:|---|---:|")
    for name, fits, sec, acc, setting in rows:
        print(f"| {name} | {fits} | {sec:.1f} | {100 * acc:.2f} % | {setting} | {sk_sec / sec:.1f}× |")
    sys.stdout.flush()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
