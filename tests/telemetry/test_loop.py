"""The event-loop lag monitor: lag observed, gauges refreshed, clean start and stop.

Timing rule: lag is only checked against a lower bound the test enforced by
blocking the loop itself; everything else is ordered by events.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from tailguard.telemetry.catalog import Catalog
from tailguard.telemetry.loop import LoopMonitor

pytestmark = pytest.mark.anyio

WAIT = 20.0
TICK = 0.01
BLOCKED = 0.1
"""The loop is blocked this long, ten ticks: the tick due meanwhile is at least 0.09 s late."""


@pytest.fixture
def catalog() -> Catalog:
    return Catalog(CollectorRegistry())


def lag_count(catalog: Catalog, le: str = "+Inf") -> float:
    count = catalog.registry.get_sample_value("tailguard_event_loop_lag_seconds_bucket", {"le": le})
    return 0.0 if count is None else count


class Ticks:
    """A refresh callback that lets the test wait for the monitor's next ticks."""

    def __init__(self) -> None:
        self.count = 0
        self.event = asyncio.Event()

    def __call__(self) -> None:
        self.count += 1
        self.event.set()

    async def next(self) -> None:
        self.event.clear()
        await asyncio.wait_for(self.event.wait(), WAIT)


async def test_a_blocked_loop_shows_as_lag(catalog: Catalog) -> None:
    ticks = Ticks()
    monitor = LoopMonitor(interval=TICK, refresh=ticks, catalog=catalog)
    monitor.start()
    try:
        await ticks.next()
        # Whatever tick is pending now is due within TICK; blocking makes it late.
        time.sleep(BLOCKED)  # noqa: ASYNC251 - blocking the loop is the point
        await ticks.next()
    finally:
        monitor.stop()
    assert monitor.lag >= BLOCKED - TICK
    assert lag_count(catalog) >= 2
    assert lag_count(catalog, le="0.05") < lag_count(catalog)  # one tick was that late


async def test_every_tick_refreshes(catalog: Catalog) -> None:
    ticks = Ticks()
    monitor = LoopMonitor(interval=0.001, refresh=ticks, catalog=catalog)
    monitor.start()
    for _ in range(3):
        await ticks.next()
    monitor.stop()
    assert ticks.count >= 3
    assert lag_count(catalog) >= ticks.count


async def test_ticks_run_in_an_empty_context_not_the_starters() -> None:
    """Started by an app's first request (no lifespan), ticks must not run in its context."""
    probe: contextvars.ContextVar[str] = contextvars.ContextVar("probe")
    seen: list[str] = []
    ticked = asyncio.Event()

    def refresh() -> None:
        seen.append(probe.get("empty"))
        ticked.set()

    monitor = LoopMonitor(interval=0.001, refresh=refresh)

    def start_inside_a_request() -> None:
        probe.set("the first request")
        monitor.start()

    contextvars.copy_context().run(start_inside_a_request)
    await asyncio.wait_for(ticked.wait(), WAIT)
    monitor.stop()
    assert seen
    assert set(seen) == {"empty"}


async def test_start_is_idempotent_and_stop_stops(catalog: Catalog) -> None:
    ticks = Ticks()
    monitor = LoopMonitor(interval=TICK, refresh=ticks, catalog=catalog)
    assert not monitor.running
    monitor.start()
    handle = monitor._handle
    monitor.start()  # on every request, say: no second timer
    assert monitor._handle is handle
    assert monitor.running
    await ticks.next()
    monitor.stop()
    monitor.stop()
    assert not monitor.running
    counted = ticks.count
    await asyncio.sleep(TICK * 5)
    assert ticks.count == counted


async def test_lag_is_measured_without_metrics() -> None:
    ticks = Ticks()
    monitor = LoopMonitor(interval=TICK, refresh=ticks)
    assert monitor.catalog is None  # no catalog: lag is measured, observed nowhere
    monitor.start()
    await ticks.next()
    time.sleep(BLOCKED)  # noqa: ASYNC251
    await ticks.next()
    monitor.stop()
    assert monitor.lag >= BLOCKED - TICK


