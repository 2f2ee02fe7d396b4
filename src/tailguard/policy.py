"""Per-route policy: the budget and limits tailguard applies to a route."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["RoutePolicy"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutePolicy:
    """What tailguard enforces for a route: its deadline (and, later, its limits).

    Frozen and keyword-only; every field is validated at construction, so a bad
    value fails at import time with the field named, not at the first request.

    >>> RoutePolicy(deadline=0.25).deadline
    0.25
    >>> RoutePolicy(deadline=-1)
    Traceback (most recent call last):
    ...
    ValueError: RoutePolicy.deadline must be a positive, finite number of seconds or None, got -1
    """

    deadline: float | None = None
    """Time budget in seconds for the whole request, or ``None`` for no budget."""

    def __post_init__(self) -> None:
        value = self.deadline
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(
                f"RoutePolicy.deadline must be a number of seconds or None, "
                f"not {type(value).__name__}"
            )
        if not (math.isfinite(value) and value > 0):
            raise ValueError(
                "RoutePolicy.deadline must be a positive, finite number of seconds or None, "
                f"got {value!r}"
            )
