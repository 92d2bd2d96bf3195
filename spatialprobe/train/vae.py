"""Latent path for SiT: the SD-VAE ft-MSE through diffusers ``AutoencoderKL`` (offline-first) and an
id-keyed latent cache written once per (VAE, resolution, image set).

Cache layout (store conventions): ``<root>/<vae-id>/<fingerprint>/shard-NNNNN.safetensors`` holding
``ids`` order in the manifest, ``mean`` and ``std`` of the posterior ``[n, C, h, w]`` (fp32), plus
``manifest.json`` (fingerprint inputs, ids, shard list, per-channel latent statistics). Shards are written to a
temporary name and renamed, so a killed run never leaves a half shard that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import StoreError, WeightsMismatchError, WeightsNotFoundError
from ..io import atomic_path, atomic_write_bytes, sha256

log = logging.getLogger(__name__)

#: diffusers config of stabilityai/sd-vae-ft-mse (scaling_factor defaults to 0.18215)
SD_VAE_CONFIG = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                     up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512],
                     layers_per_block=2, act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=256)
#: a CPU-sized AutoencoderKL with the same f8 down-sampling and 4 latent channels (random init; tests, demos)
TINY_VAE_CONFIG = dict(SD_VAE_CONFIG, block_out_channels=[8, 16, 16, 16], layers_per_block=1, norm_num_groups=8,
                       sample_size=64)
SD_VAE_REPO = "stabilityai/sd-vae-ft-mse"
SHARD = 1024


def _weights_roots(weights_dir: str | None) -> list[Path]:
    roots = [Path(p) for p in (weights_dir, os.environ.get("SPATIALPROBE_WEIGHTS")) if p]
    return roots


#: single-file variants of the same weights (diffusers keys, or the original LDM/CompVis keys)
SD_VAE_FILES = ("sd-vae-ft-mse.safetensors", "vae-ft-mse-840000-ema-pruned.safetensors",
                "diffusion_pytorch_model.safetensors", "sd-vae-ft-mse.ckpt", "vae-ft-mse-840000-ema-pruned.ckpt")


def _dnnlib_cache() -> Path:
    """Where the iREPA code keeps its diffusers copy (``dnnlib`` cache, ``$DNNLIB_CACHE_DIR`` if set)."""
    base = os.environ.get("DNNLIB_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "dnnlib")
    return Path(base) / "diffusers" / f"models--{SD_VAE_REPO.replace('/', '--')}"


def _vae_candidates(weights_dir: str | None = None) -> list[tuple[Path, bool]]:
    """(path, is_folder) of every place searched for the SD-VAE ft-MSE, in order ('*': any snapshot)."""
    out: list[tuple[Path, bool]] = []
    for root in _weights_roots(weights_dir):
        out.append((root / "sd-vae-ft-mse", True))
        out += [(root / "sd-vae-ft-mse" / f, False) for f in SD_VAE_FILES] + [(root / f, False) for f in SD_VAE_FILES]
    caches = []
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        caches.append(Path(HF_HUB_CACHE) / f"models--{SD_VAE_REPO.replace('/', '--')}")
    except Exception:  # noqa: BLE001 - no hub constants: skip that cache
        pass
    caches.append(_dnnlib_cache())
    for cache in caches:
        out += [(cache / "snapshots" / "*", True), (cache, True)]
    return out


def vae_candidates(weights_dir: str | None = None) -> list[str]:
    """Every place searched for the SD-VAE ft-MSE, in order (folders end with '/')."""
    return [str(p) + ("/" if folder else "") for p, folder in _vae_candidates(weights_dir)]


def find_vae(weights_dir: str | None = None) -> Path | None:
    """The first folder (with config.json) or single file holding the SD-VAE ft-MSE, or None."""
    for c, folder in _vae_candidates(weights_dir):
        matches = sorted(c.parent.glob("*")) if c.name == "*" else [c]
        for m in matches:
            if folder and m.is_dir() and (m / "config.json").is_file():
                return m
            if not folder and m.is_file():
                return m
    return None


_LEGACY_ATTN = {"query.": "to_q.", "key.": "to_k.", "value.": "to_v.", "proj_attn.": "to_out.0."}


def check_vae(path: str | os.PathLike) -> str | None:
    """The problem with a VAE folder or file (None if it fits the SD-VAE ft-MSE), reading headers only."""
    from ..errors import SpatialProbeError

    path = Path(path)
    try:
        if path.is_dir():
            from ..encoders.layouts import read_safetensors

            cfg = json.loads((path / "config.json").read_text())
            st = path / "diffusion_pytorch_model.safetensors"
            if not st.is_file():
                return f"{path}: no diffusion_pytorch_model.safetensors next to config.json"
            _vae_from_file(st, meta=True, config={k: v for k, v in cfg.items() if not k.startswith("_")},
                           tensors=read_safetensors(st, meta=True))
        else:
            _vae_from_file(path, meta=True)
    except SpatialProbeError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return f"{path}: {type(exc).__name__}: {exc}"
    return None


def _vae_from_file(path: Path, *, meta: bool = False, config: dict | None = None, tensors: dict | None = None):
    """AutoencoderKL from one weights file: diffusers keys (legacy attention names accepted) or the original
    LDM keys (converted with diffusers' own single-file converter); loaded strictly (``meta``: headers only)."""
    from diffusers import AutoencoderKL

    from ..encoders.layouts import read_file, upcast

    obj = tensors if tensors is not None else read_file(path, meta=meta)[0]
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(sd, dict) or not sd:
        raise WeightsMismatchError(f"VAE file {path} holds no state dict.")
    sd = upcast({k: v for k, v in sd.items() if isinstance(v, torch.Tensor)})
    if any(k.startswith(("encoder.down.", "first_stage_model.")) for k in sd):  # original LDM (CompVis) keys
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        sd = convert_ldm_vae_checkpoint(sd, dict(SD_VAE_CONFIG))
    elif any(".attentions.0.query." in k for k in sd):
        sd = {_rename_attn(k): v for k, v in sd.items()}
    with torch.device("meta" if meta else "cpu"):
        vae = AutoencoderKL(**(config or SD_VAE_CONFIG))
    try:
        res = vae.load_state_dict(sd, strict=False)
    except RuntimeError as exc:
        raise WeightsMismatchError(f"VAE file {path} does not fit the SD-VAE ft-MSE: {exc}") from None
    from ..encoders.weights import assert_complete

    assert_complete("sd-vae-ft-mse", path, list(res.missing_keys), list(res.unexpected_keys))
    return vae


def _rename_attn(k: str) -> str:
    for a, b in _LEGACY_ATTN.items():
        if f".attentions.0.{a}" in k:
            return k.replace(f".attentions.0.{a}", f".attentions.0.{b}")
    return k


def load_vae(name: str = "sd-vae-ft-mse", *, weights_dir: str | None = None, device: str | torch.device = "cpu"):
    """Return ``(vae, vae_id)``: a frozen ``diffusers.AutoencoderKL`` in eval mode (fp32) and a checksum-like id.

    ``name``: ``sd-vae-ft-mse`` (looked up in ``weights_dir`` and ``$SPATIALPROBE_WEIGHTS`` as a diffusers
    folder ``sd-vae-ft-mse/`` or a single file, see :data:`SD_VAE_FILES`; then the Hugging Face cache and the
    iREPA code's ``~/.cache/dnnlib/diffusers`` copy; never downloaded), ``tiny-random[:seed]`` (random init of
    :data:`TINY_VAE_CONFIG`), a folder written by ``save_pretrained``, or a single weights file.
    """
    from diffusers import AutoencoderKL

    if name.startswith("tiny-random"):
        seed = int(name.split(":", 1)[1]) if ":" in name else 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = AutoencoderKL(**TINY_VAE_CONFIG)
        vid = f"tiny-random-init:{seed}"
    else:
        found: Path | None = None
        if Path(name).exists():
            found = Path(name)
        elif name == "sd-vae-ft-mse":
            found = find_vae(weights_dir)
        if found is None:
            where = "\n  ".join(str(c) for c in vae_candidates(weights_dir) if name == "sd-vae-ft-mse")
            raise WeightsNotFoundError(
                f"VAE {name!r} not found offline; looked for a diffusers folder (config.json + "
                f"diffusion_pytorch_model.safetensors) or a single file ({', '.join(SD_VAE_FILES)}) in:\n  "
                f"{where or '(nothing: ' + repr(name) + ' is neither sd-vae-ft-mse nor an existing path)'}\n"
                f"Fetch it on a machine with network, e.g. `huggingface-cli download {SD_VAE_REPO} --local-dir "
                "WEIGHTS/sd-vae-ft-mse`, then pass --weights-dir WEIGHTS; or use --vae tiny-random for a smoke test.")
        if found.is_dir():
            if not (found / "config.json").is_file():
                raise WeightsMismatchError(f"VAE folder {found} has no config.json; it must be the whole diffusers "
                                           f"folder of {SD_VAE_REPO}.")
            try:
                vae = AutoencoderKL.from_pretrained(str(found), local_files_only=True, torch_dtype=torch.float32)
            except Exception as exc:  # noqa: BLE001 - any load error is about this folder
                raise WeightsMismatchError(f"cannot load VAE folder {found}: {type(exc).__name__}: {exc}") from None
            st = found / "diffusion_pytorch_model.safetensors"
            label = name if name == "sd-vae-ft-mse" else found.name
            vid = f"{label}:{sha256(st)[:16]}" if st.is_file() else str(found)
        else:
            vae = _vae_from_file(found)
            vid = f"{name if name == 'sd-vae-ft-mse' else found.name}:{sha256(found)[:16]}"
        log.info("VAE %s from %s", name, found)
    vae.float().eval().requires_grad_(False)
    return vae.to(device), vid


def images_to_vae_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B,3,H,W]`` -> float in [−1, 1]."""
    return images.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[−1, 1] images -> uint8 (ADM: ``((x + 1)·127.5).clamp(0, 255)``, truncated)."""
    return ((x.float() + 1) * 127.5).clamp(0, 255).to(torch.uint8)


