"""The garment's mask from a flat-lay product photo (plain background) or a cut-out's alpha."""

from __future__ import annotations

import cv2
import numpy as np

from ..config import GarmentSettings
from ..errors import TryOnError


def garment_mask(garment: np.ndarray, settings: GarmentSettings) -> np.ndarray:
    """A bool mask of the one garment in the photo. Raises garment_not_found / garment_background_not_plain."""
    if garment.shape[2] == 4 and garment[..., 3].min() < 250:
        mask = garment[..., 3] > 127
    else:
        mask = _mask_from_plain_background(garment[..., :3], settings)
    mask = _largest_component_filled(mask)
    area = mask.mean()
    if area < settings.min_area_fraction:
        raise TryOnError("garment_not_found", "No garment was found in the garment photo; send a flat-lay photo of one garment on a plain background.")
    if area > settings.max_area_fraction:
        raise TryOnError("garment_not_found", "The garment fills the whole photo, so its outline cannot be found; leave a plain margin around it.")
    return mask


def _mask_from_plain_background(rgb: np.ndarray, settings: GarmentSettings) -> np.ndarray:
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    # OpenCV's 8-bit Lab scales L by 255/100; bring it back so distances are in Lab units.
    lab[..., 0] *= 100.0 / 255.0
    border = np.concatenate([lab[:4].reshape(-1, 3), lab[-4:].reshape(-1, 3), lab[:, :4].reshape(-1, 3), lab[:, -4:].reshape(-1, 3)])
    background = np.median(border, axis=0)
    border_distance = np.linalg.norm(border - background, axis=1)
    # A plain background: most of the border is close to its median colour.
    if np.percentile(border_distance, 75) > settings.max_border_noise:
        raise TryOnError(
            "garment_background_not_plain",
            "The garment photo's background is not plain; photograph the garment on an even background or send a cut-out PNG.",
        )
    distance = np.linalg.norm(lab - background, axis=2)
    mask = distance > settings.background_tolerance
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    return mask > 0


def _largest_component_filled(mask: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return np.zeros_like(mask, dtype=bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    component = (labels == largest).astype(np.uint8)
    # Fill holes (prints, logos close to the background colour) with the outer contour.
    contours, _ = cv2.findContours(component, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(component)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled > 0
