"""One decode path for every input image: checked, EXIF-upright, RGB(A) uint8, contiguous.

Sizes are checked from the header before pixels are decoded, so decompression bombs and absurd
dimensions are refused cheaply. Every failure is a `TryOnError` with a stable code.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import ImageSettings
from .errors import TryOnError

try:  # HEIC/HEIF from phones
    import pillow_heif

    pillow_heif.register_heif_opener()
except Exception:  # pragma: no cover - optional codec missing
    pillow_heif = None

# We enforce our own pixel limit before decoding; Pillow's warning would only add noise.
Image.MAX_IMAGE_PIXELS = None


def decode_image(data: bytes, limits: ImageSettings, *, what: str = "image", keep_alpha: bool = False) -> np.ndarray:
    """Decode `data` into an upright RGB uint8 array (RGBA when `keep_alpha` and the image has transparency).

    `what` names the field in error messages ("person", "garment").
    """
    if not data:
        raise TryOnError("invalid_image", f"The {what} file is empty (0 bytes).")
    if len(data) > limits.max_upload_bytes:
        raise TryOnError(
            "image_too_large",
            f"The {what} file is {len(data)} bytes; the limit is {limits.max_upload_bytes} bytes.",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise TryOnError("invalid_image", f"The {what} file is not a recognised image (JPEG, PNG, WebP, HEIC, BMP, GIF).") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad file
        raise TryOnError("invalid_image", f"The {what} file could not be read as an image ({type(exc).__name__}).") from None

    _check_size(image.size, limits, what)
    if getattr(image, "n_frames", 1) > 1:
        raise TryOnError("unsupported_image", f"The {what} image is animated or has several frames; send a still image.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.load()
            image = _upright(image)
    except TryOnError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt pixel data
        raise TryOnError("invalid_image", f"The {what} file is truncated or corrupt ({type(exc).__name__}).") from None
    _check_size(image.size, limits, what)
    return to_rgb_uint8(image, keep_alpha=keep_alpha)


def _check_size(size: tuple[int, int], limits: ImageSettings, what: str) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise TryOnError("invalid_image", f"The {what} image has no pixels ({width}x{height}).")
    if max(width, height) > limits.max_side or width * height > limits.max_pixels:
        raise TryOnError(
            "image_too_large",
            f"The {what} image is {width}x{height}; the limits are {limits.max_side} px per side "
            f"and {limits.max_pixels} pixels in all.",
        )
    if min(width, height) < limits.min_side:
        raise TryOnError("image_too_small", f"The {what} image is {width}x{height}; each side must be at least {limits.min_side} px.")
    if max(width, height) / min(width, height) > limits.max_aspect_ratio:
        raise TryOnError(
            "image_too_large" if max(width, height) > 4 * limits.min_side else "image_too_small",
            f"The {what} image is {width}x{height}; the long side may be at most {limits.max_aspect_ratio:g} times the short side.",
        )


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block is ignored rather than fatal."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001
        return image


def to_rgb_uint8(image: Image.Image, *, keep_alpha: bool = False) -> np.ndarray:
    """Any Pillow mode → RGB uint8 (or RGBA uint8 when keep_alpha and some pixel is not opaque)."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image).astype(np.float64)
        peak = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        gray = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    elif mode in ("LA", "PA", "La", "RGBa"):
        image = image.convert("RGBA")
    elif mode == "CMYK":
        image = image.convert("RGB")
    if image.mode == "RGBA":
        rgba = np.asarray(image, dtype=np.uint8)
        if rgba[..., 3].min() == 255:
            return np.ascontiguousarray(rgba[..., :3])
        if keep_alpha:
            return np.ascontiguousarray(rgba)
        return composite_on_white(rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    return np.ascontiguousarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8))


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def encode_jpeg(image: np.ndarray, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image[..., :3]).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def resize_to(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize with area filtering when shrinking and bicubic when enlarging."""
    import cv2

    if image.shape[1] == width and image.shape[0] == height:
        return image
    shrinking = width * height < image.shape[0] * image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


def scale_to_max_side(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Shrink so the longest side is at most max_side; returns the image and the scale applied."""
    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale == 1.0:
        return image, 1.0
    return resize_to(image, max(1, round(width * scale)), max(1, round(height * scale))), scale
