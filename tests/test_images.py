"""decode_image: one test per kind of bad (or awkward but valid) input file, each asserting the error
code or the exact property of the decoded array."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from pexir_tryon import images as images_module
from pexir_tryon.config import ImageSettings
from pexir_tryon.errors import TryOnError
from pexir_tryon.images import MAX_JPEG_SCANS, decode_image

from fakes.image_files import encode, png_bomb, png_bytes, png_chunk

LIMITS = ImageSettings()


# --- builders ---------------------------------------------------------------------------------


def blocks(width: int = 96, height: int = 64, size: int = 32) -> np.ndarray:
    """An asymmetric RGB picture of flat `size`-pixel blocks, each a different saturated colour."""
    palette = np.array([(230, 30, 30), (30, 200, 40), (40, 60, 220), (240, 220, 20), (20, 210, 220), (200, 40, 200),
                        (250, 250, 250), (10, 10, 10), (120, 120, 120), (250, 140, 0), (0, 100, 60), (90, 0, 140)],
                       dtype=np.uint8)
    ys, xs = np.mgrid[0:height, 0:width]
    index = (ys // size) * (width // size + 1) + xs // size
    return np.ascontiguousarray(palette[index % len(palette)])


def gradient(width: int = 96, height: int = 64) -> np.ndarray:
    """An asymmetric RGB picture in which every pixel differs from its mirror images (for lossless checks)."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.ascontiguousarray(np.stack([xs * 2 + 1, ys * 3 + 2, (xs * 7 + ys * 13) % 256], axis=2).astype(np.uint8))


def jpeg_with_exif(array: np.ndarray, exif: bytes, **kwargs) -> bytes:
    return encode(Image.fromarray(array), "JPEG", quality=95, subsampling=0, exif=exif, **kwargs)


def exif_with_orientation(orientation) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def assert_rgb(array: np.ndarray, width: int, height: int, channels: int = 3) -> None:
    assert array.dtype == np.uint8
    assert array.shape == (height, width, channels)
    assert array.flags["C_CONTIGUOUS"] and array.flags["WRITEABLE"]


def assert_close(actual: np.ndarray, expected: np.ndarray, tolerance: float) -> None:
    assert actual.shape == expected.shape
    difference = np.abs(actual.astype(np.int16) - expected.astype(np.int16))
    assert difference.mean() < tolerance, f"mean difference {difference.mean():.1f}"


def code_of(data: bytes, limits: ImageSettings = LIMITS, **kwargs) -> str:
    with pytest.raises(TryOnError) as caught:
        decode_image(data, limits, **kwargs)
    return caught.value.code


# --- empty, truncated, not an image -------------------------------------------------------------


def test_zero_bytes_is_invalid_image():
    assert code_of(b"") == "invalid_image"


def test_error_message_names_the_field():
    with pytest.raises(TryOnError) as caught:
        decode_image(b"", LIMITS, what="garment")
    assert "garment" in caught.value.message and caught.value.http_status == 400


@pytest.mark.parametrize("fraction", [0.02, 0.3, 0.6, 0.95])
def test_truncated_jpeg_is_invalid_image(fraction):
    data = encode(Image.fromarray(gradient(256, 192)), "JPEG", quality=90)
    assert code_of(data[: int(len(data) * fraction)]) == "invalid_image"


