"""Image files built by hand for the decoder and HTTP robustness tests: encoded, raw PNG, bombs."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, *, bit_depth: int, colour_type: int, raw: bytes | None = None,
              idat: bytes | None = None, extra: list[bytes] = ()) -> bytes:
    """A PNG written by hand: `raw` is the unfiltered scanlines (each gets filter byte 0)."""
    if idat is None:
        channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour_type]
        stride = (width * channels * bit_depth + 7) // 8
        rows = b"".join(b"\x00" + raw[y * stride:(y + 1) * stride] for y in range(height))
        idat = zlib.compress(rows)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + b"".join(extra) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_bomb(width: int, height: int) -> bytes:
    """A PNG header claiming width x height, with a tiny compressed IDAT (two zero rows)."""
    return png_bytes(width, height, bit_depth=8, colour_type=0, idat=zlib.compress(bytes(2 * (width + 1)), 9))
