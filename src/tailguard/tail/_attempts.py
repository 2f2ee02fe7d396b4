"""The tasks one helper call starts: spans, metrics, and cancel-and-await of the rest.

Every helper that runs attempts concurrently (hedge, race, quorum, fanout)
uses :class:`Attempts` as ``async with Attempts(helper, site) as group:``:

* ``group.start(fn, kind)`` runs ``fn()`` in a new task, under a child span
  of the helper's span, and counts it in ``tailguard_tail_attempts_total``;
* ``await group.wait(until)`` returns the attempts that finished since the
  last call (in the order they finished), or nothing once the loop's clock
  reaches ``until``;
* ``group.won(attempt)`` links the helper's span to a winner;
* ``group.catalog`` is the metrics of the request the helper runs in
  (:func:`request_catalog`), read once per helper call;
* leaving the block cancels every attempt still running and **waits until
  each has finished**, also when the caller is being cancelled (a second
  cancellation is remembered and re-raised once the attempts are done), so
  no task the helper started outlives it, and every task's exception is
  retrieved (no "exception was never retrieved" warnings).

The helper's own waits never cancel the caller's task (``wait`` uses a timer
on a future, not ``asyncio.timeout``), so there is no cancellation request
of ours to account for: a ``CancelledError`` the caller sees is always
somebody else's, and it always propagates.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from tailguard._context import current_request
from tailguard.telemetry.tracing import tracer

if TYPE_CHECKING:
    from tailguard.telemetry.catalog import Catalog

__all__ = [
    "Attempt",
    "Attempts",
    "all_failed",
    "check_fn",
    "check_fns",
    "failure_of",
    "request_catalog",
]

SITE: Final = "tailguard.site"
HELPER: Final = "tailguard.helper"
OUTCOME: Final = "tailguard.outcome"
ATTEMPT: Final = "tailguard.attempt"
KIND: Final = "tailguard.attempt.kind"
ROLE: Final = "tailguard.link"

AsyncFn = Callable[[], Awaitable[Any]]
T = TypeVar("T")


def request_catalog() -> Catalog | None:
    """The metrics of the guard handling the current request; ``None`` outside a request.

    Also ``None`` when that guard's metrics are off: the helpers then record
    no metrics (their spans are unaffected). Each guard records into its own
    catalog, so two guards in one process keep their tail metrics apart.

    >>> request_catalog() is None  # not inside a request
    True
    """
    request = current_request()
    return None if request is None else request.catalog


class Attempt:
    """One call of ``fn`` in its own task."""

    __slots__ = ("ended", "index", "kind", "span", "started", "task")

    def __init__(self, index: int, kind: str, span: Span, started: float) -> None:
        self.index: Final = index
        self.kind: Final = kind
        self.span: Final = span
        self.started: Final = started
        self.ended: float | None = None
        self.task: asyncio.Task[Any]

    @property
    def latency(self) -> float:
        """Seconds from start to end (the attempt must have ended)."""
        assert self.ended is not None
        return self.ended - self.started


def failure_of(attempt: Attempt) -> BaseException | None:
    """What a finished attempt raised (a ``CancelledError`` if it was cancelled), or ``None``.

    A ``BaseException`` that is neither an ``Exception`` nor a cancellation
    (``SystemExit``, say) is not an attempt's failure: it is raised here, and
    ends the helper at once.
    """
    task = attempt.task
    if task.cancelled():
        return asyncio.CancelledError()
    exc = task.exception()
    if exc is None or isinstance(exc, Exception | asyncio.CancelledError):
        return exc
    raise exc


def check_fn(helper: str, field: str, fn: object) -> None:
    """``fn`` must be a zero-argument async callable (passing a coroutine is a common slip)."""
    if callable(fn):
        return
    if inspect.iscoroutine(fn):
        fn.close()  # never awaited: close it, or Python warns
        raise TypeError(
            f"{helper}: {field} is a coroutine; pass the function itself "
            "(every attempt must be a fresh call): fetch, not fetch()"
        )
    raise TypeError(f"{helper}: {field} must be a zero-argument async callable, got {fn!r}")


def check_fns(
    helper: str, field: str, fns: Sequence[Callable[[], Awaitable[T]]]
) -> list[Callable[[], Awaitable[T]]]:
    """A list of the zero-argument async callables in the sequence ``fns``."""
    if isinstance(fns, str | bytes) or not isinstance(fns, Sequence):
        raise TypeError(f"{helper}: {field} must be a sequence of async callables, got {fns!r}")
    try:
        for i, fn in enumerate(fns):
            check_fn(helper, f"{field}[{i}]", fn)
    except TypeError:
        for fn in fns:  # close the other coroutines too: none of them will run
            if inspect.iscoroutine(fn):
                fn.close()
        raise
    return list(fns)


class Attempts:
    """The attempts of one helper call (see the module docstring)."""

    __slots__ = (
        "_loop",
        "_waiter",
        "all",
        "catalog",
        "finished",
        "helper",
        "pending",
        "site",
        "span",
        "winners",
    )

    def __init__(self, helper: str, site: str, **attributes: Any) -> None:
        self.helper: Final = helper
        self.site: Final = site
        self._loop = asyncio.get_running_loop()
        self.catalog: Final = request_catalog()
        self._waiter: asyncio.Future[None] | None = None
        self.all: list[Attempt] = []
        self.pending: dict[asyncio.Task[Any], Attempt] = {}
        self.finished: list[Attempt] = []
        self.winners: list[Attempt] = []
        self.span: Final = tracer().start_span(
            f"tailguard.{helper}", attributes={SITE: site, HELPER: helper, **attributes}
        )

    def now(self) -> float:
        """The event loop's clock, which all attempt times use."""
        return self._loop.time()

    async def __aenter__(self) -> Attempts:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._cancel_and_wait()
        except BaseException as late:  # a cancellation while waiting for the attempts
            self._end_span(late)
            raise
        self._end_span(exc)

    # -- attempts -------------------------------------------------------------------------

    def start(self, fn: AsyncFn, kind: str) -> Attempt:
        """Run ``fn()`` in a new task, as attempt number ``len(self.all)``."""
        index = len(self.all)
        span = tracer().start_span(
            f"tailguard.{self.helper}.attempt",
            context=trace.set_span_in_context(self.span),
            attributes={SITE: self.site, ATTEMPT: index, KIND: kind},
        )
        attempt = Attempt(index, kind, span, self._loop.time())
        task = attempt.task = self._loop.create_task(
            self._run(attempt, fn), name=f"tailguard.{self.helper}:{self.site}#{index}"
        )
        self.all.append(attempt)
        if task.done():  # an eager task factory ran it to completion already
            self._finish(attempt)
        else:
            self.pending[task] = attempt
            task.add_done_callback(self._on_done)
        catalog = self.catalog
        if catalog is not None:
            catalog.tail_attempts.labels(self.site, self.helper).inc()
        return attempt

    async def _run(self, attempt: Attempt, fn: AsyncFn) -> Any:
        span = attempt.span
        try:
            with trace.use_span(span, record_exception=False, set_status_on_exception=False):
                result = await fn()
        except asyncio.CancelledError:
            span.set_attribute(OUTCOME, "cancelled")
            raise
        except BaseException as exc:
            span.set_attribute(OUTCOME, "error")
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        else:
            span.set_attribute(OUTCOME, "ok")
            return result
        finally:
            attempt.ended = self._loop.time()
            span.end()

    def _on_done(self, task: asyncio.Task[Any]) -> None:
        self._finish(self.pending.pop(task))

    def _finish(self, attempt: Attempt) -> None:
        task = attempt.task
        if not task.cancelled():
            task.exception()  # marks it retrieved: the helper reports it, or it is moot
        elif attempt.ended is None:  # cancelled before it ever ran: _run() never started
            attempt.ended = self._loop.time()
            attempt.span.set_attribute(OUTCOME, "cancelled")
            attempt.span.end()
        self.finished.append(attempt)
        if self._waiter is not None:
            _wake(self._waiter)

    async def wait(self, until: float | None = None) -> list[Attempt]:
        """Attempts finished since the last call; waits for one, until ``until`` at most.

        ``until`` is a time on the loop's clock (:meth:`now`); ``None`` or
        infinity: no limit. Returns at once (maybe with nothing) when nothing
        is running or ``until`` has passed.
        """
        loop = self._loop
        if not self.finished and self.pending and (until is None or until > loop.time()):
            waiter = self._waiter = loop.create_future()
            timer = (
                None if until is None or until == math.inf else loop.call_at(until, _wake, waiter)
            )
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        finished, self.finished = self.finished, []
        return finished

    def won(self, attempt: Attempt) -> None:
        """Record ``attempt`` as a winner: the helper's span links to it."""
        self.winners.append(attempt)
        self.span.add_link(attempt.span.get_span_context(), {ROLE: "winner"})

    def cancel(self, attempt: Attempt) -> None:
        """Cancel a running attempt that is no longer needed (a loser)."""
        if attempt.task.done():
            return
        for winner in self.winners:
            attempt.span.add_link(winner.span.get_span_context(), {ROLE: "winner"})
        attempt.task.cancel()
        catalog = self.catalog
        if catalog is not None:
            catalog.tail_attempts_cancelled.labels(self.site, self.helper).inc()

    async def _cancel_and_wait(self) -> None:
        for attempt in list(self.pending.values()):
            self.cancel(attempt)
        interrupted: asyncio.CancelledError | None = None
        while self.pending:
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            except asyncio.CancelledError as exc:
                # The caller is cancelled (again) while its attempts wind down.
                # They were asked to stop once, and may be cleaning up: let them
                # finish (as TaskGroup does), then let the cancellation through.
                interrupted = exc
            finally:
                self._waiter = None
        self.finished.clear()
        if interrupted is not None:
            raise interrupted

    def _end_span(self, exc: BaseException | None) -> None:
        span = self.span
        span.set_attribute("tailguard.attempts", len(self.all))
        if exc is None:
            span.set_attribute(OUTCOME, "ok")
        elif isinstance(exc, asyncio.CancelledError):
            span.set_attribute(OUTCOME, "cancelled")
        else:
            span.set_attribute(OUTCOME, "error")
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        span.end()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def all_failed(helper: str, site: str, failures: list[BaseException], what: str) -> BaseException:
    """The exception for a helper whose attempts all failed.

    An ``ExceptionGroup`` of every failure; but if an attempt was cancelled
    by someone other than the helper (the request winding down, say), a
    ``CancelledError``, as ``asyncio.gather`` raises.
    """
    errors: list[Exception] = []
    for failure in failures:
        if not isinstance(failure, Exception):  # failure_of() returns nothing else but this
            return asyncio.CancelledError(
                f"{helper} {site!r}: an attempt was cancelled from outside"
            )
        errors.append(failure)
    return ExceptionGroup(f"{helper} {site!r}: {what}", errors)
