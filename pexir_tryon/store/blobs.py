"""Where encrypted image bytes live: a local directory (default) or any fsspec URL (s3://, gs://, ...).

Keys are ``<kind>/<created epoch s>-<record id>.blob``: no user id, no content type, nothing about
the person. The creation time in the name lets the sweeper age orphans with the store's own
clock on any filesystem, including object stores whose modification times differ.

Local writes are atomic: the bytes go to a hidden temp file in the same directory, are fsynced
and then renamed over the final name, so a reader never sees half a blob. Object stores' PUT is
already atomic, so there the bytes are written to the final key directly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ..atomic import TMP_PREFIX, write_atomically

SUFFIX = ".blob"


@dataclass(frozen=True)
class BlobEntry:
    key: str
    created_epoch_s: int | None  # None: a name this store did not make (left alone)
    is_temp: bool


def blob_key(kind: str, record_id: str, created_epoch_s: int) -> str:
    return f"{kind}/{created_epoch_s}-{record_id}{SUFFIX}"


def parse_key(key: str) -> BlobEntry:
    name = key.rsplit("/", 1)[-1]
    is_temp = name.startswith(TMP_PREFIX)
    if is_temp:
        name = name[len(TMP_PREFIX) :]
    head = name.split("-", 1)[0]
    created = int(head) if head.isdigit() else None
    if not is_temp and not name.endswith(SUFFIX):
        created = None
    return BlobEntry(key=key, created_epoch_s=created, is_temp=is_temp)


class BlobStore:
    def __init__(self, url: str):
        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url)
        self.root = root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)
        if self.is_local:
            Path(self.root).mkdir(parents=True, exist_ok=True, mode=0o700)

    @property
    def local_root(self) -> Path | None:
        return Path(self.root) if self.is_local else None

    def _path(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError("bad blob key")
        return f"{self.root}/{key}"

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if self.is_local:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        write_atomically(self.fs, path, data, mode=0o600)

    def get(self, key: str) -> bytes:
        """The stored bytes; FileNotFoundError if the blob is gone."""
        return self.fs.cat_file(self._path(key))

    def delete(self, key: str) -> bool:
        """Remove one blob; True if it existed."""
        path = self._path(key)
        if self.is_local:
            try:
                os.remove(path)
            except FileNotFoundError:
                return False
            return True
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            return False
        return True

    def list(self) -> list[BlobEntry]:
        """Every file under the root (temp files included), as keys relative to the root."""
        out: list[BlobEntry] = []
        if self.is_local:
            for dirpath, _dirs, files in os.walk(self.root):
                rel_dir = os.path.relpath(dirpath, self.root)
                for name in files:
                    key = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
                    out.append(parse_key(key))
            return out
        try:
            paths = self.fs.find(self.root)
        except FileNotFoundError:
            return out
        root = self.fs._strip_protocol(self.root).rstrip("/") + "/"
        for p in paths:
            p = self.fs._strip_protocol(p)
            if p.startswith(root):
                out.append(parse_key(p[len(root) :]))
        return out
