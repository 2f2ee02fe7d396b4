"""Why a request was shed: :class:`Rejected` and its reasons."""

from __future__ import annotations

from typing import Final, Literal, TypeAlias

__all__ = ["REASONS", "Reason", "Rejected"]

Reason: TypeAlias = Literal[
    "queue_full", "queue_timeout", "deadline", "tenant_limit", "priority", "budget"
]

REASONS: Final[tuple[Reason, ...]] = (
    "queue_full",
    "queue_timeout",
    "deadline",
    "tenant_limit",
    "priority",
)
"""Every reason a :class:`~tailguard.admission.Limiter` sheds with; a small, fixed set for
metric labels. :attr:`Rejected.reason` may also be ``"budget"``: the middleware's
deadline-aware admission, for a caller's budget shorter than the route usually takes
(retrying with the same budget cannot help, so it is not overload)."""

_EXPLAINED: Final[dict[str, str]] = {
    "queue_full": "no free slot and the queue is full",
    "queue_timeout": "waited in the queue for as long as allowed",
    "deadline": "not enough time left before the deadline to wait for a slot",
    "tenant_limit": "the tenant has too many requests in flight and queued",
    "priority": "pushed out of the queue by a higher-priority request",
    "budget": "the caller's budget is shorter than the route usually takes",
}


class Rejected(Exception):
    """A limiter shed the request instead of admitting it.

    ``reason`` is one of :data:`REASONS`, or ``"budget"``; ``limiter`` is the limiter's name;
    ``retry_after`` is a suggestion in seconds (a float: HTTP rounds it up to
    whole seconds, at least 1) of when capacity is likely to be free again.
    The message is built only when the exception is printed: shedding must stay
    cheap.

    >>> exc = Rejected("queue_full", "orders", 0.25)
    >>> exc.reason, exc.limiter, exc.retry_after
    ('queue_full', 'orders', 0.25)
    >>> str(exc)
    "limiter 'orders': queue_full, no free slot and the queue is full (retry after 0.250s)"
    """

    reason: Reason
    """Why the request was shed: one of :data:`REASONS`, or ``"budget"``."""
    limiter: str
    """Name of the limiter that shed it."""
    retry_after: float
    """Suggested seconds to wait before retrying."""

    def __init__(self, reason: Reason, limiter: str, retry_after: float) -> None:
        if reason not in _EXPLAINED:
            raise ValueError(f"Rejected.reason must be one of {tuple(_EXPLAINED)}, got {reason!r}")
        super().__init__(reason, limiter, retry_after)
        self.reason = reason
        self.limiter = limiter
        self.retry_after = retry_after

    def __str__(self) -> str:
        return (
            f"limiter {self.limiter!r}: {self.reason}, {_EXPLAINED[self.reason]} "
            f"(retry after {self.retry_after:.3f}s)"
        )
