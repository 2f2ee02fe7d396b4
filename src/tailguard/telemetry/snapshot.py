"""``guard.snapshot()``: the "asyncio ps" of a live service, as plain JSON-able data.

What is in flight per route, which tasks are alive (grouped by route, then by
coroutine, with their ages, orphans counted apart), and the state of every
pool (route limiters, dependency bulkheads with their thread pools, and the
loop's measured thread pools: asyncio's default executor and anyio's threads).
Taking one walks the live requests once; nothing is recorded in between.

>>> import json
>>> from types import SimpleNamespace
>>> from tailguard.dependency import Dependency
>>> db = Dependency("db", max_concurrency=2)
>>> guard = SimpleNamespace(limiters={}, dependencies={"db": db}, live=LiveRequests())
>>> snapshot = build_snapshot(guard)
>>> sorted(snapshot)
['dependencies', 'limiters', 'pools', 'requests', 'taken_at', 'tasks']
>>> snapshot["dependencies"]["db"]["limiter"]["in_use"]
0
>>> json.loads(json.dumps(snapshot)) == snapshot
True
>>> db.close()
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

from tailguard.telemetry.live import LiveRequests, Orphan, age, coroutine_name, orphans
from tailguard.telemetry.pools import Stateful, loop_pools

if TYPE_CHECKING:
    from tailguard.admission import Limiter

__all__ = ["TASKS_LISTED", "build_snapshot"]

TASKS_LISTED: Final = 50
"""Coroutines listed per route (the ones with the oldest tasks); the counts cover all."""

UNMATCHED: Final = "unmatched"  # as tailguard.telemetry.requests labels requests no route matched


class Guarded(Protocol):
    """What a snapshot reads from a :class:`~tailguard.Tailguard`."""

    @property
    def limiters(self) -> Mapping[str, Limiter]: ...

    @property
    def dependencies(self) -> Mapping[str, Stateful]: ...

    @property
    def live(self) -> LiveRequests: ...


def build_snapshot(guard: Guarded) -> dict[str, Any]:
    """A JSON-able view of ``guard``'s service right now.

    ``requests``: per route, ``in_flight`` and ``oldest_s``. ``tasks``: per
    route, ``live`` and ``orphaned`` counts and up to :data:`TASKS_LISTED`
    coroutines, oldest first, each with ``count``, ``orphaned``,
    ``cancelled`` (orphans asked to stop that have not: a cancellation
    being swallowed, if it lasts) and ``oldest_s``. ``limiters`` and
    ``dependencies``: each pool's state by name. Ages are seconds. Routes
    are templates (``unmatched`` for 404s).
    """
    now = time.monotonic()
    requests: dict[str, dict[str, Any]] = {}
    # route -> coroutine -> [live, orphaned, cancelled, oldest creation time]
    tasks: dict[str, dict[str, list[float]]] = {}
    for request, arrived in list(guard.live.items()):
        route = getattr(request, "route", "") or UNMATCHED
        entry = requests.get(route)
        if entry is None:
            entry = requests[route] = {"in_flight": 0, "oldest_s": 0.0}
        entry["in_flight"] += 1
        entry["oldest_s"] = max(entry["oldest_s"], age(arrived, now))
        live_tasks = getattr(request, "live_tasks", None)
        if live_tasks is not None:
            _tally(tasks, route, ((task, created, None) for task, created in live_tasks()))
    for task, orphan in orphans.items():
        _tally(tasks, orphan.route or UNMATCHED, [(task, orphan.created, orphan)])
    return {
        "taken_at": time.time(),
        "requests": requests,
        "tasks": {route: _route_tasks(by_name, now) for route, by_name in tasks.items()},
        "limiters": {name: _limiter(limiter) for name, limiter in guard.limiters.items()},
        "dependencies": {name: _dependency(dep) for name, dep in guard.dependencies.items()},
        "pools": {name: _plain(pool) for name, pool in loop_pools().items()},
    }


def _tally(
    tasks: dict[str, dict[str, list[float]]],
    route: str,
    found: Iterable[tuple[Any, float, Orphan | None]],
) -> None:
    by_name = tasks.setdefault(route, {})
    for task, created, orphan in found:
        name = coroutine_name(task) if orphan is None else orphan.coroutine
        counts = by_name.setdefault(name, [0, 0, 0, math.inf])
        counts[0] += 1
        if orphan is not None:
            counts[1] += 1
            counts[2] += orphan.cancelled
        counts[3] = min(counts[3], created)


def _route_tasks(by_name: dict[str, list[float]], now: float) -> dict[str, Any]:
    oldest_first = sorted(by_name.items(), key=lambda item: (item[1][3], item[0]))
    return {
        "live": int(sum(counts[0] for counts in by_name.values())),
        "orphaned": int(sum(counts[1] for counts in by_name.values())),
        "coroutines": [
            {
                "coroutine": name,
                "count": int(counts[0]),
                "orphaned": int(counts[1]),
                "cancelled": int(counts[2]),
                "oldest_s": age(counts[3], now),
            }
            for name, counts in oldest_first[:TASKS_LISTED]
        ],
    }


def _limiter(limiter: Limiter) -> dict[str, Any]:
    return _plain(limiter.state()._asdict())


def _dependency(dependency: Stateful) -> dict[str, Any]:
    state = dependency.state()
    found = state._asdict()
    found["limiter"] = _plain(state.limiter._asdict())
    return _plain(found)


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    # JSON has no infinity or NaN: a wait mean that is not a number yet is null.
    return {
        key: None if isinstance(value, float) and not math.isfinite(value) else value
        for key, value in values.items()
    }
