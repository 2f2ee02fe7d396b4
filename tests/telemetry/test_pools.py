"""Limiter and pool gauges: the Refresher, the instrumented executors and anyio's limiter.

Timing rule: no test asserts how long anything took. Ordering comes from events;
a wait is only ever checked against a lower bound the test itself enforced.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio.to_thread
import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tailguard import RoutePolicy, Tailguard
from tailguard.admission import Limiter, Rejected
from tailguard.dependency import Dependency
from tailguard.dependency.threads import ThreadPool
from tailguard.telemetry import pools
from tailguard.telemetry.catalog import Catalog, catalog_for
from tailguard.telemetry.pools import (
    ANYIO_POOL,
    ASYNCIO_POOL,
    InstrumentedExecutor,
    Refresher,
    WaitObserver,
    instrument_threads,
)

pytestmark = pytest.mark.anyio

WAIT = 20.0
"""A generous bound for things that happen at once, even on a loaded machine."""
HELD = 0.05
"""How long a test keeps a queued job waiting, at least: a lower bound on its wait."""


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def catalog(registry: CollectorRegistry) -> Catalog:
    """The test's catalog: its registry's, which the test's dependencies record into too."""
    return catalog_for(registry)


def value(catalog: Catalog, name: str, **labels: str) -> float | None:
    return catalog.registry.get_sample_value(name, labels)


def pool_state(catalog: Catalog, pool: str) -> tuple[float | None, ...]:
    return (
        value(catalog, "tailguard_pool_threads_in_use", pool=pool),
        value(catalog, "tailguard_pool_threads_max", pool=pool),
        value(catalog, "tailguard_pool_jobs_queued", pool=pool),
    )


def waits(catalog: Catalog, pool: str) -> tuple[float | None, float | None]:
    """(count, sum) of the pool's queue-wait histogram."""
    return (
        value(catalog, "tailguard_pool_queue_wait_seconds_count", pool=pool),
        value(catalog, "tailguard_pool_queue_wait_seconds_sum", pool=pool),
    )


