"""Where the refiner works: a crop around the refine mask, scaled, padded, and pasted back.

The refiner never sees the whole photo. It works on a crop around the mask's bounding box (with
context), scaled so its long side is ``resolution`` and padded on the right/bottom (never
cropped) to a *working shape*. Working shapes are quantised (long side = ``resolution``, short
side rounded up to a multiple of ``SHAPE_QUANTUM``) so requests of similar aspect share a shape
and can be denoised in one batch; where the photo allows, the crop grows to the working aspect
with real context instead of padding. The result is pasted back only where the mask is set, so
every pixel outside the mask is bit-identical to the input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

# Short side of the working shape is a multiple of this (a multiple of 8 as the VAE needs, and of
# 64 so the SD UNet's three downsamplings divide evenly); at resolution 512: 8 shapes per orientation.
SHAPE_QUANTUM = 64
# Context around the mask's bounding box, as a fraction of its longer side, and at least this many px.
CONTEXT_FRACTION = 0.15
MIN_CONTEXT_PX = 16
# The crop's long side is at least resolution * this where the photo allows (no 10x upscaling of a small patch).
MIN_CROP_FRACTION = 0.5
# Inside the mask, the refined pixels are blended with the input over this many px from the mask's edge.
PASTE_FEATHER_PX = 3.0
# The VAE downsamples by 8: the working mask covers whole 8x8 cells so the latent mask loses no seam.
LATENT_CELL = 8
# Mask pixels above this value are repainted.
MASK_THRESHOLD = 127


@dataclass(frozen=True)
class CropPlan:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 of the crop in the input image (x1, y1 exclusive)
    scaled: tuple[int, int]  # (w, h) the crop is resized to, inside the working shape
    work: tuple[int, int]  # (w, h) of the working shape: scaled, padded right/bottom

    @property
    def scale(self) -> float:
        return self.scaled[0] / (self.box[2] - self.box[0])


def working_resolution(resolution: int) -> int:
    """The working long side: ``resolution`` rounded down to a multiple of 8."""
    return max(64, resolution // 8 * 8)


def _grow(lo: int, hi: int, length: int, limit: int) -> tuple[int, int]:
    """Grow [lo, hi) symmetrically to ``length`` inside [0, limit), shifting at the edges."""
    length = min(length, limit)
    if hi - lo >= length:
        return lo, hi
    extra = length - (hi - lo)
    lo -= extra // 2
    hi += extra - extra // 2
    if lo < 0:
        hi, lo = hi - lo, 0
    if hi > limit:
        lo, hi = lo - (hi - limit), limit
    return max(lo, 0), hi


def plan_crop(image_hw: tuple[int, int], repaint: np.ndarray, resolution: int) -> CropPlan | None:
    """Plan the crop for a boolean ``repaint`` mask of shape ``image_hw``; None when the mask is empty."""
    height, width = image_hw
    rows, cols = np.flatnonzero(repaint.any(axis=1)), np.flatnonzero(repaint.any(axis=0))
    if rows.size == 0:
        return None
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    margin = max(MIN_CONTEXT_PX, math.ceil(CONTEXT_FRACTION * max(x1 - x0, y1 - y0)))
    x0, x1 = max(0, x0 - margin), min(width, x1 + margin)
    y0, y1 = max(0, y0 - margin), min(height, y1 + margin)
    long_side = working_resolution(resolution)
    min_side = int(long_side * MIN_CROP_FRACTION)
    x0, x1 = _grow(x0, x1, min_side, width)
    y0, y1 = _grow(y0, y1, min_side, height)

    crop_w, crop_h = x1 - x0, y1 - y0
    landscape = crop_w >= crop_h
    crop_long, crop_short = (crop_w, crop_h) if landscape else (crop_h, crop_w)
    work_short = min(long_side, SHAPE_QUANTUM * math.ceil(long_side * crop_short / crop_long / SHAPE_QUANTUM))
    # grow the short side towards the working aspect with real context where the photo has it
    want_short = min(crop_long, round(crop_long * work_short / long_side))
    if landscape:
        y0, y1 = _grow(y0, y1, want_short, height)
    else:
        x0, x1 = _grow(x0, x1, want_short, width)
    crop_w, crop_h = x1 - x0, y1 - y0
    work = (long_side, work_short) if landscape else (work_short, long_side)
    scale = long_side / max(crop_w, crop_h)
    scaled = (
        min(work[0], max(1, round(crop_w * scale))),
        min(work[1], max(1, round(crop_h * scale))),
    )
    return CropPlan(box=(x0, y0, x1, y1), scaled=scaled, work=work)


def _resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (w, h): area averaging when shrinking, bicubic when enlarging."""
    if (array.shape[1], array.shape[0]) == size:
        return array.copy()
    shrinking = size[0] * size[1] < array.shape[0] * array.shape[1]
    return cv2.resize(array, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


def cut(image: np.ndarray, repaint: np.ndarray, plan: CropPlan) -> tuple[np.ndarray, np.ndarray]:
    """The working image (h, w, 3) uint8 and working mask (h, w) float32 in {0, 1}."""
    x0, y0, x1, y1 = plan.box
    work_w, work_h = plan.work
    scaled_w, scaled_h = plan.scaled
    crop = _resize(np.ascontiguousarray(image[y0:y1, x0:x1]), plan.scaled)
    canvas = cv2.copyMakeBorder(crop, 0, work_h - scaled_h, 0, work_w - scaled_w, cv2.BORDER_REPLICATE)
    coverage = _resize(repaint[y0:y1, x0:x1].astype(np.float32), plan.scaled)
    mask = np.zeros((work_h, work_w), dtype=bool)
    mask[:scaled_h, :scaled_w] = coverage > 1e-3  # any covered pixel is repainted
    cells = mask.reshape(work_h // LATENT_CELL, LATENT_CELL, work_w // LATENT_CELL, LATENT_CELL).any(axis=(1, 3))
    cell_mask = np.repeat(np.repeat(cells, LATENT_CELL, axis=0), LATENT_CELL, axis=1)
    return np.ascontiguousarray(canvas), cell_mask.astype(np.float32)


def paste(image: np.ndarray, repaint: np.ndarray, refined: np.ndarray, plan: CropPlan) -> np.ndarray:
    """The input with ``refined`` (the working canvas, uint8) pasted back inside the mask only."""
    x0, y0, x1, y1 = plan.box
    scaled_w, scaled_h = plan.scaled
    back = _resize(refined[:scaled_h, :scaled_w], (x1 - x0, y1 - y0)).astype(np.float32)
    inside = repaint[y0:y1, x0:x1]
    # distance of each mask pixel to the nearest pixel outside the mask (the crop always has a
    # context margin, so the mask touches the crop's edge only at the photo's edge)
    distance = cv2.distanceTransform(inside.astype(np.uint8), cv2.DIST_L2, 3)
    alpha = np.clip(distance / PASTE_FEATHER_PX, 0.0, 1.0)[..., None]
    original = image[y0:y1, x0:x1].astype(np.float32)
    blended = np.clip(np.rint(alpha * back + (1.0 - alpha) * original), 0, 255).astype(np.uint8)
    out = image.copy()
    region = out[y0:y1, x0:x1]
    region[inside] = blended[inside]
    return out
