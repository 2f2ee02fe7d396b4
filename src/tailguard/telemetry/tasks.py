"""Attribute every asyncio task a request spawns to that request, and trace it.

A task factory on the running loop looks up the request that is current in
the new task's context (tasks copy their creator's context, so nested tasks
belong to the same request) and records the task there. The factory chains to
whatever factory was already installed (an eager factory, uvloop's, a test
helper), so installing tailguard never changes how tasks are built.

For a request that is not sampled, attribution is one context lookup, a
counter increment, a dict entry and a done callback per task. For a sampled
one (its server span is recording) each task also gets a ``task <coroutine>``
child span, current inside the task, ended with the task's final state.

When the request finishes, :meth:`RequestTasks.finish` reports the tasks that
outlived it (orphans): counted, logged once per coroutine, optionally cancelled.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import Callable, Coroutine, Generator
from time import monotonic
from typing import TYPE_CHECKING, Any, Final

from tailguard import _context
from tailguard.telemetry import otel
from tailguard.telemetry.live import coroutine_name, orphans

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from tailguard.telemetry.catalog import Catalog

__all__ = ["RequestTasks", "current_request_tasks", "ensure_task_factory"]

logger = logging.getLogger("tailguard.tasks")

LOGGED_NAMES: Final = 1024
"""Orphaned coroutine names logged per process; later new names are only counted."""

_PRUNE_FROM: Final = 64
"""Finished tasks are pruned from a request's registry at 64, 128, 256, ... entries."""

_TaskFactory = Callable[..., "asyncio.Future[Any]"]
_logged: set[str] = set()


class RequestTasks:
    """The tasks one request has spawned, and what becomes of them.

    ``spawned`` counts them (flushed to ``tailguard_tasks_spawned_total`` once,
    by :meth:`finish`); ``span`` is the request's server span when the request
    is sampled (set by the middleware), which makes each task traced.

    >>> tasks = RequestTasks()
    >>> tasks.pending(), tasks.spawned
    ([], 0)
    """

    # Class-level defaults, not slots: a request that spawns nothing and is
    # not traced never writes them, so creating one costs no stores.
    _live: dict[asyncio.Future[Any], float] | None = None
    spawned = 0
    span: Span | None = None
    _after: tuple[str, bool, Catalog | None] | None = None  # (route, cancel, catalog) once finished

    def add(self, task: asyncio.Future[Any]) -> None:
        """Track ``task`` until it finishes."""
        self.spawned += 1
        if task.done():  # an eager factory may have run it to completion already
            return
        if self._after is not None:  # spawned by an orphan, after the request ended
            route, cancel, catalog = self._after
            _orphan(task, route, coroutine_name(task), monotonic(), cancel, catalog)
            _count_orphans(catalog, route, cancel, 1)
            return
        live = self._live
        if live is None:
            live = self._live = {}
        elif (size := len(live)) >= _PRUNE_FROM and not size & (size - 1):
            # No done callback per task (it would cost a loop callback each):
            # finished tasks are dropped when the dict doubles, O(1) amortized.
            for finished in [spawned for spawned in live if spawned.done()]:
                del live[finished]
        live[task] = monotonic()

    def pending(self) -> list[asyncio.Future[Any]]:
        """Tasks spawned by the request that have not finished."""
        return [task for task in self._live or () if not task.done()]

    def live_tasks(self) -> list[tuple[asyncio.Future[Any], float]]:
        """Unfinished tasks with their creation times (``time.monotonic()``)."""
        live = self._live
        if not live:
            return []
        return [(task, created) for task, created in list(live.items()) if not task.done()]

    def cancel_pending(self) -> int:
        """Cancel every unfinished task; returns how many were asked to stop."""
        pending = self.pending()
        for task in pending:
            task.cancel()
        return len(pending)

    def finish(self, route: str, *, cancel: bool = False, catalog: Catalog | None = None) -> int:
        """The request is over: report what it spawned and what outlived it.

        Adds ``spawned`` to ``tailguard_tasks_spawned_total{route}``. Tasks
        still pending, other than those already asked to stop (by the
        request's deadline or disconnect, say), are orphans: counted in
        ``tailguard_tasks_orphaned_total{route, action}`` (``left`` or
        ``cancelled``), kept in ``tailguard_tasks_live{route}`` until they
        end, logged once per coroutine name, listed by snapshots, marked on
        the server span, and cancelled if ``cancel``. Tasks they spawn later
        are orphans of the same route too. Returns the number of orphans;
        calling it again does nothing. Metrics go to ``catalog`` (the
        request's guard's; ``None``: none are recorded).

        >>> RequestTasks().finish("/items/{item_id}")
        0
        """
        if self._after is not None:
            return 0
        self._after = (route, cancel, catalog)
        if self.spawned and catalog is not None:
            catalog.tasks_spawned.labels(route).inc(self.spawned)
        live = self._live
        if not live:
            return 0
        self._live = None  # finished tasks are not kept alive by orphans' contexts
        names: list[str] = []
        for task, created in live.items():
            if not task.done() and not _stopping(task):
                name = coroutine_name(task)
                names.append(name)
                _orphan(task, route, name, created, cancel, catalog)
        if names:
            _count_orphans(catalog, route, cancel, len(names))
            span = self.span
            if span is not None and span.is_recording():
                span.add_event(
                    "tailguard.tasks_orphaned",
                    {
                        "tailguard.tasks.count": len(names),
                        "tailguard.tasks.action": "cancelled" if cancel else "left",
                        "tailguard.tasks.coroutines": sorted(set(names))[:16],
                    },
                )
        return len(names)


