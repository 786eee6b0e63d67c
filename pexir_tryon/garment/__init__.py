"""Stage 2: garment mask, anchor points, TPS warp, compositing."""

from .warper import GarmentWarper, PreparedGarment, WarpRequest, WarpResult

__all__ = ["GarmentWarper", "PreparedGarment", "WarpRequest", "WarpResult"]
