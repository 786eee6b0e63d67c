"""Stage 2: garment mask → anchors → TPS warp onto the body → composite.

`GarmentWarper.warp_batch` takes many requests; the TPS grids of requests with the same working
size and number of control points are solved and evaluated in one batch on the stage's device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import GarmentSettings, ImageSettings
from ..errors import TryOnError
from ..geometry.types import PersonGeometry
from .anchors import GarmentAnchors, check_category, garment_anchors, part_masks, shape_features
from .composite import composite
from .mask import garment_mask
from .placement import control_points
from .tps import tps_sampling_grid, warp_with_grid


@dataclass(repr=False)
class PreparedGarment:
    """The garment side of the work, reusable across persons: RGBA pixels, mask and anchors."""

    rgba: np.ndarray
    anchors: GarmentAnchors
    parts: dict[str, np.ndarray]  # part name → bool mask ("body", "sleeve_l", "sleeve_r")

    @property
    def category(self) -> str:
        return self.anchors.category

    def __repr__(self) -> str:
        return f"PreparedGarment(category={self.category!r}, size={self.rgba.shape[1]}x{self.rgba.shape[0]})"


@dataclass(repr=False)
class WarpRequest:
    person: np.ndarray  # RGB uint8
    garment: np.ndarray | PreparedGarment  # RGB/RGBA uint8, or already prepared
    geometry: PersonGeometry
    category: str = "auto"


@dataclass(repr=False)
class WarpResult:
    composite: np.ndarray  # RGB uint8 at the person's size
    refine_mask: np.ndarray  # uint8 0/255: what the refiner may repaint
    garment_mask: np.ndarray  # uint8 0/255: where the garment was placed
    category: str

    def __repr__(self) -> str:
        return f"WarpResult(category={self.category!r}, size={self.composite.shape[1]}x{self.composite.shape[0]})"


class GarmentWarper:
    def __init__(self, settings: GarmentSettings, images: ImageSettings, device: str = "cpu"):
        self.settings = settings
        self.working_max_side = images.working_max_side
        self.device = torch.device(device)

    def prepare_garment(self, garment: np.ndarray, category: str = "auto") -> PreparedGarment:
        """Mask, category and anchors of a garment photo. Raises a TryOnError for unusable photos."""
        if category not in ("upper", "lower", "dress", "auto"):
            raise TryOnError("unsupported_category", f"Unknown category {category!r}; use one of: upper, lower, dress, auto.")
        mask = garment_mask(garment, self.settings)
        rgba = np.empty((*garment.shape[:2], 4), dtype=np.uint8)
        rgba[..., :3] = garment[..., :3]
        rgba[..., 3] = mask * 255
        return _prepared(rgba, mask, category)

    def warp_batch(self, requests: list[WarpRequest]) -> list[WarpResult | TryOnError]:
        results: list[WarpResult | TryOnError | None] = [None] * len(requests)
        plans: dict[int, tuple] = {}
        for index, request in enumerate(requests):
            try:
                plans[index] = self._plan(request)
            except TryOnError as error:
                results[index] = error
        # Solve and evaluate the TPS grids of all parts of all requests, batched by
        # (working size, number of control points, garment size).
        jobs: dict[tuple, list[tuple[int, str, np.ndarray, np.ndarray]]] = {}
        for index, (prepared, parts, grid_size, grid_scale, _) in plans.items():
            for part, (source, target) in parts.items():
                key = (grid_size, len(source), prepared.rgba.shape[:2])
                jobs.setdefault(key, []).append((index, part, source, target * grid_scale))
        grids: dict[tuple[int, str], torch.Tensor] = {}
        for (grid_size, _, garment_size), items in jobs.items():
            sources = torch.tensor(np.stack([it[2] for it in items]), dtype=torch.float32, device=self.device)
            targets = torch.tensor(np.stack([it[3] for it in items]), dtype=torch.float32, device=self.device)
            batch = tps_sampling_grid(targets, sources, grid_size, garment_size)
            for k, (index, part, _, _) in enumerate(items):
                grids[index, part] = batch[k : k + 1]
        for index, (prepared, parts, _, _, scale) in plans.items():
            try:
                results[index] = self._render(requests[index], prepared, {p: grids[index, p] for p in parts}, scale)
            except TryOnError as error:
                results[index] = error
        return results  # type: ignore[return-value]

    def _plan(self, request: WarpRequest):
        if isinstance(request.garment, PreparedGarment):
            prepared = request.garment
            if request.category not in ("auto", prepared.category):  # prepared for another category
                prepared = _prepared(prepared.rgba, prepared.rgba[..., 3] > 127, request.category)
        else:
            prepared = self.prepare_garment(request.garment, request.category)
        parts = control_points(request.geometry, prepared.anchors)
        height, width = request.person.shape[:2]
        working_scale = min(1.0, self.working_max_side / max(height, width))
        # The TPS map is smooth: evaluate it on a coarse grid, then interpolate it to full size.
        grid_scale = min(1.0, self.settings.grid_max_side / max(height, width))
        grid_size = (max(2, round(height * grid_scale)), max(2, round(width * grid_scale)))
        return prepared, parts, grid_size, grid_scale, working_scale

    def _render(self, request: WarpRequest, prepared: PreparedGarment, grids: dict[str, torch.Tensor], scale: float) -> WarpResult:
        height, width = request.person.shape[:2]
        rgb = np.zeros((height, width, 3), dtype=np.float32)
        alpha = np.zeros((height, width), dtype=np.float32)
        # The garment goes to the device once, premultiplied so edges don't pick up the background colour.
        garment = torch.from_numpy(prepared.rgba).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        garment[:, :3] *= garment[:, 3:4]
        # Body first, sleeves over it ("over" compositing of premultiplied layers).
        for part in ("body", "sleeve_l", "sleeve_r"):
            if part not in grids:
                continue
            keep = torch.from_numpy(prepared.parts[part]).to(self.device, garment.dtype)
            warped = warp_with_grid(garment * keep, grids[part], out_size=(height, width))[0].permute(1, 2, 0).cpu().numpy()
            layer_alpha = np.clip(warped[..., 3], 0.0, 1.0)
            rgb = warped[..., :3] * 255.0 + rgb * (1.0 - layer_alpha[..., None])
            alpha = layer_alpha + alpha * (1.0 - layer_alpha)
        straight = rgb / np.maximum(alpha, 1e-6)[..., None]
        out, refine_mask, placed = composite(request.person, straight, alpha, request.geometry, self.settings, scale)
        if placed.mean() < 0.002 * 255:
            raise TryOnError("body_region_not_visible", "The garment would not land on the visible body in this photo; send a photo showing more of the body.")
        return WarpResult(composite=out, refine_mask=refine_mask, garment_mask=placed, category=prepared.category)


def _prepared(rgba: np.ndarray, mask: np.ndarray, category: str) -> PreparedGarment:
    anchors = garment_anchors(mask, check_category(category, shape_features(mask)))
    return PreparedGarment(rgba=rgba, anchors=anchors, parts=part_masks(mask, anchors))
