"""The CLI: `pexir-tryon run` writes an image on success and one `error[<code>]` line on rejection."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pexir_tryon.cli", *args], capture_output=True, text=True, timeout=300)


def test_run_on_a_bundled_photo_writes_an_image_of_the_photos_size(tmp_path):
    out = tmp_path / "tryon.png"
    result = run_cli("run", "sample:grace_hopper", "sample:tshirt", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert Image.open(out).size == (512, 600)


def test_run_writes_jpeg_when_asked(tmp_path):
    out = tmp_path / "tryon.jpg"
    assert run_cli("run", "sample:astronaut", "sample:dress", "-o", str(out)).returncode == 0
    assert Image.open(out).format == "JPEG"


def test_rejected_input_exits_2_with_one_error_line(tmp_path):
    result = run_cli("run", "sample:astronaut", "sample:trousers", "-o", str(tmp_path / "x.png"))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error[")]
    assert lines == [lines[-1]] and lines[0].startswith("error[body_region_not_visible]: ")
    assert not (tmp_path / "x.png").exists()


def test_a_file_that_is_not_an_image_is_invalid_image(tmp_path):
    bogus = tmp_path / "person.jpg"
    bogus.write_text("<html>not a photo</html>")
    result = run_cli("run", str(bogus), "sample:tshirt", "-o", str(tmp_path / "x.png"))
    assert result.returncode == 2
    assert "error[invalid_image]:" in result.stderr


def test_unknown_category_is_unsupported_category(tmp_path):
    result = run_cli("run", "sample:astronaut", "sample:tshirt", "--category", "hat", "-o", str(tmp_path / "x.png"))
    assert result.returncode == 2 and "error[unsupported_category]:" in result.stderr


def test_missing_file_is_invalid_request(tmp_path):
    result = run_cli("run", str(tmp_path / "nope.png"), "sample:tshirt", "-o", str(tmp_path / "x.png"))
    assert result.returncode == 2 and "error[invalid_request]:" in result.stderr


def test_garment_file_with_alpha_is_used_as_a_cutout(tmp_path):
    from pexir_tryon.samples import garment_sample

    path = tmp_path / "cutout.png"
    Image.fromarray(garment_sample("longsleeve_cutout")).save(path)
    out = tmp_path / "out.png"
    result = run_cli("run", "sample:grace_hopper", str(path), "-o", str(out))
    assert result.returncode == 0, result.stderr
    from pexir_tryon.samples import person_sample

    output = np.asarray(Image.open(out).convert("RGB")).astype(int)
    changed = np.abs(output - person_sample("grace_hopper").astype(int)).sum(axis=2) > 60
    assert changed.mean() > 0.1  # the blue cut-out now covers the torso
