"""Refiner model manifests: what files, from where, at which revision, with which sha256.

A manifest is a JSON file (``models/<name>.json`` in the repository) of this shape::

    {
      "schema": 1,
      "name": "sd15-inpainting",
      "description": "...",
      "source": {"host": "https://huggingface.co", "repository": "owner/repo", "revision": "<40-hex commit>"},
      "licence": "CreativeML OpenRAIL-M",
      "variant": "fp16",            # diffusers weight variant, or null
      "files": [{"path": "unet/config.json", "sha256": "<64 hex>", "size": 1234}, ...]
    }

``fetch_model`` downloads every listed file over HTTPS at the pinned revision, checks its sha256
and writes a copy of the manifest, with every sha256 and size filled in, into the model directory
as ``pexir-manifest.json``. The loader (``verify_model_dir``) checks that directory against that
local copy: every file present, of the recorded size and sha256. Nothing downloads at run time.

A file whose sha256 could not be written into the repository's manifest is marked
``"TBD-verify-on-fetch"``: ``fetch_model`` then checks it against the hash the hub states for the
pinned commit (``X-Linked-Etag``: sha256 of an LFS file; ``ETag``: git blob sha1 of a small file)
and records the sha256 it computed in the local copy, so every later load is verified.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, urlparse

from pexir_tryon.errors import TryOnError

log = logging.getLogger(__name__)

MANIFEST_FILENAME = "pexir-manifest.json"
TBD = "TBD-verify-on-fetch"
DEFAULT_HOST = "https://huggingface.co"
SCHEMA = 1
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_CHUNK = 8 * 1024 * 1024


def manifests_dir() -> Path:
    """The repository's ``models/`` folder (manifests are not package data yet)."""
    return Path(__file__).resolve().parents[2] / "models"


def available_manifests() -> list[str]:
    folder = manifests_dir()
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _git_blob_sha1(path: Path) -> str:
    size = path.stat().st_size
    digest = hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_relative(path: str) -> str:
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or ".." in pure.parts or "\\" in path:
        raise ValueError(f"manifest file path {path!r} must be a relative path inside the model directory")
    return pure.as_posix()