def _stopping(task: asyncio.Future[Any]) -> bool:
    cancelling = getattr(task, "cancelling", None)  # asyncio.Task: cancel requested, not done
    return cancelling is not None and cancelling() > 0


def _orphan(
    task: asyncio.Future[Any],
    route: str,
    name: str,
    created: float,
    cancel: bool,
    catalog: Catalog | None,
) -> None:
    orphans.adopt(task, route, name, created, cancelled=cancel, catalog=catalog)
    if name not in _logged and len(_logged) < LOGGED_NAMES:
        _logged.add(name)
        logger.warning(
            "task %s outlived its request (route %s) and was %s; "
            "further orphans of this coroutine are counted, not logged",
            name,
            route or "unmatched",
            "cancelled" if cancel else "left running",
        )
    if cancel:
        task.cancel()


def _count_orphans(catalog: Catalog | None, route: str, cancel: bool, count: int) -> None:
    if catalog is not None:
        catalog.tasks_orphaned.labels(route, "cancelled" if cancel else "left").inc(count)


def current_request_tasks() -> RequestTasks | None:
    """The task registry of the request being handled here, if any."""
    frame = _context.current.get()
    owner = frame.owner if frame is not None else None
    return owner if isinstance(owner, RequestTasks) else None


def _chain(inner: _TaskFactory | None) -> _TaskFactory:
    # Bound once: the factory runs for every task the loop creates, the
    # server's own per-request tasks included.
    make = asyncio.Task if inner is None else None
    current = _context.current
    start_span = otel.start_task_span
    end_span = otel.end_task_span
    partial = functools.partial

    def tailguard_task_factory(
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any],
        **kwargs: Any,
    ) -> asyncio.Future[Any]:
        if kwargs:
            context: contextvars.Context | None = kwargs.get("context")
            frame = current.get() if context is None else context.get(current)
        else:
            frame = current.get()
            if frame is None:  # outside any request: the server's own per-request tasks
                if make is not None:
                    return make(coro, loop=loop)
                assert inner is not None
                return inner(loop, coro)
        # Owners are always RequestTasks (the middleware's per-request objects).
        owner: RequestTasks | None = frame.owner if frame is not None else None  # type: ignore[assignment]
        span = None
        if owner is not None and owner.span is not None:  # a sampled request
            span, kwargs["context"] = start_span(coro, kwargs.get("context"), kwargs.get("name"))
        if make is not None:
            task: asyncio.Future[Any] = make(coro, loop=loop, **kwargs)
        else:
            assert inner is not None
            task = inner(loop, coro, **kwargs)
        if owner is not None:
            owner.add(task)
            if span is not None:
                task.add_done_callback(partial(end_span, span))
        return task

    tailguard_task_factory.tailguard_inner = inner  # type: ignore[attr-defined]
    return tailguard_task_factory


def ensure_task_factory(loop: asyncio.AbstractEventLoop) -> None:
    """Install tailguard's task factory on ``loop``, chaining to the existing one.

    Idempotent and cheap enough to call on every request, which is the
    fallback for apps whose lifespan never runs.
    """
    current = loop.get_task_factory()
    if current is not None and hasattr(current, "tailguard_inner"):
        return
    loop.set_task_factory(_chain(current))
