"""Where each garment anchor goes on the body: the control points of the warp.

A similarity transform from the garment's shoulders (or waist) to the body's keeps the garment's
own proportions; body landmarks then override the points they know better (sleeve ends on the
arms, hem on the hips or ankles). Landmarks are used only when visible; a hem whose body point is
off the frame runs past the bottom edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import TryOnError
from ..geometry.types import Landmark as L
from ..geometry.types import PersonGeometry
from .anchors import GarmentAnchors


def _image_order(geometry: PersonGeometry, a: int, b: int) -> tuple[int, int]:
    """The two landmark indices ordered image-left first."""
    return (a, b) if geometry.point(a)[0] <= geometry.point(b)[0] else (b, a)


def _similarity(g_left: np.ndarray, g_right: np.ndarray, b_left: np.ndarray, b_right: np.ndarray):
    g = complex(*(g_right - g_left))
    b = complex(*(b_right - b_left))
    scale_rotation = b / g if abs(g) > 1e-6 else 1.0
    offset = complex(*b_left) - scale_rotation * complex(*g_left)

    def apply(point: np.ndarray) -> np.ndarray:
        z = scale_rotation * complex(*point) + offset
        return np.array([z.real, z.imag])

    return apply, abs(scale_rotation)


@dataclass(frozen=True)
class _Frame:
    """A body landmark pair in image order, with the axes it spans: `across` (left→right) and `down`."""

    left: int
    right: int
    p_left: np.ndarray
    p_right: np.ndarray
    span: float
    across: np.ndarray
    down: np.ndarray

    def widened(self, out: float, up: float) -> tuple[np.ndarray, np.ndarray]:
        """The pair pushed outwards by `out` and upwards by `up` (both in spans)."""
        shift_out, shift_up = out * self.span * self.across, up * self.span * self.down
        return self.p_left - shift_out - shift_up, self.p_right + shift_out - shift_up


def _frame(geometry: PersonGeometry, a: int, b: int) -> _Frame:
    left, right = _image_order(geometry, a, b)
    p_left, p_right = geometry.point(left), geometry.point(right)
    across = _unit(p_right - p_left)
    return _Frame(left, right, p_left, p_right, float(np.linalg.norm(p_right - p_left)), across, np.array([-across[1], across[0]]))


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    return v / n if n > 1e-9 else v


SLEEVE_POINTS = {"l": ("shoulder_l", "armpit_l", "sleeve_l", "elbow_l"), "r": ("shoulder_r", "armpit_r", "sleeve_r", "elbow_r")}


def control_points(geometry: PersonGeometry, anchors: GarmentAnchors) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per garment part, (garment points (K, 2), body points (K, 2)) for its warp.

    Parts: "body" (the torso, or the whole garment) and, for garments with sleeves, "sleeve_l" and
    "sleeve_r": each sleeve is warped on its own so an arm raised or lowered swings the sleeve
    without folding the torso. A sleeve whose arm is not visible follows the body's warp.
    """
    sources = dict(anchors.points)  # the warp may add bend points; the prepared garment stays as it is
    if anchors.category == "lower":
        targets = _lower_targets(geometry, anchors, sources)
    else:
        targets = _upper_targets(geometry, anchors, sources)
    sleeve_names = {n for names in SLEEVE_POINTS.values() for n in names[2:]}
    body_names = [n for n in sources if n in targets and n not in sleeve_names]
    parts = {"body": _pairs(body_names, sources, targets)}
    if anchors.has_sleeves:
        for side, names in SLEEVE_POINTS.items():
            present = [n for n in names if n in sources and n in targets]
            if f"sleeve_{side}" in present and len(present) >= 3:
                parts[f"sleeve_{side}"] = _pairs(present, sources, targets)
            else:
                parts[f"sleeve_{side}"] = parts["body"]
    return parts


def _pairs(names: list[str], sources: dict, targets: dict) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([sources[n] for n in names], dtype=np.float64), np.array([targets[n] for n in names], dtype=np.float64))


