"""Small helpers shared by the store tests: distinct PNG bytes, and the blob files on disk."""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image


def png(seed: int, size: int = 12) -> bytes:
    """A small random-noise PNG; different seeds give different bytes."""
    rng = random.Random(seed)
    image = Image.frombytes("RGB", (size, size), bytes(rng.randrange(256) for _ in range(size * size * 3)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def blob_files(data_dir: Path) -> list[Path]:
    """Every file under the store's blob folder."""
    return sorted(p for p in (data_dir / "blobs").rglob("*") if p.is_file())
