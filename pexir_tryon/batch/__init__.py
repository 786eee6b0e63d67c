"""Batch re-render jobs on Ray Data: `pexir-tryon rerender MANIFEST --out DIR`.

- `manifest.py`  the manifest (CSV, JSONL, Parquet): rows, id checks, path resolution
- `results.py`   `results.jsonl` in the output folder: append per batch, resume, compact
- `worker.py`    the actor: reads images via fsspec, runs the backend, writes `<id>.png`
- `rerender.py`  the driver: plan (skip what is done), actor pool, summary, the CLI entry

Importing this package imports neither Ray nor the models.
"""

from __future__ import annotations

__all__ = ["run_rerender", "rerender_command"]


def __getattr__(name: str):
    if name in __all__:
        from . import rerender

        return getattr(rerender, name)
    raise AttributeError(name)