class Gate:
    """A blocking job: tells the loop it started, then waits for the test to open it."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.started: asyncio.Queue[None] = asyncio.Queue()
        self.opened = threading.Event()

    def __call__(self) -> None:
        self.loop.call_soon_threadsafe(self.started.put_nowait, None)
        if not self.opened.wait(WAIT):
            raise TimeoutError("the test never opened the gate")

    async def next_start(self) -> None:
        await asyncio.wait_for(self.started.get(), WAIT)


@pytest.fixture
async def gate() -> Any:
    made = Gate()
    yield made
    made.opened.set()


async def wait_until(condition: Callable[[], bool]) -> None:
    give_up = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < give_up, "condition never became true"
        await asyncio.sleep(0.001)


async def shed(limiter: Limiter, times: int) -> None:
    for _ in range(times):
        with pytest.raises(Rejected):
            await limiter.acquire()


# -- limiters -----------------------------------------------------------------------------


async def test_route_and_dependency_limiters_report_under_their_kind(
    registry: CollectorRegistry, catalog: Catalog
) -> None:
    orders = Limiter("orders", max_concurrency=3, max_queue=5)
    # The same name, told apart by kind.
    db = Dependency("orders", max_concurrency=2, registry=registry)
    held = [orders.try_acquire(), orders.try_acquire()]
    refresh = Refresher(catalog, lambda: {"orders": orders}, lambda: {"orders": db})
    async with db:
        refresh()
    route = {"limiter": "orders", "kind": "route"}
    dependency = {"limiter": "orders", "kind": "dependency"}
    assert value(catalog, "tailguard_limiter_in_use", **route) == 2
    assert value(catalog, "tailguard_limiter_limit", **route) == 3
    assert value(catalog, "tailguard_limiter_queued", **route) == 0
    assert value(catalog, "tailguard_limiter_in_use", **dependency) == 1
    assert value(catalog, "tailguard_limiter_limit", **dependency) == 2
    for permit in held:
        assert permit is not None
        permit.release()
    refresh()
    assert value(catalog, "tailguard_limiter_in_use", **route) == 0
    assert value(catalog, "tailguard_limiter_in_use", **dependency) == 0


async def test_queued_requests_are_reported(catalog: Catalog) -> None:
    orders = Limiter("orders", max_concurrency=1, max_queue=4)
    permit = orders.try_acquire()
    assert permit is not None
    waiters = [asyncio.create_task(orders.acquire()) for _ in range(3)]
    await wait_until(lambda: orders.queued == 3)
    refresh = Refresher(catalog, lambda: {"orders": orders})
    refresh()
    assert value(catalog, "tailguard_limiter_queued", limiter="orders", kind="route") == 3
    for task in waiters:
        task.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    permit.release()
    refresh()
    assert value(catalog, "tailguard_limiter_queued", limiter="orders", kind="route") == 0


async def test_rejections_become_counter_increments(catalog: Catalog) -> None:
    orders = Limiter("orders", max_concurrency=1)
    refresh = Refresher(catalog, lambda: {"orders": orders})
    refresh()
    labels = {"limiter": "orders", "kind": "route"}
    name = "tailguard_limiter_rejections_total"
    # Every reason's series exists before the first rejection, so rate() sees it start.
    assert value(catalog, name, **labels, reason="queue_full") == 0
    assert value(catalog, name, **labels, reason="deadline") == 0
    assert orders.try_acquire() is not None
    await shed(orders, 2)
    refresh()
    assert value(catalog, name, **labels, reason="queue_full") == 2
    refresh()  # nothing new: nothing added
    assert value(catalog, name, **labels, reason="queue_full") == 2
    await shed(orders, 3)
    refresh()
    assert value(catalog, name, **labels, reason="queue_full") == 5


async def test_a_new_limiter_under_the_same_name_counts_afresh(catalog: Catalog) -> None:
    current = {"orders": Limiter("orders", max_concurrency=1)}
    assert current["orders"].try_acquire() is not None
    await shed(current["orders"], 3)
    refresh = Refresher(catalog, lambda: current)
    refresh()
    current["orders"] = Limiter("orders", max_concurrency=1)
    assert current["orders"].try_acquire() is not None
    await shed(current["orders"], 1)
    refresh()
    labels = {"limiter": "orders", "kind": "route", "reason": "queue_full"}
    assert value(catalog, "tailguard_limiter_rejections_total", **labels) == 4


async def test_a_new_registry_gets_the_rejections_so_far(catalog: Catalog) -> None:
    orders = Limiter("orders", max_concurrency=1)
    assert orders.try_acquire() is not None
    await shed(orders, 2)
    refresh = Refresher(catalog, lambda: {"orders": orders})
    refresh()
    fresh = Catalog(CollectorRegistry())
    Refresher(fresh, lambda: {"orders": orders})()
    labels = {"limiter": "orders", "kind": "route", "reason": "queue_full"}
    assert value(fresh, "tailguard_limiter_rejections_total", **labels) == 2
    assert value(fresh, "tailguard_limiter_in_use", limiter="orders", kind="route") == 1
    assert value(catalog, "tailguard_limiter_rejections_total", **labels) == 2  # not counted twice


def test_refresh_without_metrics_does_nothing() -> None:
    guard = Tailguard(metrics=False, routes={"/orders": RoutePolicy(max_concurrency=1)})
    assert guard.limiters  # there is something to report...
    # ...but without metrics there is no refresher, and no loop monitor to call one.
    assert guard.refresher is None
    assert guard.loop_monitor is None
    assert guard.runtime.loop_monitor is None


# -- dependency pools ---------------------------------------------------------------------


async def test_dependency_pool_reports_threads_and_waits(
    registry: CollectorRegistry, catalog: Catalog, gate: Gate
) -> None:
    db = Dependency("db", max_concurrency=2, registry=registry)
    refresh = Refresher(catalog, dict, lambda: {"db": db})
    try:
        refresh()
        assert pool_state(catalog, "db") == (0, 2, 0)
        job = asyncio.create_task(db.run_sync(gate))
        await gate.next_start()
        refresh()
        assert pool_state(catalog, "db") == (1, 2, 0)
        gate.opened.set()
        await job
        await db.run_sync(int)
        refresh()
        assert pool_state(catalog, "db") == (0, 2, 0)
        assert waits(catalog, "db")[0] == 2  # one observation per job
    finally:
        await db.aclose()


async def test_thread_pool_counts_jobs_waiting_for_a_thread(catalog: Catalog, gate: Gate) -> None:
    pool = ThreadPool("reports", max_workers=1, catalog=catalog)
    ended: list[BaseException | None] = []
    try:
        first = asyncio.create_task(pool.run(gate, ended.append))
        await gate.next_start()
        second = asyncio.create_task(pool.run(int, ended.append))
        third = asyncio.create_task(pool.run(int, ended.append))
        await wait_until(lambda: pool.queued == 2)
        third.cancel()  # cancelled before it ever reached a thread
        with pytest.raises(asyncio.CancelledError):
            await third
        assert pool.queued == 1
        await asyncio.sleep(HELD)
        gate.opened.set()
        await asyncio.gather(first, second)
        assert (pool.queued, pool.in_use) == (0, 0)
        count, total = waits(catalog, "reports")
        assert count == 2
        assert total is not None
        assert total >= HELD  # the second job waited at least that long for the thread
    finally:
        pool.shutdown()


async def test_thread_pool_that_cannot_submit_leaves_no_queued_job() -> None:
    pool = ThreadPool("closing", max_workers=1)
    await pool.run(int, lambda error: None)
    executor = pool._executor
    assert executor is not None
    executor.shutdown(wait=True)  # behind the pool's back, as at interpreter exit
    errors: list[BaseException | None] = []
    with pytest.raises(RuntimeError, match="shutdown"):
        await pool.run(int, errors.append)
    assert pool.queued == 0
    assert isinstance(errors[0], RuntimeError)


def test_wait_observer_follows_its_catalog() -> None:
    observe = WaitObserver("db")
    observe(1.0)  # no catalog (metrics off): nothing to do
    first, second = Catalog(CollectorRegistry()), Catalog(CollectorRegistry())
    observe.catalog = first
    observe(0.5)
    observe.catalog = second  # the pool's owner changed where its waits go
    observe(0.25)
    observe(0.25)
    assert waits(first, "db") == (1, 0.5)
    assert waits(second, "db") == (2, 0.5)


# -- asyncio's default executor -------------------------------------------------------------


async def test_to_thread_is_measured_once_instrumented(catalog: Catalog) -> None:
    loop = asyncio.get_running_loop()
    threads = instrument_threads(catalog=catalog)
    assert instrument_threads(loop) is threads  # idempotent
    executor = threads.executor
    assert isinstance(executor, InstrumentedExecutor)
    assert loop._default_executor is executor  # type: ignore[attr-defined]
    assert executor.max_workers == pools._asyncio_default_workers()
    name = await asyncio.to_thread(lambda: threading.current_thread().name)
    assert name.startswith("asyncio")
    await loop.run_in_executor(None, int)
    assert waits(catalog, ASYNCIO_POOL)[0] == 2
    Refresher(catalog, dict)()
    assert pool_state(catalog, ASYNCIO_POOL) == (0, executor.max_workers, 0)


async def test_executor_reports_busy_and_queued_jobs(catalog: Catalog, gate: Gate) -> None:
    loop = asyncio.get_running_loop()
    executor = InstrumentedExecutor(1)
    loop.set_default_executor(executor)
    threads = instrument_threads(catalog=catalog)
    assert threads.executor is executor  # adopted, not replaced
    refresh = Refresher(catalog, dict)
    busy = asyncio.create_task(asyncio.to_thread(gate))
    await gate.next_start()
    waiting = asyncio.create_task(asyncio.to_thread(int))
    await wait_until(lambda: executor.queued == 1)
    refresh()
    assert pool_state(catalog, ASYNCIO_POOL) == (1, 1, 1)
    await asyncio.sleep(HELD)
    gate.opened.set()
    await asyncio.gather(busy, waiting)
    refresh()
    assert pool_state(catalog, ASYNCIO_POOL) == (0, 1, 0)
    count, total = waits(catalog, ASYNCIO_POOL)
    assert count == 2
    assert total is not None
    assert total >= HELD


def test_executor_job_cancelled_before_it_started_leaves_the_queue() -> None:
    opened = threading.Event()
    started = threading.Event()

    def block() -> None:
        started.set()
        opened.wait(WAIT)

    with InstrumentedExecutor(1, pool="unit") as executor:
        running = executor.submit(block)
        assert started.wait(WAIT)
        queued = executor.submit(int, "7")
        assert executor.queued == 1
        assert queued.cancel()
        assert executor.queued == 0
        opened.set()
        assert running.result(WAIT) is None
        assert executor.submit(int, "7").result(WAIT) == 7
    assert (executor.in_use, executor.queued) == (0, 0)


def test_executor_that_refuses_work_leaves_no_queued_job() -> None:
    executor = InstrumentedExecutor(1)
    executor.shutdown()
    with pytest.raises(RuntimeError, match="shutdown"):
        executor.submit(int)
    assert executor.queued == 0


def test_executor_job_failed_by_a_broken_pool_leaves_the_queue() -> None:
    def broken_initializer() -> None:
        raise RuntimeError("no threads today")

    # A broken pool fails its pending jobs without running them.
    executor = InstrumentedExecutor(1, initializer=broken_initializer)
    future = executor.submit(int)
    with pytest.raises(concurrent.futures.BrokenExecutor):
        future.result(WAIT)
    assert executor.queued == 0
    executor.shutdown()


async def test_an_executor_the_app_set_is_left_alone(catalog: Catalog) -> None:
    loop = asyncio.get_running_loop()
    own = ThreadPoolExecutor(3)
    loop.set_default_executor(own)
    threads = instrument_threads(catalog=catalog)
    assert threads.executor is None
    assert loop._default_executor is own  # type: ignore[attr-defined]
    Refresher(catalog, dict)()
    assert value(catalog, "tailguard_pool_threads_max", pool=ASYNCIO_POOL) is None


def test_instrumenting_a_loop_that_is_not_running(catalog: Catalog) -> None:
    loop = asyncio.new_event_loop()
    try:
        threads = instrument_threads(loop, catalog)
        assert isinstance(threads.executor, InstrumentedExecutor)
        assert threads.anyio is None  # anyio's limiter needs a task on that loop

        async def refresh() -> None:
            Refresher(catalog, dict)()

        loop.run_until_complete(refresh())
        assert pool_state(catalog, ASYNCIO_POOL)[1] == threads.executor.max_workers
        assert pool_state(catalog, ANYIO_POOL) == (None, None, None)

        async def later() -> Any:
            return instrument_threads().anyio

        assert loop.run_until_complete(later()) is not None
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


async def test_anyio_is_left_for_later_when_it_cannot_tell_the_library(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With sniffio installed, anyio raises this outside a task (in a loop callback, say).
    def undetected() -> Any:
        raise RuntimeError("unknown async library, or not in async context")

    monkeypatch.setattr(anyio.to_thread, "current_default_thread_limiter", undetected)
    threads = instrument_threads()
    assert threads.executor is not None
    assert threads.anyio is None
    monkeypatch.undo()
    assert instrument_threads().anyio is not None


async def test_the_anyio_limiter_is_timed_once(catalog: Catalog) -> None:
    limiter = instrument_threads(catalog=catalog).anyio
    del pools._loops[asyncio.get_running_loop()]  # as if tailguard had never looked
    assert instrument_threads(catalog=catalog).anyio is limiter
    assert [cls for cls in type(limiter).__mro__ if cls is pools._TimedAcquire] == [
        pools._TimedAcquire
    ]
    await anyio.to_thread.run_sync(int)
    assert waits(catalog, ANYIO_POOL)[0] == 1  # observed once, not once per wrapper


# -- anyio's worker threads ---------------------------------------------------------------


async def test_anyio_threads_report_tokens_waiters_and_waits(catalog: Catalog, gate: Gate) -> None:
    limiter = anyio.to_thread.current_default_thread_limiter()
    limiter.total_tokens = 1  # set by the app before tailguard looks: kept
    threads = instrument_threads(catalog=catalog)
    assert threads.anyio is limiter
    assert instrument_threads().anyio is limiter  # idempotent: timed once
    refresh = Refresher(catalog, dict)
    busy = asyncio.create_task(anyio.to_thread.run_sync(gate))
    await gate.next_start()
    waiting = asyncio.create_task(anyio.to_thread.run_sync(int))
    await wait_until(lambda: limiter.statistics().tasks_waiting == 1)
    refresh()
    assert pool_state(catalog, ANYIO_POOL) == (1, 1, 1)
    await asyncio.sleep(HELD)
    gate.opened.set()
    await asyncio.gather(busy, waiting)
    refresh()
    assert pool_state(catalog, ANYIO_POOL) == (0, 1, 0)
    count, total = waits(catalog, ANYIO_POOL)
    assert count == 2
    assert total is not None
    assert total >= HELD


async def test_starlette_sync_endpoints_are_measured(catalog: Catalog) -> None:
    def sync_endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse(threading.current_thread().name)

    app = Starlette(routes=[Route("/sync", sync_endpoint)])
    instrument_threads(catalog=catalog)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for _ in range(3):
            response = await client.get("/sync")
            assert response.status_code == 200
            assert response.text != threading.current_thread().name
    assert waits(catalog, ANYIO_POOL)[0] == 3


async def test_a_cancelled_anyio_wait_is_not_observed(catalog: Catalog, gate: Gate) -> None:
    limiter = anyio.to_thread.current_default_thread_limiter()
    limiter.total_tokens = 1
    instrument_threads(catalog=catalog)
    busy = asyncio.create_task(anyio.to_thread.run_sync(gate))
    await gate.next_start()
    waiting = asyncio.create_task(anyio.to_thread.run_sync(int))
    await wait_until(lambda: limiter.statistics().tasks_waiting == 1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    gate.opened.set()
    await busy
    assert waits(catalog, ANYIO_POOL)[0] == 1


async def test_an_anyio_limiter_that_cannot_be_timed_is_still_reported(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(limiter_class: type) -> type:
        raise TypeError("__class__ assignment: layouts differ")

    monkeypatch.setattr(pools, "_timed_class", refuse)
    limiter = anyio.to_thread.current_default_thread_limiter()
    threads = instrument_threads(catalog=catalog)
    assert threads.anyio is limiter
    assert not isinstance(limiter, pools._TimedAcquire)
    await anyio.to_thread.run_sync(int)
    Refresher(catalog, dict)()
    assert pool_state(catalog, ANYIO_POOL) == (0, 40, 0)
    assert waits(catalog, ANYIO_POOL) == (None, None)


def test_refresh_outside_a_loop_reports_only_limiters(catalog: Catalog) -> None:
    Refresher(catalog, lambda: {"orders": Limiter("orders", max_concurrency=2)})()
    assert value(catalog, "tailguard_limiter_limit", limiter="orders", kind="route") == 2
    assert value(catalog, "tailguard_pool_threads_max", pool=ASYNCIO_POOL) is None


async def test_refresh_on_a_loop_never_instrumented_reports_no_loop_pools(
    catalog: Catalog,
) -> None:
    Refresher(catalog, dict)()
    assert value(catalog, "tailguard_pool_threads_max", pool=ASYNCIO_POOL) is None
    assert value(catalog, "tailguard_pool_threads_max", pool=ANYIO_POOL) is None


def test_each_loop_reports_its_anyio_waits_to_its_own_catalog() -> None:
    """Two loops measured for two guards: neither loop's waits reach the other's registry."""
    first, second = Catalog(CollectorRegistry()), Catalog(CollectorRegistry())

    async def measured(catalog: Catalog, jobs: int) -> None:
        instrument_threads(catalog=catalog)
        for _ in range(jobs):
            await anyio.to_thread.run_sync(int)

    asyncio.run(measured(first, 1))
    asyncio.run(measured(second, 2))
    assert waits(first, ANYIO_POOL)[0] == 1
    assert waits(second, ANYIO_POOL)[0] == 2
