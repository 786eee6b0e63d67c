"""Batched thin-plate-spline warping on any torch device.

kornia's `get_tps_transform` builds its kernel matrix between the source and the target points
(U(|src_i - dst_j|)), which interpolates the control points but bends space oddly when the two
frames differ as much as a garment photo and a body do. So we solve the standard TPS system
(kernel between the control points themselves, with a little regularisation) here and evaluate
it with kornia's `warp_points_tps`, whose kernel centres are then the control points.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.geometry.transform import warp_points_tps


def _tps_kernel(squared_distance: torch.Tensor) -> torch.Tensor:
    # U = 0.5 r^2 log r^2, exactly as kornia's warp_points_tps evaluates it
    return 0.5 * squared_distance * torch.log(squared_distance.clamp_min(1e-12))


def fit_tps(control: torch.Tensor, values: torch.Tensor, regularisation: float = 1e-9) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve for f with f(control_i) ≈ values_i. control, values: (B, K, 2) → kernel (B, K, 2), affine (B, 3, 2)."""
    batch, count, _ = control.shape
    dtype = torch.float64  # small systems; double precision keeps them well conditioned on any device
    c = control.to(dtype)
    v = values.to(dtype)
    squared = torch.cdist(c, c).pow(2)
    kernel = _tps_kernel(squared) + regularisation * torch.eye(count, dtype=dtype, device=c.device)
    ones = torch.ones(batch, count, 1, dtype=dtype, device=c.device)
    p = torch.cat([ones, c], dim=-1)
    top = torch.cat([kernel, p], dim=-1)
    bottom = torch.cat([p.transpose(1, 2), torch.zeros(batch, 3, 3, dtype=dtype, device=c.device)], dim=-1)
    system = torch.cat([top, bottom], dim=1)
    rhs = torch.cat([v, torch.zeros(batch, 3, 2, dtype=dtype, device=c.device)], dim=1)
    solution = torch.linalg.solve(system, rhs)
    return solution[:, :count].to(control.dtype), solution[:, count:].to(control.dtype)


def normalise(points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel (x, y) → grid_sample's [-1, 1] frame (align_corners=False)."""
    scale = torch.tensor([2.0 / width, 2.0 / height], dtype=points.dtype, device=points.device)
    return (points + 0.5) * scale - 1.0


def tps_sampling_grid(
    target_points: torch.Tensor, source_points: torch.Tensor, out_size: tuple[int, int], source_size: tuple[int, int]
) -> torch.Tensor:
    """For each output pixel, where to sample the source image: (B, H, W, 2) in [-1, 1].

    target_points: control points in output pixels (B, K, 2); source_points: the same points in
    source pixels. The map runs output → source, so the warped source lands on the targets.
    """
    out_h, out_w = out_size
    src_h, src_w = source_size
    targets = normalise(target_points, out_h, out_w)
    sources = normalise(source_points, src_h, src_w)
    kernel_weights, affine_weights = fit_tps(targets, sources)
    ys = (torch.arange(out_h, device=targets.device, dtype=targets.dtype) + 0.5) * (2.0 / out_h) - 1.0
    xs = (torch.arange(out_w, device=targets.device, dtype=targets.dtype) + 0.5) * (2.0 / out_w) - 1.0
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([grid_x, grid_y], dim=-1).reshape(1, -1, 2).expand(targets.shape[0], -1, -1)
    sampled = warp_points_tps(grid, targets, kernel_weights, affine_weights)
    return sampled.reshape(targets.shape[0], out_h, out_w, 2)


def warp_with_grid(images: torch.Tensor, grid: torch.Tensor, out_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Sample images (B, C, h, w) through a grid; the grid is resized to out_size first if given."""
    if out_size is not None and tuple(grid.shape[1:3]) != tuple(out_size):
        grid = F.interpolate(grid.permute(0, 3, 1, 2), size=out_size, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
