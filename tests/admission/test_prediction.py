"""Requests that would only wait out their cap are shed on arrival, not after it."""

from __future__ import annotations

import pytest

from tailguard.admission import Limiter, Rejected
from tailguard.admission.queue import Waiter, WaitQueue
from tests.admission.support import FakeClock, settle, spawn

pytestmark = pytest.mark.anyio


def _learn_hold(limiter: Limiter, clock: FakeClock, seconds: float) -> None:
    permit = limiter.try_acquire()
    assert permit is not None
    clock.now += seconds
    permit.release()


async def test_no_prediction_before_any_hold_time_is_known() -> None:
    clock = FakeClock()
    # A cap the test's own run time cannot reach (the timer runs on the real
    # clock): an unknown hold time must not be guessed as too long for it.
    limiter = Limiter("db", max_concurrency=1, max_queue=4, queue_timeout=30, clock=clock)
    held = limiter.try_acquire()
    assert held is not None
    task = spawn(limiter, [], "w")
    await settle()
    assert limiter.queued == 1  # queued: nothing says it cannot make it
    held.release()
    (await task).release()


async def test_a_wait_longer_than_the_cap_is_shed_at_once() -> None:
    clock = FakeClock()
    limiter = Limiter("db", max_concurrency=2, max_queue=8, queue_timeout=0.5, clock=clock)
    _learn_hold(limiter, clock, 0.1)  # each slot frees every 0.1 s: 2 slots, 0.05 s apart
    holders = [limiter.try_acquire() for _ in range(2)]
    got: list[tuple[str, object]] = []
    tasks = [spawn(limiter, got, f"w{i}") for i in range(4)]  # expected waits .05 .10 .15 .20
    await settle()
    assert limiter.queued == 4  # twice .20 still fits in the 0.5 s cap
    with pytest.raises(Rejected) as info:  # the fifth: twice 0.25 s no longer fits
        await limiter.acquire()
    assert info.value.reason == "queue_timeout"
    assert limiter.queued == 4
    for task in tasks:
        task.cancel()
    await settle()
    for holder in holders:
        assert holder is not None
        holder.release()


async def test_deadline_caps_the_prediction_too() -> None:
    clock = FakeClock()
    limiter = Limiter("db", max_concurrency=1, max_queue=8, clock=clock)
    _learn_hold(limiter, clock, 0.1)
    holder = limiter.try_acquire()
    with pytest.raises(Rejected) as info:
        await limiter.acquire(deadline_at=clock.now + 0.05)  # next slot in ~0.1 s
    assert info.value.reason == "deadline"
    assert holder is not None
    holder.release()


async def test_a_tenant_at_its_cap_drains_through_its_own_slots() -> None:
    clock = FakeClock()
    limiter = Limiter(
        "db",
        max_concurrency=8,
        max_queue=8,
        queue_timeout=0.3,
        tenant_concurrency=1,
        clock=clock,
    )
    _learn_hold(limiter, clock, 0.1)
    mine = limiter.try_acquire(tenant="a")
    first = spawn(limiter, [], "a1", tenant="a")  # waits ~0.1 s for its own slot
    await settle()
    assert limiter.queued == 1
    with pytest.raises(Rejected):  # a second would wait ~0.2 s: twice that > 0.3
        await limiter.acquire(tenant="a")
    assert mine is not None
    mine.release()
    (await first).release()


def test_ahead_counts_higher_priorities_and_one_turn_per_other_lane() -> None:
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        queue = WaitQueue()
        for tenant, priority in [("a", 0), ("a", 0), ("a", 0), ("b", 0), ("c", 5)]:
            queue.push(Waiter(loop.create_future(), priority, tenant, 0.0), now=0.0)
        # A newcomer of "b": the priority-5 waiter, b's own one, and "a" one turn
        # per waiter of b's lane plus one.
        assert queue.ahead(0, "b") == 1 + 1 + 2
        assert queue.ahead(0, "new") == 1 + 1 + 1
        assert queue.ahead(5, "c") == 1
    finally:
        loop.close()