async def test_a_failing_refresh_is_logged_once_and_ticking_goes_on(
    catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    outcomes = ["fail", "fail", "fail", "ok", "fail"]
    done = asyncio.Event()

    def refresh() -> None:
        outcome = outcomes.pop(0)
        if not outcomes:
            done.set()
        if outcome == "fail":
            raise RuntimeError("gauge backend unavailable")

    monitor = LoopMonitor(interval=0.001, refresh=refresh, catalog=catalog)
    with caplog.at_level(logging.ERROR, logger="tailguard.telemetry"):
        monitor.start()
        await asyncio.wait_for(done.wait(), WAIT)
        monitor.stop()
    failures = [record for record in caplog.records if "refreshing" in record.getMessage()]
    assert len(failures) == 2  # the first of the first run, and the one after the success
    assert failures[0].exc_info is not None


def test_a_loop_closed_under_the_monitor_leaves_nothing_behind(catalog: Catalog) -> None:
    monitor = LoopMonitor(interval=TICK, catalog=catalog)

    async def serve() -> None:
        monitor.start()
        await asyncio.sleep(TICK * 3)

    # asyncio.run closes its loop with the monitor's timer still pending: no task to
    # destroy, no warning (warnings are errors in this suite), no thread kept alive.
    asyncio.run(serve())
    assert not monitor.running
    asyncio.run(serve())  # a new loop (a second test client, say): it moves there
    assert lag_count(catalog) >= 2
    monitor.stop()
    assert not monitor.running


def test_stop_from_another_thread_cancels_the_timer() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:
        monitor = LoopMonitor(interval=WAIT)  # no tick while the test runs
        started = threading.Event()

        def start() -> None:
            monitor.start(loop)
            started.set()

        loop.call_soon_threadsafe(start)
        assert started.wait(WAIT)
        handle = monitor._handle
        assert handle is not None
        monitor.stop()
        stopped = asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop)
        stopped.result(WAIT)  # the cancel, queued before this, has run
        assert handle.cancelled()
        assert not monitor.running
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT)
        loop.close()


async def test_a_tick_already_due_after_stop_does_nothing(catalog: Catalog) -> None:
    loop = asyncio.get_running_loop()
    monitor = LoopMonitor(interval=TICK, catalog=catalog)
    monitor.start()
    handle = monitor._handle
    assert handle is not None
    monitor.stop()
    monitor._tick(loop)  # as if the timer fired before a cross-thread cancel landed
    assert monitor._handle is None
    assert lag_count(catalog) == 0


def test_stop_after_the_loop_closed() -> None:
    monitor = LoopMonitor()
    loop = asyncio.new_event_loop()
    monitor.start(loop)
    loop.close()
    monitor.stop()
    assert not monitor.running


def test_stop_on_a_loop_closing_between_look_and_cancel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monitor = LoopMonitor()
    loop = asyncio.new_event_loop()
    try:
        monitor.start(loop)
        monkeypatch.setattr(loop, "is_running", lambda: True)

        def closed(*args: object) -> None:
            raise RuntimeError("Event loop is closed")

        monkeypatch.setattr(loop, "call_soon_threadsafe", closed)
        monitor.stop()  # from outside the loop, which reports running, then closes
        assert not monitor.running
    finally:
        monkeypatch.undo()
        loop.close()


@pytest.mark.parametrize("interval", [0, -1, float("inf"), float("nan"), True, "0.25"])
def test_bad_interval_is_refused(interval: object) -> None:
    with pytest.raises(ValueError, match=r"LoopMonitor\.interval"):
        LoopMonitor(interval=interval)  # type: ignore[arg-type]


def test_bad_refresh_is_refused() -> None:
    with pytest.raises(ValueError, match=r"LoopMonitor\.refresh"):
        LoopMonitor(refresh="refresh")  # type: ignore[arg-type]
