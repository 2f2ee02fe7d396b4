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
...     "tailguard_dependency_calls_total",
...     {"dependency": "db", "outcome": "ok", "status_class": "none"})
1.0
"""

from __future__ import annotations

import asyncio
from time import monotonic
from typing import TYPE_CHECKING, Any

from tailguard import _context
from tailguard.admission import Rejected
from tailguard.deadlines import DeadlineExceeded, current_deadline
from tailguard.telemetry import otel
from tailguard.telemetry.requests import status_class

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from tailguard.admission import Permit
    from tailguard.telemetry.catalog import Catalog

__all__ = [
    "call_ended",
    "call_refused",
    "call_started",
    "call_would_shed",
    "failed_status",
    "outcome_of",
]


def failed_status(status: int) -> bool:
    """Whether an HTTP answer ``status`` means the dependency failed: 5xx, or 429.

    >>> failed_status(503), failed_status(429), failed_status(404), failed_status(0)
    (True, True, False, False)
    """
    return status >= 500 or status == 429


def outcome_of(error: BaseException | None, status: int = 0) -> str:
    """The ``outcome`` label of a call that raised ``error`` (``None``: it went well).

    ``status`` is the HTTP status the call was answered with (0: none).

    >>> outcome_of(None), outcome_of(TimeoutError()), outcome_of(asyncio.CancelledError())
    ('ok', 'error', 'cancelled')
    >>> outcome_of(None, 503), outcome_of(None, 404)
    ('error', 'ok')
    """
    if error is None:
        return "error" if failed_status(status) else "ok"
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


def call_started(name: str, request: Any = None) -> Span | None:
    """A call of dependency ``name`` is about to ask for a slot: its span, if sampled.

    ``request``: the httpx/httpx2 request the call carries, if any (the span
    is then a CLIENT span with the request's peer attributes).
    """
    return otel.start_dependency_span(name, request)


def call_refused(
    catalog: Catalog | None, name: str, error: BaseException, span: Span | None, waited: float
) -> None:
    """No slot: shed, out of time, or cancelled while waiting ``waited`` seconds.

    ``waited`` is 0.0 for a call refused before it queued (its deadline had
    no time left for one).
    """
    outcome = outcome_of(error)
    if catalog is not None:
        catalog.dependency_calls.labels(name, outcome, "none").inc()
        if waited > 0.0:
            catalog.queue_wait.labels(name, "dependency").observe(waited)
    _charge(name, waited)
    otel.end_dependency_span(span, outcome, slot_wait=waited, error=error)


def call_would_shed(catalog: Catalog | None, name: str, reason: str, span: Span | None) -> None:
    """Shadow mode: a full bulkhead would have rejected this call with ``reason``; it runs."""
    if catalog is not None:
        catalog.dependency_would_shed.labels(name, reason).inc()
    if span is not None:
        otel.record_would(span, "shed", {"tailguard.reason": reason, "tailguard.limiter": name})


def call_ended(
    catalog: Catalog | None,
    name: str,
    permit: Permit,
    error: BaseException | None,
    status: int = 0,
) -> str:
    """The call gave its slot back; ``error`` is what it raised, if anything; its outcome.

    ``status`` is the HTTP status it was answered with (0: none). A call
    given its slot at once has ``requested_at == acquired_at``: no wait.
    """
    now = monotonic()
    held = now - permit.acquired_at
    waited = permit.acquired_at - permit.requested_at
    outcome = outcome_of(error, status)
    if catalog is not None:
        catalog.dependency_calls.labels(name, outcome, status_class(status)).inc()
        catalog.dependency_duration.labels(name).observe(held)
        if waited > 0.0:
            catalog.queue_wait.labels(name, "dependency").observe(waited)
    _charge(name, held + waited)
    span = permit.span
    if span is not None:
        otel.end_dependency_span(span, outcome, slot_wait=waited, error=error, status=status)
    return outcome


def _charge(name: str, seconds: float) -> None:
    frame = _context.current.get()
    owner = frame.owner if frame is not None else None
    charge = getattr(owner, "charge", None)
    if charge is not None:
        charge(name, seconds)
