"""Category-aware anchor points on a flat-lay garment mask, and the category read from its shape.

Points are named by the image side they lie on ("_l" = image left) so garment and body points
pair up by name. All coordinates are (x, y) in the garment photo's pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import TryOnError


@dataclass
class ShapeFeatures:
    aspect: float  # bbox height / width
    sleeve_ratio: float  # widest row in the top half / width near the hem
    flare: float  # width near the bottom / width at 30 % height
    legs: float  # fraction of bottom rows split in two around the centre


@dataclass
class GarmentAnchors:
    category: str
    points: dict[str, np.ndarray] = field(default_factory=dict)
    has_sleeves: bool = False
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)  # x0, y0, x1, y1
    torso_span: tuple[float, float] | None = None  # x range of the torso; sleeves lie outside it


def part_masks(mask: np.ndarray, anchors: GarmentAnchors) -> dict[str, np.ndarray]:
    """The garment split into its parts: "body", and "sleeve_l"/"sleeve_r" when it has sleeves."""
    if not anchors.has_sleeves or anchors.torso_span is None:
        return {"body": mask}
    left, right = anchors.torso_span
    columns = np.arange(mask.shape[1])
    body = mask & ((columns >= left) & (columns <= right))[None, :]
    return {"body": body, "sleeve_l": mask & (columns < left)[None, :], "sleeve_r": mask & (columns > right)[None, :]}


def _row_runs(row: np.ndarray) -> list[tuple[int, int]]:
    padded = np.concatenate([[0], row.astype(np.int8), [0]])
    changes = np.flatnonzero(np.diff(padded))
    return list(zip(changes[::2], changes[1::2] - 1))


def central_run(row: np.ndarray, cx: float) -> tuple[int, int] | None:
    """The run of garment pixels containing (or nearest to) column cx: the torso, not the sleeves."""
    runs = _row_runs(row)
    if not runs:
        return None
    return min(runs, key=lambda r: 0 if r[0] <= cx <= r[1] else min(abs(r[0] - cx), abs(r[1] - cx)))


def _run_width(row: np.ndarray, cx: float) -> int:
    run = central_run(row, cx)
    return 0 if run is None else run[1] - run[0] + 1


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def shape_features(mask: np.ndarray) -> ShapeFeatures:
    x0, y0, x1, y1 = _bbox(mask)
    width, height = x1 - x0 + 1, y1 - y0 + 1
    crop = mask[y0 : y1 + 1, x0 : x1 + 1]
    centre = width // 2
    extent = np.array([(r.nonzero()[0].max() - r.nonzero()[0].min() + 1) if r.any() else 0 for r in crop], dtype=np.float64)
    torso = np.array([_run_width(r, centre) for r in crop], dtype=np.float64)
    hem_width = np.median(torso[int(0.85 * height) : int(0.95 * height) + 1]) or 1.0
    top_width = extent[: height // 2].max()
    mid_width = np.median(torso[int(0.25 * height) : int(0.35 * height) + 1]) or 1.0
    bottom = crop[int(0.7 * height) :]
    split = [
        len(runs) >= 2 and not row[max(0, centre - 2) : centre + 3].any()
        for row in bottom
        for runs in [_row_runs(row)]
    ]
    return ShapeFeatures(
        aspect=height / width,
        sleeve_ratio=float(top_width / hem_width),
        flare=float(hem_width / mid_width),
        legs=float(np.mean(split)) if split else 0.0,
    )


def classify_category(features: ShapeFeatures) -> str:
    """'upper', 'lower' or 'dress' from the mask's shape."""
    if features.legs > 0.5:
        return "lower"
    if features.aspect >= 1.45 and features.flare >= 1.15:
        return "dress"
    if features.sleeve_ratio >= 1.2:
        return "upper"
    if features.flare >= 1.3 and features.aspect < 1.2:
        return "lower"  # a skirt
    if features.aspect >= 1.6:
        return "dress"
    return "upper"


def check_category(requested: str, features: ShapeFeatures) -> str:
    """The category to use: the shape's for 'auto'; the requested one unless the shape clearly contradicts it."""
    detected = classify_category(features)
    if requested == "auto":
        return detected
    contradiction = (
        (requested in ("upper", "dress") and features.legs > 0.5)
        or (requested == "lower" and features.sleeve_ratio >= 1.35 and features.legs < 0.1)
    )
    if contradiction:
        raise TryOnError(
            "category_mismatch",
            f"The garment looks like {_described(detected)}, "
            f"not '{requested}'; fix the category or use 'auto'.",
        )
    return requested


def _described(category: str) -> str:
    return {"upper": "an upper garment", "lower": "a lower garment", "dress": "a dress"}[category]


def garment_anchors(mask: np.ndarray, category: str) -> GarmentAnchors:
    x0, y0, x1, y1 = _bbox(mask)
    height = y1 - y0 + 1
    if category == "lower":
        return _lower_anchors(mask, (x0, y0, x1, y1))
    anchors = _upper_anchors(mask, (x0, y0, x1, y1), category)
    if category == "dress":
        # Waist: the narrowest row between 25 % and 60 % of the height.
        rows = range(y0 + int(0.25 * height), y0 + int(0.6 * height))
        widths = [(np.count_nonzero(mask[y]), y) for y in rows if mask[y].any()]
        if widths:
            _, waist_y = min(widths)
            xs = np.flatnonzero(mask[waist_y])
            anchors.points["waist_l"] = np.array([xs.min(), waist_y], dtype=np.float64)
            anchors.points["waist_r"] = np.array([xs.max(), waist_y], dtype=np.float64)
    return anchors


