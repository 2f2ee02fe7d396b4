"""Tiered fallback: try the cheap source first, the authoritative one last, each within its share.

A read that can be served by a cache, a replica or the primary tries them in
that order. Each tier gets a share of the time left, so a slow cache cannot
eat the budget the primary needs; time a tier does not use passes on.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from contextlib import nullcontext
from typing import TypeVar

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from tailguard._numbers import finite
from tailguard.deadlines import DeadlineExceeded, deadline, remaining
from tailguard.tail import sites
from tailguard.tail._attempts import (
    ATTEMPT,
    HELPER,
    KIND,
    OUTCOME,
    ROLE,
    SITE,
    check_fns,
    request_catalog,
)
from tailguard.telemetry.tracing import tracer

__all__ = ["fallback"]

T = TypeVar("T")


async def fallback(
    *fns: Callable[[], Awaitable[T]],
    budget_split: Sequence[float] | None = None,
    name: str | None = None,
) -> T:
    """Try ``fns`` in order until one succeeds; each tier runs within its share of the budget.

    ``budget_split`` gives the tiers' relative shares (default: equal). When
    tier ``i`` starts with ``left`` seconds remaining (:func:`tailguard.remaining`),
    it runs under ``tailguard.deadline(left * split[i] / sum(split[i:]))``:
    the first of three equal tiers gets a third of the budget, the second
    half of what is left then, the last all of it. Inside a tier,
    ``tailguard.remaining()`` (and so the deadline its outbound calls
    propagate) is that share. A tier that raises, or runs out of its share
    (:class:`~tailguard.DeadlineExceeded` from its own scope), hands over to
    the next; if every tier fails, an ``ExceptionGroup`` of their failures is
    raised. Without a deadline the tiers are not timed. The tiers run one at
    a time in the caller's task, so nothing outlives the call; cancelling
    the caller cancels the tier running and propagates.

    >>> import asyncio, tailguard
    >>> async def cache() -> str:
    ...     raise KeyError("miss")
    >>> async def primary() -> str:
    ...     return "row"
    >>> async def main() -> str:
    ...     with tailguard.deadline(0.5):
    ...         return await tailguard.fallback(cache, primary, budget_split=[1, 4])
    >>> asyncio.run(main())
    'row'
    """
    tiers = check_fns("fallback", "fns", fns)
    if not tiers:
        raise ValueError("fallback: needs at least one fn")
    shares = _check_split(budget_split, len(tiers))
    label = sites.label(name)
    catalog = request_catalog()
    outer = tracer().start_span("tailguard.fallback", attributes={SITE: label, HELPER: "fallback"})
    failures: list[Exception] = []
    outcome = "cancelled"
    try:
        for i, fn in enumerate(tiers):
            left = remaining()
            last = i == len(tiers) - 1
            share = (
                None if last or left == math.inf else max(0.0, left * shares[i] / sum(shares[i:]))
            )
            span = tracer().start_span(
                "tailguard.fallback.attempt",
                context=trace.set_span_in_context(outer),
                attributes={SITE: label, ATTEMPT: i, KIND: "tier"},
            )
            if share is not None:
                span.set_attribute("tailguard.fallback.share", share)
            if catalog is not None:
                catalog.tail_attempts.labels(label, "fallback").inc()
            try:
                with (
                    trace.use_span(span, record_exception=False, set_status_on_exception=False),
                    nullcontext() if share is None else deadline(share),
                ):
                    result = await fn()
            except Exception as exc:
                failures.append(exc)
                timed_out = isinstance(exc, DeadlineExceeded)
                span.set_attribute(OUTCOME, "deadline_exceeded" if timed_out else "error")
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                continue
            except BaseException:
                span.set_attribute(OUTCOME, "cancelled")
                raise
            else:
                span.set_attribute(OUTCOME, "ok")
            finally:
                span.end()
            outer.add_link(span.get_span_context(), {ROLE: "winner"})
            outer.set_attribute("tailguard.fallback.tier", i)
            outcome = "ok"
            return result
        outcome = "error"
        raise ExceptionGroup(f"fallback {label!r}: all {len(tiers)} tiers failed", failures)
    finally:
        outer.set_attribute(OUTCOME, outcome)
        outer.set_attribute("tailguard.attempts", len(failures) + (outcome != "error"))
        if outcome == "error":
            outer.set_status(Status(StatusCode.ERROR, "all tiers failed"))
        outer.end()


def _check_split(split: Sequence[float] | None, tiers: int) -> list[float]:
    if split is None:
        return [1.0] * tiers
    if isinstance(split, str | bytes) or not isinstance(split, Sequence) or len(split) != tiers:
        raise ValueError(
            f"fallback: budget_split must be a sequence of {tiers} shares (one per tier), "
            f"got {split!r}"
        )
    shares: list[float] = []
    for i, share in enumerate(split):
        number = finite(share)
        if number is None or number <= 0:
            raise ValueError(
                f"fallback: budget_split[{i}] must be a finite number > 0, got {share!r}"
            )
        shares.append(number)
    return shares
