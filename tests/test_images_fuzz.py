"""Property tests: whatever bytes arrive, decode_image returns a well-formed array or raises
TryOnError with one of the image codes; any other exception fails the test.

Inputs are random bytes and valid images of every format Pillow (and pillow-heif) can write,
mutated by bit flips, byte overwrites, truncation, insertion, deletion, chunk duplication and
splices of one format's header onto another's body.
"""

from __future__ import annotations

import io
import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pexir_tryon.config import ImageSettings
from pexir_tryon.errors import TryOnError
from pexir_tryon.images import decode_image

IMAGE_CODES = {"invalid_image", "unsupported_image", "image_too_large", "image_too_small"}
# Small limits so that mutated small images get past the size checks and into pixel decoding.
LIMITS = ImageSettings(min_side=4, max_side=4096, max_pixels=1_000_000, max_upload_bytes=1 << 20)
# PEXIR_FUZZ_SCALE=50 runs fifty times as many examples (a longer campaign than CI needs).
SCALE = max(1, int(os.environ.get("PEXIR_FUZZ_SCALE", "1")))
FUZZ = settings(max_examples=150 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _seeds() -> dict[str, bytes]:
    ys, xs = np.mgrid[0:24, 0:32]
    rgb = Image.fromarray(np.stack([xs * 8, ys * 10, (xs * ys) % 256], axis=2).astype(np.uint8))
    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray((xs * 8).astype(np.uint8)))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    frames = [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    exif = Image.Exif()
    exif[0x0112] = 6
    seeds = {
        "jpeg": _encode(rgb, "JPEG", quality=80, exif=exif.tobytes()),
        "jpeg_progressive": _encode(rgb, "JPEG", quality=80, progressive=True),
        "jpeg_cmyk": _encode(rgb.convert("CMYK"), "JPEG"),
        "jpeg_gray": _encode(rgb.convert("L"), "JPEG"),
        "mpo": _encode(rgb, "MPO", save_all=True, append_images=frames[1:]),
        "png": _encode(rgb, "PNG", exif=exif.tobytes()),
        "png_rgba": _encode(rgba, "PNG"),
        "png_palette_trns": _encode(palette, "PNG", transparency=0),
        "png_16bit": _encode(Image.frombytes("I;16", (32, 24), (np.arange(32 * 24, dtype="<u2") * 80).tobytes()), "PNG"),
        "png_1bit": _encode(rgb.convert("1"), "PNG"),
        "apng": _encode(rgb, "PNG", save_all=True, append_images=frames[1:]),
        "gif": _encode(palette, "GIF", transparency=0),
        "gif_animated": _encode(rgb, "GIF", save_all=True, append_images=frames[1:]),
        "webp_lossy": _encode(rgb, "WEBP", quality=80),
        "webp_lossless": _encode(rgba, "WEBP", lossless=True, exif=exif.tobytes()),
        "webp_animated": _encode(rgb, "WEBP", save_all=True, append_images=frames[1:]),
        "bmp": _encode(rgb, "BMP"),
        "bmp_palette": _encode(palette, "BMP"),
        "bmp_rle": _encode(palette, "BMP", compression="bmp_rle"),
        "tiff": _encode(rgb, "TIFF", compression="tiff_lzw"),
    }
    try:
        seeds["heic"] = _encode(rgb, "HEIF", quality=60)
    except Exception:  # noqa: BLE001 - no HEIF encoder in this build
        pass
    return seeds


SEEDS = _seeds()
SEED_NAMES = sorted(SEEDS)
# The first bytes of each format: spliced onto other bodies they steer the input to every parser.
HEADERS = [data[:n] for data in SEEDS.values() for n in (2, 4, 8, 12, 16, 32)] + [
    b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"GIF87a", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"RIFF\xff\xff\xff\xffWEBPVP8L",
    b"RIFF\x10\x00\x00\x00WEBPVP8X", b"BM", b"II*\x00", b"MM\x00*", b"\x00\x00\x00\x18ftypheic", b"\x00\x00\x00\x18ftypmif1",
]


def check(data: bytes, keep_alpha: bool) -> None:
    try:
        array = decode_image(data, LIMITS, keep_alpha=keep_alpha)
    except TryOnError as exc:
        assert exc.code in IMAGE_CODES, exc.code
        assert exc.message and "Traceback" not in exc.message
        return
    assert isinstance(array, np.ndarray) and array.dtype == np.uint8 and array.ndim == 3
    assert array.shape[2] == 3 or (keep_alpha and array.shape[2] == 4)
    assert array.flags["C_CONTIGUOUS"] and array.flags["WRITEABLE"]
    height, width = array.shape[:2]
    assert LIMITS.min_side <= min(height, width) and max(height, width) <= LIMITS.max_side
    assert height * width <= LIMITS.max_pixels


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(SEED_NAMES))])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "overwrite", "truncate", "insert", "delete", "duplicate", "splice", "int"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            patch = draw(st.binary(min_size=1, max_size=8))
            data[at:at + len(patch)] = patch
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif kind == "duplicate":
            length = draw(st.integers(1, 256))
            data[at:at] = data[at:at + length] * draw(st.integers(1, 8))
        elif kind == "splice":
            header = draw(st.sampled_from(HEADERS))
            data = bytearray(header) + data[draw(st.integers(0, min(len(data), 64))):]
        elif kind == "int":  # sizes, lengths and offsets live in 16/32-bit fields
            value = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]))
            fmt = draw(st.sampled_from(["<H", ">H", "<I", ">I"]))
            packed = struct.pack(fmt, value & (0xFFFF if fmt.endswith("H") else 0xFFFFFFFF))
            data[at:at + len(packed)] = packed
    return bytes(data)


def test_every_seed_decodes_or_is_refused_with_a_code():
    for name in SEED_NAMES:
        check(SEEDS[name], keep_alpha=False)
        check(SEEDS[name], keep_alpha=True)


@FUZZ
@given(data=st.binary(max_size=2048), keep_alpha=st.booleans())
def test_random_bytes_only_raise_try_on_error(data, keep_alpha):
    check(data, keep_alpha)


@FUZZ
@given(prefix=st.sampled_from(HEADERS), rest=st.binary(max_size=1024), keep_alpha=st.booleans())
def test_format_header_then_random_bytes_only_raise_try_on_error(prefix, rest, keep_alpha):
    check(prefix + rest, keep_alpha)


@settings(max_examples=400 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=mutated(), keep_alpha=st.booleans())
def test_mutated_images_only_raise_try_on_error(data, keep_alpha):
    check(data, keep_alpha)


@pytest.mark.parametrize("name", SEED_NAMES)
def test_every_truncation_of_a_seed_only_raises_try_on_error(name):
    data = SEEDS[name]
    step = max(1, len(data) // 40)
    for end in range(0, len(data), step):
        check(data[:end], keep_alpha=True)
