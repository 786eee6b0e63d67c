"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import secrets

from fsspec.implementations.local import LocalFileSystem

TMP_PREFIX = ".tmp-"  # half-written files carry this prefix until renamed; sweeps can spot them


def write_atomically(fs, path: str, data: bytes, *, mode: int = 0o644) -> None:
    """Local: temp file in the same folder, fsync, rename over the final name, fsync the folder.
    Object stores' PUT is atomic already, so there the bytes go to the final key directly."""
    if not isinstance(fs, LocalFileSystem):
        fs.pipe_file(path, data)
        return
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f"{TMP_PREFIX}{name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    """Make the rename itself durable (best effort: some filesystems refuse fsync on folders)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
