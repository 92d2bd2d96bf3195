"""SiT-B/2 training throughput (steps/s) with and without REPA/iREPA alignment.

GPU (the real measurement): random latents [B,4,32,32], bf16 autocast, AdamW + EMA, a teacher with the
DINOv2-B architecture (random init, 16x16 tokens at 256 px) for the aligned runs.

    python benchmarks/bench_train.py                 # CUDA: sit-b/2, batch 256
    python benchmarks/bench_train.py --tiny          # CPU check of the script: sit-tiny, the weight-free "pixels" teacher
    python benchmarks/bench_train.py --batch-selection   # CPU: host cost of a step's batch at n = 1.28M

Prints a markdown table with the machine and the command.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch


def _teacher(tiny: bool, device):
    from spatialprobe import encoders

    # --tiny: the weight-free zoo encoder "pixels" (checks the script; not a result)
    return encoders.get("pixels" if tiny else "dinov2-vit-b", pretrained=False, device=str(device))


def bench(method: str, *, tiny: bool, batch: int, steps: int, warmup: int, device, compile_: bool) -> float:
    from spatialprobe.train import presets
    from spatialprobe.train.loop import step_generator, step_losses
    from spatialprobe.train.models import build

    pre = presets.get(method, "sit")
    teachers = [_teacher(tiny, device)] if pre.align else []
    name, side, img = ("sit-tiny", 8, 64) if tiny else ("sit-b/2", 32, 256)
    model = build(name, input_size=side, num_classes=1000, z_dims=[t.embed_dim for t in teachers],
                  projector=pre.projector, kernel_size=pre.kernel_size,
                  **({} if tiny else {"encoder_depth": 4})).to(device)
    ema = build(name, input_size=side, num_classes=1000, z_dims=[t.embed_dim for t in teachers],
                projector=pre.projector, kernel_size=pre.kernel_size,
                **({} if tiny else {"encoder_depth": 4})).to(device).requires_grad_(False)
    net = torch.compile(model) if compile_ else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ac = torch.bfloat16 if device.type == "cuda" else None
    x = torch.randn(batch, 4, side, side, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    imgs = torch.randint(0, 256, (batch, 3, img, img), dtype=torch.uint8, device=device)
    t0 = None
    for s in range(warmup + steps):
        if s == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        out = step_losses(net, "sit", x, y, teachers=teachers, teacher_images=imgs, grid=model.grid,
                          spnorm=pre.spnorm, gamma=pre.gamma, proj_coeff=pre.proj_coeff,
                          generator=step_generator(0, s, 0, device), null_class=1000, label_dropout=0.1,
                          autocast_dtype=ac)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1e-4)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)


# ---------------------------------------------------------------- batch selection (host side, CPU)


def _per_step_positions(step: int, global_batch: int, n: int, seed: int, rank: int = 0, world: int = 1) -> list[int]:
    """Batch selection before the per-epoch cache: a randperm(n) drawn at every step (the old batch_positions)."""
    per = global_batch // world
    start = step * global_batch + rank * per
    out: list[int] = []
    perms: dict[int, torch.Tensor] = {}
    for pos in range(start, start + per):
        e, j = divmod(pos, n)
        if e not in perms:
            perms[e] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + e))
        out.append(int(perms[e][j]))
    return out


def bench_batch_selection(n: int = 1_281_167, batch: int = 256, steps: int = 50) -> list[tuple[str, float]]:
    """Host milliseconds per step to pick one rank's batch of dataset positions, before (a permutation of all
    n images per step) and after (one permutation per epoch, cached); both give the same positions."""
    from spatialprobe.train.loop import EpochPermutations, batch_positions

    rows = []
    for name, fn in (("per-step randperm (before)", lambda s: _per_step_positions(s, batch, n, 0)),
                     ("per-epoch cached (after)", None)):
        perms = EpochPermutations(n, 0)
        f = fn or (lambda s, perms=perms: batch_positions(s, batch, n, 0, perms=perms))
        f(0)  # the epoch's one permutation (the after row) is drawn here, outside the timing
        t0 = time.perf_counter()
        for s in range(1, steps + 1):
            f(s)
        rows.append((name, 1000 * (time.perf_counter() - t0) / steps))
    assert _per_step_positions(7, batch, n, 0) == batch_positions(7, batch, n, 0)
    return rows


def main_batch_selection(sizes: list[int], batch: int) -> None:
    torch.set_num_threads(2)
    machine = f"CPU ({platform.processor() or platform.machine()})"
    print(f"machine: {machine}; torch {torch.__version__}\n\ncommand: `python {' '.join(sys.argv)}`\n")
    print("| batch selection | n | batch | host ms / step | one randperm(n), ms |\n|---|---|---|---|---|")
    for n in sizes:
        t0 = time.perf_counter()
        torch.randperm(n, generator=torch.Generator().manual_seed(0))
        perm_ms = 1000 * (time.perf_counter() - t0)
        for name, ms in bench_batch_selection(n, batch):
            print(f"| {name} | {n} | {batch} | {ms:.3f} | {perm_ms:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="sit-tiny on CPU (checks the script, not a result)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--methods", default="none,repa,irepa")
    ap.add_argument("--batch-selection", action="store_true", help="only the host cost of picking a step's batch "
                    "at ImageNet's n (CPU), before and after the per-epoch permutation cache")
    ap.add_argument("--n", default="12800,1281167", help="dataset sizes of --batch-selection, comma-separated")
    a = ap.parse_args()
    if a.batch_selection:
        main_batch_selection([int(v) for v in a.n.split(",")], a.batch or 256)
        return
    device = torch.device("cuda" if torch.cuda.is_available() and not a.tiny else "cpu")
    if not a.tiny and device.type != "cuda":
        sys.exit("bench_train measures SiT-B/2 on a GPU; use --tiny to check the script on CPU.")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(2)
    batch = a.batch or (8 if a.tiny else 256)
    steps = a.steps or (5 if a.tiny else 30)
    machine = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    rows = []
    for m in a.methods.split(","):
        sps = bench(m, tiny=a.tiny, batch=batch, steps=steps, warmup=2 if a.tiny else 10, device=device,
                    compile_=a.compile)
        rows.append((m, sps))
    model = "sit-tiny" if a.tiny else "sit-b/2"
    print(f"machine: {machine}; torch {torch.__version__}\n\ncommand: `python {' '.join(sys.argv)}`\n")
    print(f"| model | method | batch | steps/s | images/s |\n|---|---|---|---|---|")
    for m, sps in rows:
        print(f"| {model} | {m} | {batch} | {sps:.2f} | {sps * batch:.0f} |")


if __name__ == "__main__":
    main()
