"""The official iREPA data collection (``spatial-metrics-data`` of the iREPA collections), read by id.

Layout (irepa-spec §2, the folder the official plotting script reads)::

    DIR/data/images/<i>.png                      image i (i = 0 .. N-1)
    DIR/data/masks/<i>.png                       FG/BG mask of image i
    DIR/data/features/<enc>.pt                   tensor [N, 256, D]; row i = image i
    DIR/data/stats/fid/<name>.csv                columns Steps, FID
    DIR/data/stats/lp/<enc>-none-mean/metrics.json   {"best_val_acc": ...}

``DIR`` may also be the ``data`` folder itself. Feature rows join masks **by image id**: row ``i`` of
every feature tensor is image ``i`` and is paired with ``masks/<i>.png``; the feature, mask and image
counts must agree. The folders and the id-keyed image and mask files are
:class:`spatialprobe.data.official.CollectionLayout` (all ``--images official:DIR`` needs); this module
adds the features, the patch masks and the statistics. FID files follow the official ``eval_names``: for
SiT-XL/2 the hard-coded names (where ``spatialpe-vit-l`` reads the LangPE-L file, irepa-spec §9.5), for
SiT-B/2 and SiT-L/2 the automatic
``<model>-sdvae-<enc>-enc8-coeff0.5-loss-cosine-projlayer-mlp-100000-v1_cfg1.0-seed0-modesde-steps250.csv``.
"""

from __future__ import annotations

import json
from importlib import resources

import pandas as pd
import torch

from ..data.official import CollectionLayout
from ..errors import ColumnError, ConfigError, DataError, InputFileError, UnknownNameError, did_you_mean
from ..metrics.masks import patch_mask, read_mask
from ..schema import PROPERTIES  # noqa: F401 - re-exported by spatialprobe.official

MODELS = ("sit-xl-2", "sit-l-2", "sit-b-2")
AUTO_FID_NAME = "{model}-sdvae-{enc}-enc8-coeff0.5-loss-cosine-projlayer-mlp-100000-v1_cfg1.0-seed0-modesde-steps250.csv"
#: the FID file the official script should have read for SpatialPE-L under SiT-XL/2 (its neighbours' pattern)
CORRECTED_XL = {"spatialpe-vit-l": "sit-xl-2-sdvae-enc8-spatialpe-l_cfg1.0-seed0-modesde-steps250.csv"}


def official_fid_files() -> dict[str, str]:
    """Encoder -> FID CSV name hard-coded in the official script for SiT-XL/2 (mix-up included)."""
    with resources.files("spatialprobe.reference").joinpath("official_collection_fid_files.csv").open(
            "r", encoding="utf-8") as fh:
        df = pd.read_csv(fh)
    return dict(zip(df["encoder"], df["fid_csv"]))


def fid_file_name(encoder: str, model: str = "sit-xl-2", *, corrected: bool = False) -> str:
    """The FID CSV the official ``eval_names`` give ``encoder`` under ``model``."""
    if model not in MODELS:
        raise ConfigError(f"model={model!r}: use one of {', '.join(MODELS)}.")
    if model == "sit-xl-2":
        if corrected and encoder in CORRECTED_XL:
            return CORRECTED_XL[encoder]
        names = official_fid_files()
        if encoder not in names:
            raise UnknownNameError(f"The official script has no SiT-XL/2 FID file for encoder {encoder!r}; it "
                                   f"knows {len(names)} encoders.{did_you_mean(encoder, list(names))}")
        return names[encoder]
    return AUTO_FID_NAME.format(model=model, enc=encoder)


