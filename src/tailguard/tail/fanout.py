"""Fan-out with mandatory and optional legs, and the arithmetic of fan-out tails.

A request that fans out to ``n`` backends waits for the slowest. If each is
slow with probability ``p``, the request is slow with probability
``1 - (1 - p) ** n`` (:func:`amplification`): at ``p = 1 %`` and ``n = 100``,
63 % of requests. :func:`fanout` lets the legs that are nice to have be cut:
required legs must all succeed, optional legs are kept only if they finish
within a grace period after the required ones.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from tailguard._numbers import finite
from tailguard.deadlines import remaining
from tailguard.tail import sites
from tailguard.tail._attempts import Attempt, Attempts, all_failed, check_fns, failure_of
from tailguard.tail.sketch import LatencySketch

__all__ = ["FanoutResult", "amplification", "fanout"]

RequiredT = TypeVar("RequiredT")
OptionalT = TypeVar("OptionalT")

RESERVE: Final = 0.1
"""Optional legs are cut when this share of the time left remains: time to answer with."""
MIN_RESERVE: Final = 0.001
"""The least time (seconds) the cut leaves before the deadline."""
PACE_QUANTILE: Final = 0.99
"""A fan-out is "slow-paced" when its slowest required leg took longer than this quantile."""


def amplification(p: float, n: int) -> float:
    """The chance that a request waiting for ``n`` legs, each slow with probability ``p``, is slow.

    ``1 - (1 - p) ** n``: compare it with the ratio of
    ``tailguard_fanout_slow_paced_total`` to ``tailguard_fanout_calls_total``
    for ``p = 0.01`` (the pace metric's p99) and ``n`` required legs.

    >>> round(amplification(0.01, 100), 3)
    0.634
    >>> amplification(0.5, 2), amplification(0.5, 0)
    (0.75, 0.0)
    """
    probability = finite(p)
    if probability is None or not 0 <= probability <= 1:
        raise ValueError(f"amplification: p must be a probability from 0 to 1, got {p!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"amplification: n must be an int >= 0, got {n!r}")
    return 1 - (1 - probability) ** n


@dataclass(frozen=True, slots=True)
class FanoutResult(Generic[RequiredT, OptionalT]):
    """What a :func:`fanout` brought back.

    >>> result = FanoutResult(["user"], {1: "ads"}, missing=(0, 2), errors={2: KeyError("x")})
    >>> result.complete, result.cut
    (False, (0,))
    """

    required: list[RequiredT]
    """The required legs' results, in the order of ``required``."""
    optional: dict[int, OptionalT]
    """The optional legs that succeeded in time, by their index in ``optional``."""
    missing: tuple[int, ...]
    """Indices of the optional legs with no result: cut at the grace period, or failed."""
    errors: dict[int, BaseException]
    """What the failed optional legs raised, by index (a subset of :attr:`missing`)."""

    @property
    def complete(self) -> bool:
        """Whether every optional leg made it."""
        return not self.missing

    @property
    def cut(self) -> tuple[int, ...]:
        """Optional legs cancelled because they were still running when the grace ran out."""
        return tuple(i for i in self.missing if i not in self.errors)


async def fanout(
    *,
    required: Sequence[Callable[[], Awaitable[RequiredT]]] = (),
    optional: Sequence[Callable[[], Awaitable[OptionalT]]] = (),
    grace: float | None = None,
    name: str | None = None,
) -> FanoutResult[RequiredT, OptionalT]:
    """Start every leg at once; all ``required`` must succeed, ``optional`` ones may be cut.

    * A required leg failing fails the fan-out at once: the other legs are
      cancelled and awaited, and an ``ExceptionGroup`` of the required
      failures seen is raised.
    * Once every required leg has succeeded, the optional legs still running
      get ``grace`` more seconds, but no more than 90 % of the time left
      before the deadline, which keeps a tenth (at least 1 ms) for the
      caller to answer with (``grace=None``: as long as the deadline
      allows; with no deadline, until they finish). Those still running then are cancelled, awaited
      and reported in :attr:`FanoutResult.missing`; a failed optional leg is
      reported there too, with its exception in :attr:`FanoutResult.errors`.
    * With a ``name``, the call site's sketch learns the required legs'
      latencies and, once it knows their p99, every fan-out counts in
      ``tailguard_fanout_calls_total`` and, if its slowest required leg was
      slower than that p99, in ``tailguard_fanout_slow_paced_total``.

    >>> import asyncio, tailguard
    >>> async def user() -> str:
    ...     return "ada"
    >>> async def ads() -> str:
    ...     await asyncio.sleep(10)
    ...     return "buy"
    >>> result = asyncio.run(tailguard.fanout(required=[user], optional=[ads], grace=0.001))
    >>> result.required, result.missing
    (['ada'], (0,))
    """
    must = check_fns("fanout", "required", required)
    may = check_fns("fanout", "optional", optional)
    if not must and not may:
        raise ValueError("fanout: needs at least one required or optional leg")
    if grace is not None and ((number := finite(grace)) is None or number < 0):
        raise ValueError(
            f"fanout: grace must be None or a finite number of seconds >= 0, got {grace!r}"
        )
    label = sites.label(name)
    sketch = None if name is None else sites.leg_latency(name)
    counts = {"tailguard.fanout.required": len(must), "tailguard.fanout.optional": len(may)}

    async with Attempts("fanout", label, **counts) as group:
        legs = [group.start(fn, "required") for fn in must]
        for fn in may:
            group.start(fn, "optional")
        values: list[Any] = [None] * len(must)
        left = len(must)
        kept: dict[int, Any] = {}
        errors: dict[int, BaseException] = {}
        failures: list[BaseException] = []
        cutoff = None if left else _cutoff(group.now(), grace)
        while True:
            for attempt in await group.wait(cutoff):
                failure = failure_of(attempt)
                if attempt.kind == "required":
                    if failure is not None:
                        failures.append(failure)
                    else:
                        values[attempt.index] = attempt.task.result()
                        left -= 1
                elif failure is not None:
                    errors[attempt.index - len(must)] = failure
                else:
                    kept[attempt.index - len(must)] = attempt.task.result()
            if failures:
                raise all_failed(
                    "fanout",
                    label,
                    failures,
                    f"{len(failures)} of {len(must)} required legs failed",
                )
            if left == 0 and cutoff is None:
                cutoff = _cutoff(group.now(), grace)
            if not group.pending or (cutoff is not None and group.now() >= cutoff):
                break
        missing = tuple(i for i in range(len(may)) if i not in kept)
        group.span.set_attribute("tailguard.fanout.missing", len(missing))
        if legs:
            _pace(group, label, sketch, legs)
        return FanoutResult(values, dict(sorted(kept.items())), missing, errors)


def _cutoff(now: float, grace: float | None) -> float:
    """When the optional legs still running are cut."""
    left = remaining()
    budget = left if left == math.inf else left - max(MIN_RESERVE, left * RESERVE)
    wait = budget if grace is None else min(grace, budget)
    return now + max(0.0, wait)


def _pace(group: Attempts, label: str, sketch: LatencySketch | None, legs: list[Attempt]) -> None:
    """Record whether the slowest required leg was in its tail, then learn the legs' latencies."""
    slowest = max(leg.latency for leg in legs)
    group.span.set_attribute("tailguard.fanout.slowest", slowest)
    if sketch is None:
        return
    tail = sketch.quantile(PACE_QUANTILE)
    catalog = group.catalog
    if tail is not None and catalog is not None:
        catalog.fanout_calls.labels(label).inc()
        if slowest > tail:
            catalog.fanout_slow_paced.labels(label).inc()
    for leg in legs:
        sketch.observe(leg.latency)