@dataclass
class LatentCache:
    """Cached posterior moments of a set of images, read shard by shard."""

    path: Path
    ids: list[str]
    shards: list[str]
    latent_mean: torch.Tensor  #: per-channel mean of z over the set (z ~ posterior)
    latent_std: torch.Tensor   #: per-channel std of z
    scaling_factor: float

    def __post_init__(self):
        self._cache: dict[int, dict[str, torch.Tensor]] = {}

    def moments(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) ``[C, h, w]`` of item ``i`` (position in ``ids``)."""
        s, j = divmod(i, SHARD)
        if s not in self._cache:
            from safetensors.torch import load_file

            if len(self._cache) > 8:
                self._cache.clear()
            self._cache[s] = load_file(str(self.path / self.shards[s]))
        d = self._cache[s]
        return d["mean"][j], d["std"][j]

    def normalizer(self, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, bias) per channel: model input = (z − bias)·scale; decode with z/scale + bias."""
        c = self.latent_mean.numel()
        if mode == "scalar":
            return torch.full((c,), float(self.scaling_factor)), torch.zeros(c)
        return 1.0 / self.latent_std.clamp_min(1e-8), self.latent_mean.clone()


def latent_cache_dir(ids: list[str], vae_id: str, resolution: int, root: str | Path) -> Path:
    """The folder of the latent cache of these image ids (one folder per VAE, resolution and id list)."""
    h = hashlib.sha256(json.dumps({"vae": vae_id, "res": resolution, "ids": ids}).encode()).hexdigest()[:16]
    return Path(root) / vae_id.replace(":", "-").replace("/", "-") / h