def _upper_targets(geometry: PersonGeometry, anchors: GarmentAnchors, p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    height, width = geometry.image_size
    if not geometry.all_visible(L.LEFT_SHOULDER, L.RIGHT_SHOULDER):
        what = "a dress" if anchors.category == "dress" else "an upper garment"
        raise TryOnError("person_cropped", f"Both shoulders must be visible to place {what}; send a photo showing them.")
    shoulders = _frame(geometry, L.LEFT_SHOULDER, L.RIGHT_SHOULDER)
    left, right, s_l, s_r, span, ex = shoulders.left, shoulders.right, shoulders.p_left, shoulders.p_right, shoulders.span, shoulders.across
    t_sl, t_sr = shoulders.widened(out=0.10, up=0.04)
    to_body, scale = _similarity(p["shoulder_l"], p["shoulder_r"], t_sl, t_sr)
    targets = {name: to_body(point) for name, point in p.items()}
    targets["shoulder_l"], targets["shoulder_r"] = t_sl, t_sr

    if geometry.all_visible(L.LEFT_HIP, L.RIGHT_HIP):
        hips = _frame(geometry, L.LEFT_HIP, L.RIGHT_HIP)
        h_l, h_r = hips.p_left, hips.p_right
        edge_l, edge_r = h_l - 0.3 * hips.span * ex, h_r + 0.3 * hips.span * ex
        if anchors.category == "upper":
            for name, edge in (("hem_l", edge_l), ("hem_r", edge_r)):
                targets[name] = np.array([edge[0], max(targets[name][1], edge[1] + 0.08 * span)])
        elif "waist_l" in p:
            targets["waist_l"] = s_l + 0.62 * (edge_l - s_l)
            targets["waist_r"] = s_r + 0.62 * (edge_r - s_r)
        for name in ("hem_l", "hem_r"):  # a garment never ends above the hips
            targets[name][1] = max(targets[name][1], max(h_l[1], h_r[1]) + 0.05 * span)
    else:
        # Hips out of frame: the body continues below the edge, so does the garment.
        for name in ("hem_l", "hem_r"):
            targets[name][1] = max(targets[name][1], height + 0.05 * span)
        targets.pop("waist_l", None)
        targets.pop("waist_r", None)
    targets["hem_c"] = np.array([0.5 * (targets["hem_l"][0] + targets["hem_r"][0]), max(targets["hem_l"][1], targets["hem_r"][1])])

    if anchors.has_sleeves:
        for side, shoulder_index in (("l", left), ("r", right)):
            elbow_index = shoulder_index + 2  # shoulder 11/12 → elbow 13/14 → wrist 15/16
            wrist_index = shoulder_index + 4
            targets.pop(f"sleeve_{side}", None)
            if f"sleeve_{side}" not in p or not geometry.visible(elbow_index):
                continue
            sleeve_length = scale * float(np.linalg.norm(p[f"sleeve_{side}"] - p[f"shoulder_{side}"]))
            joint, elbow = geometry.point(shoulder_index), geometry.point(elbow_index)
            upper_arm = float(np.linalg.norm(elbow - joint))
            if sleeve_length <= upper_arm:
                targets[f"sleeve_{side}"] = joint + (elbow - joint) * sleeve_length / max(upper_arm, 1e-6)
            elif geometry.visible(wrist_index):
                wrist = geometry.point(wrist_index)
                forearm = float(np.linalg.norm(wrist - elbow))
                remaining = min(sleeve_length - upper_arm, 1.1 * forearm)
                targets[f"sleeve_{side}"] = elbow + _unit(wrist - elbow) * remaining
                # Bend the sleeve at the elbow.
                fraction = upper_arm / sleeve_length
                name = f"elbow_{side}"
                p[name] = p[f"shoulder_{side}"] + fraction * (p[f"sleeve_{side}"] - p[f"shoulder_{side}"])
                targets[name] = elbow
    return targets


def _lower_targets(geometry: PersonGeometry, anchors: GarmentAnchors, p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    height, _ = geometry.image_size
    if not geometry.all_visible(L.LEFT_HIP, L.RIGHT_HIP):
        raise TryOnError(
            "body_region_not_visible",
            "A lower garment needs the hips to be visible, and this photo does not show them; send a photo showing the hips and legs.",
        )
    hips = _frame(geometry, L.LEFT_HIP, L.RIGHT_HIP)
    left, right, span, down = hips.left, hips.right, hips.span, hips.down
    t_wl, t_wr = hips.widened(out=0.32, up=0.35)
    to_body, _ = _similarity(p["waist_l"], p["waist_r"], t_wl, t_wr)
    targets = {name: to_body(point) for name, point in p.items()}
    targets["waist_l"], targets["waist_r"] = t_wl, t_wr
    for side, hip_index in (("l", left), ("r", right)):
        knee_index, ankle_index = hip_index + 2, hip_index + 4  # hip 23/24 → knee 25/26 → ankle 27/28
        name = f"hem_{side}"
        hip = geometry.point(hip_index)
        if "crotch" in p and geometry.visible(ankle_index):
            targets[name] = geometry.point(ankle_index) + 0.04 * span * down
        elif "crotch" in p and geometry.visible(knee_index):
            leg = float(np.linalg.norm(targets[name] - targets[f"waist_{side}"]))
            targets[name] = hip + _unit(geometry.point(knee_index) - hip) * leg
        if not geometry.visible(ankle_index):
            targets[name][1] = max(targets[name][1], height + 0.05 * span) if not geometry.visible(knee_index) else targets[name][1]
    return targets
