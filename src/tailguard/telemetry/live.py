"""Registries of what is running now: requests in flight and orphaned tasks.

Both exist for :func:`tailguard.telemetry.snapshot.build_snapshot` (the
"asyncio ps" of a service) and cost almost nothing while nobody looks:

* :class:`LiveRequests` is a plain ``dict`` from a request to its arrival
  time. The middleware stores each request on arrival and pops it when it is
  done, two C-level dict operations per request and no Python frame.
* :class:`Orphans` holds tasks that outlived the request that spawned them,
  weakly (it never keeps a task alive that nothing else references) and up to
  a cap, with the route, coroutine name and creation time the snapshot shows.
  It also keeps ``tailguard_tasks_live`` right: raised when a task is
  orphaned, lowered when it ends (or is garbage-collected while pending).

>>> live = LiveRequests()
>>> live["request"] = 12.5
>>> len(live), live.pop("request", None), len(live)
(1, 12.5, 0)
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterator
from time import monotonic
from typing import Any, Final, NamedTuple

from tailguard.telemetry.catalog import Catalog

__all__ = [
    "ORPHANS_TRACKED",
    "LiveRequests",
    "Orphan",
    "Orphans",
    "age",
    "coroutine_name",
    "orphans",
    "qualname",
    "task_name",
]

ORPHANS_TRACKED: Final = 10_000
"""Orphans the registry remembers at once; more are still counted and gauged, not listed."""


class LiveRequests(dict[Any, float]):
    """Requests in flight, each mapped to its arrival time (``time.monotonic()``).

    A ``dict`` on purpose: ``live[request] = now`` on arrival and
    ``live.pop(request, None)`` when done are the whole per-request cost.
    Keys are the middleware's per-request objects (they have ``route``,
    ``method``, ``deadline`` and, as :class:`~tailguard.telemetry.tasks.RequestTasks`,
    their pending tasks).

    >>> live = LiveRequests()
    >>> live[object()] = 1.0
    >>> len(live)
    1
    """

    __slots__ = ()


class Orphan(NamedTuple):
    """What the registry remembers about one orphaned task."""

    route: str
    coroutine: str
    created: float
    """When the task was created (``time.monotonic()``)."""
    cancelled: bool
    """Whether tailguard asked it to stop (orphan policy ``cancel``)."""


class Orphans:
    """Tasks still running after their request finished, by weak reference.

    >>> import asyncio
    >>> async def main():
    ...     registry = Orphans()
    ...     task = asyncio.create_task(asyncio.sleep(1))
    ...     registry.adopt(task, "/items/{item_id}", "sleep", 0.0, cancelled=False)
    ...     listed = [orphan.coroutine for _, orphan in registry.items()]
    ...     task.cancel()
    ...     await asyncio.gather(task, return_exceptions=True)
    ...     await asyncio.sleep(0)  # done callbacks run on the next loop iteration
    ...     return listed, len(registry)
    >>> asyncio.run(main())
    (['sleep'], 0)
    """

    __slots__ = ("_entries", "cap")

    def __init__(self, cap: int = ORPHANS_TRACKED) -> None:
        self.cap = cap
        # id(task) -> (weak reference, what we know); an entry leaves when the
        # task ends or is collected, whichever comes first.
        self._entries: dict[int, tuple[weakref.ref[asyncio.Future[Any]], Orphan]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def adopt(
        self,
        task: asyncio.Future[Any],
        route: str,
        coroutine: str,
        created: float,
        *,
        cancelled: bool,
        catalog: Catalog | None = None,
    ) -> None:
        """Remember ``task`` (still pending) as an orphan of ``route`` until it ends.

        ``catalog``: where ``tailguard_tasks_live{route}`` counts it while it runs.
        """
        gauge = catalog.tasks_live.labels(route) if catalog is not None else None
        if gauge is not None:
            gauge.inc()
        key = id(task)
        entries = self._entries

        def settle(_: object) -> None:
            # Runs once: when the task ends (dropping the entry drops the weak
            # reference, whose callback then never runs), or when it is
            # collected while pending (then its done callbacks never run).
            entries.pop(key, None)
            if gauge is not None:
                gauge.dec()

        task.add_done_callback(settle)
        if len(entries) < self.cap:
            entries[key] = (weakref.ref(task, settle), Orphan(route, coroutine, created, cancelled))

    def items(self) -> Iterator[tuple[asyncio.Future[Any], Orphan]]:
        """The orphans still pending, with what is known about each."""
        for ref, orphan in list(self._entries.values()):
            task = ref()
            if task is not None and not task.done():
                yield task, orphan


orphans: Final = Orphans()
"""The process's orphan registry (tasks outlive loops' requests, not processes)."""


def coroutine_name(task: asyncio.Future[Any]) -> str:
    """What tailguard calls a task: see :func:`task_name` (``"Future"`` for a bare future).

    >>> import asyncio
    >>> async def refresh_cache(): pass
    >>> async def main():
    ...     return coroutine_name(asyncio.create_task(refresh_cache()))
    >>> asyncio.run(main())
    'refresh_cache'
    """
    get_coro = getattr(task, "get_coro", None)
    coro = get_coro() if get_coro is not None else None
    if coro is None:
        return type(task).__name__
    get_name = getattr(task, "get_name", None)
    return task_name(coro, get_name() if get_name is not None else None)


def task_name(coro: object, name: object = None) -> str:
    """What tailguard calls a task running ``coro``: the qualified name of its coroutine.

    anyio (4.14 and later) runs every task-group task in a wrapper coroutine,
    ``TaskHandle._run_coro``: for those, the coroutine the wrapper runs
    (``TaskHandle.coro``), so a task is named the same under any anyio, and
    like a plain asyncio task. Should a wrapper of anyio's not give its
    coroutine away, the task's ``name`` is used instead (anyio names every
    task it starts: ``module.qualname`` of the function, or its ``name=``).

    >>> async def refresh_cache(): pass
    >>> coro = refresh_cache()
    >>> task_name(coro, "Task-7")
    'refresh_cache'
    >>> coro.close()
    """
    frame = getattr(coro, "cr_frame", None)
    if frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] == "anyio":
        # A coroutine of anyio's own: anyio's wrapper, if it is a method of a handle
        # whose public ``coro`` is the task's real coroutine.
        inner = getattr(frame.f_locals.get("self"), "coro", None)
        if inner is not None and inner is not coro and hasattr(inner, "cr_code"):
            return qualname(inner)
        if name is not None and str(name):
            return str(name)
    return qualname(coro)


def qualname(coro: object) -> str:
    """The qualified name of a coroutine (or of its type, for other awaitables).

    >>> async def fetch(): pass
    >>> coro = fetch()
    >>> qualname(coro), qualname(object())
    ('fetch', 'object')
    >>> coro.close()
    """
    name = getattr(coro, "__qualname__", None)
    return name if isinstance(name, str) else type(coro).__qualname__


def age(since: float, now: float | None = None) -> float:
    """Seconds since ``since`` (``time.monotonic()``), never negative, rounded to 0.1 ms.

    >>> age(10.0, now=10.25)
    0.25
    """
    return round(max(0.0, (monotonic() if now is None else now) - since), 4)
