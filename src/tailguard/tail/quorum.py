"""Speculative execution and quorum reads: start every attempt at once, keep the first k answers.

:func:`race` is the quorum of one: the same request to several replicas (or
several ways of computing one answer), the first success wins. :func:`quorum`
waits for ``k`` successes, as a quorum read of a replicated store does, and
gives up as soon as ``k`` has become impossible.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

from tailguard.tail import sites
from tailguard.tail._attempts import Attempts, all_failed, check_fns, failure_of

__all__ = ["quorum", "race"]

T = TypeVar("T")


async def race(*fns: Callable[[], Awaitable[T]], name: str | None = None) -> T:
    """Start every ``fn()`` at once; return the first success, cancel and await the rest.

    If every attempt fails, raises an ``ExceptionGroup`` of every failure.
    ``name`` labels the metrics and spans (a constant; ``"unnamed"`` when
    omitted).

    >>> import asyncio, tailguard
    >>> async def slow() -> str:
    ...     await asyncio.sleep(10)
    ...     return "slow"
    >>> async def fast() -> str:
    ...     return "fast"
    >>> asyncio.run(tailguard.race(slow, fast, name="doc.race"))
    'fast'
    """
    legs = check_fns("race", "fns", fns)
    if not legs:
        raise ValueError("race: needs at least one fn")
    (first,) = await _first(1, legs, "race", sites.label(name))
    return first


async def quorum(
    k: int, fns: Sequence[Callable[[], Awaitable[T]]], *, name: str | None = None
) -> list[T]:
    """Start every ``fn()`` at once; return the first ``k`` successes, in the order they came.

    The attempts still running then are cancelled and awaited. As soon as so
    many have failed that ``k`` successes are impossible, the rest are
    cancelled and an ``ExceptionGroup`` of the failures is raised.

    >>> import asyncio, tailguard
    >>> async def stuck() -> int:
    ...     await asyncio.sleep(60)  # cancelled once two replicas have answered
    ...     return 3
    >>> reads = [stuck, lambda: asyncio.sleep(0, 1), lambda: asyncio.sleep(0, 2)]
    >>> asyncio.run(tailguard.quorum(2, reads, name="doc.quorum"))
    [1, 2]
    """
    legs = check_fns("quorum", "fns", fns)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(legs):
        raise ValueError(f"quorum: k must be an int from 1 to len(fns) = {len(legs)}, got {k!r}")
    return await _first(k, legs, "quorum", sites.label(name))


async def _first(k: int, fns: list[Callable[[], Awaitable[T]]], helper: str, label: str) -> list[T]:
    spare = len(fns) - k  # failures that still leave k possible
    async with Attempts(helper, label, **{"tailguard.quorum.k": k}) as group:
        for fn in fns:
            group.start(fn, "leg")
        results: list[Any] = []
        failures: list[BaseException] = []
        while True:
            for attempt in await group.wait():
                failure = failure_of(attempt)
                if failure is None:
                    group.won(attempt)
                    results.append(attempt.task.result())
                    if len(results) == k:
                        return cast(list[T], results)
                    continue
                failures.append(failure)
                if len(failures) > spare:
                    what = (
                        f"all {len(fns)} attempts failed"
                        if len(failures) == len(fns)
                        else f"{len(failures)} of {len(fns)} attempts failed, "
                        f"{k} successes are impossible"
                    )
                    raise all_failed(helper, label, failures, what)
