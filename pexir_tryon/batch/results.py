"""The results manifest `results.jsonl` in the output folder: one JSON object per row.

Fields: `id`, `status` (`done` | `failed`), `output` (the PNG's path or URL, null when failed),
`error_code`, `error_message` (null when done), `timings` (seconds per stage: read, geometry,
warp, refine, write, total; the alibaba backend reports its own stages), plus `fingerprint`
(what the row was made from), `backend` and `finished_at` (UTC, ISO 8601).

JSON Lines rather than Parquet because it can be appended to: the driver adds the rows of each
finished batch as soon as it arrives (flushed and fsynced), so a crash or interrupt loses only
the rows in flight. While a run is going (or after a crash) an id may appear more than once and
the last line wins; when a run ends the file is rewritten atomically with one line per id.
Object stores cannot append: there each batch is written as its own file under
`results.parts/`, and the parts are folded into `results.jsonl` at the end of the run (and by
the next run, if one crashed before that).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ..atomic import TMP_PREFIX, write_atomically

log = logging.getLogger(__name__)

RESULTS_NAME = "results.jsonl"
PARTS_DIR = "results.parts"
OUTPUT_SUFFIX = ".png"
FIELDS = ("id", "status", "output", "error_code", "error_message", "timings", "fingerprint", "backend", "finished_at")


def out_location(out: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and root path of `--out` (a directory or fsspec URL)."""
    if "://" not in out:
        out = str(Path(out).expanduser().resolve())
    fs, root = fsspec.core.url_to_fs(out)
    return fs, root.rstrip("/") or "/"


def output_path(root: str, row_id: str) -> str:
    return f"{root}/{row_id}{OUTPUT_SUFFIX}"


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class ResultsLog:
    """Reads what earlier runs recorded and appends this run's rows, batch by batch."""

    def __init__(self, out: str):
        self.fs, self.root = out_location(out)
        self.local = isinstance(self.fs, LocalFileSystem)
        self.path = f"{self.root}/{RESULTS_NAME}"
        self.parts = f"{self.root}/{PARTS_DIR}"
        self._run = f"{int(time.time())}-{secrets.token_hex(3)}"
        self._seq = 0
        if self.local:
            os.makedirs(self.root, exist_ok=True)

    # -- reading -----------------------------------------------------------------------------

    def load(self) -> dict[str, dict]:
        """The latest record of each id (results.jsonl, then any parts left by a crashed run)."""
        latest: dict[str, dict] = {}
        for text in self._texts():
            for number, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line torn by a crash: that row is simply redone
                    log.warning("results: skipped an unreadable line", extra={"event": "results_torn_line", "line": number})
                    continue
                if isinstance(record, dict) and isinstance(record.get("id"), str):
                    latest.pop(record["id"], None)  # keep file order = order of last write
                    latest[record["id"]] = record
        return latest

    def _texts(self):
        if self.fs.exists(self.path):
            yield self.fs.cat_file(self.path).decode("utf-8", errors="replace")
        for part in self._part_files():
            yield self.fs.cat_file(part).decode("utf-8", errors="replace")

    def _part_files(self) -> list[str]:
        try:
            return sorted(p for p in self.fs.ls(self.parts, detail=False) if p.endswith(".jsonl"))
        except FileNotFoundError:
            return []

    def existing_outputs(self) -> set[str]:
        """Ids whose `<id>.png` is in the output folder now."""
        try:
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False)]
        except FileNotFoundError:
            return set()
        return {n[: -len(OUTPUT_SUFFIX)] for n in names if n.endswith(OUTPUT_SUFFIX) and not n.startswith(TMP_PREFIX)}

    def remove_stale_temp_files(self) -> int:
        """Half-written outputs of a run that crashed mid-write (local folders only)."""
        if not self.local:
            return 0
        removed = 0
        for name in os.listdir(self.root):
            if name.startswith(TMP_PREFIX):
                try:
                    os.remove(os.path.join(self.root, name))
                    removed += 1
                except OSError:
                    pass
        return removed

    # -- writing -----------------------------------------------------------------------------

    def append(self, records: list[dict]) -> None:
        """Make these rows durable now (one fsync per batch)."""
        if not records:
            return
        data = "".join(json.dumps({k: r.get(k) for k in FIELDS}, separators=(",", ":")) + "\n" for r in records).encode()
        if not self.local:
            self._seq += 1
            self.fs.pipe_file(f"{self.parts}/{self._run}-{self._seq:06d}.jsonl", data)
            return
        with open(self.path, "ab") as handle:
            if handle.tell() > 0 and not _ends_with_newline(self.path):
                handle.write(b"\n")  # a previous run died mid-line
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    def compact(self, order: list[str] | None = None) -> int:
        """Rewrite results.jsonl with one line per id (ids in `order` first, in that order), atomically,
        and drop the parts it folded in. Returns the number of lines written."""
        parts = self._part_files()
        latest = self.load()
        if not latest and not parts:
            return 0
        ids = [i for i in (order or []) if i in latest]
        listed = set(ids)
        ids += [i for i in latest if i not in listed]
        data = "".join(json.dumps({k: latest[i].get(k) for k in FIELDS}, separators=(",", ":")) + "\n" for i in ids).encode()
        write_atomically(self.fs, self.path, data)
        for part in parts:
            try:
                self.fs.rm_file(part)
            except FileNotFoundError:
                pass
        return len(ids)


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"
