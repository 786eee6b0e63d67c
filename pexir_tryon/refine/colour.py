"""Colour lock: keep the garment's colour through diffusion.

Diffusion refiners are known to fade or shift garment colours (field notes, item 5): a red shirt
comes back orange, a navy one grey. After denoising, the refined canvas is moved back towards the
composite inside the mask, in CIELAB: the refined image's broad colour and light are replaced by
the composite's (which already carries the photo's light), and only its fine detail is kept —
folds, seams, texture. "Broad" is a Gaussian over a few percent of the canvas taken over the
masked pixels only, so stripes and checks wider than that keep their own colours and nothing
bleeds in from outside the mask.
"""

from __future__ import annotations

import cv2
import numpy as np

# Width of "broad" colour, as a fraction of the canvas's long side (16 px at 512).
SMOOTHING_FRACTION = 1 / 32
MIN_PIXELS = 16  # fewer masked pixels than this carry no usable statistics
# Colours pushed outside the sRGB gamut are clipped on the way back to RGB, which pulls them off
# target; a second pass from the clipped result, towards the same target, lands within a few levels.
PASSES = 2


def lock_colours(refined: np.ndarray, reference: np.ndarray, mask: np.ndarray, strength: float) -> np.ndarray:
    """``refined`` (HxWx3 uint8 RGB) with its colours inside ``mask`` (HxW bool) moved ``strength``
    (0..1) of the way back to ``reference``'s. Pixels outside the mask are returned unchanged."""
    if strength <= 0 or int(mask.sum()) < MIN_PIXELS:
        return refined
    sigma = max(1.0, SMOOTHING_FRACTION * max(mask.shape))
    weight = mask.astype(np.float32)
    coverage = np.maximum(cv2.GaussianBlur(weight, (0, 0), sigma), 1e-6)[..., None]
    broad_reference = _masked_blur(cv2.cvtColor(reference, cv2.COLOR_RGB2LAB).astype(np.float32), weight, coverage, sigma)
    target = None  # the broad colour to reach: `strength` of the way from the refined one
    for _ in range(PASSES):
        lab = cv2.cvtColor(refined, cv2.COLOR_RGB2LAB).astype(np.float32)
        broad = _masked_blur(lab, weight, coverage, sigma)
        if target is None:
            target = broad + strength * (broad_reference - broad)
        moved = lab + (target - broad)
        rgb = cv2.cvtColor(np.clip(np.rint(moved), 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)
        refined = np.where(mask[..., None], rgb, refined)
    return refined


def _masked_blur(lab: np.ndarray, weight: np.ndarray, coverage: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur of ``lab`` (HxWx3) that averages only the pixels where ``weight`` is 1."""
    return cv2.GaussianBlur(lab * weight[..., None], (0, 0), sigma) / coverage
