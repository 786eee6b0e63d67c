"""The user's copy of everything held about them: one zip with their images and records.json."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterable
from datetime import datetime

from .records import ResultRecord, UploadRecord

_EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif", "image/bmp": ".bmp", "image/heic": ".heic"}


def extension_for(content_type: str) -> str:
    return _EXTENSIONS.get(content_type, ".bin")


def build_export_zip(
    user_id: str,
    now: datetime,
    uploads: Iterable[tuple[UploadRecord, bytes]],
    results: Iterable[tuple[ResultRecord, bytes]],
    audit: list[dict],
) -> bytes:
    buf = io.BytesIO()
    stamp = now.timetuple()[:6]
    manifest: dict = {"user_id": user_id, "exported_at": now.isoformat(), "uploads": [], "results": [], "audit": audit}
    with zipfile.ZipFile(buf, "w") as zf:
        for folder, items in (("uploads", uploads), ("results", results)):
            for record, data in items:
                name = f"{folder}/{record.id}{extension_for(record.content_type)}"
                zf.writestr(zipfile.ZipInfo(name, stamp), data, compress_type=zipfile.ZIP_STORED)
                manifest[folder].append({**record.to_json(), "file": name})
        zf.writestr(
            zipfile.ZipInfo("records.json", stamp),
            json.dumps(manifest, indent=2, sort_keys=True),
            compress_type=zipfile.ZIP_DEFLATED,
        )
    return buf.getvalue()
