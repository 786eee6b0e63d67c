"""Refiner model files: manifests, checksum verification, clear load errors, fetch over HTTP(S)."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pexir_tryon.config import RefinerSettings
from pexir_tryon.errors import TryOnError
from pexir_tryon.refine import MANIFEST_FILENAME, DiffusionRefiner, fetch_model, load_manifest, load_refiner_model, verify_model_dir
from pexir_tryon.refine.manifest import TBD, available_manifests, manifests_dir

UNET_WEIGHTS = "unet/diffusion_pytorch_model.fp16.safetensors"
VAE_WEIGHTS = "vae/diffusion_pytorch_model.fp16.safetensors"
SETTINGS = RefinerSettings(resolution=128, steps=4, strength=0.75)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def model_copy(tiny_refiner_dir, tmp_path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(tiny_refiner_dir, target)
    return target


def expect_unavailable(model_dir: Path, settings: RefinerSettings = SETTINGS) -> str:
    with pytest.raises(TryOnError) as caught:
        load_refiner_model(model_dir, "cpu", settings)
    assert caught.value.code == "model_not_available"
    assert caught.value.http_status == 503
    return caught.value.message


# -- the tiny model and the real layout ---------------------------------------------------------


def test_tiny_model_loads_through_the_production_path(tiny_refiner_dir):
    model = load_refiner_model(tiny_refiner_dir, "cpu", SETTINGS)
    assert model.info["pipeline"] == "StableDiffusionInpaintPipeline"
    assert model.info["unet_in_channels"] == 9
    assert model.info["dtype"] == "float32"  # auto on CPU
    assert model.info["attention"] == "AttnProcessor2_0"  # SDPA
    assert model.info["variant"] == "fp16"
    assert model.pipe.text_encoder is None and model.pipe.tokenizer is None  # encoded once, then dropped
    assert set(model.conditioning) == {"prompt_embeds", "negative_prompt_embeds"}
    assert model.conditioning["prompt_embeds"].shape == (1, 77, 32)
    assert model.vae_scale_factor == 8


def test_tiny_model_has_the_real_sd15_layout(tiny_refiner_dir):
    tiny = json.loads((tiny_refiner_dir / MANIFEST_FILENAME).read_text())
    real = load_manifest("sd15-inpainting")
    assert {f["path"] for f in tiny["files"]} == {f["path"] for f in real["files"]}
    assert tiny["variant"] == real["variant"]
    assert all(len(f["sha256"]) == 64 for f in tiny["files"])  # the builder records real checksums


def test_repository_manifests_are_valid():
    names = available_manifests()
    assert "sd15-inpainting" in names
    for name in names:
        manifest = load_manifest(name)
        assert manifest["name"] == name
        source = manifest["source"]
        assert source["repository"] and len(source["revision"]) == 40
        assert manifest["licence"]
    assert (manifests_dir() / "sd15-inpainting.json").is_file()


def test_prompt_must_match_the_loaded_conditioning(tiny_refiner_dir):
    model = load_refiner_model(tiny_refiner_dir, "cpu", SETTINGS)
    with pytest.raises(ValueError, match="prompt"):
        DiffusionRefiner(model, SETTINGS.model_copy(update={"prompt": "something else"}))


# -- clear errors for missing or corrupt files --------------------------------------------------


def test_missing_weight_file_is_named(model_copy):
    (model_copy / UNET_WEIGHTS).unlink()
    message = expect_unavailable(model_copy)
    assert UNET_WEIGHTS in message and "missing" in message


def test_corrupt_weight_file_is_named(model_copy):
    path = model_copy / VAE_WEIGHTS
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    path.write_bytes(bytes(data))
    message = expect_unavailable(model_copy)
    assert VAE_WEIGHTS in message and "sha256" in message


def test_truncated_weight_file_is_named(model_copy):
    path = model_copy / UNET_WEIGHTS
    path.write_bytes(path.read_bytes()[:1000])
    message = expect_unavailable(model_copy)
    assert UNET_WEIGHTS in message and "size" in message


def test_missing_manifest_is_named(model_copy):
    (model_copy / MANIFEST_FILENAME).unlink()
    message = expect_unavailable(model_copy)
    assert MANIFEST_FILENAME in message and "models fetch" in message


def test_missing_directory(tmp_path):
    message = expect_unavailable(tmp_path / "nowhere")
    assert "does not exist" in message


def test_unverified_corrupt_weights_still_fail_cleanly(model_copy):
    """With checksums off, a same-size garbage file still ends as model_not_available, not a crash."""
    path = model_copy / UNET_WEIGHTS
    path.write_bytes(b"\0" * path.stat().st_size)
    message = expect_unavailable(model_copy, SETTINGS.model_copy(update={"verify_checksums": False}))
    assert str(model_copy) in message


def test_unknown_checksum_refused_when_verifying(model_copy):
    manifest = json.loads((model_copy / MANIFEST_FILENAME).read_text())
    manifest["files"][0]["sha256"] = TBD
    (model_copy / MANIFEST_FILENAME).write_text(json.dumps(manifest))
    message = expect_unavailable(model_copy)
    assert manifest["files"][0]["path"] in message
    verify_model_dir(model_copy, check_sha256=False)  # presence and sizes still pass


def test_manifest_paths_cannot_escape_the_model_dir(model_copy):
    manifest = json.loads((model_copy / MANIFEST_FILENAME).read_text())
    manifest["files"].append({"path": "../outside", "sha256": TBD})
    (model_copy / MANIFEST_FILENAME).write_text(json.dumps(manifest))
    assert "relative path" in expect_unavailable(model_copy)


# -- fetch over HTTP from a local mirror ----------------------------------------------------------

REVISION = "0123456789abcdef0123456789abcdef01234567"


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.fixture
def mirror(tiny_refiner_dir):
    """A local server answering /org/tiny/resolve/<rev>/<path> like the Hugging Face hub."""
    corrupt: set[str] = set()

    class Handler(BaseHTTPRequestHandler):
        def _file(self):
            prefix = f"/org/tiny/resolve/{REVISION}/"
            if not self.path.startswith(prefix):
                return None, None
            rel = self.path[len(prefix) :]
            path = tiny_refiner_dir / rel
            if rel == MANIFEST_FILENAME or not path.is_file():
                return rel, None
            return rel, path.read_bytes()

        def _headers(self, rel, data):
            if data is None:
                self.send_response(404)
                self.end_headers()
                return False
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Repo-Commit", REVISION)
            if rel.endswith(".safetensors"):
                self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
            else:
                self.send_header("ETag", f'"{_git_sha1(data)}"')
            self.end_headers()
            return True

        def do_HEAD(self):  # noqa: N802
            rel, data = self._file()
            self._headers(rel, data)

        def do_GET(self):  # noqa: N802
            rel, data = self._file()
            if self._headers(rel, data):
                if rel in corrupt:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", corrupt
    server.shutdown()
    server.server_close()


def _manifest_file(tiny_refiner_dir: Path, tmp_path: Path, *, unknown: bool) -> Path:
    manifest = json.loads((tiny_refiner_dir / MANIFEST_FILENAME).read_text())
    manifest["name"] = "tiny-mirror"
    manifest["source"] = {"repository": "org/tiny", "revision": REVISION}
    if unknown:
        for entry in manifest["files"]:
            entry["sha256"] = TBD
            entry.pop("size", None)
    path = tmp_path / "tiny-mirror.json"
    path.write_text(json.dumps(manifest))
    return path


@pytest.mark.parametrize("unknown", [False, True], ids=["pinned", "tbd"])
def test_fetch_downloads_verifies_and_loads(tiny_refiner_dir, tmp_path, mirror, unknown):
    base_url, _ = mirror
    dest = fetch_model(_manifest_file(tiny_refiner_dir, tmp_path, unknown=unknown), tmp_path / "fetched", base_url=base_url)
    local = verify_model_dir(dest)  # every sha256 resolved and checked
    original = json.loads((tiny_refiner_dir / MANIFEST_FILENAME).read_text())
    assert {f["path"]: f["sha256"] for f in local["files"]} == {f["path"]: f["sha256"] for f in original["files"]}
    assert not list(dest.rglob("*.part"))
    load_refiner_model(dest, "cpu", SETTINGS)
    # a second fetch keeps what is already there and verified
    fetch_model(_manifest_file(tiny_refiner_dir, tmp_path, unknown=False), dest, base_url=base_url)


@pytest.mark.parametrize("unknown", [False, True], ids=["pinned", "tbd"])
def test_fetch_rejects_corrupt_download(tiny_refiner_dir, tmp_path, mirror, unknown):
    base_url, corrupt = mirror
    corrupt.add(UNET_WEIGHTS)
    with pytest.raises(TryOnError) as caught:
        fetch_model(_manifest_file(tiny_refiner_dir, tmp_path, unknown=unknown), tmp_path / "fetched", base_url=base_url)
    assert caught.value.code == "model_not_available"
    assert UNET_WEIGHTS in caught.value.message and "mismatch" in caught.value.message
    assert not (tmp_path / "fetched" / UNET_WEIGHTS).exists()
    assert not list((tmp_path / "fetched").rglob("*.part"))
    assert not (tmp_path / "fetched" / MANIFEST_FILENAME).exists()


def test_fetch_names_a_file_the_server_lacks(tiny_refiner_dir, tmp_path, mirror):
    base_url, _ = mirror
    manifest = json.loads(_manifest_file(tiny_refiner_dir, tmp_path, unknown=False).read_text())
    manifest["files"].append({"path": "unet/extra.safetensors", "sha256": "0" * 64})
    path = tmp_path / "extra.json"
    path.write_text(json.dumps(manifest))
    with pytest.raises(TryOnError, match="unet/extra.safetensors.*404"):
        fetch_model(path, tmp_path / "fetched", base_url=base_url)


def test_fetch_refuses_plain_http_to_remote_hosts(tiny_refiner_dir, tmp_path):
    with pytest.raises(TryOnError, match="HTTPS"):
        fetch_model(_manifest_file(tiny_refiner_dir, tmp_path, unknown=False), tmp_path / "x", base_url="http://example.com")


def test_fetch_unknown_name(tmp_path):
    with pytest.raises(TryOnError, match="sd15-inpainting"):
        fetch_model("no-such-model", tmp_path)


def test_refiner_from_settings(tiny_refiner_dir, tmp_path, caplog):
    from pexir_tryon.refine import refiner_from_settings

    with caplog.at_level("WARNING"):
        assert refiner_from_settings(SETTINGS, "cpu") is None
    assert "without stage 3" in caplog.text
    refiner = refiner_from_settings(SETTINGS.model_copy(update={"model_dir": tiny_refiner_dir}), "auto")
    assert isinstance(refiner, DiffusionRefiner)
    with pytest.raises(TryOnError) as caught:
        refiner_from_settings(SETTINGS.model_copy(update={"model_dir": tmp_path / "missing"}), "cpu")
    assert caught.value.code == "model_not_available"
