"""Blob encryption at rest: AES-256-GCM, a random nonce per blob, the record id as associated data.

A blob on disk is ``MAGIC || nonce (12 bytes) || ciphertext+tag``. Binding the record id as
associated data means a blob copied under another record's name does not decrypt.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pexir_tryon.errors import TryOnError

MAGIC = b"PXB1"
NONCE_BYTES = 12
KEY_BYTES = 32


class BlobDecryptError(TryOnError):
    """A blob that does not decrypt with the configured key (wrong key, or the bytes were altered)."""

    def __init__(self, record_id: str):
        super().__init__(
            "internal_error",
            f"stored content of {record_id} cannot be decrypted: the blob key differs from the one it was written with, or the blob is corrupt",
        )


def decode_key(text: str) -> bytes:
    """A base64 (standard or URL-safe) 32-byte key; anything else is refused with a clear message."""
    text = text.strip()
    for decoder in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            key = decoder(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            continue
        if len(key) == KEY_BYTES:
            return key
    raise ValueError("store.encryption_key must be base64 of exactly 32 bytes (e.g. `python -c 'import os,base64;print(base64.b64encode(os.urandom(32)).decode())'`)")


def load_or_create_key_file(path: Path) -> bytes:
    """Read the key file, or create it once (mode 0600, parent 0700) with a fresh random key."""
    path = path.expanduser()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = secrets.token_bytes(KEY_BYTES)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(base64.b64encode(key).decode() + "\n")
                f.flush()
                os.fsync(f.fileno())
            return key
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ValueError(f"blob key file {path} is readable by others (mode {mode:o}); run `chmod 600 {path}`")
    return decode_key(path.read_text())


class BlobCipher:
    def __init__(self, key: bytes):
        if len(key) != KEY_BYTES:
            raise ValueError("blob key must be 32 bytes")
        self._aead = AESGCM(key)

    def encrypt(self, record_id: str, data: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return MAGIC + nonce + self._aead.encrypt(nonce, data, record_id.encode())

    def decrypt(self, record_id: str, blob: bytes) -> bytes:
        if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + NONCE_BYTES + 16:
            raise BlobDecryptError(record_id)
        nonce = blob[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, blob[len(MAGIC) + NONCE_BYTES :], record_id.encode())
        except InvalidTag:
            raise BlobDecryptError(record_id) from None

    def __repr__(self) -> str:  # never show key material
        return "BlobCipher(<key hidden>)"
