"""Linear probing on cached pooled features: the whole learning-rate × weight-decay grid at once.

The iREPA code never released its LP protocol; it only reads ``<enc>-none-mean/metrics.json`` →
``best_val_acc`` (mean-pooled patch tokens, no spatial normalisation). This module is the explicit,
recorded reconstruction (DINOv2-style linear eval on cached features, no augmentation):

- feature: mean of the patch tokens (``pool="mean"``, the official ``none-mean``) or the CLS token;
- feature normalisation fitted on the training split (``standardize`` by default);
- multinomial logistic regression, SGD with momentum 0.9 and a cosine schedule, zero init;
- every (lr, weight decay) pair is one head; all heads are one ``[D, G·C]`` weight matrix, so each
  mini-batch is read once and one matrix product serves the whole grid ("one pass per epoch");
- ``best_val_acc`` = best top-1 on the validation split over the grid (a fraction in [0, 1]).

Pooled features are held in memory (``N × D``, 256× smaller than the patch tokens); the patch tokens
themselves are streamed from the store when the pooled key is absent.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import ConfigError, DataError, InputFileError, StoreError
from .runtime import resolve_device
from .schema import CONFIG_JSON, GRID_CSV, RESULT_JSON

log = logging.getLogger(__name__)

#: DINOv2-style learning-rate grid (13 points, 1e-5 … 1e-1).
DEFAULT_LRS: tuple[float, ...] = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1)
#: Weight decays crossed with the learning rates.
DEFAULT_WDS: tuple[float, ...] = (0.0, 1e-4, 1e-3)
POOLS = ("mean", "cls")
NORMALIZATIONS = ("standardize", "l2", "none")
PRECISIONS = ("fp32", "bf16")


@dataclass
class ProbeConfig:
    """Options of :func:`probe` (defaults < config file < explicit arguments)."""

    features: str | None = None          #: feature store (dir with manifest.json, or its parent)
    labels: str | None = None            #: builtin:digits | builtin:lfw | folder | CSV id,label | None = store labels
    val_labels: str | None = None        #: optional separate validation labels (ids of the same store)
    val_fraction: float = 0.2            #: stratified split when ``val_labels`` is not given
    pool: str = "mean"                   #: "mean" (official none-mean) or "cls"
    normalize: str = "standardize"       #: "standardize" | "l2" | "none", fitted on the train split
    lrs: Sequence[float] = DEFAULT_LRS
    weight_decays: Sequence[float] = DEFAULT_WDS
    epochs: int = 10
    min_steps: int = 1000                #: small sets get more epochs so every head sees ≥ this many steps
    batch_size: int = 128
    momentum: float = 0.9
    seed: int = 0
    device: str = "auto"                 #: "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    precision: str = "fp32"              #: "fp32" or "bf16" matrix products (fp32 master weights)
    ignore_missing: bool = False         #: drop store ids without a label instead of failing
    out: str | None = None               #: result folder (result.json, grid.csv, config.json)

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise ConfigError(f"pool={self.pool!r} is not one of {', '.join(POOLS)}.")
        if self.normalize not in NORMALIZATIONS:
            raise ConfigError(f"normalize={self.normalize!r} is not one of {', '.join(NORMALIZATIONS)}.")
        if not 0.0 < float(self.val_fraction) < 1.0:
            raise ConfigError(f"val_fraction={self.val_fraction} must be in (0, 1), e.g. 0.2.")
        self.lrs = tuple(float(v) for v in self.lrs)
        self.weight_decays = tuple(float(v) for v in self.weight_decays)
        if not self.lrs or any(v <= 0 for v in self.lrs):
            raise ConfigError(f"lrs={list(self.lrs)} must be a non-empty list of positive learning rates.")
        if not self.weight_decays or any(v < 0 for v in self.weight_decays):
            raise ConfigError(f"weight_decays={list(self.weight_decays)} must be non-negative.")
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be ≥ 1.")
        from .checks import check_device, check_range

        check_range("min_steps", self.min_steps, 0)
        check_range("momentum", self.momentum, 0, 1, hi_open=True)
        check_device(self.device, "--device")


@dataclass
class ProbeResult:
    """Outcome of one grid fit. ``grid`` rows: lr, weight_decay, val_acc, train_acc, diverged."""

    best_val_acc: float
    best: dict[str, float]
    grid: list[dict[str, Any]]
    protocol: dict[str, Any]
    n_train: int
    n_val: int
    n_classes: int
    seconds: float
    weight: Any = field(default=None, repr=False)   #: best head [D, C] (in normalised feature space)
    bias: Any = field(default=None, repr=False)     #: best head [C]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("weight"), d.pop("bias")
        return d


# --------------------------------------------------------------------------------------------- core


def _as_tensor(x, dtype):
    import torch

    return x.to(dtype) if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x), dtype=dtype)


def fit_normalization(x, method: str):
    """Return ``f(x) -> normalised x`` fitted on ``x`` (train split) plus its parameters."""
    import torch

    if method == "none":
        return (lambda z: z), {}
    if method == "l2":
        return (lambda z: torch.nn.functional.normalize(z, dim=1)), {}
    mean = x.mean(0)
    std = x.std(0, unbiased=False)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # constant features stay 0, not inf
    return (lambda z: (z - mean) / std), {"mean": mean, "std": std}


def stratified_split(y: Sequence[int], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split: ``round(val_fraction·n_c)`` of each class (≥1 when the class has ≥2) to val."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        k = int(round(val_fraction * len(idx)))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        else:
            k = 0
        val.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def check_labels(y: np.ndarray, what: str) -> None:
    """Labels must be integers ≥ 0 with at least two classes."""
    if y.size == 0:
        raise DataError(f"{what}: no labelled samples; check that the label ids match the feature ids.")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{what}: labels must be integer class indices, got dtype {y.dtype}.")
    if y.min() < 0:
        raise DataError(f"{what}: labels must be ≥ 0, found {int(y.min())}.")
    if len(np.unique(y)) < 2:
        raise DataError(f"{what}: only one class ({int(y[0])}) is present; a probe needs at least two classes. "
                        "Check the label file or the id join.")


def contiguous_labels(y: np.ndarray, names: Sequence[str] | None, what: str
                      ) -> tuple[np.ndarray, list[str], list[int]]:
    """Remap the label ids present in ``y`` to ``0..K-1`` (order kept) so a probe trains K-way heads,
    not ``max(id) + 1``-way ones: labels {0, 5, 10} become {0, 1, 2}.

    Returns ``(remapped y, the K class names, the K original ids)``. With ``names`` (one per original id),
    an id outside ``0..len(names)-1`` is a :class:`DataError` listing it; the names of the present ids
    are kept. Without names, the original ids are the names.
    """
    y = np.asarray(y, dtype=np.int64)
    ids = np.unique(y)
    if names is not None:
        unknown = [int(i) for i in ids if not 0 <= i < len(names)]
        if unknown:
            raise DataError(f"{what}: label id(s) {', '.join(map(str, unknown[:10]))} have no class name (the "
                            f"{len(names)} names cover ids 0..{len(names) - 1}); fix the labels or the names.")
    lut = {int(v): k for k, v in enumerate(ids)}
    out = np.asarray([lut[int(v)] for v in y], dtype=np.int64)
    class_names = [str(names[int(i)]) if names is not None else str(int(i)) for i in ids]
    return out, class_names, [int(i) for i in ids]


def fit_heads(x_train, y_train, x_val, y_val, *, lrs: Sequence[float] = DEFAULT_LRS,
              weight_decays: Sequence[float] = DEFAULT_WDS, epochs: int = 10, min_steps: int = 0,
              batch_size: int = 128, momentum: float = 0.9, seed: int = 0, device: str = "auto",
              normalize: str = "standardize", n_classes: int | None = None, precision: str = "fp32",
              progress: bool = True) -> ProbeResult:
    """Train one softmax head per (lr, weight decay) pair, all at once, and score each on the val split.

    ``x_*``: ``[N, D]`` float arrays/tensors; ``y_*``: integer class indices. The heads share every
    mini-batch: logits for all G heads are one ``[B, D] @ [D, G·C]`` product and the gradient one
    ``[D, B] @ [B, G·C]`` product (closed-form softmax cross-entropy gradient, no autograd). SGD with
    momentum, cosine-decayed per-head learning rates, L2 weight decay on the weights, zero init.
    Deterministic for a given seed, device and thread count. A head whose weights become non-finite
    is frozen, flagged ``diverged`` and scored 0. ``precision="bf16"`` runs the two matrix products in
    bfloat16 (fp32 master weights, fp32 softmax and updates): 2–4× faster on GPUs and on CPUs with
    AVX512-BF16/AMX, at a small cost in accuracy.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}.")
    import torch
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    dev = resolve_device(device)
    xtr = _as_tensor(x_train, torch.float32)
    xva = _as_tensor(x_val, torch.float32)
    ytr_np, yva_np = np.asarray(y_train), np.asarray(y_val)
    check_labels(ytr_np, "training labels")
    if yva_np.size == 0:
        raise DataError("validation split is empty; raise val_fraction or pass validation labels.")
    if xtr.ndim != 2 or xva.ndim != 2 or xtr.shape[1] != xva.shape[1]:
        raise DataError(f"features must be [N, D] with the same D for train and val, got {tuple(xtr.shape)} "
                        f"and {tuple(xva.shape)}.")
    if xtr.shape[0] != len(ytr_np) or xva.shape[0] != len(yva_np):
        raise DataError(f"{xtr.shape[0]}/{xva.shape[0]} feature rows but {len(ytr_np)}/{len(yva_np)} labels.")
    if not (torch.isfinite(xtr).all() and torch.isfinite(xva).all()):
        raise DataError("features contain NaN or Inf; re-extract them or drop those images.")
    C = int(n_classes or max(ytr_np.max(), yva_np.max()) + 1)

    norm, _ = fit_normalization(xtr, normalize)
    mm_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    xtr, xva = norm(xtr).to(dev, mm_dtype).contiguous(), norm(xva).to(dev, mm_dtype).contiguous()
    ytr = torch.as_tensor(ytr_np, dtype=torch.long, device=dev)
    yva = torch.as_tensor(yva_np, dtype=torch.long, device=dev)
    N, D = xtr.shape

    grid = [(lr, wd) for wd in weight_decays for lr in lrs]
    G = len(grid)
    lr0 = torch.tensor([g[0] for g in grid], dtype=torch.float32, device=dev)
    wd = torch.tensor([g[1] for g in grid], dtype=torch.float32, device=dev)[None, :, None]
    has_wd = bool((wd > 0).any())
    W = torch.zeros(D, G, C, device=dev)
    b = torch.zeros(G, C, device=dev)
    vW, vb = torch.zeros_like(W), torch.zeros_like(b)
    alive = torch.ones(G, dtype=torch.bool, device=dev)
    diverged_at = [None] * G

    B = min(batch_size, N)
    steps_per_epoch = math.ceil(N / B)
    epochs_run = max(int(epochs), math.ceil(min_steps / steps_per_epoch)) if min_steps else int(epochs)
    total = epochs_run * steps_per_epoch
    gen = torch.Generator().manual_seed(int(seed))
    arG = torch.arange(G, device=dev)
    correct = torch.zeros(G, device=dev)
    step = 0
    bar = tqdm(total=total, desc=f"probe {G} heads", disable=not progress or total < 200, leave=False)
    with torch.no_grad():
        for epoch in range(epochs_run):
            perm = torch.randperm(N, generator=gen).to(dev)
            last = epoch == epochs_run - 1
            if last:
                correct.zero_()
            for i in range(steps_per_epoch):
                idx = perm[i * B:(i + 1) * B]
                xb, yb = xtr[idx], ytr[idx]
                nb = xb.shape[0]
                logits = (xb @ W.view(D, G * C).to(mm_dtype)).float().view(nb, G, C).add_(b)
                if last:
                    correct += (logits.argmax(-1) == yb[:, None]).sum(0)
                p = torch.softmax(logits, dim=-1)
                p[torch.arange(nb, device=dev)[:, None], arG[None, :], yb[:, None]] -= 1.0
                p /= nb
                gW = (xb.T @ p.view(nb, G * C).to(mm_dtype)).float().view(D, G, C)
                if has_wd:
                    gW.add_(W * wd)
                gb = p.sum(0)
                lr = (lr0 * (0.5 * (1.0 + math.cos(math.pi * step / total))) * alive)
                vW.mul_(momentum).add_(gW)
                vb.mul_(momentum).add_(gb)
                W.sub_(vW * lr[None, :, None])
                b.sub_(vb * lr[:, None])
                step += 1
                bar.update(1)
            bad = ~(torch.isfinite(W).all(dim=(0, 2)) & torch.isfinite(b).all(dim=1)) & alive
            if bad.any():
                for g in torch.nonzero(bad).flatten().tolist():
                    diverged_at[g] = epoch
                    log.warning("head lr=%g wd=%g diverged in epoch %d; it is scored 0", *grid[g], epoch)
                alive &= ~bad
                W[:, bad] = 0.0
                b[bad] = 0.0
                vW[:, bad] = 0.0
                vb[bad] = 0.0
        bar.close()
        hits = torch.zeros(G, device=dev)
        for s in range(0, xva.shape[0], 4096):
            xb = xva[s:s + 4096]
            logits = (xb @ W.view(D, G * C).to(mm_dtype)).float().view(xb.shape[0], G, C).add_(b)
            hits += (logits.argmax(-1) == yva[s:s + 4096, None]).sum(0)
    val_acc = (hits / len(yva_np) * alive).cpu().numpy()
    train_acc = (correct / N * alive).cpu().numpy()
    rows = [{"lr": lr, "weight_decay": w, "val_acc": float(val_acc[g]), "train_acc": float(train_acc[g]),
             "diverged": diverged_at[g] is not None} for g, (lr, w) in enumerate(grid)]
    g_best = int(np.argmax(val_acc))  # first maximum in grid order (wd ascending, then lr ascending)
    protocol = {
        "model": "multinomial logistic regression (one linear head per grid point)",
        "optimizer": f"SGD momentum {momentum}, cosine lr decay to 0, no warmup, zero init",
        "weight_decay": "L2 on the weights (not the bias)",
        "normalization": normalize + (" (train-split mean/std)" if normalize == "standardize" else ""),
        "epochs": epochs_run, "epochs_requested": int(epochs), "steps": total, "batch_size": B,
        "seed": int(seed), "device": str(dev), "precision": precision, "selection": "best val top-1 over the grid (final epoch)",
        "lrs": [float(v) for v in lrs], "weight_decays": [float(v) for v in weight_decays],
    }
    return ProbeResult(best_val_acc=float(val_acc[g_best]),
                       best={"lr": grid[g_best][0], "weight_decay": grid[g_best][1]},
                       grid=rows, protocol=protocol, n_train=int(N), n_val=int(len(yva_np)), n_classes=C,
                       seconds=time.perf_counter() - t0,
                       weight=W[:, g_best].cpu().clone(), bias=b[g_best].cpu().clone())


