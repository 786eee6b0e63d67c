"""Bundled sample inputs: real person photos that ship inside installed packages, and drawn garments.

No garment photos ship in any package we can use, so flat-lay garments are drawn: a t-shirt, a
long-sleeve shirt, a dress and trousers, plain or patterned, optionally as an RGBA cut-out.
`sample:<name>` can stand in for any image path on the command line.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .errors import TryOnError

PERSON_SAMPLES = ("astronaut", "grace_hopper", "camera")
GARMENT_SAMPLES = ("tshirt", "longsleeve", "dress", "trousers", "tshirt_striped", "dress_checked", "longsleeve_cutout")


def person_sample(name: str) -> np.ndarray:
    """A real photo of a person shipped with scikit-image or matplotlib, as RGB uint8."""
    if name == "astronaut":
        import skimage.data

        return np.ascontiguousarray(skimage.data.astronaut())
    if name == "camera":
        import skimage.data

        return np.ascontiguousarray(np.repeat(skimage.data.camera()[..., None], 3, axis=2))
    if name == "grace_hopper":
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
            return np.ascontiguousarray(np.asarray(Image.open(handle).convert("RGB")))
    raise KeyError(f"unknown person sample {name!r}; choose from {', '.join(PERSON_SAMPLES)}")


def garment_sample(name: str) -> np.ndarray:
    """A drawn flat-lay garment: RGB on a light background, or RGBA for the cut-out."""
    kind, _, variant = name.partition("_")
    if name not in GARMENT_SAMPLES:
        raise KeyError(f"unknown garment sample {name!r}; choose from {', '.join(GARMENT_SAMPLES)}")
    colours = {"tshirt": (200, 40, 50), "longsleeve": (40, 90, 170), "dress": (30, 140, 90), "trousers": (60, 60, 75)}
    return draw_garment(kind, colour=colours[kind], pattern=variant if variant in ("striped", "checked") else None,
                        cutout=variant == "cutout")


def garment_outline(kind: str, width: int = 600, height: int = 700) -> list[tuple[float, float]]:
    """The garment's outline polygon in pixels (front view, flat lay)."""
    w, h = width, height
    if kind == "tshirt":
        pts = [(0.38, 0.10), (0.45, 0.16), (0.55, 0.16), (0.62, 0.10), (0.78, 0.13), (0.95, 0.32), (0.84, 0.40),
               (0.76, 0.33), (0.76, 0.92), (0.24, 0.92), (0.24, 0.33), (0.16, 0.40), (0.05, 0.32), (0.22, 0.13)]
    elif kind == "longsleeve":
        pts = [(0.39, 0.08), (0.45, 0.14), (0.55, 0.14), (0.61, 0.08), (0.75, 0.11), (0.90, 0.50), (0.98, 0.86),
               (0.88, 0.88), (0.76, 0.52), (0.75, 0.92), (0.25, 0.92), (0.24, 0.52), (0.12, 0.88), (0.02, 0.86),
               (0.10, 0.50), (0.25, 0.11)]
    elif kind == "dress":
        pts = [(0.40, 0.04), (0.46, 0.10), (0.54, 0.10), (0.60, 0.04), (0.67, 0.06), (0.70, 0.18), (0.65, 0.40),
               (0.82, 0.96), (0.18, 0.96), (0.35, 0.40), (0.30, 0.18), (0.33, 0.06)]
    elif kind == "trousers":
        pts = [(0.30, 0.04), (0.70, 0.04), (0.74, 0.30), (0.78, 0.96), (0.56, 0.96), (0.50, 0.36), (0.44, 0.96),
               (0.22, 0.96), (0.26, 0.30)]
    else:
        raise KeyError(f"unknown garment kind {kind!r}")
    return [(x * w, y * h) for x, y in pts]


def draw_garment(kind: str, *, colour=(200, 40, 50), pattern: str | None = None, cutout: bool = False,
                 width: int = 600, height: int = 700, background=(244, 243, 240)) -> np.ndarray:
    outline = garment_outline(kind, width, height)
    mask_image = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask_image).polygon(outline, fill=255)
    mask = np.asarray(mask_image) > 0

    rng = np.random.default_rng(7)
    fabric = np.empty((height, width, 3), dtype=np.float32)
    fabric[:] = colour
    if pattern == "striped":
        stripes = (np.arange(height) // 18) % 2 == 0
        fabric[stripes] = (250, 225, 150)
    elif pattern == "checked":
        yy, xx = np.mgrid[0:height, 0:width]
        checks = ((yy // 30) + (xx // 30)) % 2 == 0
        fabric[checks] = fabric[checks] * 0.55 + 90
    # Fabric grain and a soft fold so the garment is not a flat fill.
    fabric += rng.normal(0, 4, size=fabric.shape)
    fabric *= (1.0 - 0.08 * np.sin(np.linspace(0, 3 * np.pi, width)))[None, :, None]
    if cutout:
        rgba = np.zeros((height, width, 4), dtype=np.uint8)
        rgba[..., :3] = np.clip(fabric, 0, 255).astype(np.uint8)
        rgba[..., 3] = mask * 255
        return rgba
    image = np.empty((height, width, 3), dtype=np.float32)
    image[:] = background
    image += rng.normal(0, 1.5, size=image.shape)
    image[mask] = fabric[mask]
    return np.clip(image, 0, 255).astype(np.uint8)


def load_sample(spec: str, what: str | None = None) -> np.ndarray:
    """'sample:astronaut' or 'sample:tshirt' → the image.

    `what` ("person" or "garment") only words the error for an unknown name, listing the samples of
    that kind; any sample may stand for either (a person photo as a "garment" is how the
    garment_photo_has_person check is tried)."""
    name = spec.split(":", 1)[1]
    if name not in PERSON_SAMPLES and name not in GARMENT_SAMPLES:
        choices = {"person": PERSON_SAMPLES, "garment": GARMENT_SAMPLES}.get(what or "", (*PERSON_SAMPLES, *GARMENT_SAMPLES))
        kind = f"{what} sample" if what in ("person", "garment") else "sample"
        raise TryOnError("invalid_request", f"Unknown {kind} {name!r}; choose from {', '.join(choices)}.")
    if name in PERSON_SAMPLES:
        return person_sample(name)
    return garment_sample(name)
