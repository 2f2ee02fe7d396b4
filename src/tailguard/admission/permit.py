"""A held slot: :class:`Permit`, and what giving it back does."""

from __future__ import annotations

from collections.abc import Hashable
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from tailguard.admission.limiter import Limiter

__all__ = ["Permit"]

_WARMUP = 20
"""The mean hold time is a plain mean of the first 20 holds, then an EWMA of weight 1/20."""


class Permit:
    """A slot held in a :class:`Limiter`; give it back with :meth:`release`.

    Release is idempotent: the first call returns the slot, later ones do
    nothing. ``with permit:`` releases on exit, with ``ok=False`` if the block
    raised, so the adaptive limit can tell timeouts from successes.

    >>> from tailguard.admission import Limiter
    >>> limiter = Limiter("db", max_concurrency=1)
    >>> with limiter.try_acquire() as permit:
    ...     limiter.in_use
    1
    >>> permit.released, limiter.in_use
    (True, 0)
    """

    __slots__ = ("_limiter", "acquired_at", "requested_at", "span", "tenant")

    def __init__(self, limiter: Limiter, tenant: Hashable, acquired_at: float) -> None:
        self._limiter: Limiter | None = limiter
        self.tenant = tenant
        self.acquired_at = acquired_at
        self.requested_at = acquired_at
        """When the caller asked (earlier than ``acquired_at`` if it waited); set by callers."""
        self.span: Span | None = None
        """A span the holder attaches (a dependency call's), ended when the slot goes back."""

    @property
    def released(self) -> bool:
        """Whether the slot has been given back."""
        return self._limiter is None

    def release(self, *, ok: bool = True) -> None:
        """Give the slot back (once), recording how long it was held and whether it went well."""
        limiter = self._limiter
        if limiter is None:
            return
        self._limiter = None
        # Inlined (not a call into the limiter): this runs once per request.
        hold = limiter._clock() - self.acquired_at
        holds = limiter._holds = limiter._holds + 1
        limiter._mean_hold += (hold - limiter._mean_hold) / (holds if holds < _WARMUP else _WARMUP)
        in_use = limiter.in_use
        limiter.in_use = in_use - 1
        counts = limiter._tenant_in_use
        if counts is not None:
            decrement(counts, self.tenant)
        controller = limiter._controller
        if controller is not None:
            limiter.limit = controller.sample(hold, in_use, ok)
        if limiter._queue.count:
            limiter._dispatch()

    def _discard(self) -> None:
        # Granted to a waiter that was cancelled before it could use it: the
        # slot goes back without a hold-time sample (it was never used).
        limiter = self._limiter
        assert limiter is not None  # a fresh permit nobody else has seen
        self._limiter = None
        limiter._discard(self.tenant)

    def __enter__(self) -> Permit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release(ok=exc_type is None)


def decrement(counts: dict[Hashable, int], tenant: Hashable) -> None:
    left = counts[tenant] - 1
    if left:
        counts[tenant] = left
    else:
        del counts[tenant]  # tenants are unbounded: keep only those holding permits
