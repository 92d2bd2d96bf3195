"""The ADM evaluator's Inception features from torch-fidelity's TF-2015 Inception v3 port, offline.

One forward pass gives the three feature sets of the ADM protocol:

- ``pool``    ``[B, 2048]`` pool_3 (FID, precision/recall);
- ``spatial`` ``[B, 2023]`` ADM's sFID features: ``mixed_6/conv`` = ``Mixed_6d.branch1x1`` output
  ``[B, 192, 17, 17]``, first 7 channels, flattened channels-last (h, w, c) — taken by a forward hook;
- ``logits``  ``[B, 1008]`` pool_3 @ fc.weight (no bias), softmaxed for the Inception Score.

Weights are never downloaded: they come from an explicit path, ``$SPATIALPROBE_WEIGHTS`` or the torch hub
cache (``$TORCH_HOME/hub/checkpoints``), or :class:`~spatialprobe.errors.WeightsNotFoundError` says
which file to put where.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError, WeightsMismatchError, WeightsNotFoundError

log = logging.getLogger(__name__)

#: torch-fidelity's file name for the converted TF-2015 Inception (23.85M parameters; a plain dict of 472
#: tensors, no ``num_batches_tracked``).
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
#: Where that file is published (torch-fidelity v0.2.0 release); fetch it by hand on a connected machine.
INCEPTION_WEIGHTS_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                         + INCEPTION_WEIGHTS_FILE)
#: pytorch-fid's copy of the same conversion (same module names and hash suffix), also accepted.
_ALT_FILES = ("pt_inception-2015-12-05-6726825d.pth",)
#: tensors in the release file (a plain state dict without BatchNorm ``num_batches_tracked``).
INCEPTION_TENSORS = 472
#: Channels of ``mixed_6/conv`` kept by ADM for sFID, and the flattened size 17·17·7.
SPATIAL_CHANNELS = 7
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS
POOL_DIM = 2048
LOGITS_DIM = 1008


def inception_weights_candidates(weights: str | os.PathLike | None = None) -> list[Path]:
    """The paths searched for the Inception weights, in order."""
    names = (INCEPTION_WEIGHTS_FILE, *_ALT_FILES)
    out: list[Path] = []
    if weights is not None:
        p = Path(weights).expanduser()
        out += [p / n for n in names] if p.is_dir() else [p]
        return out
    env = os.environ.get("SPATIALPROBE_WEIGHTS")
    if env:
        for d in (Path(env).expanduser(), Path(env).expanduser() / "inception"):
            out += [d / n for n in names]
    out += [Path(torch.hub.get_dir()) / "checkpoints" / n for n in names]
    return out


def find_inception_weights(weights: str | os.PathLike | None = None) -> Path:
    """Locate the Inception weights file without downloading anything.

    Args:
        weights: a file, or a folder holding ``weights-inception-2015-12-05-6726825d.pth``. When None:
            ``$SPATIALPROBE_WEIGHTS`` (and its ``inception/`` subfolder), then the torch hub cache
            ``$TORCH_HOME/hub/checkpoints`` (where torch-fidelity itself caches the file).

    Raises:
        WeightsNotFoundError: naming the exact file, where it comes from and where to put it.
    """
    cands = inception_weights_candidates(weights)
    for p in cands:
        if p.is_file():
            return p
    where = "\n  ".join(str(p) for p in cands)
    raise WeightsNotFoundError(
        f"Inception weights not found; looked for:\n  {where}\n"
        f"Download {INCEPTION_WEIGHTS_FILE} (torch-fidelity's port of the TF 2015-12-05 Inception used by the "
        f"ADM evaluator) on a connected machine from {INCEPTION_WEIGHTS_URL} and pass it with "
        f"--inception-weights FILE, or put it in $SPATIALPROBE_WEIGHTS or {Path(torch.hub.get_dir()) / 'checkpoints'}. "
        "Nothing is downloaded at run time.")


@functools.cache
def _extractor_class() -> type:
    """torch-fidelity's extractor, with construction-time weight loading made a no-op (we load ourselves)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Extractor(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # noqa: D102
            if state_dict is None:  # construction: weights are loaded afterwards by build_inception
                return None
            return super().load_state_dict(state_dict, strict=strict, assign=assign)

    return _Extractor


def _new_extractor(features: list[str]) -> torch.nn.Module:
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as fe

    def _no_download(*_a: Any, **_k: Any) -> None:
        return None

    # the constructor calls load_state_dict_from_url when given no path; make that a no-op, never a download
    with mock.patch.object(fe, "load_state_dict_from_url", _no_download):
        return _extractor_class()("inception-v3-compat", features)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)  # tensors only, never free unpickling
    except Exception as exc:  # noqa: BLE001 - any read error is about this file
        raise WeightsMismatchError(f"Inception weights {str(path)!r} could not be read as a state_dict: {exc}") from exc
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise WeightsMismatchError(f"Inception weights {str(path)!r} hold a {type(sd).__name__}, not a state_dict.")
    return sd


