"""Privacy rule 1 end to end: after real try-ons through the service, no file the run wrote —
store, database, logs, Ray's session directory — holds the geometry that was computed."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import SERVICE_KEY
from pexir_tryon.images import encode_png
from pexir_tryon.samples import garment_sample, person_sample

pytestmark = pytest.mark.serve

PHOTOS = ("grace_hopper", "astronaut")


def _trunc(value: float) -> bytes:
    """One-decimal truncation: a prefix of any rendering of the number with one or more decimals."""
    return f"{math.floor(value * 10) / 10:.1f}".encode()


def _sci(value: float) -> bytes:
    """The first five significant digits in scientific notation ('2.6980' of 2.69801270e+02)."""
    return f"{abs(value):.10e}"[:6].encode()


def geometry_needles(geometry) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
    """Binary patterns (float32/float64 landmark values) and text pairs (x near y) of the geometry."""
    binary, pairs = [], []
    for x, y, visibility in geometry.landmarks:
        if visibility < 0.5:
            continue
        binary.append(np.array([x, y], dtype=np.float32).tobytes())
        binary.append(np.array([x, y], dtype=np.float64).tobytes())
        pairs.append((_trunc(float(x)), _trunc(float(y))))
        pairs.append((_sci(float(x)), _sci(float(y))))
    if geometry.face_box is not None:
        x0, y0, x1, y1 = geometry.face_box
        pairs.append((_trunc(x0), _trunc(y0)))
        binary.append(np.array(geometry.face_box, dtype=np.float32).tobytes())
    return binary, pairs


def find_geometry(data: bytes, binary: list[bytes], pairs: list[tuple[bytes, bytes]], window: int = 80) -> str | None:
    for needle in binary:
        if needle in data:
            return f"binary {needle.hex()}"
    for xs, ys in pairs:
        start = data.find(xs)
        while start != -1:
            if ys in data[max(0, start - window) : start + len(xs) + window]:
                return f"text {xs.decode()} near {ys.decode()}"
            start = data.find(xs, start + 1)
    return None


def files_under(*roots: Path):
    for root in roots:
        for path in Path(root).rglob("*"):
            if path.is_file() and not path.is_symlink():
                yield path


@pytest.fixture(scope="module")
def tryon_run(service, detector):
    """Runs try-ons through the service; returns the geometry computed for the same photos."""
    geometries = {}
    with httpx.Client(base_url=service, timeout=180) as client:
        for name in PHOTOS:
            photo = encode_png(person_sample(name))
            response = client.post(
                "/v1/tryon",
                files={"person": ("p.png", photo, "image/png"), "garment": ("g.png", encode_png(garment_sample("tshirt")), "image/png")},
                data={"save": "true"},
                headers={"Authorization": f"Bearer {SERVICE_KEY}", "X-User-Id": "privacy-check"},
            )
            assert response.status_code == 200, response.text
            geometries[name] = detector.detect(person_sample(name))
    return geometries


def test_the_scanner_finds_landmarks_printed_by_numpy_or_json(tryon_run, tmp_path):
    geometry = tryon_run["grace_hopper"]
    binary, pairs = geometry_needles(geometry)
    assert find_geometry(str(geometry.landmarks).encode(), binary, pairs)
    assert find_geometry(repr(geometry.landmarks.tolist()).encode(), binary, pairs)
    assert find_geometry(geometry.landmarks.tobytes(), binary, pairs)
    assert find_geometry(b"nothing to see here 1.0 2.0", binary, pairs) is None


def test_no_file_written_by_the_run_holds_the_geometry(tryon_run, service_settings, ray_session):
    roots = [Path(service_settings["data_dir"]), Path(ray_session)]
    scanned, hits = 0, []
    for path in files_under(*roots):
        data = path.read_bytes()
        scanned += 1
        for name, geometry in tryon_run.items():
            hit = find_geometry(data, *geometry_needles(geometry))
            if hit:
                hits.append(f"{path}: {name} {hit}")
    assert scanned > 10, "the run wrote almost nothing: the scan would prove nothing"
    assert not hits, "\n".join(hits[:20])