def parse_manifest(data: Any, where: str) -> dict:
    """Check a manifest's shape; raises ValueError naming what is wrong."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: a manifest is a JSON object")
    for key in ("name", "files"):
        if key not in data:
            raise ValueError(f"{where}: missing {key!r}")
    if not isinstance(data["files"], list) or not data["files"]:
        raise ValueError(f"{where}: 'files' must be a non-empty list")
    seen = set()
    for entry in data["files"]:
        if not isinstance(entry, dict) or "path" not in entry or "sha256" not in entry:
            raise ValueError(f"{where}: each file needs 'path' and 'sha256'")
        entry["path"] = _check_relative(entry["path"])
        if entry["path"] in seen:
            raise ValueError(f"{where}: {entry['path']} is listed twice")
        seen.add(entry["path"])
        sha = entry["sha256"]
        if sha != TBD and not (isinstance(sha, str) and _HEX64.match(sha)):
            raise ValueError(f"{where}: {entry['path']}: sha256 must be 64 lowercase hex digits or {TBD!r}")
        if entry.get("size") is not None and not (isinstance(entry["size"], int) and entry["size"] >= 0):
            raise ValueError(f"{where}: {entry['path']}: size must be a non-negative integer")
    if "model_index.json" not in seen:
        raise ValueError(f"{where}: the files must include model_index.json")
    return data


def load_manifest(name_or_path: str | Path) -> dict:
    """A manifest by name (``models/<name>.json``) or by path to a JSON file."""
    path = Path(name_or_path)
    if path.suffix != ".json" or not path.is_file():
        path = manifests_dir() / f"{name_or_path}.json"
    if not path.is_file():
        known = ", ".join(available_manifests()) or "none"
        raise TryOnError("model_not_available", f"no refiner manifest named {str(name_or_path)!r} (known: {known})")
    try:
        return parse_manifest(json.loads(path.read_text(encoding="utf-8")), str(path))
    except (ValueError, json.JSONDecodeError) as exc:
        raise TryOnError("model_not_available", f"invalid manifest {path}: {exc}") from None


def write_local_manifest(model_dir: Path, *, name: str, source: dict, licence: str, variant: str | None, description: str = "") -> dict:
    """Hash every file under ``model_dir`` and write ``pexir-manifest.json`` (used by the synthetic builders)."""
    model_dir = Path(model_dir)
    files = []
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(model_dir).as_posix()
        if rel == MANIFEST_FILENAME or rel.endswith(".part"):
            continue
        files.append({"path": rel, "sha256": sha256_file(path), "size": path.stat().st_size})
    manifest = {
        "schema": SCHEMA,
        "name": name,
        "description": description,
        "source": source,
        "licence": licence,
        "variant": variant,
        "files": files,
    }
    (model_dir / MANIFEST_FILENAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def verify_model_dir(model_dir: Path, *, check_sha256: bool = True) -> dict:
    """Check ``model_dir`` against its ``pexir-manifest.json``; returns the manifest.

    Raises TryOnError("model_not_available") naming the manifest, or every missing, truncated or
    corrupt file. Sizes are checked always (cheap); sha256 when ``check_sha256`` (reads every byte:
    a few seconds for SD-1.5, files are hashed in parallel).
    """
    model_dir = Path(model_dir).expanduser()
    if not model_dir.is_dir():
        raise TryOnError("model_not_available", f"refiner model directory {model_dir} does not exist")
    manifest_path = model_dir / MANIFEST_FILENAME
    if not manifest_path.is_file():
        raise TryOnError(
            "model_not_available",
            f"{manifest_path} is missing: fetch the model with `pexir-tryon models fetch NAME` (which writes it)",
        )
    try:
        manifest = parse_manifest(json.loads(manifest_path.read_text(encoding="utf-8")), str(manifest_path))
    except (ValueError, json.JSONDecodeError) as exc:
        raise TryOnError("model_not_available", f"invalid manifest {manifest_path}: {exc}") from None

    missing, wrong_size, unknown = [], [], []
    for entry in manifest["files"]:
        path = model_dir / entry["path"]
        if not path.is_file():
            missing.append(entry["path"])
        elif entry.get("size") is not None and path.stat().st_size != entry["size"]:
            wrong_size.append(f"{entry['path']} ({path.stat().st_size} bytes, expected {entry['size']})")
        elif entry["sha256"] == TBD:
            unknown.append(entry["path"])
    if missing:
        raise TryOnError("model_not_available", f"refiner model {model_dir}: missing file(s): {', '.join(missing)}")
    if wrong_size:
        raise TryOnError("model_not_available", f"refiner model {model_dir}: corrupt file(s), wrong size: {'; '.join(wrong_size)}")
    if not check_sha256:
        return manifest
    if unknown:
        raise TryOnError(
            "model_not_available",
            f"refiner model {model_dir}: no sha256 recorded for {', '.join(unknown)}; "
            "fetch the model with `pexir-tryon models fetch NAME` or turn off refiner.verify_checksums",
        )
    entries = manifest["files"]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=min(4, len(entries))) as pool:
        digests = list(pool.map(lambda e: sha256_file(model_dir / e["path"]), entries))
    corrupt = [e["path"] for e, d in zip(entries, digests) if d != e["sha256"]]
    if corrupt:
        raise TryOnError("model_not_available", f"refiner model {model_dir}: corrupt file(s), sha256 mismatch: {', '.join(corrupt)}")
    log.info("refiner files verified", extra={"files": len(entries), "seconds": round(time.perf_counter() - started, 3)})
    return manifest


def _check_url(url: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme == "https":
        return
    if parsed.scheme == "http" and parsed.hostname in ("127.0.0.1", "localhost", "::1"):
        return  # local mirrors and tests
    raise TryOnError("invalid_request", f"refusing to download over {parsed.scheme or 'no scheme'}: models are fetched over HTTPS only")


def fetch_model(
    name: str | Path,
    dest_dir: Path,
    *,
    base_url: str | None = None,
    token: str | None = None,
    timeout_s: float = 60.0,
) -> Path:
    """Download the refiner ``name`` (a manifest name or path) into ``dest_dir`` and verify it.

    ``base_url`` overrides the manifest's host (a mirror serving ``/{repo}/resolve/{revision}/{path}``).
    Files already present with the expected sha256 are kept. Each file is written to ``*.part``
    and renamed only once its hash matches. Writes ``dest_dir/pexir-manifest.json`` with every
    sha256 and size resolved, and returns ``dest_dir``.
    """
    import httpx

    manifest = load_manifest(name)
    source = manifest.get("source") or {}
    repo, revision = source.get("repository"), source.get("revision")
    if not repo or not revision or revision == TBD:
        raise TryOnError("model_not_available", f"manifest {manifest['name']!r} has no pinned source repository and revision")
    host = (base_url or source.get("host") or DEFAULT_HOST).rstrip("/")
    _check_url(host)
    dest = Path(dest_dir).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    headers = {"User-Agent": "pexir-tryon"}
    if token:
        headers["Authorization"] = f"Bearer {token}"

    resolved_files = []
    with httpx.Client(timeout=timeout_s, headers=headers, follow_redirects=False) as client:
        for entry in manifest["files"]:
            rel = entry["path"]
            target = dest / rel
            known = entry["sha256"] if entry["sha256"] != TBD else None
            if known and target.is_file() and sha256_file(target) == known:
                resolved_files.append({"path": rel, "sha256": known, "size": target.stat().st_size})
                continue
            url = f"{host}/{repo}/resolve/{revision}/{quote(rel)}"
            stated = _stated_hashes(client, url, rel, revision) if known is None else {}
            if known is None and not stated:
                raise TryOnError("model_not_available", f"{rel}: the manifest has no sha256 and the server states no hash to check it against")
            part = target.with_name(target.name + ".part")
            digest = _download(client, url, part, rel)
            problem = None
            if known is not None and digest != known:
                problem = f"sha256 mismatch after download (got {digest}, manifest says {known})"
            elif "sha256" in stated and digest != stated["sha256"]:
                problem = f"sha256 mismatch after download (got {digest}, server states {stated['sha256']})"
            elif "git_sha1" in stated and _git_blob_sha1(part) != stated["git_sha1"]:
                problem = "git blob sha1 mismatch after download"
            if problem:
                part.unlink(missing_ok=True)
                raise TryOnError("model_not_available", f"{rel}: {problem}")
            os.replace(part, target)
            if known is None:
                log.warning("pin this sha256 in the manifest", extra={"file": rel, "sha256": digest})
            resolved_files.append({"path": rel, "sha256": digest, "size": target.stat().st_size})

    local = {key: value for key, value in manifest.items() if key != "files"}
    local["files"] = resolved_files
    local["fetched"] = {"host": host, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (dest / MANIFEST_FILENAME).write_text(json.dumps(local, indent=2) + "\n", encoding="utf-8")
    return dest


def _stated_hashes(client, url: str, rel: str, revision: str) -> dict[str, str]:
    """The hash the hub states for a file at the pinned commit (HEAD, before any redirect)."""
    import httpx

    try:
        response = client.head(url)
    except httpx.HTTPError as exc:
        raise TryOnError("model_not_available", f"{rel}: could not reach {url}: {type(exc).__name__}") from None
    if response.status_code >= 400:
        raise TryOnError("model_not_available", f"{rel}: {url} answered HTTP {response.status_code}")
    commit = response.headers.get("x-repo-commit")
    if commit and _HEX40.match(revision) and commit != revision:
        raise TryOnError("model_not_available", f"{rel}: the server resolved revision {revision} to {commit}")
    stated = {}
    linked = (response.headers.get("x-linked-etag") or "").strip('"').removeprefix("W/").strip('"')
    etag = (response.headers.get("etag") or "").strip('"').removeprefix("W/").strip('"')
    if _HEX64.match(linked):
        stated["sha256"] = linked
    elif _HEX64.match(etag):
        stated["sha256"] = etag
    elif _HEX40.match(etag):
        stated["git_sha1"] = etag
    return stated


def _download(client, url: str, part: Path, rel: str) -> str:
    """Stream ``url`` into ``part``; returns the sha256 of what arrived (removes ``part`` on failure)."""
    import httpx

    part.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    try:
        current = url
        for _ in range(10):  # follow redirects by hand, refusing any that leaves HTTPS
            with client.stream("GET", current) as response:
                if response.is_redirect:
                    current = str(response.url.join(response.headers["location"]))
                    _check_url(current)
                    continue
                if response.status_code >= 400:
                    raise TryOnError("model_not_available", f"{rel}: {url} answered HTTP {response.status_code}")
                with open(part, "wb") as f:
                    for chunk in response.iter_bytes(_CHUNK):
                        digest.update(chunk)
                        f.write(chunk)
                return digest.hexdigest()
        raise TryOnError("model_not_available", f"{rel}: too many redirects from {url}")
    except httpx.HTTPError as exc:
        part.unlink(missing_ok=True)
        raise TryOnError("model_not_available", f"{rel}: download from {url} failed: {type(exc).__name__}") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
