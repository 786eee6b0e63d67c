"""One decode path for every input image: checked, EXIF-upright, RGB(A) uint8, contiguous.

Sizes are checked from the header before pixels are decoded, so decompression bombs and absurd
dimensions are refused cheaply. Only still JPEG (and phones' multi-picture JPEG), PNG, WebP,
HEIC/HEIF, BMP and GIF are parsed at all. Every failure is a `TryOnError` with a stable code;
no other exception leaves `decode_image`.
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from .config import ImageSettings
from .errors import TryOnError

try:  # HEIC/HEIF from phones
    import pillow_heif

    pillow_heif.register_heif_opener()
except Exception:  # pragma: no cover - optional codec missing
    pillow_heif = None

# The Pillow format ids we parse. A JPEG that carries extra pictures (depth maps, HDR gain maps;
# phones write those) opens as format "MPO"; its first picture is the photo.
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "GIF") + (("HEIF",) if pillow_heif else ())
ANIMATABLE_FORMATS = ("GIF", "PNG", "WEBP")
ACCEPTED_NAMES = "JPEG, PNG, WebP, HEIC, BMP or GIF"

# A progressive JPEG may repeat scans: each costs a pass over the whole image, so a few hundred
# kilobytes of repeated scans keep a decoder busy for minutes. Encoders write at most ~20.
MAX_JPEG_SCANS = 64

# Recognised but not accepted: named in the message so the user knows what to convert.
_OTHER_FORMATS: tuple[tuple[int, bytes, str], ...] = (
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"II+\x00", "BigTIFF"),
    (0, b"MM\x00+", "BigTIFF"),
    (0, b"8BPS", "Photoshop (PSD)"),
    (0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (0, b"\xffO\xffQ", "JPEG 2000"),
    (0, b"\xff\x0a", "JPEG XL"),
    (0, b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (4, b"ftypavif", "AVIF"),
    (4, b"ftypavis", "AVIF"),
    (0, b"icns", "Apple icon"),
    (0, b"\x00\x00\x01\x00", "Windows icon"),
    (0, b"\x00\x00\x02\x00", "Windows cursor"),
    (0, b"%!PS", "PostScript"),
    (0, b"\xc5\xd0\xd3\xc6", "PostScript"),
    (0, b"qoif", "QOI"),
    (0, b"DDS ", "DirectDraw surface"),
)


def decode_image(data: bytes, limits: ImageSettings, *, what: str = "input", keep_alpha: bool = False) -> np.ndarray:
    """Decode `data` into an upright RGB uint8 array (RGBA when `keep_alpha` and the image has transparency).

    `what` names the field in error messages ("person", "garment"). Raises only `TryOnError`:
    invalid_image (empty, truncated, corrupt, not an image), unsupported_image (animated, or a
    format we do not accept), image_too_large (file bytes, pixels, longest side), image_too_small.
    """
    try:
        size = len(data)
    except Exception:  # noqa: BLE001 - not bytes at all
        raise TryOnError("invalid_image", f"The {what} file could not be read as bytes.") from None
    if not size:
        raise TryOnError("invalid_image", f"The {what} file is empty (0 bytes).")
    if size > limits.max_upload_bytes:
        raise TryOnError(
            "image_too_large",
            f"The {what} file is {size} bytes; the limit is {limits.max_upload_bytes} bytes.",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _decode(bytes(data), limits, what, keep_alpha)
    except TryOnError:
        raise
    except Image.DecompressionBombError:
        raise TryOnError("image_too_large", f"The {what} image has more pixels than this server decodes: at most {limits.max_side} px "
                                            f"on a side and {limits.max_pixels} pixels in all.") from None
    except MemoryError:
        raise TryOnError("image_too_large", f"The {what} image could not be decoded within the memory available.") from None
    except Exception as exc:  # noqa: BLE001 - any parser or codec failure is a bad file
        raise TryOnError("invalid_image", f"The {what} file is truncated or corrupt ({type(exc).__name__}).") from None


def _decode(data: bytes, limits: ImageSettings, what: str, keep_alpha: bool) -> np.ndarray:
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        other = _other_format(data)
        if other:
            raise TryOnError("unsupported_image", f"The {what} file is a {other} image; send a {ACCEPTED_NAMES} file.") from None
        raise TryOnError("invalid_image", f"The {what} file is not a recognised image ({ACCEPTED_NAMES}).") from None
    _check_size(image.size, limits, what)
    if image.format in ("JPEG", "MPO") and _jpeg_scan_count(data, MAX_JPEG_SCANS) > MAX_JPEG_SCANS:
        raise TryOnError("invalid_image", f"The {what} JPEG has more than {MAX_JPEG_SCANS} scans; re-save it with a standard encoder.")
    if image.format in ANIMATABLE_FORMATS and getattr(image, "is_animated", False):
        raise TryOnError("unsupported_image", f"The {what} image is animated or has several frames; send a still image.")
    # MPO and HEIF open on their first/primary picture; the others are never decoded.
    image.load()
    image = _upright(image)
    _check_size(image.size, limits, what)
    return to_rgb_uint8(image, keep_alpha=keep_alpha)


def _other_format(data: bytes) -> str | None:
    for offset, magic, name in _OTHER_FORMATS:
        if data[offset:offset + len(magic)] == magic:
            return name
    if _looks_like_svg(data[:4096]):
        return "SVG"
    return None


def _looks_like_svg(head: bytes) -> bool:
    """An <svg> (or <!DOCTYPE svg>) element after optional BOM, XML declaration and comments.

    A loop rather than one regex: nested repetition over comments backtracks exponentially.
    """
    head = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    while head.startswith((b"<?", b"<!--")):
        closing = b"?>" if head.startswith(b"<?") else b"-->"
        end = head.find(closing)
        if end < 0:
            return False
        head = head[end + len(closing):].lstrip()
    head = head[:14].lower()
    return head.startswith(b"<svg") or head.startswith(b"<!doctype svg")


# After a scan's entropy-coded data the next marker is 0xFF followed by anything but 0x00
# (a stuffed byte), 0xD0-0xD7 (restart markers, part of the scan) or 0xFF (fill).
_JPEG_NEXT_MARKER = re.compile(rb"\xff[\x01\xc0-\xcf\xd8-\xfe]")


def _jpeg_scan_count(data: bytes, limit: int) -> int:
    """Count the start-of-scan markers of the first picture, walking segments as libjpeg does.

    Stops at the first end-of-image, so data after it (other MPO pictures, motion-photo video)
    is not counted; garbage between segments is skipped as libjpeg skips it. Stops counting once
    over `limit`.
    """
    scans, pos, end = 0, 2, len(data)
    while pos + 1 < end:
        if data[pos] != 0xFF or data[pos + 1] in (0x00, 0xFF) or 0xD0 <= data[pos + 1] <= 0xD7:
            found = _JPEG_NEXT_MARKER.search(data, pos + 1 if data[pos] == 0xFF else pos)
            if found is None:
                break
            pos = found.start()
            continue
        marker = data[pos + 1]
        if marker == 0xD9:  # end of image
            break
        if marker == 0x01:  # TEM: no length
            pos += 2
            continue
        if pos + 4 > end:
            break
        length = (data[pos + 2] << 8) | data[pos + 3]
        if length < 2:
            break
        pos += 2 + length
        if marker == 0xDA:
            scans += 1
            if scans > limit:
                break
            found = _JPEG_NEXT_MARKER.search(data, pos)
            if found is None:
                break
            pos = found.start()
    return scans


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


_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF (or XMP) orientation; a broken EXIF block or an unknown value is ignored.

    HEIF files come upright already: pillow-heif applies the container's rotation and resets
    the EXIF tag to 1.
    """
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - unreadable EXIF: keep the pixels as stored
        return image
    method = _TRANSPOSE_FOR_ORIENTATION.get(orientation) if isinstance(orientation, int) else None
    return image if method is None else image.transpose(method)


