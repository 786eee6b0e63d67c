"""The CLI: `pexir-tryon run` writes an image on success and one `error[<code>]` line on rejection."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
from PIL import Image


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pexir_tryon.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def one_error_line(result: subprocess.CompletedProcess, code: str) -> str:
    """The CLI promise: exit 2, exactly one `error[<code>]: ...` line, no traceback; returns the line."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error[")]
    assert len(lines) == 1 and lines[0].startswith(f"error[{code}]: "), result.stderr
    return lines[0]


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


def test_a_cuda_device_on_a_machine_without_a_gpu_is_refused_before_loading_models(tmp_path):
    result = run_cli("run", "sample:astronaut", "sample:tshirt", "-o", str(tmp_path / "x.png"), "--device", "cuda",
                     env={"CUDA_VISIBLE_DEVICES": ""})
    line = one_error_line(result, "invalid_request")
    assert "not available" in line and "--device cpu" in line


def test_an_unknown_device_is_refused_with_the_valid_ones():
    result = run_cli("run", "sample:astronaut", "sample:tshirt", "-o", "x.png", "--device", "tpu")
    line = one_error_line(result, "invalid_request")
    assert "'tpu' is not a valid device" in line and "cuda:N" in line


def test_serve_refuses_a_port_outside_1_to_65535():
    line = one_error_line(run_cli("serve", "--port", "99999"), "invalid_request")
    assert "99999" in line and "65535" in line


def test_serve_refuses_a_busy_port_before_starting_ray():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("serve", "--host", "127.0.0.1", "--port", str(port))
    line = one_error_line(result, "invalid_request")
    assert f"port {port}" in line and "already in use" in line and "--port" in line


def test_samples_out_that_is_a_file_is_refused(tmp_path):
    existing = tmp_path / "samples"
    existing.write_text("not a folder")
    line = one_error_line(run_cli("samples", "--out", str(existing)), "invalid_request")
    assert "is a file, not a folder" in line


def test_rerender_with_an_unconfigured_alibaba_backend_is_refused_before_ray(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("id,person,garment\nr1,sample:astronaut,sample:tshirt\n")
    no_alibaba_settings = {k: v for k, v in os.environ.items() if not k.startswith("PEXIR_ALIBABA__")}
    result = subprocess.run([sys.executable, "-m", "pexir_tryon.cli", "rerender", str(manifest), "--out", str(tmp_path / "renders"),
                             "--backend", "alibaba"], capture_output=True, text=True, timeout=300, env=no_alibaba_settings)
    one_error_line(result, "backend_misconfigured")
    assert "ray" not in result.stderr.lower()
    assert not (tmp_path / "renders").exists()


def test_an_unknown_person_sample_is_named_as_a_person_sample(tmp_path):
    line = one_error_line(run_cli("run", "sample:nobody", "sample:tshirt", "-o", str(tmp_path / "x.png")), "invalid_request")
    assert "person sample 'nobody'" in line and "astronaut, grace_hopper, camera." in line


def test_seed_and_steps_out_of_range_are_refused_before_loading_models(tmp_path):
    # A refiner that is not there: loading it first would answer model_not_available instead.
    missing_refiner = {"PEXIR_REFINER__MODEL_DIR": str(tmp_path / "no-such-model")}
    for option, value in (("--seed", "-1"), ("--seed", str(2**32)), ("--steps", "0"), ("--steps", "51")):
        result = run_cli("run", "sample:astronaut", "sample:tshirt", "-o", str(tmp_path / "x.png"), option, value, env=missing_refiner)
        line = one_error_line(result, "invalid_request")
        assert f"The {option.lstrip('-')} must be a whole number from" in line, line


def test_purge_refuses_a_user_id_the_http_api_would_refuse(tmp_path):
    result = run_cli("purge", "--user", "a/b c", env={"PEXIR_DATA_DIR": str(tmp_path)})
    assert "X-User-Id" in one_error_line(result, "invalid_request")


def test_purge_prints_what_it_deleted_as_json(tmp_path):
    result = run_cli("purge", "--user", "alice", env={"PEXIR_DATA_DIR": str(tmp_path), "PEXIR_STORE__KEY_FILE": str(tmp_path / "blob.key")})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"user_id": "alice", "uploads": 0, "results": 0, "audit_records": 0, "blobs": 0}
