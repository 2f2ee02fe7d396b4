"""Limiter and thread-pool gauges, refreshed from the objects' own state.

Limiters and pools already count what they do (:meth:`Limiter.state`,
:meth:`Dependency.state`); a :class:`Refresher` copies those counts into the
catalog's gauges when it is called: right before a scrape, and periodically
from the loop monitor (in multiprocess mode a scrape reaches one worker only,
so every worker must keep its own gauges fresh). Cumulative rejection counts
become counter increments.

Thread pools are measured where the work is queued:

* asyncio's default executor (``asyncio.to_thread``, ``run_in_executor(None, ...)``):
  :func:`instrument_threads` installs an :class:`InstrumentedExecutor`, sized
  like asyncio's own, as the loop's default executor;
* anyio's worker threads (Starlette's and FastAPI's sync endpoints,
  ``run_in_threadpool``): the loop's default thread limiter gets a timed
  ``acquire_on_behalf_of``, so the wait for a worker token is observed;
* each dependency's pool (:meth:`Dependency.run_sync`): observed by the pool itself.

Each reports ``tailguard_pool_threads_in_use``, ``tailguard_pool_threads_max``,
``tailguard_pool_jobs_queued`` and ``tailguard_pool_queue_wait_seconds`` with
``pool`` set to ``"asyncio"``, ``"anyio"`` or the dependency's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Final, NamedTuple, ParamSpec, Protocol, TypeVar

import anyio.to_thread

from tailguard.telemetry.catalog import Catalog

if TYPE_CHECKING:
    from tailguard.admission import Limiter, LimiterState

__all__ = [
    "ANYIO_POOL",
    "ASYNCIO_POOL",
    "DependencyState",
    "InstrumentedExecutor",
    "LoopThreads",
    "Refresher",
    "Stateful",
    "WaitObserver",
    "instrument_threads",
]

P = ParamSpec("P")
T = TypeVar("T")

ASYNCIO_POOL: Final = "asyncio"
"""The ``pool`` label of asyncio's default executor."""
ANYIO_POOL: Final = "anyio"
"""The ``pool`` label of anyio's worker threads (Starlette's sync endpoints)."""


class DependencyState(NamedTuple):
    """A snapshot of a dependency's bulkhead and thread pool, for telemetry.

    >>> from tailguard import Dependency
    >>> state = Dependency("db", max_concurrency=2).state()
    >>> state.limiter.in_use, state.threads_in_use, state.threads_max
    (0, 0, 2)
    """

    name: str
    limiter: LimiterState
    """The bulkhead: slots in use, queued, rejections by reason, mean waits."""
    threads_in_use: int
    """Threads of the dependency's pool running a job now (abandoned ones included)."""
    threads_max: int
    thread_queue_wait: float
    """Recent mean seconds a job waited for a thread of the pool."""
    threads_queued: int = 0
    """Jobs waiting for a thread of the pool now."""


class Stateful(Protocol):
    """What telemetry reads of a dependency: its :class:`DependencyState`."""

    def state(self) -> DependencyState: ...


class WaitObserver:
    """Observes a pool's job waits into ``tailguard_pool_queue_wait_seconds{pool=...}``.

    Does nothing while :attr:`catalog` is ``None``; safe to call from any thread.

    >>> from prometheus_client import CollectorRegistry
    >>> from tailguard.telemetry.catalog import Catalog
    >>> catalog = Catalog(CollectorRegistry())
    >>> WaitObserver("db", catalog)(0.002)
    >>> catalog.registry.get_sample_value("tailguard_pool_queue_wait_seconds_sum", {"pool": "db"})
    0.002
    """

    __slots__ = ("_series", "catalog", "pool")

    def __init__(self, pool: str, catalog: Catalog | None = None) -> None:
        self.pool = pool
        self.catalog = catalog
        """Where waits are observed; set by the owner of the pool (its guard)."""
        self._series: tuple[Catalog, Any] | None = None  # the catalog and this pool's child

    def __call__(self, wait: float) -> None:
        catalog = self.catalog
        if catalog is None:
            return
        series = self._series
        if series is None or series[0] is not catalog:
            # Threads racing here both get the same child from labels().
            series = self._series = (catalog, catalog.pool_queue_wait.labels(self.pool))
        series[1].observe(wait)