_ROWS_PER_CHUNK_PIXELS = 1 << 20  # pixel conversions run in bands of about this many pixels


def to_rgb_uint8(image: Image.Image, *, keep_alpha: bool = False) -> np.ndarray:
    """Any Pillow mode → RGB uint8 (or RGBA uint8 when keep_alpha and some pixel is not opaque).

    16-bit samples are scaled to 8 bits (65535 → 255); palette, grayscale and RGB images with a
    transparency entry (tRNS) count as transparent; transparent pixels are composited on white
    unless `keep_alpha`. CMYK from Adobe JPEGs arrives un-inverted from Pillow.
    """
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _gray_to_rgb(_wide_gray_to_uint8(np.asarray(image), sixteen_bit=mode.startswith("I;16")))
    if mode == "1":  # 1-bit: as 0/255 grayscale, keeping a tRNS entry (Pillow cannot convert "1" with one)
        transparency = image.info.get("transparency")
        image = image.convert("L")
        image.info.pop("transparency", None)
        if transparency is not None:
            image.info["transparency"] = 255 if transparency else 0
        mode = "L"
    if mode in ("P", "L", "RGB") and image.info.get("transparency") is not None:
        image = image.convert("RGBA")
    elif mode in ("LA", "PA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        rgba = np.asarray(image, dtype=np.uint8)
        if rgba[..., 3].min() == 255:
            return _owned(rgba[..., :3])
        if keep_alpha:
            return _owned(rgba)
        return composite_on_white(rgba)
    if image.mode == "L":
        return _gray_to_rgb(np.asarray(image, dtype=np.uint8))
    if image.mode != "RGB":
        image = image.convert("RGB")
    return _owned(np.asarray(image, dtype=np.uint8))


def _wide_gray_to_uint8(array: np.ndarray, *, sixteen_bit: bool) -> np.ndarray:
    """16-bit (or 32-bit int / float) grayscale → uint8, rounding, without float64 copies of big images."""
    if sixteen_bit:
        peak = 65535
    else:  # mode I/F: not produced by the accepted formats; 0..255 data stays, else assume 16-bit
        array = np.nan_to_num(array.astype(np.float32, copy=False)) if array.dtype.kind == "f" else array
        peak = 65535 if float(array.max(initial=0)) > 255 else 255
    out = np.empty(array.shape, dtype=np.uint8)
    step = max(1, _ROWS_PER_CHUNK_PIXELS // max(1, array.shape[1]))
    for top in range(0, array.shape[0], step):
        band = np.clip(array[top:top + step].astype(np.float32), 0, peak)
        out[top:top + step] = (band * (255.0 / peak) + 0.5).astype(np.uint8)
    return out


def _owned(array: np.ndarray) -> np.ndarray:
    """C-contiguous, writable uint8 that owns its memory (np.asarray on a Pillow image is read-only)."""
    return np.require(array, dtype=np.uint8, requirements=["C_CONTIGUOUS", "WRITEABLE", "OWNDATA"])


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return _owned(np.repeat(gray[..., None], 3, axis=2))


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """RGBA uint8 → RGB uint8 over a white background, in bands so big images need little extra memory."""
    height, width = rgba.shape[:2]
    out = np.empty((height, width, 3), dtype=np.uint8)
    step = max(1, _ROWS_PER_CHUNK_PIXELS // max(1, width))
    for top in range(0, height, step):
        band = rgba[top:top + step]
        alpha = band[..., 3:4].astype(np.uint32)
        mixed = band[..., :3].astype(np.uint32) * alpha + 255 * (255 - alpha)
        out[top:top + step] = ((mixed + 127) // 255).astype(np.uint8)
    return out


def _public(location: str) -> str:
    """A location fit for messages and logs: no query string (presigned URLs carry credentials)."""
    return location.split("?", 1)[0]


def read_image(location: str, limits, *, what: str, keep_alpha: bool) -> np.ndarray:
    """Open a path or fsspec URL (or `sample:<name>`), refuse it when over the size limit, decode it.

    Reads at most one byte past the limit, so an oversized file is never read whole."""
    import fsspec

    if not location:
        raise TryOnError("invalid_request", f"The row has no {what} image.")
    if location.startswith("sample:"):
        from .samples import load_sample

        return load_sample(location, what=what)
    try:
        with fsspec.open(location, "rb") as handle:
            data = handle.read(limits.max_upload_bytes + 1)
    except FileNotFoundError:
        raise TryOnError("invalid_request", f"The {what} file {_public(location)!r} does not exist.") from None
    except IsADirectoryError:
        raise TryOnError("invalid_request", f"The {what} location {_public(location)!r} is a folder, not a file.") from None
    except (OSError, ValueError, ImportError) as exc:
        raise TryOnError("invalid_request", f"The {what} file {_public(location)!r} could not be read ({type(exc).__name__}).") from None
    if len(data) > limits.max_upload_bytes:
        raise TryOnError("image_too_large", f"The {what} file is over the limit of {limits.max_upload_bytes} bytes.")
    return decode_image(data, limits, what=what, keep_alpha=keep_alpha)


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