def _row_extent(mask: np.ndarray, y: int) -> tuple[int, int]:
    xs = np.flatnonzero(mask[y])
    return int(xs.min()), int(xs.max())


def _upper_anchors(mask: np.ndarray, bbox, category: str) -> GarmentAnchors:
    x0, y0, x1, y1 = bbox
    width, height = x1 - x0 + 1, y1 - y0 + 1
    hem_y = y1 - max(1, int(0.02 * height))
    hem_l, hem_r = central_run(mask[hem_y], 0.5 * (x0 + x1))
    cx = 0.5 * (hem_l + hem_r)
    half_torso = 0.5 * (hem_r - hem_l)
    if category == "dress":
        # The hem of a dress flares; its shoulders sit where its top is.
        top_rows = [y for y in range(y0, y0 + int(0.15 * height)) if mask[y].any()]
        tl, tr = _row_extent(mask, top_rows[-1])
        half_torso = 0.5 * (tr - tl)
        cx = 0.5 * (tl + tr)
    else:
        # A flared hem (a dress or a peplum top sent as "upper") is wider than the chest: take the
        # narrower of hem and chest, or the shoulders land on the skirt and the top above the head.
        chest = central_run(mask[y0 + int(0.3 * height)], cx)
        if chest is not None:
            half_torso = min(half_torso, 0.5 * (chest[1] - chest[0]))
    points: dict[str, np.ndarray] = {}

    def top_of_column(x: float) -> float:
        column = np.flatnonzero(mask[:, int(round(np.clip(x, 0, mask.shape[1] - 1)))])
        return float(column.min()) if len(column) else float(y0)

    points["neck"] = np.array([cx, top_of_column(cx)])
    for side, sign in (("l", -1), ("r", 1)):
        sx = cx + sign * 0.9 * half_torso
        points[f"shoulder_{side}"] = np.array([sx, top_of_column(sx)])
    points["hem_l"] = np.array([hem_l, hem_y], dtype=np.float64)
    points["hem_r"] = np.array([hem_r, hem_y], dtype=np.float64)
    points["hem_c"] = np.array([cx, hem_y], dtype=np.float64)

    widest = max(_row_extent(mask, y)[1] - _row_extent(mask, y)[0] + 1 for y in range(y0, y0 + height // 2) if mask[y].any())
    has_sleeves = widest >= 1.2 * (2 * half_torso)
    if has_sleeves:
        ys, xs = np.nonzero(mask[: y0 + int(0.95 * height)])
        slice_width = max(2, int(0.04 * width))
        for side in ("l", "r"):
            if side == "l":
                keep = xs <= xs.min() + slice_width
            else:
                keep = xs >= xs.max() - slice_width
            points[f"sleeve_{side}"] = np.array([xs[keep].mean(), ys[keep].mean()])
        # Armpits: where each sleeve's underside meets the torso side.
        for side, sign in (("l", -1), ("r", 1)):
            ax = cx + sign * 1.05 * half_torso
            column = np.flatnonzero(mask[y0 : y0 + int(0.7 * height), int(np.clip(ax, 0, mask.shape[1] - 1))])
            if len(column):
                runs = _row_runs(mask[y0 : y0 + int(0.7 * height), int(np.clip(ax, 0, mask.shape[1] - 1))])
                points[f"armpit_{side}"] = np.array([ax, y0 + runs[0][1]], dtype=np.float64)
    span = (cx - 1.02 * half_torso, cx + 1.02 * half_torso) if has_sleeves else None
    return GarmentAnchors(category=category, points=points, has_sleeves=has_sleeves, bbox=bbox, torso_span=span)


def _lower_anchors(mask: np.ndarray, bbox) -> GarmentAnchors:
    x0, y0, x1, y1 = bbox
    height = y1 - y0 + 1
    waist_y = y0 + max(1, int(0.02 * height))
    wl, wr = _row_extent(mask, waist_y)
    points = {
        "waist_l": np.array([wl, waist_y], dtype=np.float64),
        "waist_r": np.array([wr, waist_y], dtype=np.float64),
        "waist_c": np.array([0.5 * (wl + wr), waist_y], dtype=np.float64),
    }
    hem_y = y1 - max(1, int(0.02 * height))
    runs = [r for r in _row_runs(mask[hem_y]) if r[1] - r[0] >= 3]
    if len(runs) >= 2:  # trousers: one hem per leg, and the crotch between them
        left, right = runs[0], runs[-1]
        points["hem_l"] = np.array([0.5 * (left[0] + left[1]), hem_y], dtype=np.float64)
        points["hem_r"] = np.array([0.5 * (right[0] + right[1]), hem_y], dtype=np.float64)
        gap_x = 0.5 * (left[1] + right[0])
        column = np.flatnonzero(~mask[y0 : y1 + 1, int(gap_x)])
        if len(column):
            points["crotch"] = np.array([gap_x, y0 + column.min()], dtype=np.float64)
    else:  # a skirt
        hl, hr = _row_extent(mask, hem_y)
        points["hem_l"] = np.array([hl, hem_y], dtype=np.float64)
        points["hem_r"] = np.array([hr, hem_y], dtype=np.float64)
    return GarmentAnchors(category="lower", points=points, has_sleeves=False, bbox=bbox)