def check_inception_weights(path: str | os.PathLike) -> str | None:
    """The problem with an Inception weights file (None if its keys and shapes fit), reading headers only."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from ..encoders.layouts import read_safetensors

            sd = read_safetensors(path, meta=True)
        else:
            sd = torch.load(path, map_location="meta", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return f"cannot read {path}: {str(exc).splitlines()[0][:200]} (truncated or not a weights file)"
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        return f"{path} holds a {type(sd).__name__}, not a state dict"
    want = {k: v for k, v in _new_extractor(["2048"]).state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want and not k.endswith("num_batches_tracked")]
    shapes = [k for k in want if k in sd and tuple(sd[k].shape) != tuple(want[k].shape)]
    if missing or unexpected or shapes:
        return (f"{path} is not {INCEPTION_WEIGHTS_FILE} ({len(sd)} tensors, the release has {INCEPTION_TENSORS}): "
                f"missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {shapes[:3]}")
    return None


def _random_init(model: torch.nn.Module, seed: int) -> None:
    """Kaiming conv weights, identity batch norm: features that vary between images (PyTorch's default init
    makes pool_3 collapse to a constant). For tests and benchmarks only: the numbers mean nothing."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
        elif isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.zero_(), m.running_var.fill_(1.0), m.weight.fill_(1.0), m.bias.zero_()
        elif isinstance(m, torch.nn.Linear):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features ** 0.5)
            m.bias.zero_()


class InceptionFeatures(torch.nn.Module):
    """uint8 images ``[B, 3, H, W]`` -> ``{"pool": [B,2048], "spatial": [B,2023], "logits": [B,1008]}`` float32.

    Images of any size are resized inside (TF1 bilinear, no antialias) to 299 px, as the ADM graph does:
    do not pre-resize. Build with :func:`build_inception`.
    """

    def __init__(self, extractor: torch.nn.Module, weights_id: str, weights_file: Path | None) -> None:
        super().__init__()
        self.extractor = extractor
        self.weights_id, self.weights_file = weights_id, weights_file
        self._spatial: torch.Tensor | None = None
        extractor.Mixed_6d.branch1x1.register_forward_hook(self._hook)

    def _hook(self, _module: Any, _inp: Any, out: torch.Tensor) -> None:
        # NCHW -> NHWC, keep the first 7 channels, flatten in (h, w, c) order like ADM's TF tensor
        self._spatial = out.movedim(1, -1)[..., :SPATIAL_CHANNELS].reshape(out.shape[0], -1).float()

    @property
    def device(self) -> torch.device:
        return self.extractor.fc.weight.device

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        check_images(images)
        self._spatial = None
        pool, logits = self.extractor(images.to(self.device, non_blocking=True))
        spatial, self._spatial = self._spatial, None
        if spatial is None:  # pragma: no cover - would mean torch-fidelity changed its forward
            raise RuntimeError("The Mixed_6d.branch1x1 hook did not fire; torch-fidelity's Inception changed.")
        return {"pool": pool, "spatial": spatial, "logits": logits}


def check_images(images: Any, name: str = "images") -> None:
    """Raise :class:`DataError` unless ``images`` is a uint8 tensor ``[B, 3, H, W]`` with B >= 1."""
    if not isinstance(images, torch.Tensor):
        raise DataError(f"{name}: expected a torch uint8 tensor [B, 3, H, W], got {type(images).__name__}.")
    if images.dtype != torch.uint8:
        nan = images.is_floating_point() and bool(torch.isnan(images).any())
        raise DataError(
            f"{name}: expected dtype uint8 (0..255), got {images.dtype}"
            + (" containing NaN (the generator diverged; fix the model, do not score NaN images)" if nan else "")
            + ". Quantise decoder outputs first, e.g. ((x + 1) * 127.5).clamp(0, 255).to(torch.uint8) for x in "
              "[-1, 1] (ADM's convention).")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        hint = (" It looks channels-last (NHWC): use images.permute(0, 3, 1, 2)."
                if images.ndim == 4 and images.shape[-1] == 3 else "")
        raise DataError(f"{name}: expected shape [B, 3, H, W] with B >= 1, got {tuple(images.shape)}.{hint}")


def build_inception(weights: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
                    pretrained: bool = True, seed: int = 0) -> InceptionFeatures:
    """Build the ADM-protocol Inception feature extractor (eval mode, no gradients).

    Args:
        weights: the weights file or a folder holding it; None searches ``$SPATIALPROBE_WEIGHTS`` and the
            torch hub cache (see :func:`find_inception_weights`). Never downloads.
        device: where to run.
        pretrained: False builds the same network with a seeded random init (tests, benchmarks); the
            features are then meaningless but vary between images.
        seed: seed of the random init.

    Raises:
        WeightsNotFoundError: no weights file found.
        WeightsMismatchError: the file is not an Inception state_dict of the expected shape.
    """
    extractor = _new_extractor(["2048", "logits_unbiased"])
    if pretrained:
        path = find_inception_weights(weights)
        sd = _read_state_dict(path)
        try:
            extractor.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            raise WeightsMismatchError(
                f"Inception weights {str(path)!r} do not fit torch-fidelity's inception-v3-compat network "
                f"(expected {INCEPTION_WEIGHTS_FILE}: {len(sd)} tensors in this file, {INCEPTION_TENSORS} in the "
                f"release, fc.weight [1008, 2048]): {exc}") from exc
        from ..config import sha256_file

        weights_id, weights_file = sha256_file(path), path
        log.debug("Inception weights %s (sha256 %s)", path, weights_id)
    else:
        with torch.no_grad():
            _random_init(extractor, seed)
        weights_id, weights_file = f"random-init:{seed}", None
    extractor.eval().requires_grad_(False)
    return InceptionFeatures(extractor, weights_id, weights_file).to(device).eval()
