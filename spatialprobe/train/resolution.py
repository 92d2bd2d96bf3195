"""Image sides of a training run: the model's and the teacher's, from one decoded image.

The model always sees the image at ``--resolution``. The teacher gets its own copy of the same decoded,
cropped (and flipped) image at ``teacher_resolution`` (default max(256, resolution)), and each zoo encoder
turns that copy into its input by its own rule: an encoder's ``input_res`` is defined for a 256-px image
(224 for the /14 ViTs, 256 for /16, 512 for SAM2's stride-32 Hiera, always a 16×16 grid), and above 256 px
it scales with the image, ``input_res · side / 256``. So at 512 px DINOv2 gets the official 448-px input and
gives native 32×32 tokens (iREPA ``ldm/vision_encoder.py``), a /16 ViT 512 px and 32×32 tokens. At 256 px and
below nothing changes: the canonical 16×16 grid, area-averaged onto a smaller student grid.

Teacher tokens are resampled only when the teacher's grid differs from the student's, and then it is logged
and recorded in ``config.json`` (``teachers[i].resampled``).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

#: the image side an encoder's ``input_res`` is defined for
BASE_SIDE = 256


def teacher_input_side(input_res: int, patch: int, side: int | None) -> int:
    """The encoder input side for a ``side``-px image: ``input_res`` up to 256 px, ``input_res·side/256``
    above (rounded to a whole number of patches)."""
    if side is None or side <= BASE_SIDE:
        return int(input_res)
    return max(patch, round(input_res * side / BASE_SIDE / patch) * patch)


def teacher_overrides(name: str, side: int | None) -> dict[str, Any]:
    """``encoders.get`` overrides that build zoo encoder ``name`` at its own input side for a ``side``-px
    image (empty at 256 px and below, and for names the zoo does not know)."""
    if side is None or side <= BASE_SIDE:
        return {}
    from .. import encoders
    from ..errors import UnknownNameError

    try:
        spec = encoders.spec(name)
    except (UnknownNameError, KeyError):
        return {}
    r = teacher_input_side(spec.input_res, spec.patch, side)
    if r == spec.input_res:
        return {}
    out: dict[str, Any] = {"input_res": r}
    if "img_size" in (spec.kwargs or {}):  # timm models built for a fixed size (position embedding resampled at load)
        out["img_size"] = r
    return out


def teacher_record(teacher, side: int, student_grid: tuple[int, int]) -> dict[str, Any]:
    """What ``config.json`` records of one teacher: name, weights, image side, input side, native grid and
    whether its tokens are resampled to the student grid (logged when they are)."""
    grid = tuple(int(g) for g in getattr(teacher, "grid", student_grid))
    spec = getattr(teacher, "spec", None)
    rec = {"name": getattr(teacher, "name", type(teacher).__name__),
           "weights_id": getattr(teacher, "weights_id", None),
           "image_side": int(side),
           "input_res": int(spec.input_res) if spec is not None else None,
           "grid": list(grid),
           "resampled": None}
    if grid != tuple(student_grid):
        how = ("area" if grid[0] % student_grid[0] == 0 and grid[1] % student_grid[1] == 0 else "bilinear")
        rec["resampled"] = f"{grid[0]}x{grid[1]} -> {student_grid[0]}x{student_grid[1]} ({how})"
        log.info("teacher %s gives %dx%d tokens for the %dx%d student grid: resampled (%s)", rec["name"], *grid,
                 *student_grid, how)
    return rec
