"""The re-render manifest: rows of `id, person, garment, category, seed` from CSV, JSONL or Parquet.

Read in the driver before any work starts (it is metadata only: ids and image locations, never
pixels). Manifest-level problems (missing columns, an unusable or duplicate id, an unreadable
file) raise `TryOnError("invalid_request")` so the whole job stops before it starts; a bad value
in one row (unknown category, bad seed) is left for the worker, which records that row as failed.

Image locations are local paths or fsspec URLs; relative paths resolve against the manifest's
own folder (or URL "folder"). `sample:<name>` (as on the `run` command line) is kept as is.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import posixpath
from dataclasses import asdict, dataclass
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ..errors import TryOnError

REQUIRED_COLUMNS = ("id", "person", "garment")
OPTIONAL_COLUMNS = ("category", "seed")
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst", ".lz4")
MAX_ID_LENGTH = 200


@dataclass(frozen=True)
class ManifestRow:
    """One row, as strings. `seed` is the raw text ("" = the default seed); the worker parses it."""

    id: str
    person: str
    garment: str
    category: str
    seed: str
    fingerprint: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def manifest_format(url: str) -> str:
    name = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1].lower()
    for suffix in COMPRESSIONS:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    for suffix, kind in FORMATS.items():
        if name.endswith(suffix):
            return kind
    raise TryOnError("invalid_request", f"The manifest {url!r} must end in .csv, .jsonl or .parquet (optionally compressed, e.g. .csv.gz).")


def read_manifest(url: str, *, backend: str = "local") -> list[ManifestRow]:
    """All rows of the manifest, validated at manifest level, with image locations resolved."""
    kind = manifest_format(url)
    try:
        fs, path = fsspec.core.url_to_fs(str(Path(url).expanduser()) if "://" not in url else url)
    except (ImportError, ValueError) as exc:
        raise TryOnError("invalid_request", f"The manifest location {url!r} cannot be opened ({exc}).") from None
    if not fs.exists(path):
        raise TryOnError("invalid_request", f"The manifest {url!r} does not exist.")
    try:
        with fs.open(path, "rb", compression="infer") as handle:
            raw = handle.read()
    except OSError as exc:
        raise TryOnError("invalid_request", f"The manifest {url!r} could not be read ({type(exc).__name__}).") from None
    records = _parse(raw, kind, url)
    if not records:
        raise TryOnError("invalid_request", f"The manifest {url!r} has no rows.")
    base = _base_of(fs, path)
    rows = [_row(record, number, base, backend) for number, record in enumerate(records, start=1)]
    check_ids(rows)
    return rows


def _parse(raw: bytes, kind: str, url: str) -> list[dict]:
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(io.BytesIO(raw))
        except Exception as exc:  # noqa: BLE001 - any parser failure is a bad manifest
            raise TryOnError("invalid_request", f"The manifest {url!r} is not a readable Parquet file ({type(exc).__name__}).") from None
        _check_columns(table.column_names, url)
        return table.to_pylist()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise TryOnError("invalid_request", f"The manifest {url!r} is not UTF-8 text.") from None
    if kind == "csv":
        reader = csv.DictReader(io.StringIO(text))
        _check_columns([name.strip() for name in (reader.fieldnames or [])], url)
        out = []
        for record in reader:
            if None in record:
                raise TryOnError("invalid_request", f"Manifest line {reader.line_num} has more fields than the header.")
            out.append({(k or "").strip(): v for k, v in record.items()})
        return out
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise TryOnError("invalid_request", f"Manifest line {number} is not valid JSON.") from None
        if not isinstance(record, dict):
            raise TryOnError("invalid_request", f"Manifest line {number} is not a JSON object.")
        out.append(record)
    if out:
        _check_columns(set().union(*(r.keys() for r in out)), url)
    return out


def _check_columns(columns, url: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in set(columns)]
    if missing:
        raise TryOnError(
            "invalid_request",
            f"The manifest {url!r} lacks the column(s) {', '.join(missing)}; rows need id, person, garment and optionally category, seed.",
        )


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _row(record: dict, number: int, base: str | None, backend: str) -> ManifestRow:
    row_id = _text(record.get("id"))
    person = resolve_location(_text(record.get("person")), base)
    garment = resolve_location(_text(record.get("garment")), base)
    category = _text(record.get("category")) or "auto"
    seed = _text(record.get("seed"))
    check_id(row_id, number)
    return ManifestRow(
        id=row_id, person=person, garment=garment, category=category, seed=seed,
        fingerprint=fingerprint(person, garment, category, seed, backend),
    )


def check_id(row_id: str, number: int) -> None:
    """Ids name the output files (`<id>.png`): non-empty, one path segment, not hidden."""
    problem = None
    if not row_id:
        problem = "is empty"
    elif len(row_id.encode()) > MAX_ID_LENGTH:
        problem = f"is longer than {MAX_ID_LENGTH} bytes"
    elif any(c in row_id for c in "/\\\x00") or any(ord(c) < 32 for c in row_id):
        problem = "contains a slash, backslash or control character"
    elif row_id.startswith("."):
        problem = "starts with a dot"
    if problem:
        raise TryOnError("invalid_request", f"Manifest row {number}: the id {row_id[:60]!r} {problem}; ids name the output files <id>.png.")


def check_ids(rows: list[ManifestRow]) -> None:
    """Every id once (ignoring case too: ids name files, and some filesystems ignore case)."""
    seen: dict[str, str] = {}
    duplicates: list[str] = []
    for row in rows:
        key = row.id.casefold()
        if key in seen:
            duplicates.append(row.id if seen[key] == row.id else f"{seen[key]}/{row.id}")
        else:
            seen[key] = row.id
    if duplicates:
        shown = ", ".join(repr(d) for d in sorted(set(duplicates))[:10])
        more = f" and {len(set(duplicates)) - 10} more" if len(set(duplicates)) > 10 else ""
        raise TryOnError(
            "invalid_request",
            f"The manifest has duplicate ids (ids name output files and must be unique, ignoring case): {shown}{more}. Nothing was rendered.",
        )


def _base_of(fs, path: str) -> str | None:
    parent = posixpath.dirname(path.rstrip("/"))
    if isinstance(fs, LocalFileSystem):
        return str(Path(parent).resolve())
    return fs.unstrip_protocol(parent)


def resolve_location(location: str, base: str | None) -> str:
    """A path or URL for an image; relative paths are taken from the manifest's folder."""
    if not location or location.startswith("sample:") or "://" in location:
        return location
    if location.startswith("~"):
        return str(Path(location).expanduser())
    if location.startswith("/") or base is None:
        return location
    if "://" in base:
        return base.rstrip("/") + "/" + location
    return str(Path(base) / location)


def fingerprint(person: str, garment: str, category: str, seed: str, backend: str) -> str:
    """What a done row was made from; a changed row (or another backend) is rendered again."""
    payload = json.dumps([person, garment, category, seed, backend], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
