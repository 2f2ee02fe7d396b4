"""Attempts a test drives by hand, and a watch on the event loop for leaked tasks and errors.

Timing rule: nothing here sleeps to order events. A :class:`Remote` call waits
on a future the test resolves; the test learns a call has started from
:meth:`Remote.arrival`; waits are bounded by :data:`WAIT`, generous for things
that happen at once.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Coroutine, Generator, Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry

from tailguard.telemetry.catalog import Catalog

WAIT = 20.0
"""An upper bound for something that happens at once, even on a loaded machine."""
SHORT = 0.05
"""A budget the work under test is sure to outlast."""
FOREVER = 30.0


class Call:
    """One call of a :class:`Remote`, answered by the test."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.cancelled = asyncio.Event()
        self.finished = asyncio.Event()

    def succeed(self, value: Any) -> None:
        self.reply.set_result(value)

    def fail(self, exc: BaseException) -> None:
        self.reply.set_exception(exc)


class Remote:
    """A zero-argument async callable whose every call waits for the test's answer."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._arrivals: asyncio.Queue[Call] = asyncio.Queue()

    async def __call__(self) -> Any:
        call = Call(len(self.calls))
        self.calls.append(call)
        self._arrivals.put_nowait(call)
        try:
            return await call.reply
        except asyncio.CancelledError:
            call.cancelled.set()
            raise
        finally:
            call.finished.set()

    async def arrival(self) -> Call:
        """The next call to start (waits for it)."""
        return await asyncio.wait_for(self._arrivals.get(), WAIT)

    async def arrivals(self, n: int) -> list[Call]:
        return [await self.arrival() for _ in range(n)]


async def forever() -> None:
    await asyncio.Event().wait()


class LoopWatch:
    """Counts every task created on the loop, and every error the loop reports.

    Tasks are held by weak references: a strong one would keep a task with
    an unretrieved exception alive, and hide the very warning we look for.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._tasks: list[weakref.ref[asyncio.Future[Any]]] = []
        self.errors: list[dict[str, Any]] = []
        self._inner = loop.get_task_factory()

    def __call__(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any],
        **kwargs: Any,
    ) -> asyncio.Future[Any]:
        if self._inner is None:
            task: asyncio.Future[Any] = asyncio.Task(coro, loop=loop, **kwargs)
        else:
            task = self._inner(loop, coro, **kwargs)
        self._tasks.append(weakref.ref(task))
        return task

    @property
    def tasks(self) -> list[asyncio.Future[Any]]:
        """The tasks created while watching that still exist."""
        return [task for ref in self._tasks if (task := ref()) is not None]

    @property
    def created(self) -> int:
        return len(self._tasks)

    def pending(self) -> list[asyncio.Future[Any]]:
        return [task for task in self.tasks if not task.done()]

    def record(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.errors.append(context)


@contextmanager
def watch_loop(*, collect: bool = True) -> Iterator[LoopWatch]:
    """Install a counting task factory and an error recorder; check both on the way out.

    ``collect=False`` skips the garbage collection (a tenth of a second) that
    makes unretrieved exceptions and destroyed pending tasks show up.
    """
    loop = asyncio.get_running_loop()
    watch = LoopWatch(loop)
    previous_handler = loop.get_exception_handler()
    loop.set_task_factory(watch)
    loop.set_exception_handler(watch.record)
    try:
        yield watch
        if collect:  # "exception was never retrieved" and "Task was destroyed" come from GC
            gc.collect()
        assert watch.errors == [], watch.errors
    finally:
        loop.set_task_factory(watch._inner)
        loop.set_exception_handler(previous_handler)


class Request:
    """A request as the tail helpers see it (``tailguard._context.RequestView``), with its catalog.

    Stands in for the middleware's per-request object: the helpers only read
    ``catalog`` from it. Set it as the context's owner with
    ``_context.current.set(_context.Frame(None, request))``.
    """

    method = "GET"
    route = "/test"
    tenant: str | None = None

    def __init__(self, catalog: Catalog | None) -> None:
        self.catalog = catalog

    def header(self, name: str) -> str | None:
        return None

    def add(self, task: asyncio.Future[object]) -> None:
        """Adopt nothing: a strong reference would hide the leaks :class:`LoopWatch` looks for."""


class Metrics:
    """Reads tailguard's metrics from a test's own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def value(self, name: str, **labels: str) -> float:
        found = self.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found

    def attempts(self, site: str, helper: str) -> float:
        return self.value("tailguard_tail_attempts_total", site=site, helper=helper)

    def cancelled(self, site: str, helper: str) -> float:
        return self.value("tailguard_tail_attempts_cancelled_total", site=site, helper=helper)

    def hedges(self, site: str, event: str) -> float:
        return self.value("tailguard_hedges_total", site=site, event=event)