def test_truncated_progressive_jpeg_is_invalid_image():
    data = encode(Image.fromarray(gradient(256, 192)), "JPEG", quality=90, progressive=True)
    assert code_of(data[: len(data) // 2]) == "invalid_image"


@pytest.mark.parametrize("cut", ["signature", "after_ihdr", "mid_idat", "last_rows"])
def test_truncated_png_is_invalid_image(cut):
    data = encode(Image.fromarray(gradient(256, 192)), "PNG")
    idat = data.index(b"IDAT")
    end = {"signature": 5, "after_ihdr": 33, "mid_idat": idat + (len(data) - idat) // 2, "last_rows": len(data) - 12 - 8 - 64}[cut]
    assert code_of(data[:end]) == "invalid_image"


def test_png_missing_only_its_end_chunk_is_accepted():
    """Every pixel is there (as a browser would show it); only the IEND marker is missing."""
    picture = gradient()
    data = encode(Image.fromarray(picture), "PNG")
    assert data.endswith(png_chunk(b"IEND", b""))
    assert np.array_equal(decode_image(data[:-12], LIMITS), picture)


def test_png_with_bad_checksum_is_invalid_image():
    data = bytearray(encode(Image.fromarray(gradient()), "PNG"))
    data[data.index(b"IDAT") + 10] ^= 0xFF
    assert code_of(bytes(data)) == "invalid_image"


@pytest.mark.parametrize(
    "data",
    [
        b"hello, this is a text file\n" * 10,
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n",
        b"<!DOCTYPE html>\n<html><head><title>photo</title></head><body><img src='x.jpg'></body></html>\n",
        b'{"person": "base64..."}',
        b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(100),
        bytes(1000),
        b"\xff\xd8\xff",  # a JPEG's first three bytes and nothing else
    ],
    ids=["text", "pdf", "html", "json", "zip", "zeros", "jpeg_magic_only"],
)
def test_not_an_image_is_invalid_image(data):
    assert code_of(data) == "invalid_image"


@pytest.mark.parametrize(
    "data, name",
    [
        (encode(Image.fromarray(gradient()), "TIFF"), "TIFF"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + bytes(64), "AVIF"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100"/>', "SVG"),
        (b"8BPS\x00\x01" + bytes(64), "PSD"),
    ],
    ids=["tiff", "avif", "svg", "psd"],
)
def test_other_image_formats_are_unsupported_image(data, name):
    with pytest.raises(TryOnError) as caught:
        decode_image(data, LIMITS)
    assert caught.value.code == "unsupported_image"
    assert name in caught.value.message


def test_svg_sniffing_is_linear_time():
    """Thousands of empty comments and no <svg>: a backtracking pattern would take years here."""
    started = time.perf_counter()
    assert code_of(b"<!---->" * 2000 + b"<html>") == "invalid_image"
    assert code_of(b"\xef\xbb\xbf<?xml version='1.0'?>" + b"<!-- c -->" * 300 + b"<svg/>") == "unsupported_image"
    assert code_of(b"<!--" * 3000) == "invalid_image"
    assert time.perf_counter() - started < 1.0


def test_bytes_count_not_the_file_name(tmp_path):
    """A PNG saved as .jpg and a JPEG saved as .png decode as what they are."""
    picture = gradient()
    (tmp_path / "photo.jpg").write_bytes(encode(Image.fromarray(picture), "PNG"))
    (tmp_path / "photo.png").write_bytes(encode(Image.fromarray(blocks()), "JPEG", quality=95))
    (tmp_path / "photo.heic").write_bytes(encode(Image.fromarray(picture), "WEBP", lossless=True))
    assert np.array_equal(decode_image((tmp_path / "photo.jpg").read_bytes(), LIMITS), picture)
    assert_close(decode_image((tmp_path / "photo.png").read_bytes(), LIMITS), blocks(), 4)
    assert np.array_equal(decode_image((tmp_path / "photo.heic").read_bytes(), LIMITS), picture)


# --- sizes: file bytes, bombs, absurd and tiny dimensions ----------------------------------------


def test_file_over_max_upload_bytes_is_refused_without_parsing(monkeypatch):
    data = encode(Image.fromarray(gradient()), "PNG")
    opened = []
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a) or pytest.fail("parsed"))
    with pytest.raises(TryOnError) as caught:
        decode_image(data, ImageSettings(max_upload_bytes=len(data) - 1))
    assert caught.value.code == "image_too_large" and caught.value.http_status == 413
    assert str(len(data)) in caught.value.message
    assert opened == []


def test_file_exactly_max_upload_bytes_is_accepted():
    data = encode(Image.fromarray(gradient()), "PNG")
    assert_rgb(decode_image(data, ImageSettings(max_upload_bytes=len(data))), 96, 64)


def _png_real_bomb() -> bytes:
    """A complete, valid 8000x6000 grayscale PNG (48 Mpx, over the 40 Mpx limit) of about 50 kB."""
    width, height = 8000, 6000
    compressor = zlib.compressobj(9)
    row = bytes(width + 1)
    idat = b"".join(compressor.compress(row * 500) for _ in range(height // 500)) + compressor.flush()
    return png_bytes(width, height, bit_depth=8, colour_type=0, idat=idat)


def _gif_bomb(screen: tuple[int, int], frame: tuple[int, int]) -> bytes:
    """A GIF whose logical screen and first frame claim the given sizes; the LZW data is one pixel."""
    header = b"GIF89a" + struct.pack("<HHBBB", *screen, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    descriptor = b"," + struct.pack("<HHHHB", 0, 0, *frame, 0)
    return header + descriptor + b"\x02\x02\x44\x01\x00" + b";"


def _bmp_bomb(width: int, height: int) -> bytes:
    pixels = bytes(64)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + len(pixels), 0, 0, 14 + len(info)) + info + pixels


def _jpeg_bomb(width: int, height: int) -> bytes:
    """A real 64x64 JPEG whose frame header (SOF0) is patched to claim width x height."""
    data = bytearray(encode(Image.new("RGB", (64, 64), (90, 120, 150)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _webp_bomb(width: int, height: int) -> bytes:
    """A real lossless WebP whose VP8L header is patched to claim width x height (at most 16384)."""
    data = bytearray(encode(Image.new("RGB", (64, 64), (90, 120, 150)), "WEBP", lossless=True))
    assert data[12:16] == b"VP8L"
    bits = struct.unpack("<I", data[21:25])[0]
    bits = (bits & ~((1 << 28) - 1)) | (width - 1) | ((height - 1) << 14)
    data[21:25] = struct.pack("<I", bits)
    return bytes(data)


BOMBS = {
    "png_50000x50000": lambda: png_bomb(50000, 50000),
    "png_8000x6000_complete": _png_real_bomb,
    "gif_screen_50000x50000": lambda: _gif_bomb((50000, 50000), (1, 1)),
    "gif_frame_60000x60000": lambda: _gif_bomb((100, 100), (60000, 60000)),
    "bmp_50000x50000": lambda: _bmp_bomb(50000, 50000),
    "bmp_top_down_50000x50000": lambda: _bmp_bomb(50000, -50000),
    "jpeg_60000x60000": lambda: _jpeg_bomb(60000, 60000),
    "webp_16384x16384": lambda: _webp_bomb(16384, 16384),
}


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return {name: build() for name, build in BOMBS.items()}


@pytest.mark.parametrize("name", BOMBS)
def test_decompression_bomb_is_refused_before_decoding(name, bombs, monkeypatch):
    data = bombs[name]
    assert len(data) < 100_000
    loads = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self) or real_load(self))
    tracemalloc.start()
    started = time.perf_counter()
    try:
        code = code_of(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == "image_too_large"
    assert loads == [], "pixels were decoded"
    assert time.perf_counter() - started < 2.0
    assert peak < 10 * 1024 * 1024


def test_decompression_bombs_need_no_memory(tmp_path, bombs):
    """Peak resident memory of a fresh process barely grows while it refuses every bomb.

    Pillow allocates pixel buffers outside Python's allocator (invisible to tracemalloc), so this
    measures the process's peak RSS instead.
    """
    for name, data in bombs.items():
        (tmp_path / f"{name}.bin").write_bytes(data)
    (tmp_path / "warm_up.png").write_bytes(encode(Image.fromarray(gradient()), "PNG"))
    (tmp_path / "warm_up.jpg").write_bytes(encode(Image.fromarray(gradient()), "JPEG"))
    script = f"""
import resource, sys
from pathlib import Path
from pexir_tryon.config import ImageSettings
from pexir_tryon.errors import TryOnError
from pexir_tryon.images import decode_image
limits = ImageSettings()
for warm_up in (Path({str(tmp_path / "warm_up.png")!r}), Path({str(tmp_path / "warm_up.jpg")!r})):
    decode_image(warm_up.read_bytes(), limits)  # imports Pillow's plugins and codecs first
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for path in sorted(Path({str(tmp_path)!r}).glob("*.bin")):
    try:
        decode_image(path.read_bytes(), limits)
    except TryOnError as exc:
        assert exc.code == "image_too_large", (path.name, exc.code)
    else:
        raise SystemExit(path.name + " decoded")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    grown_kib = int(result.stdout.strip().splitlines()[-1])
    assert grown_kib < 20 * 1024, f"peak RSS grew by {grown_kib} KiB"


def test_pixel_limit_applies_below_the_side_limit():
    limits = ImageSettings(max_pixels=100 * 100)
    assert code_of(encode(Image.new("L", (101, 100)), "PNG"), limits) == "image_too_large"
    assert_rgb(decode_image(encode(Image.new("L", (100, 100)), "PNG"), limits), 100, 100)


@pytest.mark.parametrize("width, height", [(1, 100000), (100000, 1), (8193, 64), (64, 8193)])
def test_absurd_dimensions_are_image_too_large(width, height):
    stride = width
    data = png_bytes(width, height, bit_depth=8, colour_type=0, raw=bytes(stride * height))
    assert code_of(data) == "image_too_large"


@pytest.mark.parametrize("width, height", [(600, 70), (70, 600)])
def test_elongated_images_are_refused(width, height):
    """Both sides above min_side but more than max_aspect_ratio (8) to one."""
    assert code_of(encode(Image.new("RGB", (width, height)), "PNG")) == "image_too_large"


@pytest.mark.parametrize("width, height", [(1, 1), (63, 200), (200, 63), (10, 10)])
def test_tiny_images_are_image_too_small(width, height):
    with pytest.raises(TryOnError) as caught:
        decode_image(encode(Image.new("RGB", (width, height), (1, 2, 3)), "PNG"), LIMITS)
    assert caught.value.code == "image_too_small" and caught.value.http_status == 422
    assert f"{width}x{height}" in caught.value.message


def test_min_side_is_accepted():
    assert_rgb(decode_image(encode(Image.new("RGB", (64, 64)), "PNG"), LIMITS), 64, 64)


# --- progressive JPEG with repeated scans (CPU bomb) ----------------------------------------------


def _jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    """Split a JPEG into (marker, bytes) segments; a scan's segment includes its entropy-coded data."""
    segments, pos = [], 2
    while pos < len(data):
        marker = data[pos + 1]
        if marker == 0xD9:
            segments.append((marker, data[pos:pos + 2]))
            break
        end = pos + 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker == 0xDA:
            while not (data[end] == 0xFF and data[end + 1] not in (0x00, *range(0xD0, 0xD8))):
                end += 1
        segments.append((marker, data[pos:end]))
        pos = end
    return segments


def _repeated_scans_jpeg(extra_scans: int) -> bytes:
    data = encode(Image.new("RGB", (512, 512), (120, 130, 140)), "JPEG", progressive=True, quality=90)
    segments = _jpeg_segments(data)
    last_scan = [body for marker, body in segments if marker == 0xDA][-1]
    return b"\xff\xd8" + b"".join(body for marker, body in segments if marker != 0xD9) + last_scan * extra_scans + b"\xff\xd9"


def test_jpeg_with_hundreds_of_scans_is_refused_quickly():
    """Each repeated scan is a pass over the whole image: 130 kB of them kept libjpeg busy for 16 s."""
    data = _repeated_scans_jpeg(MAX_JPEG_SCANS * 20)
    started = time.perf_counter()
    assert code_of(data) == "invalid_image"
    assert time.perf_counter() - started < 1.0


def test_progressive_jpeg_with_some_repeated_scans_is_accepted():
    decoded = decode_image(_repeated_scans_jpeg(MAX_JPEG_SCANS // 2), LIMITS)
    assert_rgb(decoded, 512, 512)
    assert_close(decoded, np.full((512, 512, 3), (120, 130, 140), np.uint8), 3)


def test_data_after_the_jpeg_end_is_not_counted_as_scans():
    """Motion photos append a video after the JPEG; its bytes may contain 0xFFDA anywhere."""
    picture = blocks()
    data = encode(Image.fromarray(picture), "JPEG", quality=95, progressive=True) + b"\x00\xff\xda\x00" * 5000
    assert_close(decode_image(data, LIMITS), picture, 4)


def test_scan_counter_skips_garbage_between_segments_as_libjpeg_does():
    data = _repeated_scans_jpeg(0)
    scans = images_module._jpeg_scan_count(data, 1000)
    segments = _jpeg_segments(data)
    padded = b"\xff\xd8" + b"".join(b"\x17\x17" + body for marker, body in segments[:-1]) + b"\xff\xd9"
    assert scans == sum(marker == 0xDA for marker, _ in segments) == images_module._jpeg_scan_count(padded, 1000)


# --- animated and multi-picture files --------------------------------------------------------------


def _frames() -> list[Image.Image]:
    return [Image.fromarray(blocks()), Image.fromarray(np.ascontiguousarray(blocks()[:, ::-1]))]


@pytest.mark.parametrize(
    "fmt, kwargs",
    [("GIF", {}), ("WEBP", {"lossless": True}), ("PNG", {})],
    ids=["animated_gif", "animated_webp", "apng"],
)
def test_animated_images_are_unsupported(fmt, kwargs):
    first, second = _frames()
    data = encode(first, fmt, save_all=True, append_images=[second], duration=100, loop=0, **kwargs)
    with pytest.raises(TryOnError) as caught:
        decode_image(data, LIMITS)
    assert caught.value.code == "unsupported_image" and caught.value.http_status == 415


def test_animated_gif_with_a_truncated_second_frame_is_invalid_image():
    """Looking for a second frame parses it; a cut-off one must not escape as IndexError (a 500)."""
    first, second = _frames()
    data = encode(first, "GIF", save_all=True, append_images=[second])
    second_frame = data.rindex(b"\x2c\x00\x00\x00\x00")
    assert second_frame > data.index(b"\x2c\x00\x00\x00\x00")
    assert code_of(data[:second_frame + 10]) == "invalid_image"


def test_phone_jpeg_with_extra_pictures_decodes_the_first():
    """MPO: a JPEG carrying a second picture (depth map, HDR gain map) is a still photo."""
    first, second = _frames()
    data = encode(first, "MPO", save_all=True, append_images=[second], quality=95)
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert_close(decode_image(data, LIMITS), blocks(), 4)


# --- pixel formats -------------------------------------------------------------------------------


def test_rgb_png_round_trips_exactly():
    picture = gradient()
    decoded = decode_image(encode(Image.fromarray(picture), "PNG"), LIMITS)
    assert_rgb(decoded, 96, 64)
    assert np.array_equal(decoded, picture)


@pytest.mark.parametrize("keep_alpha", [False, True])
def test_grayscale_becomes_three_equal_channels(keep_alpha):
    gray = gradient()[..., 0]
    decoded = decode_image(encode(Image.fromarray(gray), "PNG"), LIMITS, keep_alpha=keep_alpha)
    assert_rgb(decoded, 96, 64)
    assert all(np.array_equal(decoded[..., c], gray) for c in range(3))


def test_one_bit_image():
    bits = gradient()[..., 0] > 100
    decoded = decode_image(encode(Image.fromarray(bits), "PNG"), LIMITS)
    assert np.array_equal(decoded, np.repeat((bits * 255).astype(np.uint8)[..., None], 3, axis=2))


def test_sixteen_bit_grayscale_png_scales_to_eight_bits():
    """Pillow opens 16-bit grayscale as mode I;16; 65535 must become 255, not be clipped or stretched."""
    values = np.array([0, 1, 128, 257, 32767, 32768, 65278, 65535], dtype=np.uint16)
    samples = np.resize(values, (64, 96))
    data = png_bytes(96, 64, bit_depth=16, colour_type=0, raw=samples.astype(">u2").tobytes())
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    decoded = decode_image(data, LIMITS)
    expected = np.round(samples.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert_rgb(decoded, 96, 64)
    assert np.array_equal(decoded[..., 0], expected) and np.array_equal(decoded[..., 2], expected)


def test_dark_sixteen_bit_grayscale_stays_dark():
    samples = np.full((64, 64), 200, dtype=np.uint16)  # 200/65535: black, not 200/255
    data = png_bytes(64, 64, bit_depth=16, colour_type=0, raw=samples.astype(">u2").tobytes())
    assert decode_image(data, LIMITS).max() == 1


def test_sixteen_bit_rgb_png_scales_to_eight_bits():
    """48-bit RGB opens as mode RGB holding the high byte of each sample: k*257 → k exactly."""
    levels = np.arange(0, 256, 5, dtype=np.uint16)
    samples = np.stack(np.meshgrid(np.resize(levels, 96), np.resize(levels[::-1], 64)) + [np.full((64, 96), 128, np.uint16)],
                       axis=2) * 257
    data = png_bytes(96, 64, bit_depth=16, colour_type=2, raw=samples.astype(">u2").tobytes())
    decoded = decode_image(data, LIMITS)
    assert_rgb(decoded, 96, 64)
    assert np.array_equal(decoded, (samples // 257).astype(np.uint8))


def test_arbitrary_sixteen_bit_rgb_is_within_one_level_of_exact_scaling():
    """Pillow keeps the high byte (v >> 8); exact rounding of v * 255 / 65535 differs by at most 1."""
    samples = np.random.default_rng(7).integers(0, 65536, size=(64, 96, 3), dtype=np.uint16)
    data = png_bytes(96, 64, bit_depth=16, colour_type=2, raw=samples.astype(">u2").tobytes())
    exact = np.round(samples.astype(np.float64) * 255 / 65535)
    assert np.abs(decode_image(data, LIMITS).astype(np.float64) - exact).max() <= 1


def test_sixteen_bit_rgba_and_gray_alpha_pngs():
    rgba = np.zeros((64, 64, 4), np.uint16)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 65535, 32896, 0, 65535
    rgba[:32, :, 3] = 0
    data = png_bytes(64, 64, bit_depth=16, colour_type=6, raw=rgba.astype(">u2").tobytes())
    decoded = decode_image(data, LIMITS)
    assert tuple(decoded[40, 5]) == (255, 128, 0) and tuple(decoded[5, 5]) == (255, 255, 255)
    assert decode_image(data, LIMITS, keep_alpha=True).shape == (64, 64, 4)

    gray_alpha = np.zeros((64, 64, 2), np.uint16)
    gray_alpha[..., 0], gray_alpha[..., 1] = 0, 65535
    gray_alpha[:, :32, 1] = 0
    data = png_bytes(64, 64, bit_depth=16, colour_type=4, raw=gray_alpha.astype(">u2").tobytes())
    decoded = decode_image(data, LIMITS, keep_alpha=True)
    assert_rgb(decoded, 64, 64, 4)
    assert tuple(decoded[0, 0]) == (0, 0, 0, 0) and tuple(decoded[0, 40]) == (0, 0, 0, 255)


def test_cmyk_jpeg_colours_are_not_inverted():
    """Photoshop-style (Adobe, inverted) CMYK JPEG: pure inks come out as their RGB colours."""
    inks = {(255, 0, 0, 0): (0, 255, 255), (0, 255, 0, 0): (255, 0, 255), (0, 0, 255, 0): (255, 255, 0),
            (0, 0, 0, 255): (0, 0, 0), (0, 0, 0, 0): (255, 255, 255), (0, 255, 255, 0): (255, 0, 0)}
    image = Image.new("CMYK", (32 * len(inks), 64))
    for i, ink in enumerate(inks):
        image.paste(ink, (32 * i, 0, 32 * (i + 1), 64))
    data = encode(image, "JPEG", quality=95)
    assert b"Adobe" in data[:64] and Image.open(io.BytesIO(data)).mode == "CMYK"
    decoded = decode_image(data, LIMITS)
    assert_rgb(decoded, 32 * len(inks), 64)
    for i, rgb in enumerate(inks.values()):
        assert np.abs(decoded[32, 32 * i + 16].astype(int) - rgb).max() <= 8, (i, decoded[32, 32 * i + 16], rgb)


def _palette_with_transparency() -> Image.Image:
    indices = (gradient()[..., 0] // 64).astype(np.uint8)  # 0..3
    image = Image.frombytes("P", (96, 64), indices.tobytes())
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30] + [0] * (256 * 3 - 12))
    return image


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency(fmt):
    image = _palette_with_transparency()
    data = encode(image, fmt, transparency=1)  # palette entry 1 (green) is transparent
    indices = np.asarray(image)
    flat = decode_image(data, LIMITS)
    assert_rgb(flat, 96, 64)
    assert (flat[indices == 1] == 255).all()
    assert (flat[indices == 0] == (255, 0, 0)).all() and (flat[indices == 3] == (10, 20, 30)).all()
    cutout = decode_image(data, LIMITS, keep_alpha=True)
    assert_rgb(cutout, 96, 64, 4)
    assert (cutout[indices == 1][:, 3] == 0).all() and (cutout[indices != 1][:, 3] == 255).all()


def test_png_palette_with_partial_alpha():
    image = _palette_with_transparency()
    data = encode(image, "PNG", transparency=bytes([255, 0, 128, 255]))
    indices = np.asarray(image)
    flat = decode_image(data, LIMITS)
    assert (flat[indices == 2] == ((0 * 128 + 255 * 127 + 127) // 255, (0 * 128 + 255 * 127 + 127) // 255, 255)).all()
    assert decode_image(data, LIMITS, keep_alpha=True)[indices == 2][:, 3].tolist() == [128] * int((indices == 2).sum())


def test_palette_without_transparency_is_rgb():
    image = _palette_with_transparency()
    decoded = decode_image(encode(image, "PNG"), LIMITS, keep_alpha=True)
    assert_rgb(decoded, 96, 64)
    assert (decoded[np.asarray(image) == 1] == (0, 255, 0)).all()


def test_rgb_png_with_transparent_colour_key():
    picture = blocks()
    key = tuple(int(v) for v in picture[0, 0])
    data = encode(Image.fromarray(picture), "PNG", transparency=key)
    keyed = (picture == key).all(axis=2)
    assert (decode_image(data, LIMITS)[keyed] == 255).all()
    assert (decode_image(data, LIMITS, keep_alpha=True)[..., 3] == np.where(keyed, 0, 255)).all()


def _rgba() -> np.ndarray:
    rgba = np.concatenate([gradient(), np.zeros((64, 96, 1), np.uint8)], axis=2)
    rgba[..., 3] = np.linspace(0, 255, 96).astype(np.uint8)[None, :]
    return rgba


def test_rgba_is_composited_on_white():
    rgba = _rgba()
    decoded = decode_image(encode(Image.fromarray(rgba), "PNG"), LIMITS)
    alpha = rgba[..., 3:].astype(np.int64)
    expected = (rgba[..., :3].astype(np.int64) * alpha + 255 * (255 - alpha) + 127) // 255
    assert_rgb(decoded, 96, 64)
    assert np.array_equal(decoded, expected.astype(np.uint8))


def test_rgba_kept_with_keep_alpha():
    rgba = _rgba()
    decoded = decode_image(encode(Image.fromarray(rgba), "PNG"), LIMITS, keep_alpha=True)
    assert_rgb(decoded, 96, 64, 4)
    assert np.array_equal(decoded, rgba)


def test_opaque_rgba_with_keep_alpha_is_rgb():
    rgba = _rgba()
    rgba[..., 3] = 255
    decoded = decode_image(encode(Image.fromarray(rgba), "PNG"), LIMITS, keep_alpha=True)
    assert_rgb(decoded, 96, 64)
    assert np.array_equal(decoded, rgba[..., :3])


@pytest.mark.parametrize("keep_alpha", [False, True])
def test_gray_alpha(keep_alpha):
    la = np.stack([gradient()[..., 1], np.where(gradient()[..., 0] > 100, 255, 0).astype(np.uint8)], axis=2)
    data = encode(Image.frombytes("LA", (96, 64), la.tobytes()), "PNG")
    decoded = decode_image(data, LIMITS, keep_alpha=keep_alpha)
    opaque = la[..., 1] == 255
    if keep_alpha:
        assert_rgb(decoded, 96, 64, 4)
        assert np.array_equal(decoded[..., 3], la[..., 1]) and np.array_equal(decoded[..., 0], la[..., 0])
    else:
        assert_rgb(decoded, 96, 64)
        assert (decoded[~opaque] == 255).all() and np.array_equal(decoded[opaque][:, 1], la[..., 0][opaque])


def test_webp_lossless_and_lossy_are_accepted():
    picture = gradient()
    assert np.array_equal(decode_image(encode(Image.fromarray(picture), "WEBP", lossless=True), LIMITS), picture)
    assert_close(decode_image(encode(Image.fromarray(blocks()), "WEBP", quality=95), LIMITS), blocks(), 6)
    rgba = _rgba()
    assert np.array_equal(decode_image(encode(Image.fromarray(rgba), "WEBP", lossless=True, exact=True), LIMITS, keep_alpha=True), rgba)


def test_bmp_and_single_frame_gif_are_accepted():
    picture = gradient()
    assert np.array_equal(decode_image(encode(Image.fromarray(picture), "BMP"), LIMITS), picture)
    palette_picture = _palette_with_transparency()
    decoded = decode_image(encode(palette_picture, "GIF"), LIMITS)
    assert np.array_equal(decoded, np.asarray(palette_picture.convert("RGB")))


# --- HEIC --------------------------------------------------------------------------------------


def _can_encode_heic() -> bool:
    try:
        encode(Image.new("RGB", (64, 64)), "HEIF")
    except Exception:  # noqa: BLE001 - pillow-heif missing, or built without an HEVC encoder
        return False
    return True


needs_heic_encoder = pytest.mark.skipif(not _can_encode_heic(), reason="pillow-heif with an HEVC encoder is not installed")


def test_heic_is_an_accepted_format():
    assert "HEIF" in images_module.ACCEPTED_FORMATS, "pillow-heif is a dependency: phones send HEIC"


@needs_heic_encoder
def test_heic_from_a_phone_is_accepted():
    """pillow-heif here can encode HEIC (x265), so this is a real HEVC-coded file."""
    picture = blocks(128, 96)
    data = encode(Image.fromarray(picture), "HEIF", quality=90)  # 4:2:0, as phones write it
    assert data[4:12] == b"ftypheic"
    decoded = decode_image(data, LIMITS)
    assert_rgb(decoded, 128, 96)
    assert_close(decoded, picture, 8)


@needs_heic_encoder
def test_heic_with_rotation_comes_out_upright():
    """A phone held upright stores the sensor's landscape pixels plus a rotation (EXIF 6)."""
    picture = blocks(128, 96)
    data = encode(Image.fromarray(picture), "HEIF", quality=95, chroma=444, exif=exif_with_orientation(6))
    decoded = decode_image(data, LIMITS)
    assert_rgb(decoded, 96, 128)
    assert_close(decoded, np.rot90(picture, -1), 6)


@needs_heic_encoder
def test_heic_with_several_pictures_decodes_the_primary():
    first, second = _frames()
    data = encode(first, "HEIF", save_all=True, append_images=[second], quality=95, chroma=444)
    assert_close(decode_image(data, LIMITS), blocks(), 6)


# --- EXIF orientation --------------------------------------------------------------------------

# What a viewer shows for each EXIF orientation, given the stored pixels (EXIF 2.32, tag 0x0112).
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1, :],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # stored row 0 is the visual left column, column 0 the top row
    6: lambda a: np.rot90(a, -1),  # rotate 90 clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # stored row 0 is the visual right, column 0 the bottom
    8: lambda a: np.rot90(a, 1),  # rotate 90 counter-clockwise
}


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_exif_orientation_lossless(orientation, fmt):
    stored = gradient()
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(Image.fromarray(stored), fmt, exif=exif_with_orientation(orientation), **kwargs)
    decoded = decode_image(data, LIMITS)
    expected = UPRIGHT[orientation](stored)
    assert_rgb(decoded, expected.shape[1], expected.shape[0])
    assert np.array_equal(decoded, expected)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_jpeg(orientation):
    stored = blocks()
    decoded = decode_image(jpeg_with_exif(stored, exif_with_orientation(orientation)), LIMITS)
    expected = UPRIGHT[orientation](stored)
    assert_rgb(decoded, expected.shape[1], expected.shape[0])
    assert_close(decoded, expected, 3)


def test_xmp_orientation_without_exif():
    stored = gradient()
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    data = encode(Image.fromarray(stored), "PNG", pnginfo=_png_info_with_xmp(xmp))
    assert np.array_equal(decode_image(data, LIMITS), np.rot90(stored, -1))


def _png_info_with_xmp(xmp: bytes):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp.decode())
    return info


BROKEN_EXIF = {
    "garbage": b"Exif\x00\x00" + bytes(range(256)) * 2,
    "header_only": b"Exif\x00\x00",
    "ifd_offset_past_end": b"Exif\x00\x00MM\x00\x2a\xff\xff\xff\x00",
    "entry_count_past_end": b"Exif\x00\x00II\x2a\x00\x08\x00\x00\x00\xff\xff\x12\x01\x03\x00",
    "orientation_zero": exif_with_orientation(0),
    "orientation_nine": exif_with_orientation(9),
    "orientation_huge": exif_with_orientation(65535),
    "orientation_wrong_type": b"Exif\x00\x00II\x2a\x00\x08\x00\x00\x00\x01\x00\x12\x01\x02\x00\x04\x00\x00\x00abc\x00\x00\x00\x00\x00",
    "ifd_loop": b"Exif\x00\x00II\x2a\x00\x08\x00\x00\x00\x01\x00\x00\x01\x03\x00\x01\x00\x00\x00\x40\x00\x00\x00\x08\x00\x00\x00",
}


@pytest.mark.parametrize("name", BROKEN_EXIF)
def test_broken_exif_is_ignored(name):
    stored = blocks()
    decoded = decode_image(jpeg_with_exif(stored, BROKEN_EXIF[name]), LIMITS)
    assert_close(decoded, stored, 3)


@pytest.mark.parametrize("name", BROKEN_EXIF)
def test_broken_exif_in_png_is_ignored(name):
    stored = gradient()
    exif = BROKEN_EXIF[name]
    data = encode(Image.fromarray(stored), "PNG", exif=exif[6:] if exif.startswith(b"Exif\x00\x00") else exif)
    assert np.array_equal(decode_image(data, LIMITS), stored)


# --- what is returned ----------------------------------------------------------------------------


def test_output_is_writable_and_independent_of_pillow():
    decoded = decode_image(encode(Image.fromarray(gradient()), "PNG"), LIMITS)
    assert decoded.flags["C_CONTIGUOUS"] and decoded.flags["WRITEABLE"] and decoded.flags["OWNDATA"]
    decoded[0, 0] = 0


def test_memoryview_and_bytearray_inputs():
    data = encode(Image.fromarray(gradient()), "PNG")
    assert np.array_equal(decode_image(bytearray(data), LIMITS), gradient())
    assert np.array_equal(decode_image(memoryview(data), LIMITS), gradient())


def test_non_bytes_input_is_invalid_image():
    assert code_of(None) == "invalid_image"  # type: ignore[arg-type]
    assert code_of("not bytes") == "invalid_image"  # type: ignore[arg-type]