def _asyncio_default_workers() -> int:
    """The size asyncio gives the default executor it creates itself."""
    cpus: Callable[[], int | None] = getattr(os, "process_cpu_count", os.cpu_count)
    return min(32, (cpus() or 1) + 4)


class InstrumentedExecutor(ThreadPoolExecutor):
    """A :class:`~concurrent.futures.ThreadPoolExecutor` that counts and times its jobs.

    ``in_use`` is the number of threads running a job now, ``queued`` the
    jobs submitted but not started, ``max_workers`` the pool's size (by
    default asyncio's). Each job's wait from ``submit`` to its start is
    observed into ``tailguard_pool_queue_wait_seconds{pool=pool}``. To measure
    an executor of your own size, make it the default yourself:
    ``loop.set_default_executor(InstrumentedExecutor(64))``.

    >>> with InstrumentedExecutor(2) as executor:
    ...     executor.submit(sum, [1, 2]).result(), executor.max_workers
    (3, 2)
    """

    def __init__(
        self,
        max_workers: int | None = None,
        thread_name_prefix: str = "asyncio",
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        pool: str = ASYNCIO_POOL,
        catalog: Catalog | None = None,
    ) -> None:
        workers = _asyncio_default_workers() if max_workers is None else max_workers
        super().__init__(workers, thread_name_prefix, initializer, initargs)
        self.max_workers: Final = workers
        self.pool: Final = pool
        self.in_use = 0
        self.queued = 0
        self._counts = threading.Lock()
        self.observe_wait: Final = WaitObserver(pool, catalog)
        """Observes each job's wait; its ``catalog`` says where (``None``: nowhere)."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        job = _Job(self, functools.partial(fn, *args, **kwargs))
        with self._counts:
            self.queued += 1
        try:
            future = super().submit(job)
        except BaseException:  # shut down, or the interpreter is exiting
            with self._counts:
                self.queued -= 1
            raise
        future.add_done_callback(job.settle)
        return future


class _Job:
    """One job of an :class:`InstrumentedExecutor`: waits are timed from its creation."""

    __slots__ = ("_call", "_executor", "_started", "_submitted")

    def __init__(self, executor: InstrumentedExecutor, call: Callable[[], Any]) -> None:
        self._executor = executor
        self._call = call
        self._started = False
        self._submitted = time.monotonic()

    def __call__(self) -> Any:
        executor = self._executor
        wait = time.monotonic() - self._submitted
        with executor._counts:
            executor.queued -= 1
            executor.in_use += 1
            self._started = True
        executor.observe_wait(wait)
        try:
            return self._call()
        finally:
            with executor._counts:
                executor.in_use -= 1

    def settle(self, future: Future[Any]) -> None:
        # Cancelled before it started, or failed by a broken pool: it left the queue unrun.
        if not self._started:
            executor = self._executor
            with executor._counts:
                executor.queued -= 1


class _TimedAcquire:
    """Mixed into anyio's capacity limiter: observes how long each token took to get."""

    __slots__ = ()

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        started = time.monotonic()
        await super().acquire_on_behalf_of(borrower)  # type: ignore[misc]
        threads = _loops.get(asyncio.get_running_loop())
        if threads is not None:
            threads.anyio_waits(time.monotonic() - started)


_timed_classes: Final[dict[type, type]] = {}


def _timed_class(limiter_class: type) -> type:
    timed = _timed_classes.get(limiter_class)
    if timed is None:
        timed = _timed_classes[limiter_class] = type(
            f"Timed{limiter_class.__name__}",
            (_TimedAcquire, limiter_class),
            {"__slots__": (), "__module__": __name__},
        )
    return timed


class LoopThreads:
    """The thread pools tailguard measures on one event loop.

    ``executor`` is the loop's default executor if tailguard installed it
    (``None`` if the app set its own); ``anyio`` is the loop's default anyio
    thread limiter (``None`` until :func:`instrument_threads` ran in a task),
    whose waits ``anyio_waits`` observes.
    """

    __slots__ = ("anyio", "anyio_waits", "executor")

    def __init__(self) -> None:
        self.executor: InstrumentedExecutor | None = None
        self.anyio: Any = None
        self.anyio_waits = WaitObserver(ANYIO_POOL)


