"""Per-route policy: the budget and limits tailguard applies to a route."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tailguard._numbers import finite
from tailguard.enforcement import Mode, check_mode

if TYPE_CHECKING:
    from tailguard.admission import AdaptiveLimit

__all__ = ["PRIORITY_MAX", "RoutePolicy"]

PRIORITY_MAX = 9
"""Priorities run from 0 (the default, shed first) to 9 (shed last)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutePolicy:
    """What tailguard enforces for a route: its deadline and its admission limits.

    Frozen and keyword-only; every field is validated at construction, so a bad
    value fails at import time with the field named, not at the first request.

    >>> RoutePolicy(deadline=0.25, max_concurrency=8, max_queue=16).max_queue
    16
    >>> RoutePolicy(deadline=-1)
    Traceback (most recent call last):
    ...
    ValueError: RoutePolicy.deadline must be a positive, finite number of seconds or None, got -1

    A policy with ``max_concurrency`` gets a limiter: every route its key
    covers shares that limit (a prefix key's routes share one), and keys that
    name the same ``limiter`` share one across keys.
    """

    deadline: float | None = None
    """Time budget in seconds for the whole request, queueing included; ``None``: none."""
    max_concurrency: int | None = None
    """Requests admitted at once; ``None`` turns admission control off for the route."""
    max_queue: int = 0
    """Requests that may wait for a slot; beyond that they are shed (``queue_full``)."""
    queue_timeout: float | None = None
    """Longest wait in the queue; the request's deadline caps it too."""
    priority: int = 0
    """0..9; under pressure lower priorities wait behind and are shed before higher ones."""
    tenant_concurrency: int | None = None
    """Requests one tenant may have admitted (and, again, queued) at once; tenants not
    listed in the guard's ``tenant_weights`` count as one (see ``unlisted_tenants``)."""
    limiter: str | None = None
    """Name of a limiter shared with other keys naming it; defaults to the route key."""
    adaptive: AdaptiveLimit | None = None
    """Let the limit float below ``max_concurrency`` with observed latency (Gradient2)."""
    enforce: Mode | None = None
    """``"on"``, ``"shadow"`` (decide and record, act on nothing) or the fraction of requests
    enforced; ``None``: the guard's default (see docs/rollout.md)."""

    def __post_init__(self) -> None:
        _seconds("deadline", self.deadline)
        _seconds("queue_timeout", self.queue_timeout)
        _count("max_concurrency", self.max_concurrency, 1, optional=True)
        _count("max_queue", self.max_queue, 0)
        _count("priority", self.priority, 0)
        if self.priority > PRIORITY_MAX:
            raise ValueError(
                f"RoutePolicy.priority must be between 0 and {PRIORITY_MAX}, got {self.priority!r}"
            )
        _count("tenant_concurrency", self.tenant_concurrency, 1, optional=True)
        if self.enforce is not None:
            object.__setattr__(self, "enforce", check_mode("RoutePolicy.enforce", self.enforce))
        if self.limiter is not None and (not isinstance(self.limiter, str) or not self.limiter):
            raise ValueError(f"RoutePolicy.limiter must be a non-empty name, got {self.limiter!r}")
        if self.max_concurrency is None and self.limiter is None:
            for name in ("max_queue", "queue_timeout", "tenant_concurrency", "adaptive"):
                if getattr(self, name):
                    raise ValueError(
                        f"RoutePolicy.{name} needs max_concurrency (or a shared limiter=)"
                    )

    @property
    def admission(self) -> bool:
        """Whether requests under this policy go through a limiter."""
        return self.max_concurrency is not None or self.limiter is not None


def _seconds(field: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"RoutePolicy.{field} must be a number of seconds or None, not {type(value).__name__}"
        )
    number = finite(value)
    if number is None or number <= 0:
        raise ValueError(
            f"RoutePolicy.{field} must be a positive, finite number of seconds or None, "
            f"got {value!r}"
        )


def _count(field: str, value: object, low: int, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"RoutePolicy.{field} must be an int, not {type(value).__name__}")
    if value < low:
        raise ValueError(f"RoutePolicy.{field} must be >= {low}, got {value!r}")
