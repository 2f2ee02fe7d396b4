"""Request deadlines: a time budget in a ContextVar, and scopes that only tighten it.

Every request handled by tailguard carries a :class:`Deadline`. Code anywhere in
the request (and in tasks it spawns, which copy the context) can ask how much
time is left with :func:`remaining`, and can run a block under a tighter budget
with :func:`deadline`. When a scope's own deadline passes, the work inside it is
cancelled and :class:`DeadlineExceeded` is raised *by that scope only*; an outer
scope's expiry passes through inner scopes as ordinary cancellation.
"""

from __future__ import annotations

import asyncio
import math
import time
from contextvars import Token
from types import TracebackType
from typing import Any, Final

from tailguard import _context
from tailguard._context import Deadline

__all__ = [
    "DEADLINE_HEADER",
    "MIN_BUDGET",
    "CancelScope",
    "Deadline",
    "DeadlineExceeded",
    "current_deadline",
    "deadline",
    "remaining",
]


DEADLINE_HEADER: Final = "x-request-timeout-ms"
"""tailguard's own deadline header: the remaining budget in integer milliseconds.

Read on the way in (it can only shrink a route's budget) and set on the way out
by the httpx integrations; both ends can be given another name.
"""

MIN_BUDGET: Final = 0.001
"""Below this many seconds left an outbound call is not made at all."""


class DeadlineExceeded(TimeoutError):
    """The deadline of a tailguard scope passed before the work inside it finished.

    Raised only by the scope whose own deadline fired, so ``except
    DeadlineExceeded`` around an inner ``tailguard.deadline(...)`` block never
    catches the expiry of the request's outer budget. It subclasses
    :class:`TimeoutError`, so generic timeout handling still applies.

    >>> try:
    ...     raise DeadlineExceeded(Deadline.after(0.1, source="scope"))
    ... except TimeoutError as exc:
    ...     exc.deadline.source
    'scope'
    """

    def __init__(self, deadline: Deadline | None, message: str | None = None) -> None:
        self.deadline = deadline
        if message is None:
            budget = f"{deadline.budget:.3f}s " if deadline is not None else ""
            source = f" ({deadline.source})" if deadline is not None else ""
            message = f"deadline exceeded: {budget}budget ran out{source}"
        super().__init__(message)


def current_deadline() -> Deadline | None:
    """The innermost (tightest) deadline in force here, or ``None``.

    >>> current_deadline() is None
    True
    """
    frame = _context.current.get()
    return None if frame is None else frame.deadline


def remaining() -> float:
    """Seconds left in the current budget; ``math.inf`` when there is none.

    >>> remaining()
    inf
    """
    frame = _context.current.get()
    if frame is None or frame.deadline is None:
        return math.inf
    return frame.deadline.at - time.monotonic()


class CancelScope:
    """Cancels one asyncio task when ``at`` passes (or when asked), and takes back only its own.

    The one cancel-at-deadline primitive: :class:`deadline` uses it as a
    ``with`` block, and the middleware's per-request object *is* one (armed
    only once a request outlives the sweeper's grace period). Like
    ``asyncio.timeout`` it counts cancellation requests
    (``Task.cancelling``/``uncancel``), so it absorbs only the cancellation it
    caused: a cancel from outside, or from an outer scope, propagates.

    >>> import asyncio
    >>> async def main():
    ...     with CancelScope(time.monotonic() + 0.01) as scope:
    ...         await asyncio.sleep(10)
    ...     return scope.fired
    >>> asyncio.run(main())
    True
    """

    __slots__ = ("_cancelling", "_handle", "_task", "_withdrawn", "at", "fired")

    def __init__(self, at: float | None, task: asyncio.Task[Any] | None = None) -> None:
        self.at = at
        """Monotonic time at which the task is cancelled; ``None``: only when asked."""
        self.fired = False
        """Whether this scope has cancelled its task."""
        self._task = task
        self._cancelling = task.cancelling() if task is not None else 0
        self._handle: asyncio.TimerHandle | None = None
        self._withdrawn = False

    def __enter__(self) -> CancelScope:
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no running loop: a worker thread, plain sync code
            task = None
        if task is not None:
            self._task = task
            self._cancelling = task.cancelling()
            self.arm()
        return self

    def arm(self) -> None:
        """Schedule the cancellation at :attr:`at`; once, and only with a task and a deadline."""
        task = self._task
        if self.at is not None and self._handle is None and task is not None and not self.fired:
            loop = task.get_loop()
            # Deadlines are on the monotonic clock; asyncio's loop.time() is too,
            # but convert through the difference so a custom loop clock still works.
            self._handle = loop.call_at(loop.time() + (self.at - time.monotonic()), self.cancel)

    def disarm(self) -> None:
        """Drop the scheduled cancellation, if any."""
        handle = self._handle
        if handle is not None:
            handle.cancel()
            self._handle = None

    def cancel(self) -> None:
        """Cancel the task now (the deadline passed, or the caller went away); once."""
        task = self._task
        if not self.fired and task is not None:
            self.fired = True
            task.cancel()

    def withdraw(self) -> bool:
        """Take back this scope's own cancel request; once.

        True when the scope did cancel its task and no one else has asked for
        a cancellation since: the ``CancelledError`` in flight is ours to absorb.
        """
        task = self._task
        if not self.fired or self._withdrawn or task is None:
            return False
        self._withdrawn = True
        return task.uncancel() <= self._cancelling

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self.disarm()
        ours = self.withdraw()
        self._task = None
        return ours and exc_type is asyncio.CancelledError


class deadline:  # lowercase: used like a function, ``with tailguard.deadline(0.05):``
    """Run a block under a budget of ``seconds``; it can only tighten the current one.

    Inside the block :func:`remaining` reports the tighter of the two budgets.
    When this block's own budget runs out, the task is cancelled and
    :class:`DeadlineExceeded` is raised here; if an enclosing (tighter) deadline
    fires first, its cancellation passes through untouched. Outside of an
    asyncio task (for example in a worker thread) the block only narrows what
    :func:`remaining` reports, for outbound calls to read.

    >>> import asyncio, tailguard
    >>> async def main():
    ...     with tailguard.deadline(0.01):
    ...         await asyncio.sleep(10)
    >>> asyncio.run(main())
    Traceback (most recent call last):
    ...
    tailguard.DeadlineExceeded: deadline exceeded: 0.010s budget ran out (scope)
    """

    __slots__ = ("_deadline", "_scope", "_seconds", "_token")

    def __init__(self, seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise TypeError(f"seconds must be a number, not {type(seconds).__name__}")
        if math.isnan(seconds) or seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        self._seconds = float(seconds)
        self._deadline: Deadline | None = None
        self._scope: CancelScope | None = None
        self._token: Token[_context.ContextEntry | None] | None = None

    def __enter__(self) -> Deadline:
        own = self._deadline = Deadline.after(self._seconds, source="scope")
        frame = _context.current.get()
        outer = frame.deadline if frame is not None else None
        effective = own if outer is None or own.at < outer.at else outer
        owner = frame.owner if frame is not None else None
        self._token = _context.current.set(_context.Frame(effective, owner))
        # Only arm a timer when this scope is the one that can fire first.
        self._scope = CancelScope(own.at if effective is own and own.at != math.inf else None)
        self._scope.__enter__()
        return effective

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._scope is not None
        assert self._token is not None
        _context.current.reset(self._token)
        if self._scope.__exit__(exc_type, exc, tb):
            raise DeadlineExceeded(self._deadline) from exc

    async def __aenter__(self) -> Deadline:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)