# ----------------------------------------------------------------------------------------- labels


def _read_label_csv(path: Path) -> tuple[dict[str, int], None]:
    """CSV/TSV ``id,label`` (header optional); labels must be integers."""
    text = path.read_text(encoding="utf-8-sig")
    dialect = "excel-tab" if path.suffix.lower() == ".tsv" or ("\t" in text.splitlines()[0] if text else False) \
        else "excel"
    rows = [r for r in csv.reader(text.splitlines(), dialect=dialect) if r and any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"label file {str(path)!r} is empty; expected rows 'id,label'.")
    head = [c.strip().lower() for c in rows[0]]
    if len(head) >= 2 and head[0] in ("id", "image", "image_id", "filename", "file", "name") \
            and head[1] in ("label", "class", "target", "y", "class_id", "label_id"):
        rows = rows[1:]
    out: dict[str, int] = {}
    for n, r in enumerate(rows, start=1):
        if len(r) < 2:
            raise DataError(f"label file {str(path)!r} row {n} {r!r} has no label column; expected 'id,label'.")
        key, val = r[0].strip(), r[1].strip()
        try:
            lab = int(val)
        except ValueError:
            try:
                f = float(val)
            except ValueError:
                f = math.nan
            if not (math.isfinite(f) and f == int(f)):
                raise DataError(f"label file {str(path)!r} row {n}: label {val!r} for id {key!r} is not an integer "
                                "class index; write labels as 0..C-1 (map class names to indices first).") from None
            lab = int(f)
        if key in out and out[key] != lab:
            raise DataError(f"label file {str(path)!r}: id {key!r} has two labels ({out[key]} and {lab}).")
        out[key] = lab
    return out, None