_loops: Final[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopThreads]] = (
    weakref.WeakKeyDictionary()
)


def instrument_threads(
    loop: asyncio.AbstractEventLoop | None = None, catalog: Catalog | None = None
) -> LoopThreads:
    """Measure ``loop``'s thread pools (default: the running loop); idempotent.

    Waits are observed into ``catalog``: the pools are the loop's, so the first
    guard to measure a loop with a catalog gets that loop's waits.

    Installs an :class:`InstrumentedExecutor` as the default executor unless
    the loop has one already (one the app set, or one asyncio created for an
    earlier ``to_thread``: those are left alone and not measured). When called
    from a task on the loop, also times the loop's default anyio thread
    limiter, keeping its tokens and any ``total_tokens`` the app set.

    >>> import asyncio
    >>> async def main():
    ...     threads = instrument_threads()
    ...     await asyncio.to_thread(print, "in a thread")
    ...     return threads.executor.max_workers > 0, threads.anyio.total_tokens
    >>> asyncio.run(main())
    in a thread
    (True, 40)
    """
    loop = asyncio.get_running_loop() if loop is None else loop
    threads = _loops.get(loop)
    if threads is None:
        threads = _loops[loop] = LoopThreads()
    if threads.executor is None:
        current = getattr(loop, "_default_executor", None)
        if isinstance(current, InstrumentedExecutor):
            threads.executor = current
        elif current is None:
            threads.executor = InstrumentedExecutor()
            loop.set_default_executor(threads.executor)
    if threads.anyio is None and _running_loop() is loop:
        threads.anyio = _timed_anyio_limiter()
    if catalog is not None:
        if threads.executor is not None and threads.executor.observe_wait.catalog is None:
            threads.executor.observe_wait.catalog = catalog
        if threads.anyio_waits.catalog is None:
            threads.anyio_waits.catalog = catalog
    return threads


def loop_pools() -> dict[str, dict[str, float]]:
    """The running loop's measured thread pools (asyncio's executor, anyio's threads), by name.

    >>> loop_pools()  # outside a loop, or before instrument_threads(): none
    {}
    """
    loop = _running_loop()
    threads = None if loop is None else _loops.get(loop)
    pools: dict[str, dict[str, float]] = {}
    if threads is None:
        return pools
    executor = threads.executor
    if executor is not None:
        pools[ASYNCIO_POOL] = {
            "threads_in_use": executor.in_use,
            "threads_max": executor.max_workers,
            "queued": executor.queued,
        }
    limiter = threads.anyio
    if limiter is not None:
        pools[ANYIO_POOL] = {
            "threads_in_use": limiter.borrowed_tokens,
            "threads_max": limiter.total_tokens,
            "queued": limiter.statistics().tasks_waiting,
        }
    return pools


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _timed_anyio_limiter() -> Any:
    try:
        limiter: Any = anyio.to_thread.current_default_thread_limiter()
    except RuntimeError:  # not in a task: anyio cannot tell which library runs
        return None
    if not isinstance(limiter, _TimedAcquire):
        # The limiter is per loop and may be referenced already (and resized by the
        # app), so it is extended in place rather than replaced. A layout that cannot
        # be extended (TypeError) is still reported, without waits.
        with contextlib.suppress(TypeError):
            limiter.__class__ = _timed_class(type(limiter))
    return limiter


