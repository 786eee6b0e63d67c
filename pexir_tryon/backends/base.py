"""The Backend protocol: anything that turns a TryOnJob into a TryOnResult."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from ..errors import TryOnError

Category = Literal["upper", "lower", "dress", "auto"]
CATEGORIES: tuple[str, ...] = ("upper", "lower", "dress", "auto")
MAX_SEED = 2**32 - 1  # the same range on every entry point: HTTP, CLI, re-render manifests


def check_job_options(*, category: str, seed: int, steps: int | None = None, max_steps: int | None = None) -> None:
    """Refuse options no backend can run, with the message every entry point shows (HTTP, CLI, batch)."""
    if category not in CATEGORIES:
        raise TryOnError("unsupported_category", f"Unknown category {category!r}; use one of: {', '.join(CATEGORIES)}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise TryOnError("invalid_request", f"The seed must be a whole number from 0 to {MAX_SEED}, not {seed!r}.")
    if steps is None:
        return
    if max_steps is None:
        raise ValueError("check_job_options: steps were given without max_steps")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= max_steps:
        raise TryOnError("invalid_request", f"The steps must be a whole number from 1 to {max_steps} (refiner.max_steps), not {steps!r}.")


@dataclass(frozen=True)
class TryOnJob:
    """One try-on: a normalised person photo and garment photo plus the request's options.

    `person` is RGB uint8 HxWx3; `garment` is RGB or RGBA uint8 (alpha kept for cut-outs).
    """

    request_id: str
    user_id: str
    person: np.ndarray
    garment: np.ndarray
    category: Category = "auto"
    seed: int = 0
    steps: int | None = None

    def __repr__(self) -> str:  # no pixels in logs or tracebacks
        return (
            f"TryOnJob(request_id={self.request_id!r}, category={self.category!r}, "
            f"person={self.person.shape}, garment={self.garment.shape})"
        )


@dataclass
class TryOnResult:
    """The try-on image (RGB uint8, the person photo's size) and facts about how it was made."""

    image: np.ndarray
    category: str
    backend: str
    timings_s: dict[str, float] = field(default_factory=dict)
    refined: bool = False

    def __repr__(self) -> str:
        return f"TryOnResult(backend={self.backend!r}, category={self.category!r}, image={self.image.shape})"


@runtime_checkable
class Backend(Protocol):
    """Turns try-on jobs into results. Errors are raised as `TryOnError` with a stable code."""

    name: str

    async def try_on(self, job: TryOnJob) -> TryOnResult: ...

    async def purge_user(self, user_id: str) -> int:
        """Cancel the user's in-flight work and delete whatever was sent elsewhere for them.

        Returns how many items were cancelled or deleted."""
        ...

    async def close(self) -> None: ...
