"""Stage 3: the diffusion refiner (model loading, manifests, batched denoising, crop and paste)."""

from pexir_tryon.refine.manifest import MANIFEST_FILENAME, fetch_model, load_manifest, verify_model_dir
from pexir_tryon.refine.model import RefinerModel, load_refiner_model
from pexir_tryon.refine.refiner import DiffusionRefiner, RefineRequest, refiner_from_settings

__all__ = [
    "MANIFEST_FILENAME",
    "DiffusionRefiner",
    "RefineRequest",
    "RefinerModel",
    "fetch_model",
    "load_manifest",
    "load_refiner_model",
    "refiner_from_settings",
    "verify_model_dir",
]
