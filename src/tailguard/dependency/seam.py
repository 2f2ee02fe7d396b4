"""The one way into a dependency: a slot, the deadline, chaos, metrics, the span, the latency.

Every entry point of a :class:`~tailguard.Dependency` (``async with``, the
decorator, ``call``, ``run_sync``, the httpx transport) goes through one
:class:`Seam`: :meth:`~Seam.acquire` takes a bulkhead slot within the
deadline (and starts the call's span), :meth:`~Seam.plan` asks chaos what to
inject into this call, and :meth:`~Seam.release` gives the slot back, counts
the call, charges its time to the request and feeds the latency estimate.
How a planned fault is *applied* differs by entry point (awaited, in the
worker thread, or as an HTTP response), so each applies its own; planning,
and giving the slot back when planning fails, happen here only.

>>> import asyncio
>>> from tailguard.admission import Limiter
>>> from tailguard.tail.sketch import LatencySketch
>>> seam = Seam("db", Limiter("db", max_concurrency=1), None, LatencySketch(), None)
>>> async def main():
...     permit = await seam.enter()
...     in_use = seam.limiter.in_use
...     seam.release(permit, None)
...     return in_use, seam.limiter.in_use
>>> asyncio.run(main())
(1, 0)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from asyncio import CancelledError
from concurrent.futures import Future
from time import monotonic
from typing import TYPE_CHECKING, Any, Final

from anyio import from_thread

from tailguard import _context
from tailguard.admission import Limiter, Permit, Rejected
from tailguard.deadlines import MIN_BUDGET, Deadline, DeadlineExceeded, current_deadline
from tailguard.enforcement import Enforcement
from tailguard.tail.sketch import LatencySketch
from tailguard.telemetry import dependencies as dependency_telemetry
from tailguard.telemetry.dependencies import failed_status

if TYPE_CHECKING:
    from tailguard.chaos._inject import Injection
    from tailguard.chaos.engine import Chaos
    from tailguard.telemetry.catalog import Catalog

__all__ = ["Seam"]


class Seam:
    """Slot, deadline, chaos and telemetry for the calls of one dependency."""

    __slots__ = ("catalog", "chaos", "enforcement", "latency", "limiter", "name")

    def __init__(
        self,
        name: str,
        limiter: Limiter,
        chaos: Chaos | None,
        latency: LatencySketch,
        catalog: Catalog | None,
        enforcement: Enforcement | None = None,
    ) -> None:
        self.name: Final = name
        self.limiter: Final = limiter
        self.chaos: Final = chaos
        self.latency: Final = latency
        self.catalog: Final = catalog
        self.enforcement: Final = enforcement if enforcement is not None else Enforcement()
        """Whether a full bulkhead queues and sheds (``"on"``) or only records (shadow)."""

    async def enter(self) -> Permit:
        """Take a slot for one call, then meet chaos inside it.

        Injected delays and hangs hold the slot, as a slow dependency would:
        filling the bulkhead is what a game-day wants to see.
        """
        permit = await self.acquire()
        injection = self.plan(permit)
        if injection is not None:
            try:
                await injection.apply()
            except BaseException as exc:
                self.release(permit, exc)
                raise
        return permit

    def enter_from_thread(self) -> tuple[Permit, asyncio.AbstractEventLoop]:
        """:meth:`enter` for blocking code on an AnyIO worker thread; blocks until it has a slot.

        The slot is taken on the event loop that runs the thread (a FastAPI or
        Starlette ``def`` endpoint's, ``anyio.to_thread.run_sync``'s), in a
        copy of this thread's context: the request's deadline caps the wait,
        and the call is counted, traced and scoped by chaos exactly as an
        ``async with`` block's. A planned fault is applied here, in the thread,
        as :meth:`Dependency.run_sync <tailguard.Dependency.run_sync>` does.
        Returns the permit and the loop to give it back on
        (:meth:`release_from_thread`).
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                f"`with` on dependency {self.name!r} would block the event loop: "
                "use `async with` in async code"
            )
        try:
            loop, reply = from_thread.run_sync(self._start_for_thread)
        except RuntimeError as exc:  # only anyio's: _start_for_thread never raises
            raise RuntimeError(
                f"`with` on dependency {self.name!r} works on AnyIO worker threads (FastAPI "
                "and Starlette `def` endpoints, run_in_threadpool, anyio.to_thread.run_sync); "
                "elsewhere call `await dependency.run_sync(fn)` or wrap the thread's work "
                "in `async with dependency:`"
            ) from exc
        permit, injection = reply.result()
        if injection is not None:
            injected, finished = injection.wrap_sync(_nothing, _ignore)
            try:
                injected()
            except BaseException as exc:
                finished(exc)
                self.release_from_thread(loop, permit, exc)
                raise
            finished(None)
        return permit, loop

    def release_from_thread(
        self, loop: asyncio.AbstractEventLoop, permit: Permit, error: BaseException | None
    ) -> None:
        """:meth:`release`, on ``loop``, for a slot taken by :meth:`enter_from_thread`.

        Scheduled, not awaited: the thread goes on at once, and the loop gives
        the slot back (and charges the request, in a copy of this thread's
        context) before it hears of anything the thread does next.
        """
        with contextlib.suppress(RuntimeError):  # a closed loop: nothing left to give back to
            loop.call_soon_threadsafe(self.release, permit, error)

    def _start_for_thread(
        self,
    ) -> tuple[asyncio.AbstractEventLoop, Future[tuple[Permit, Injection | None]]]:
        # On the loop, in a copy of the worker thread's context.
        loop = asyncio.get_running_loop()
        reply: Future[tuple[Permit, Injection | None]] = Future()
        # A bare Task, not loop.create_task: the task factory would count this
        # helper among the request's own tasks (and trace it).
        task = asyncio.Task(self._enter_for_thread(), loop=loop)
        task.add_done_callback(functools.partial(_answer, reply))
        return loop, reply

    async def _enter_for_thread(self) -> tuple[Permit, Injection | None]:
        permit = await self.acquire()
        return permit, self.plan(permit)

    async def acquire(self, request: Any = None) -> Permit:
        """Take a slot for one call; every entry point starts here.

        A call given a slot at once has waited zero seconds (its permit's
        ``requested_at`` is its ``acquired_at``); only the others are
        recorded as queue waits. ``request``: the httpx/httpx2 request the
        call sends, if it is one (its span becomes an HTTP client span).
        """
        name = self.name
        span = dependency_telemetry.call_started(name, request)
        deadline = current_deadline()
        if deadline is not None and deadline.remaining() < MIN_BUDGET:
            error = DeadlineExceeded(deadline)
            dependency_telemetry.call_refused(self.catalog, name, error, span, 0.0)
            raise error
        permit = self.limiter.try_acquire()
        if permit is None and not self._enforced():
            permit = self._shadow(deadline, span)
        if permit is None:
            requested = monotonic()
            try:
                permit = await self._queue(deadline)
            except BaseException as exc:
                dependency_telemetry.call_refused(
                    self.catalog, name, exc, span, monotonic() - requested
                )
                raise
            permit.requested_at = min(requested, permit.acquired_at)
        permit.span = span
        return permit

    def _enforced(self) -> bool:
        """Whether this call acts on a full bulkhead: the dependency's mode; a fraction
        follows the request the call is made for (each request fully one or the other)."""
        enforcement = self.enforcement
        if enforcement.always:
            return True
        if enforcement.fraction > 0.0:
            request = _context.current_request()
            if request is not None:
                return request.enforced
        return enforcement.enforce()

    def _shadow(self, deadline: Deadline | None, span: Any) -> Permit:
        """Shadow mode, bulkhead full: count what would have happened, run the call anyway."""
        limiter = self.limiter
        reason = limiter.would_shed(deadline_at=None if deadline is None else deadline.at)
        if reason is not None:
            dependency_telemetry.call_would_shed(self.catalog, self.name, reason, span)
        return limiter.force_acquire()

    async def _queue(self, deadline: Deadline | None) -> Permit:
        """Wait for a slot (none was free), for no longer than ``deadline`` allows."""
        if deadline is None:
            return await self.limiter.acquire()
        try:
            return await self.limiter.acquire(deadline_at=deadline.at)
        except Rejected as exc:
            if exc.reason != "deadline":
                raise
            # The wait was capped at the deadline and ran into it: the request's
            # own scope is about to fire, so report what it would.
            raise DeadlineExceeded(deadline) from exc

    def plan(self, permit: Permit, *, respond: bool = False) -> Injection | None:
        """The fault chaos injects into the call holding ``permit``, if any.

        ``respond``: the entry point can answer with a synthesized response
        (the httpx transport). A failure while planning (a distribution that
        cannot sample, a broken custom one) never costs the call its slot: the
        slot goes back, and the error propagates to the caller.
        """
        chaos = self.chaos
        if chaos is None or not chaos.armed:
            return None
        try:
            return chaos.plan(self.name, respond=respond, span=permit.span)
        except BaseException as exc:
            self.release(permit, exc)
            raise

    def release(self, permit: Permit, error: BaseException | None, status: int = 0) -> None:
        """Give a call's slot back; ``error`` is what the call raised, ``None`` if it went well.

        ``status``: the HTTP status the call was answered with (the transport's
        calls; 0 for none). A 5xx or 429 answer counts as a failed call.
        """
        failed = error is not None or (status != 0 and failed_status(status))
        permit.release(ok=not failed)
        dependency_telemetry.call_ended(self.catalog, self.name, permit, error, status)
        if not failed or isinstance(error, CancelledError):
            # A cancelled call (a hedge's loser, a deadline) ran at least this long:
            # leaving it out would pull the estimate down to the winners.
            self.latency.observe(monotonic() - permit.acquired_at)


def _nothing() -> None:
    """The work a fault is applied before, in :meth:`Seam.enter_from_thread`: none."""


def _ignore(error: BaseException | None) -> None:
    """Nothing to do when an injection applied in a thread ends (the slot is the seam's)."""


def _answer(
    reply: Future[tuple[Permit, Injection | None]],
    task: asyncio.Task[tuple[Permit, Injection | None]],
) -> None:
    """Hand what the loop got (a slot, a refusal) to the waiting thread."""
    if task.cancelled():  # the loop is shutting down
        reply.cancel()
        return
    error = task.exception()
    if error is not None:
        reply.set_exception(error)
    else:
        reply.set_result(task.result())