class Collection(CollectionLayout):
    """One official collection folder. Properties are read lazily and checked on first use."""

    def __repr__(self) -> str:
        return f"Collection({str(self.root)!r})"

    # -- encoders and features
    @property
    def encoders(self) -> list[str]:
        d = self.data / "features"
        if not d.is_dir():
            raise InputFileError(f"Official collection {str(self.root)!r} has no data/features folder of <enc>.pt files.")
        names = sorted(f.stem for f in d.glob("*.pt") if f.is_file())
        if not names:
            raise InputFileError(f"{str(d)!r} holds no <encoder>.pt feature files.")
        return names

    def select(self, encoders: list[str] | None) -> list[str]:
        """The requested encoders (all when None); an absent one is an error naming the available ones."""
        have = self.encoders
        if not encoders:
            return have
        for e in encoders:
            if e not in have:
                raise UnknownNameError(f"Encoder {e!r} is not in the official collection {str(self.root)!r} "
                                       f"(data/features/{e}.pt is missing); it has: {', '.join(have)}."
                                       f"{did_you_mean(e, have)}")
        return list(encoders)

    def features(self, encoder: str) -> torch.Tensor:
        """``data/features/<encoder>.pt`` as a float tensor ``[N, T, D]`` (``torch.load(weights_only=True)``)."""
        path = self.data / "features" / f"{encoder}.pt"
        if not path.is_file():
            self.select([encoder])
        if path.stat().st_size == 0:
            raise DataError(f"Features {str(path)!r} are an empty (0-byte) file, e.g. an interrupted download; "
                            f"download data/features/{encoder}.pt again (or remove it to skip {encoder}).")
        try:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any load error is the file's problem
            first = (str(exc).strip().splitlines() or [""])[0][:200]  # some load errors have no message
            raise DataError(f"Features {str(path)!r} could not be loaded safely with torch.load(weights_only=True) "
                            f"({type(exc).__name__}{': ' + first if first else ''}); the official layout holds one "
                            "tensor [N, 256, D] per encoder: download the file again.") from None
        if not isinstance(obj, torch.Tensor):
            raise DataError(f"Features {str(path)!r} hold a {type(obj).__name__}, not a tensor; the official layout "
                            "holds one tensor [N, 256, D] per encoder (row i = image i).")
        if obj.ndim != 3 or not obj.is_floating_point():
            raise DataError(f"Features {str(path)!r}: expected a float tensor [N, T, D]; got {obj.dtype} of shape "
                            f"{tuple(obj.shape)}.")
        return obj

    # -- masks
    def check_counts(self, encoder: str, n_rows: int) -> None:
        """Feature rows, masks and (when present) images must be the same images 0 .. N-1."""
        ids = list(self.mask_files)
        problems = []
        if len(ids) != n_rows:
            problems.append(f"{n_rows} feature rows in data/features/{encoder}.pt but {len(ids)} masks in data/masks")
        elif ids != [str(i) for i in range(n_rows)]:
            missing = sorted(set(map(str, range(n_rows))) - set(ids), key=int)[:5]
            problems.append(f"masks are not named 0 .. {n_rows - 1} (missing e.g. {', '.join(missing)})")
        if (self.data / "images").is_dir():
            n_img = len(self.image_files)
            if n_img != n_rows:
                problems.append(f"{n_img} images in data/images for {n_rows} feature rows")
        if problems:
            raise DataError(f"Official collection {str(self.root)!r}: " + "; ".join(problems) + ". Row i of every "
                            "feature tensor must be image i with mask i.png (features join masks by id); "
                            "re-download the collection or remove the stray files.")

    def patch_masks(self, grid: tuple[int, int], *, rule: str = "any", lexicographic: bool = False):
        """``(ids, masks [M, T])``: every mask as a patch mask, in numeric id order (or, with
        ``lexicographic``, in the official script's ``sorted(glob)`` order)."""
        key = (tuple(grid), rule)
        cache = self.__dict__.setdefault("_mask_cache", {})
        if key not in cache:
            ids = list(self.mask_files)
            cache[key] = (ids, torch.stack([patch_mask(self.square_mask(i), grid, rule=rule) for i in ids]))
        ids, m = cache[key]
        if lexicographic:
            order = sorted(range(len(ids)), key=lambda k: self.mask_files[ids[k]].name)
            return [ids[k] for k in order], m[order]
        return list(ids), m

    def square_mask(self, image_id: str) -> torch.Tensor:
        """Mask ``<image_id>.png`` as a bool tensor; the collection's masks are of its square images, so a
        non-square one is a :class:`DataError` (it would be cropped or stretched onto another image's
        pixels, as the non-official path refuses a mask whose shape does not match its image)."""
        path = self.mask_files[image_id]
        m = read_mask(path)
        h, w = int(m.shape[0]), int(m.shape[1])
        if h != w:
            size = ""
            img = self.image_files.get(image_id) if (self.data / "images").is_dir() else None
            if img is not None:
                from PIL import Image

                with Image.open(img) as im:
                    size = f" (its image {img.name} is {im.size[0]}x{im.size[1]})"
            raise DataError(f"Official mask {str(path)!r} is {w}x{h} pixels, not square{size}: the collection's "
                            "masks are the masks of its square images (256x256), row i of the features = image i "
                            "= mask i. Replace it with the square mask of that image (e.g. re-download data/masks).")
        return m

    # -- stats
    def lp_acc_path(self, encoder: str):
        return self.data / "stats" / "lp" / f"{encoder}-none-mean" / "metrics.json"

    def lp_acc(self, encoder: str) -> float:
        path = self.lp_acc_path(encoder)
        if not path.is_file():
            raise InputFileError(f"LP accuracy of {encoder!r} is missing: {str(path)!r} does not exist.")
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
            return float(rec["best_val_acc"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{str(path)!r} has no numeric 'best_val_acc' ({exc}).") from None

    def gfid(self, encoder: str, steps: int = 100_000, model: str = "sit-xl-2", *, corrected: bool = False) -> float:
        name = fid_file_name(encoder, model, corrected=corrected)
        path = self.data / "stats" / "fid" / name
        if not path.is_file():
            raise InputFileError(f"gFID of {encoder!r} ({model}) is missing: {str(path)!r} does not exist.")
        try:
            df = pd.read_csv(path)
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{str(path)!r} could not be read as CSV ({exc}).") from None
        if not {"Steps", "FID"} <= set(df.columns):
            raise ColumnError(f"{str(path)!r} needs columns Steps and FID; it has {', '.join(map(str, df.columns))}.")
        row = df[pd.to_numeric(df["Steps"], errors="coerce") == int(steps)]
        if row.empty:
            raise DataError(f"{str(path)!r} has no row at Steps == {steps} (it has {', '.join(map(str, df['Steps']))}); "
                            "pick one with --steps.")
        value = row["FID"].iloc[0]
        try:
            return float(value)
        except (TypeError, ValueError):
            raise DataError(f"{str(path)!r}: FID at Steps == {steps} is {value!r}, not a number; fix or re-download "
                            "the file.") from None
