"""Attribute every asyncio task a request spawns to that request.

A task factory on the running loop looks up the request that is current in
the new task's context (tasks copy their creator's context, so nested tasks
belong to the same request) and records the task there. The factory chains to
whatever factory was already installed (an eager factory, uvloop's, a test
helper), so installing tailguard never changes how tasks are built.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine, Generator
from typing import Any

from tailguard import _context

__all__ = ["RequestTasks", "current_request_tasks", "ensure_task_factory"]

_TaskFactory = Callable[..., "asyncio.Future[Any]"]


class RequestTasks:
    """The live tasks one request has spawned.

    >>> tasks = RequestTasks()
    >>> tasks.pending()
    []
    """

    __slots__ = ("_live",)

    def __init__(self) -> None:
        self._live: set[asyncio.Future[Any]] | None = None

    def add(self, task: asyncio.Future[Any]) -> None:
        """Track ``task`` until it finishes."""
        if task.done():  # an eager factory may have run it to completion already
            return
        live = self._live
        if live is None:
            live = self._live = set()
        live.add(task)
        task.add_done_callback(live.discard)

    def pending(self) -> list[asyncio.Future[Any]]:
        """Tasks spawned by the request that have not finished."""
        return [task for task in self._live or () if not task.done()]

    def cancel_pending(self) -> int:
        """Cancel every unfinished task; returns how many were asked to stop."""
        pending = self.pending()
        for task in pending:
            task.cancel()
        return len(pending)


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

    def tailguard_task_factory(
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any],
        **kwargs: Any,
    ) -> asyncio.Future[Any]:
        if make is not None:
            task: asyncio.Future[Any] = make(coro, loop=loop, **kwargs)
        else:
            assert inner is not None
            task = inner(loop, coro, **kwargs)
        if kwargs:
            context: contextvars.Context | None = kwargs.get("context")
            frame = current.get() if context is None else context.get(current)
        else:
            frame = current.get()
        if frame is not None and frame.owner is not None:
            frame.owner.add(task)
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
