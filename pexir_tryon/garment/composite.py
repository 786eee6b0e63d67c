"""Composite the warped garment onto the person, keeping the face, hair and hands in front."""

from __future__ import annotations

import cv2
import numpy as np

from ..config import GarmentSettings
from ..geometry.types import HAND_LANDMARKS, Landmark, PersonGeometry


def protected_region(geometry: PersonGeometry, person_mask: np.ndarray) -> np.ndarray:
    """Pixels the garment must never cover: the face (box and outline), the head and hair above the chin, the hands."""
    height, width = geometry.image_size
    protect = np.zeros((height, width), dtype=np.uint8)
    if geometry.face_box is not None:
        x0, y0, x1, y1 = geometry.face_box
        pad_x, pad_y = 0.06 * (x1 - x0), 0.06 * (y1 - y0)
        cv2.rectangle(protect, (int(x0 - pad_x), int(y0 - pad_y)), (int(np.ceil(x1 + pad_x)), int(np.ceil(y1 + pad_y))), 1, cv2.FILLED)
        # Head and hair: everything above the chin across a band wider than the face, the person's
        # pixels and the margin around them alike (no garment belongs beside the hair).
        chin = int(np.ceil(y1 + pad_y))
        cx, half = 0.5 * (x0 + x1), 0.9 * (x1 - x0)
        protect[: max(0, chin), max(0, int(cx - half)) : min(width, int(cx + half) + 1)] = 1
    if geometry.face_outline is not None:
        cv2.fillConvexPoly(protect, cv2.convexHull(geometry.face_outline.astype(np.int32)), 1)
    scale = _body_scale(geometry)
    for indices in HAND_LANDMARKS.values():
        visible = [geometry.point(i) for i in indices if geometry.visible(i)]
        if len(visible) < 2:
            continue
        points = np.array(visible, dtype=np.float32)
        reach = float(np.max(np.linalg.norm(points - points[0], axis=1)))
        hull = cv2.convexHull(points.astype(np.int32))
        hand = np.zeros_like(protect)
        cv2.fillConvexPoly(hand, hull, 1)
        radius = int(max(3, 0.6 * reach + 0.04 * scale))
        protect |= dilate_disk(hand.astype(bool), radius) & (person_mask > 127)
    return protect.astype(bool)


def dilate_disk(mask: np.ndarray, radius: int) -> np.ndarray:
    """`mask` (bool) grown by a disk of `radius` px. A distance transform costs the same at any
    radius; a dilation with an elliptical kernel grows with its area (33 s for a 4096 px photo)."""
    if radius <= 0 or not mask.any():
        return mask.copy()
    distance = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)
    return distance <= radius


def _body_scale(geometry: PersonGeometry) -> float:
    if geometry.all_visible(Landmark.LEFT_SHOULDER, Landmark.RIGHT_SHOULDER):
        return float(np.linalg.norm(geometry.point(Landmark.LEFT_SHOULDER) - geometry.point(Landmark.RIGHT_SHOULDER)))
    return 0.2 * max(geometry.image_size)


def composite(
    person: np.ndarray,
    garment_rgb: np.ndarray,
    garment_alpha: np.ndarray,
    geometry: PersonGeometry,
    settings: GarmentSettings,
    working_scale: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(composite RGB uint8, refine mask uint8 0/255, garment mask uint8 0/255), all at the person's size.

    Pixels where the garment is not placed come back bit-identical to the person photo.
    """
    height, width = person.shape[:2]
    person_mask = geometry.person_mask_at(height, width)
    margin = max(1, int(round(settings.person_margin_px / max(working_scale, 1e-6))))
    allowed = dilate_disk(person_mask > 127, margin)
    protect = protected_region(geometry, person_mask)

    alpha = garment_alpha.astype(np.float32) * allowed
    if settings.edge_feather_px > 0:
        sigma = settings.edge_feather_px / max(working_scale, 1e-6)
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigma) * allowed
    alpha[protect] = 0.0

    garment = garment_rgb.astype(np.float32)
    if settings.shading_strength > 0:
        garment *= _shading(person, _body_scale(geometry), settings.shading_strength)[..., None]
    blended = person.astype(np.float32) * (1.0 - alpha[..., None]) + garment * alpha[..., None]
    out = np.where(alpha[..., None] > 0, np.clip(blended + 0.5, 0, 255).astype(np.uint8), person)

    placed = alpha > 0.5
    seam = max(1, int(round(settings.refine_seam_px / max(working_scale, 1e-6))))
    refine = dilate_disk(alpha > 0.02, seam)
    refine &= allowed & ~protect
    return np.ascontiguousarray(out), refine.astype(np.uint8) * 255, placed.astype(np.uint8) * 255


def _shading(person: np.ndarray, body_scale: float, strength: float) -> np.ndarray:
    """The person's local light and folds as a multiplier around 1 (fine detail over broad light)."""
    gray = cv2.cvtColor(person, cv2.COLOR_RGB2GRAY).astype(np.float32) + 8.0
    fine = cv2.GaussianBlur(gray, (0, 0), max(1.5, 0.03 * body_scale))  # folds, not prints or logos
    # The broad light is smooth: blur a quarter-size copy and scale it back (16x less work).
    height, width = gray.shape
    small = cv2.resize(gray, (max(1, width // 4), max(1, height // 4)), interpolation=cv2.INTER_AREA)
    broad = cv2.resize(cv2.GaussianBlur(small, (0, 0), max(0.5, 0.0625 * body_scale)), (width, height), interpolation=cv2.INTER_LINEAR)
    ratio = np.clip(fine / broad, 0.8, 1.2)  # a print on the old clothes must not show through
    return 1.0 + strength * (ratio - 1.0)