class Refresher:
    """Copies limiter and pool state into ``catalog``'s gauges; call it to refresh.

    ``limiters()`` returns the route limiters by name (``kind="route"``),
    ``dependencies()`` the dependencies by name (their bulkheads as
    ``kind="dependency"``, their pools as ``pool=<name>``). Called on an event
    loop that :func:`instrument_threads` measured, it also reports that loop's
    ``asyncio`` and ``anyio`` pools. Rejections are counted since the
    limiter was created: each call adds what is new.

    >>> from prometheus_client import CollectorRegistry
    >>> from tailguard.admission import Limiter
    >>> from tailguard.telemetry.catalog import Catalog
    >>> catalog = Catalog(CollectorRegistry())
    >>> orders = Limiter("orders", max_concurrency=4)
    >>> permit = orders.try_acquire()
    >>> refresh = Refresher(catalog, lambda: {"orders": orders})
    >>> refresh()
    >>> catalog.registry.get_sample_value(
    ...     "tailguard_limiter_in_use", {"limiter": "orders", "kind": "route"})
    1.0
    """

    __slots__ = ("_dependencies", "_limiters", "_pools", "_series", "catalog")

    def __init__(
        self,
        catalog: Catalog,
        limiters: Callable[[], Mapping[str, Limiter]],
        dependencies: Callable[[], Mapping[str, Stateful]] | None = None,
    ) -> None:
        self.catalog: Final = catalog
        self._limiters = limiters
        self._dependencies = dependencies
        self._series: dict[tuple[str, str], _LimiterSeries] = {}
        self._pools: dict[str, _PoolSeries] = {}

    def __call__(self) -> None:
        catalog = self.catalog
        for name, limiter in self._limiters().items():
            self._limiter(catalog, "route", name, limiter.state())
        if self._dependencies is not None:
            for name, dependency in self._dependencies().items():
                state = dependency.state()
                self._limiter(catalog, "dependency", name, state.limiter)
                queued = state.threads_queued
                self._pool(catalog, name, state.threads_in_use, state.threads_max, queued)
        loop = _running_loop()
        threads = None if loop is None else _loops.get(loop)
        if threads is None:
            return
        executor = threads.executor
        if executor is not None:
            self._pool(
                catalog, ASYNCIO_POOL, executor.in_use, executor.max_workers, executor.queued
            )
        limiter = threads.anyio
        if limiter is not None:
            waiting = limiter.statistics().tasks_waiting
            self._pool(catalog, ANYIO_POOL, limiter.borrowed_tokens, limiter.total_tokens, waiting)

    def _limiter(self, catalog: Catalog, kind: str, name: str, state: LimiterState) -> None:
        series = self._series.get((kind, name))
        if series is None:
            series = self._series[kind, name] = _LimiterSeries(catalog, kind, name)
        series.update(state)

    def _pool(self, catalog: Catalog, name: str, in_use: int, size: float, queued: int) -> None:
        series = self._pools.get(name)
        if series is None:
            series = self._pools[name] = _PoolSeries(catalog, name)
        series.in_use.set(in_use)
        series.size.set(size)
        series.queued.set(queued)


class _LimiterSeries:
    """One limiter's gauge children, and the rejections already counted."""

    __slots__ = ("_catalog", "_counted", "_labels", "_rejections", "in_use", "limit", "queued")

    def __init__(self, catalog: Catalog, kind: str, name: str) -> None:
        self._catalog = catalog
        self._labels = (name, kind)
        self.in_use = catalog.limiter_in_use.labels(name, kind)
        self.queued = catalog.limiter_queued.labels(name, kind)
        self.limit = catalog.limiter_limit.labels(name, kind)
        self._rejections: dict[str, Any] = {}
        self._counted: dict[str, int] = {}

    def update(self, state: LimiterState) -> None:
        self.in_use.set(state.in_use)
        self.queued.set(state.queued)
        self.limit.set(state.limit)
        counted = self._counted
        for reason, total in state.rejected.items():
            child = self._rejections.get(reason)
            if child is None:  # every reason's series exists from the start, at 0
                child = self._rejections[reason] = self._catalog.limiter_rejections.labels(
                    *self._labels, reason
                )
            before = counted.get(reason, 0)
            if total != before:
                # Fewer than before: a new limiter under the same name, counting afresh.
                child.inc(total - before if total > before else total)
                counted[reason] = total


class _PoolSeries:
    __slots__ = ("in_use", "queued", "size")

    def __init__(self, catalog: Catalog, pool: str) -> None:
        self.in_use = catalog.pool_threads_in_use.labels(pool)
        self.size = catalog.pool_threads_max.labels(pool)
        self.queued = catalog.pool_jobs_queued.labels(pool)