def cache_latents(source, indices: list[int], vae, vae_id: str, resolution: int, root: str | Path, *,
                  batch_size: int = 32, device: str | torch.device = "cpu") -> LatentCache:
    """Encode ``source`` images (positions ``indices``) at ``resolution`` once; reuse a complete cache.

    A cache whose fingerprint (VAE id, resolution, ids) differs is never reused: it lives in another folder.
    """
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    ids = [source.ids[i] for i in indices]
    folder = latent_cache_dir(ids, vae_id, resolution, root)
    man_path = folder / "manifest.json"
    if man_path.is_file():
        man = json.loads(man_path.read_text())
        if man.get("ids") != ids:
            raise StoreError(f"Latent cache {folder} has different image ids; delete it or use another --latents-dir.")
        return _open_cache(folder, man)
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    s1 = s2 = None
    n_tot = 0
    bar = tqdm(total=len(ids), desc="encode latents", unit="img", leave=False)
    for s0 in range(0, len(indices), SHARD):
        name = f"shard-{s0 // SHARD:05d}.safetensors"
        part = indices[s0:s0 + SHARD]
        means, stds = [], []
        for b0 in range(0, len(part), batch_size):
            imgs = torch.stack([_load_at(source, i, resolution) for i in part[b0:b0 + batch_size]]).to(device)
            with torch.no_grad():
                dist = vae.encode(images_to_vae_input(imgs)).latent_dist
            means.append(dist.mean.float().cpu())
            stds.append(dist.std.float().cpu())
            bar.update(len(imgs))
        mean, std = torch.cat(means), torch.cat(stds)
        done = folder / name
        if not done.is_file():
            with atomic_path(done) as tmp:
                save_file({"mean": mean.contiguous(), "std": std.contiguous()}, str(tmp))
        shards.append(name)
        # E[z] and E[z²] with z = mean + std·ε, per channel
        e1 = mean.sum(dim=(0, 2, 3)).double()
        e2 = (mean.double() ** 2 + std.double() ** 2).sum(dim=(0, 2, 3))
        s1 = e1 if s1 is None else s1 + e1
        s2 = e2 if s2 is None else s2 + e2
        n_tot += mean.shape[0] * mean.shape[2] * mean.shape[3]
    bar.close()
    mu = s1 / n_tot
    var = s2 / n_tot - mu ** 2
    man = {"vae": vae_id, "resolution": resolution, "ids": ids, "shards": shards, "shard_size": SHARD,
           "latent_mean": mu.tolist(), "latent_std": var.clamp_min(0).sqrt().tolist(),
           "scaling_factor": float(getattr(vae.config, "scaling_factor", 0.18215))}
    atomic_write_bytes(man_path, json.dumps(man).encode())
    log.info("cached %d latents in %s", len(ids), folder)
    return _open_cache(folder, man)


def _open_cache(folder: Path, man: dict) -> LatentCache:
    return LatentCache(folder, man["ids"], man["shards"], torch.tensor(man["latent_mean"], dtype=torch.float32),
                       torch.tensor(man["latent_std"], dtype=torch.float32), man["scaling_factor"])


def _load_at(source, i: int, resolution: int) -> torch.Tensor:
    img = source.load(i)
    return resize_uint8(img, resolution)


def resize_uint8(img: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize uint8 ``[3,H,W]`` or ``[B,3,H,W]`` to a square side with antialiasing; no-op when equal."""
    if img.shape[-1] == resolution and img.shape[-2] == resolution:
        return img
    x = img.float().unsqueeze(0) if img.dim() == 3 else img.float()
    x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8)
    return x[0] if img.dim() == 3 else x


@torch.no_grad()
def decode(vae, z: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Model-space latents -> images in [−1, 1]: ``vae.decode(z/scale + bias)``."""
    s = scale.to(z).view(1, -1, 1, 1)
    b = bias.to(z).view(1, -1, 1, 1)
    return vae.decode(z / s + b).sample
