"""What every dependency call reports: calls by outcome, time in the slot, waits, spans.

:class:`~tailguard.dependency.seam.Seam` calls :func:`call_started` before it
asks for a slot, :func:`call_refused` when none was given, and
:func:`call_ended` when the call gives its slot back. The time is also charged
to the request being handled, for its budget split (queue, each dependency,
the handler). Calls that had to wait for a slot (granted or not) are recorded
in ``tailguard_queue_wait_seconds{kind="dependency"}``, as requests that
queued are with ``kind="route"``; calls given a slot at once are not.

>>> import asyncio
>>> from prometheus_client import CollectorRegistry
>>> from tailguard import Dependency
>>> registry = CollectorRegistry()
>>> db = Dependency("db", max_concurrency=1, registry=registry)
>>> asyncio.run(db.call(asyncio.sleep, 0))
>>> registry.get_sample_value(
...     "tailguard_dependency_calls_total", {"dependency": "db", "outcome": "ok"})
1.0
"""

from __future__ import annotations

import asyncio
from time import monotonic
from typing import TYPE_CHECKING

from tailguard import _context
from tailguard.admission import Rejected
from tailguard.deadlines import DeadlineExceeded, current_deadline
from tailguard.telemetry import otel

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from tailguard.admission import Permit
    from tailguard.telemetry.catalog import Catalog

__all__ = ["call_ended", "call_refused", "call_started", "outcome_of"]


def outcome_of(error: BaseException | None) -> str:
    """The ``outcome`` label of a call that raised ``error`` (``None``: it went well).

    >>> outcome_of(None), outcome_of(TimeoutError()), outcome_of(asyncio.CancelledError())
    ('ok', 'error', 'cancelled')
    """
    if error is None:
        return "ok"
    if isinstance(error, DeadlineExceeded):
        return "deadline_exceeded"
    if isinstance(error, Rejected):
        return "rejected"
    if isinstance(error, asyncio.CancelledError):
        # Cut off by the request's deadline (its cancellation passes through here).
        deadline = current_deadline()
        if deadline is not None and deadline.remaining() <= 0:
            return "deadline_exceeded"
        return "cancelled"
    return "error"


def call_started(name: str) -> Span | None:
    """A call of dependency ``name`` is about to ask for a slot: its span, if sampled."""
    return otel.start_dependency_span(name)


def call_refused(
    catalog: Catalog | None, name: str, error: BaseException, span: Span | None, waited: float
) -> None:
    """No slot: shed, out of time, or cancelled while waiting ``waited`` seconds.

    ``waited`` is 0.0 for a call refused before it queued (its deadline had
    no time left for one).
    """
    outcome = outcome_of(error)
    if catalog is not None:
        catalog.dependency_calls.labels(name, outcome).inc()
        if waited > 0.0:
            catalog.queue_wait.labels(name, "dependency").observe(waited)
    _charge(name, waited)
    otel.end_dependency_span(span, outcome, slot_wait=waited, error=error)


def call_ended(
    catalog: Catalog | None, name: str, permit: Permit, error: BaseException | None
) -> None:
    """The call gave its slot back; ``error`` is what it raised, if anything.

    A call given its slot at once has ``requested_at == acquired_at``: no wait.
    """
    now = monotonic()
    held = now - permit.acquired_at
    waited = permit.acquired_at - permit.requested_at
    outcome = outcome_of(error)
    if catalog is not None:
        catalog.dependency_calls.labels(name, outcome).inc()
        catalog.dependency_duration.labels(name).observe(held)
        if waited > 0.0:
            catalog.queue_wait.labels(name, "dependency").observe(waited)
    _charge(name, held + waited)
    span = permit.span
    if span is not None:
        otel.end_dependency_span(span, outcome, slot_wait=waited, error=error)


def _charge(name: str, seconds: float) -> None:
    frame = _context.current.get()
    owner = frame.owner if frame is not None else None
    charge = getattr(owner, "charge", None)
    if charge is not None:
        charge(name, seconds)
