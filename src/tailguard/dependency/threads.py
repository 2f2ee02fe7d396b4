"""A bounded pool of named worker threads that reports what it is doing.

Each :class:`~tailguard.dependency.Dependency` runs its blocking work here rather
than in the event loop's shared default executor, so one slow dependency cannot
take every thread the service has (the bulkhead idea applied to threads).

>>> import asyncio, threading
>>> pool = ThreadPool("inventory", max_workers=2)
>>> asyncio.run(pool.run(lambda: threading.current_thread().name, done=print))
None
'tailguard-inventory-0'
>>> pool.shutdown()
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from tailguard.telemetry.catalog import Catalog
from tailguard.telemetry.pools import WaitObserver

__all__ = ["ThreadPool"]

T = TypeVar("T")

_WARMUP = 20
"""The mean wait is a plain mean of the first 20 samples, then an EWMA of weight 1/20."""


class ThreadPool:
    """At most ``max_workers`` threads named ``tailguard-<name>-N``, started on first use.

    ``in_use`` counts threads running a job *now*: a job whose caller gave up
    still counts until it returns, because a thread cannot be stopped from
    outside. ``queued`` counts jobs submitted but not started. ``mean_wait``
    is the recent mean of seconds from :meth:`run` to the job starting; each
    wait is also observed into ``tailguard_pool_queue_wait_seconds{pool=name}``
    when metrics are on. :meth:`shutdown` lets running jobs finish; a later
    :meth:`run` starts a fresh pool (thread numbers keep counting).
    """

    __slots__ = (
        "_executor",
        "_lock",
        "_mean_wait",
        "_numbers",
        "_observe_wait",
        "_prefix",
        "_running",
        "_waits",
        "in_use",
        "max_workers",
        "name",
        "queued",
    )

    def __init__(self, name: str, max_workers: int, catalog: Catalog | None = None) -> None:
        self.name = name
        self.max_workers = max_workers
        self.in_use = 0
        self.queued = 0
        self._prefix = f"tailguard-{name}-"
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._running: set[Future[Any]] = set()  # jobs whose done() has not run yet
        self._waits = 0
        self._mean_wait = 0.0
        self._observe_wait = WaitObserver(name, catalog)

    @property
    def mean_wait(self) -> float:
        """Recent mean seconds a job waited for a thread (0 before the first job)."""
        return self._mean_wait

    async def run(self, job: Callable[[], T], done: Callable[[BaseException | None], None]) -> T:
        """``job()`` on one of the pool's threads; ``done(error)`` on the loop when it ends.

        ``done`` runs once, on the event loop, when the job has returned (or
        was cancelled before it started, or could not be submitted), and
        before the caller is woken. Cancelling the caller does not wait for a
        job that is already running: ``done`` runs later, when it returns.
        """
        loop = asyncio.get_running_loop()
        try:
            future = self._submit(job)
        except BaseException as exc:  # the interpreter is shutting down
            done(exc)
            raise
        self._running.add(future)
        # Added before wrap_future's own callback, so done() runs before the caller wakes.
        future.add_done_callback(lambda _: self._finished(loop, future, done))
        return await asyncio.wrap_future(future)

    async def drain(self) -> None:
        """Wait until every job started so far has ended and its ``done`` has run."""
        running = [asyncio.wrap_future(future) for future in self._running]
        await asyncio.gather(*running, return_exceptions=True)

    def shutdown(self) -> None:
        """Stop the pool's threads once their current jobs end; never waits."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)

    def _submit(self, job: Callable[[], T]) -> Future[T]:
        executor = self._executor
        if executor is None:
            executor = self._executor = ThreadPoolExecutor(
                self.max_workers, initializer=self._name_thread
            )
        with self._lock:
            self.queued += 1
        try:
            return executor.submit(self._run, time.monotonic(), job)
        except BaseException:
            with self._lock:
                self.queued -= 1
            raise

    def _finished(
        self,
        loop: asyncio.AbstractEventLoop,
        future: Future[Any],
        done: Callable[[BaseException | None], None],
    ) -> None:
        # On the worker thread, or on the loop's if the job was cancelled before it started.
        if future.cancelled():
            error: BaseException | None = asyncio.CancelledError()
            with self._lock:
                self.queued -= 1  # it never reached _run
        else:
            error = future.exception()
        try:
            loop.call_soon_threadsafe(self._forget, future, done, error)
        except RuntimeError:  # the loop is closed: nobody is left to tell
            self._running.discard(future)

    def _forget(
        self,
        future: Future[Any],
        done: Callable[[BaseException | None], None],
        error: BaseException | None,
    ) -> None:
        self._running.discard(future)
        done(error)

    def _name_thread(self) -> None:
        threading.current_thread().name = f"{self._prefix}{next(self._numbers)}"

    def _run(self, submitted: float, job: Callable[[], T]) -> T:
        wait = time.monotonic() - submitted
        with self._lock:
            self.queued -= 1
            self.in_use += 1
            waits = self._waits = self._waits + 1
            self._mean_wait += (wait - self._mean_wait) / (waits if waits < _WARMUP else _WARMUP)
        self._observe_wait(wait)
        try:
            return job()
        finally:
            with self._lock:
                self.in_use -= 1
