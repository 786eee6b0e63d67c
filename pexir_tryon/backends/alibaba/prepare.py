"""Bring images inside the provider's input limits, and map its result back to the person photo.

OutfitAnyone accepts files of 5 KB–5 MB whose sides are each 150–4096 px (contract §9). The
documents write both limits loosely ("5 MB" may be 5,000,000 or 5,242,880 bytes; "larger than
150" may be strict), so the targets below sit inside every reading. An image is scaled (down
for large, up for small), padded by edge replication where its aspect ratio leaves no other way
(never cropped), and JPEG-encoded with a falling quality ladder. The placement of the original
content inside what was sent is kept, so the provider's result can be cropped and resized back
to the person photo's exact size: the user never sees the padding or the scaling.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

# Documented limits (contract §9); the fake provider enforces these.
MIN_SIDE = 150
MAX_SIDE = 4096
MIN_BYTES = 5 * 1024
MAX_BYTES = 5 * 1000 * 1000  # the smaller reading of "5 MB"

# What we aim for: inside every reading of the limits, with a margin.
TARGET_MIN_SIDE = 160
TARGET_MAX_SIDE = 4000
TARGET_MIN_BYTES = 6 * 1024
TARGET_MAX_BYTES = 4_800_000
JPEG_QUALITIES = (95, 90, 85, 80, 75, 65, 55, 45)


@dataclass(frozen=True)
class PreparedImage:
    """A JPEG inside the provider's limits and where the original content sits in it."""

    data: bytes
    size: tuple[int, int]  # (width, height) of the encoded image
    content_box: tuple[int, int, int, int]  # (left, top, width, height) of the original content
    original_size: tuple[int, int]  # (width, height) of the input array
    quality: int

    def __repr__(self) -> str:  # never the bytes
        return (
            f"PreparedImage(size={self.size}, content_box={self.content_box}, "
            f"original_size={self.original_size}, bytes={len(self.data)}, quality={self.quality})"
        )


def _to_rgb_image(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        raise ValueError("images must be uint8")
    if array.ndim == 2:
        return Image.fromarray(array, "L").convert("RGB")
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"expected HxWx3 or HxWx4, got shape {array.shape}")
    if array.shape[2] == 4:
        # A cut-out garment: the provider wants a flat-lay on a plain background; JPEG has no alpha.
        rgba = Image.fromarray(array, "RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return Image.fromarray(array, "RGB")


def _layout(width: int, height: int, scale: float) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """Scaled content size plus the padding that lifts each side to the minimum."""
    cw = max(1, round(width * scale))
    ch = max(1, round(height * scale))
    cw, ch = min(cw, TARGET_MAX_SIDE), min(ch, TARGET_MAX_SIDE)
    sw, sh = max(cw, TARGET_MIN_SIDE), max(ch, TARGET_MIN_SIDE)
    left, top = (sw - cw) // 2, (sh - ch) // 2
    return (sw, sh), (left, top, cw, ch)


def _initial_scale(width: int, height: int) -> float:
    scale = 1.0
    if max(width, height) > TARGET_MAX_SIDE:
        scale = TARGET_MAX_SIDE / max(width, height)
    if min(width, height) * scale < TARGET_MIN_SIDE:
        up = TARGET_MIN_SIDE / min(width, height)
        if max(width, height) * up <= TARGET_MAX_SIDE:
            scale = up  # upsample small images while the long side allows it; else pad
    return scale


def _render(img: Image.Image, scale: float) -> tuple[Image.Image, tuple[int, int, int, int]]:
    (sw, sh), box = _layout(img.width, img.height, scale)
    left, top, cw, ch = box
    content = img if (cw, ch) == img.size else img.resize((cw, ch), Image.LANCZOS)
    if (sw, sh) == (cw, ch):
        return content, box
    arr = np.asarray(content)
    padded = np.pad(arr, ((top, sh - ch - top), (left, sw - cw - left), (0, 0)), mode="edge")
    return Image.fromarray(padded, "RGB"), box


def _encode_jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    subsampling = 0 if quality >= 90 else 2  # 4:4:4 at high quality keeps garment detail
    img.save(buf, format="JPEG", quality=quality, subsampling=subsampling)
    return buf.getvalue()


def pad_jpeg_bytes(data: bytes, at_least: int) -> bytes:
    """Lengthen a JPEG to `at_least` bytes with COM (comment) segments; pixels are unchanged."""
    if len(data) >= at_least:
        return data
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    missing = at_least - len(data)
    segments = []
    while missing > 0:
        payload = min(65533, max(1, missing - 4))
        segments.append(b"\xff\xfe" + (payload + 2).to_bytes(2, "big") + b"\x00" * payload)
        missing -= payload + 4
    return data[:2] + b"".join(segments) + data[2:]


def prepare_for_provider(array: np.ndarray) -> PreparedImage:
    """Encode an RGB/RGBA uint8 image as a JPEG that satisfies the provider's limits."""
    img = _to_rgb_image(array)
    width, height = img.size
    scale = _initial_scale(width, height)
    for _ in range(12):
        rendered, box = _render(img, scale)
        data = b""
        for quality in JPEG_QUALITIES:
            data = _encode_jpeg(rendered, quality)
            if len(data) <= TARGET_MAX_BYTES:
                break
        if len(data) <= TARGET_MAX_BYTES:
            if len(data) < TARGET_MIN_BYTES:
                # Flat images compress below the minimum: re-encode at the top quality, then pad
                # the file (not the picture) with a comment segment.
                quality = 100
                data = pad_jpeg_bytes(_encode_jpeg(rendered, quality), TARGET_MIN_BYTES)
            return PreparedImage(data, rendered.size, box, (width, height), quality)
        # Still too many bytes at the lowest quality: fewer pixels.
        scale *= max(0.5, min(0.9, math.sqrt(TARGET_MAX_BYTES / len(data)) * 0.95))
    raise ValueError("could not bring the image under the provider's byte limit")


def restore_result(data: bytes, prepared: PreparedImage, out_size: tuple[int, int]) -> np.ndarray:
    """Decode the provider's result, drop the padding we added, resize to `out_size` (w, h).

    The result is mapped proportionally, so it works whether the provider kept the person
    image's size (resolution=-1) or not.
    """
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        img = ImageOps.exif_transpose(opened).convert("RGB")
    fx = img.width / prepared.size[0]
    fy = img.height / prepared.size[1]
    left, top, cw, ch = prepared.content_box
    box = (
        round(left * fx),
        round(top * fy),
        max(round(left * fx) + 1, round((left + cw) * fx)),
        max(round(top * fy) + 1, round((top + ch) * fy)),
    )
    if box != (0, 0, img.width, img.height):
        img = img.crop(box)
    if img.size != tuple(out_size):
        img = img.resize(tuple(out_size), Image.LANCZOS)
    out = np.asarray(img, dtype=np.uint8)
    return np.ascontiguousarray(out)