def load_labels(spec: str) -> tuple[dict[str, int], list[str] | None]:
    """Labels by image id from ``builtin:digits``/``builtin:lfw``/an image folder (via
    :func:`spatialprobe.data.open_source`) or a CSV/TSV file of ``id,label`` rows."""
    p = Path(spec)
    if p.is_file() and p.suffix.lower() in (".csv", ".tsv", ".txt"):
        return _read_label_csv(p)
    if not spec.startswith("builtin") and not p.exists():
        raise InputFileError(f"labels {spec!r}: no such file or folder; pass builtin:digits, builtin:lfw, an image "
                             "folder with class subfolders, or a CSV of 'id,label' rows.")
    from .data import open_source

    src = open_source(spec)
    if src.labels is None:
        raise DataError(f"labels {spec!r}: this image source has no labels (no class subfolders); "
                        "pass a CSV of 'id,label' rows instead.")
    return {str(i): int(l) for i, l in zip(src.ids, src.labels)}, src.label_names


def join_labels(ids: Sequence[str], labels: dict[str, int], *, source: str, ignore_missing: bool = False,
                flag: str | None = "--ignore-missing") -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``ids`` that have a label and their labels; missing ids fail unless ``ignore_missing``
    (``flag`` is the option the message suggests; None where the caller has none)."""
    rows, ys, missing = [], [], []
    for i, key in enumerate(ids):
        lab = labels.get(str(key))
        if lab is None:
            missing.append(key)
        else:
            rows.append(i)
            ys.append(lab)
    if missing and not ignore_missing:
        raise DataError(f"labels {source!r} lack {len(missing)} of {len(ids)} feature ids (e.g. "
                        f"{', '.join(map(repr, missing[:3]))}); fix the label file"
                        + (f" or pass {flag} to probe only the labelled ids." if flag else " (every image needs a label)."))
    if missing:
        log.warning("%d of %d feature ids have no label in %s; they are skipped", len(missing), len(ids), source)
    if not rows:
        raise DataError(f"labels {source!r} share no id with the features (feature ids look like "
                        f"{', '.join(map(repr, list(ids)[:3]))}); the ids must match.")
    return np.asarray(rows, dtype=np.int64), np.asarray(ys, dtype=np.int64)


# ------------------------------------------------------------------------------------------ store


def pooled_features(store, pool: str = "mean"):
    """``[N, D]`` float32 features of every store id: patch mean (``pooled`` key, or streamed from
    ``patch``) or the CLS token (first prefix token)."""
    import torch

    if pool == "cls":
        if not getattr(store, "has_prefix", False):
            raise StoreError(f"store {str(store.path)!r} ({store.encoder}) has no prefix/CLS tokens; "
                             "use --pool mean, or re-extract with an encoder that has a CLS token.")
        parts = [c["prefix"][:, 0] for c in store.iter_chunks(keys=("prefix",))]
        return torch.cat(parts).float()
    try:
        return store.load("pooled").float()
    except Exception as exc:  # noqa: BLE001 - older/partial stores: fall back to streaming the patch tokens
        if not getattr(store, "has_patch", True):
            raise StoreError(f"store {str(store.path)!r} has neither pooled nor patch features; re-extract it.") \
                from exc
        log.info("no pooled key in %s; averaging patch tokens", store.path)
        parts = [c["patch"].float().mean(1) for c in store.iter_chunks(keys=("patch",))]
        return torch.cat(parts)


def _open_store(path: str):
    from . import store as store_mod

    return store_mod.open(path)


def probe(config: str | Path | ProbeConfig | None = None, **overrides: Any) -> ProbeResult:
    """Linear-probe a feature store: join labels by id, split, fit the grid, write ``out``.

    ``config`` is a YAML/JSON file or a :class:`ProbeConfig`; keyword overrides win. Writes
    ``result.json`` (best_val_acc, best setting, whole grid, protocol), ``grid.csv`` and ``config.json``.
    """
    from .config import resolve, write_config

    cfg = resolve(ProbeConfig, config, **overrides)
    if not cfg.features:
        raise ConfigError("no feature store given; pass --features STORE (made by `spatialprobe extract`).")
    if cfg.out:
        from .checks import prepare_out_dir

        prepare_out_dir(cfg.out)
    st = _open_store(cfg.features)
    ids = [str(i) for i in st.ids]
    if cfg.labels is None:
        if st.labels is None:
            raise DataError(f"store {str(st.path)!r} holds no labels; pass --labels (builtin:digits, a folder "
                            "or a CSV of 'id,label').")
        labels, names, source = dict(zip(ids, (int(v) for v in st.labels))), st.label_names, "store labels"
    else:
        labels, names = load_labels(cfg.labels)
        source = cfg.labels
    x_all = pooled_features(st, cfg.pool)
    import torch

    finite = torch.isfinite(x_all).all(1)
    if not bool(finite.all()):
        bad = [ids[i] for i in (~finite).nonzero().flatten().tolist()]
        raise DataError(f"store {str(st.path)!r}: the features of {len(bad)} image(s) are non-finite (NaN or inf): "
                        f"{', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}. The input is broken: re-extract "
                        "those images (fp16 overflow? use --dtype fp32).")

    if cfg.val_labels:
        val_map, _ = load_labels(cfg.val_labels)
        overlap = set(val_map) & set(labels) if cfg.labels else set()
        if overlap and any(labels[k] != val_map[k] for k in overlap):
            raise DataError(f"ids {sorted(overlap)[:3]} have different labels in {cfg.labels!r} and {cfg.val_labels!r}.")
        vrows, yva = join_labels(ids, val_map, source=cfg.val_labels, ignore_missing=True)
        train_map = {k: v for k, v in labels.items() if k not in val_map}
        trows, ytr = join_labels([ids[i] for i in range(len(ids)) if ids[i] not in val_map], train_map,
                                 source=source, ignore_missing=cfg.ignore_missing)
        keep = np.asarray([i for i in range(len(ids)) if ids[i] not in val_map], dtype=np.int64)
        trows = keep[trows]
        split = {"kind": "given", "val_labels": cfg.val_labels}
    else:
        rows, y = join_labels(ids, labels, source=source, ignore_missing=cfg.ignore_missing)
        check_labels(y, f"labels {source!r}")
        tr, va = stratified_split(y, cfg.val_fraction, cfg.seed)
        trows, ytr, vrows, yva = rows[tr], y[tr], rows[va], y[va]
        split = {"kind": "stratified", "val_fraction": cfg.val_fraction, "seed": cfg.seed}
    check_labels(ytr, f"labels {source!r} (train split)")
    both, class_names, class_ids = contiguous_labels(np.concatenate([ytr, yva]), names, f"labels {source!r}")
    ytr, yva = both[:len(ytr)], both[len(ytr):]
    if class_ids != list(range(len(class_ids))):
        log.info("labels %s: %d classes with ids %s, trained as 0..%d", source, len(class_ids),
                 ", ".join(map(str, class_ids[:12])) + (" ..." if len(class_ids) > 12 else ""), len(class_ids) - 1)
    split.update(n_train=len(trows), n_val=len(vrows))
    log.info("probe %s: %d train / %d val, %d classes, D=%d, %d heads", st.encoder, len(trows), len(vrows),
             len(np.unique(ytr)), x_all.shape[1], len(cfg.lrs) * len(cfg.weight_decays))
    res = fit_heads(x_all[trows], ytr, x_all[vrows], yva, lrs=cfg.lrs, weight_decays=cfg.weight_decays,
                    epochs=cfg.epochs, min_steps=cfg.min_steps, batch_size=cfg.batch_size,
                    momentum=cfg.momentum, seed=cfg.seed, device=cfg.device, normalize=cfg.normalize,
                    precision=cfg.precision, n_classes=len(class_ids))
    res.protocol.update(pooling={"mean": "mean of patch tokens (official none-mean)", "cls": "CLS token"}[cfg.pool],
                        pool=cfg.pool, spatial_norm="none", split=split, encoder=st.encoder,
                        features=str(st.path), labels=source, class_ids=class_ids, class_names=class_names,
                        reconstruction="iREPA never released its LP protocol; DINOv2-style linear eval on "
                                       "cached features without augmentation")
    if cfg.out:
        write_result(res, cfg.out, cfg)
    return res


def write_result(res: ProbeResult, out: str | Path, cfg: Any = None) -> Path:
    """``out/result.json`` + ``out/grid.csv`` (+ ``out/config.json`` when ``cfg`` is given)."""
    from .config import write_config

    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    (d / RESULT_JSON).write_text(json.dumps(res.to_dict(), indent=2) + "\n", encoding="utf-8")
    with open(d / GRID_CSV, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(res.grid[0]))
        w.writeheader()
        w.writerows(res.grid)
    if cfg is not None:
        write_config(d / CONFIG_JSON, cfg)
    return d / RESULT_JSON
