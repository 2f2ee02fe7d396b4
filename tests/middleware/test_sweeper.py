from __future__ import annotations

import asyncio
import contextvars
import time
import weakref

import pytest

from tailguard.middleware.sweeper import Sweeper

pytestmark = pytest.mark.anyio


class Request:
    def __init__(self) -> None:
        self.promoted = asyncio.Event()

    def promote(self) -> None:
        self.promoted.set()


async def test_only_requests_still_running_after_the_grace_are_promoted() -> None:
    sweeper = Sweeper(asyncio.get_running_loop(), 0.005)
    slow, fast = Request(), Request()
    sweeper.add(slow, time.monotonic())
    sweeper.add(fast, time.monotonic())
    sweeper.discard(fast)
    await asyncio.wait_for(slow.promoted.wait(), 30)
    assert not fast.promoted.is_set()
    assert len(sweeper) == 0


async def test_late_arrivals_wait_for_a_later_sweep() -> None:
    sweeper = Sweeper(asyncio.get_running_loop(), 0.01)
    first = Request()
    sweeper.add(first, time.monotonic())
    await asyncio.wait_for(first.promoted.wait(), 30)
    second = Request()
    sweeper.add(second, time.monotonic())  # the sweep re-arms itself for the newcomer
    third = Request()
    sweeper.add(third, time.monotonic())
    await asyncio.wait_for(third.promoted.wait(), 30)
    assert second.promoted.is_set()
    assert len(sweeper) == 0


async def test_a_sweep_that_finds_young_requests_comes_back_for_them() -> None:
    loop = asyncio.get_running_loop()
    sweeper = Sweeper(loop, 30)
    old, young = Request(), Request()
    sweeper.add(old, time.monotonic())
    sweeper.add(young, time.monotonic())
    sweeper.young[old] -= 60  # pretend it arrived long ago
    sweeper._sweep()
    assert old.promoted.is_set()
    assert not young.promoted.is_set()
    assert sweeper._handle is not None  # armed for the young one
    sweeper.discard(young)
    sweeper._handle.cancel()


async def test_sweeps_run_in_an_empty_context_not_in_the_first_requests() -> None:
    """A sweep chain lasts as long as traffic does: it must not carry a request's context.

    Otherwise whatever that request had in its context (an OpenTelemetry span,
    a framework's request object) stays alive, and the watcher tasks and
    deadline timers that sweeps create run inside it.
    """
    probe: contextvars.ContextVar[object] = contextvars.ContextVar("probe")
    seen: list[object] = []

    class Seeing(Request):
        def promote(self) -> None:
            seen.append(probe.get("empty"))
            super().promote()

    sweeper = Sweeper(asyncio.get_running_loop(), 0.005)

    class Marker:
        pass

    marker = Marker()
    gone = weakref.ref(marker)

    def first_request(value: object) -> None:  # in a context of its own; schedules the sweep
        probe.set(value)
        sweeper.add(Seeing(), time.monotonic())

    contextvars.copy_context().run(first_request, marker)
    del marker
    later = Seeing()
    sweeper.add(later, time.monotonic())
    await asyncio.wait_for(later.promoted.wait(), 30)
    assert seen == ["empty", "empty"]
    assert gone() is None  # freed by reference counting: nothing kept the first context
