"""Who is served next: priorities, fair shares across tenants, adaptive LIFO, push-out.

Every limiter here runs on a ``FakeClock``: on the real clock, a queue that a
loaded machine keeps standing for CoDel's 100 ms interval would switch the
limiter to overload handling mid-test (seen: a hang when four suites shared two
cores).
"""

from __future__ import annotations

import asyncio

import pytest

from tailguard.admission import Limiter, Permit, Rejected
from tailguard.admission.queue import Waiter, WaitQueue
from tests.admission.support import (
    FakeClock,
    check_idle,
    check_invariants,
    drain_in_order,
    settle,
    spawn,
)

pytestmark = pytest.mark.anyio

EQUAL = dict.fromkeys(["a", "b", "hog", "noisy", "quiet"], 1.0)
"""The tenants these tests name, listed (unlisted tenants would share one lane)."""


def held(limiter: Limiter, tenant: object = None) -> Permit:
    permit = limiter.try_acquire(0, tenant)
    assert permit is not None
    return permit


async def test_fifo_within_a_tenant_and_priority() -> None:
    limiter = Limiter("db", max_concurrency=1, max_queue=10, clock=FakeClock())
    holder = held(limiter)
    got: list[tuple[str, Permit]] = []
    for name in "abcd":
        spawn(limiter, got, name)
        await settle()
    assert await drain_in_order(holder, got, 4) == list("abcd")
    check_idle(limiter)


async def test_higher_priority_is_served_first() -> None:
    limiter = Limiter("db", max_concurrency=1, max_queue=10, clock=FakeClock())
    holder = held(limiter)
    got: list[tuple[str, Permit]] = []
    for name, priority in [("low", 0), ("high", 9), ("mid", 4), ("high2", 9)]:
        spawn(limiter, got, name, priority=priority)
        await settle()
    assert await drain_in_order(holder, got, 4) == ["high", "high2", "mid", "low"]
    check_idle(limiter)


async def test_tenants_share_by_weight() -> None:
    limiter = Limiter(
        "db", max_concurrency=1, max_queue=40, tenant_weights={"gold": 3}, clock=FakeClock()
    )
    holder = held(limiter)
    got: list[tuple[str, Permit]] = []
    for i in range(12):  # the free tenant arrives first and in bulk
        spawn(limiter, got, f"free{i}", tenant="free")
    for i in range(12):
        spawn(limiter, got, f"gold{i}", tenant="gold")
    await settle()
    order = [name.rstrip("0123456789") for name in await drain_in_order(holder, got, 24)]
    assert order[:8] == ["free", "gold", "gold", "gold", "free", "gold", "gold", "gold"]
    assert order[:16].count("gold") == 12
    check_idle(limiter)


async def test_a_noisy_tenant_does_not_delay_a_quiet_one() -> None:
    limiter = Limiter(
        "db", max_concurrency=1, max_queue=200, tenant_weights=EQUAL, clock=FakeClock()
    )
    holder = held(limiter, "noisy")
    got: list[tuple[str, Permit]] = []
    for i in range(100):
        spawn(limiter, got, f"noisy{i}", tenant="noisy")
    await settle()
    spawn(limiter, got, "quiet", tenant="quiet")
    await settle()
    order = await drain_in_order(holder, got, 101)
    # One noisy request is served at most before it: one round of round robin.
    assert order.index("quiet") <= 1
    check_idle(limiter)


async def test_tenant_cap_limits_permits_and_skips_its_waiters() -> None:
    limiter = Limiter(
        "db",
        max_concurrency=3,
        max_queue=10,
        tenant_concurrency=2,
        tenant_weights=EQUAL,
        clock=FakeClock(),
    )
    a1, a2 = held(limiter, "a"), held(limiter, "a")
    assert limiter.try_acquire(0, "a") is None  # at its cap, with a slot free
    got: list[tuple[str, Permit]] = []
    spawn(limiter, got, "a3", tenant="a")
    await settle()
    assert limiter.queued == 1
    b1 = limiter.try_acquire(0, "b")  # a3 is not eligible: b may take the slot
    assert b1 is not None
    b1.release()  # and give it back: a3 is still not eligible, the slot stays free
    assert limiter.queued == 1
    assert limiter.in_use == 2
    assert limiter.try_acquire(0, "b") is not None
    spawn(limiter, got, "b2", tenant="b")
    await settle()
    assert not limiter.overloaded
    a1.release()  # a drops below its cap, but the slot goes to the next eligible
    await settle()
    assert [name for name, _ in got] == ["a3"]
    check_invariants(limiter)
    a2.release()
    await settle()
    assert [name for name, _ in got] == ["a3", "b2"]


async def test_tenant_may_queue_only_up_to_its_cap() -> None:
    limiter = Limiter(
        "db",
        max_concurrency=1,
        max_queue=10,
        tenant_concurrency=2,
        tenant_weights=EQUAL,
        clock=FakeClock(),
    )
    holder = held(limiter, "a")
    got: list[tuple[str, Permit]] = []
    tasks = [spawn(limiter, got, f"a{i}", tenant="a") for i in range(2)]
    await settle()
    with pytest.raises(Rejected) as info:
        await limiter.acquire(tenant="a")
    assert info.value.reason == "tenant_limit"
    other = spawn(limiter, got, "b", tenant="b")  # other tenants still queue
    await settle()
    assert limiter.queued == 3
    for task in [*tasks, other]:
        task.cancel()
    await asyncio.gather(*tasks, other, return_exceptions=True)
    holder.release()
    check_idle(limiter)


async def test_tenant_at_cap_without_a_queue_is_a_tenant_limit() -> None:
    limiter = Limiter("db", max_concurrency=4, tenant_concurrency=1, clock=FakeClock())
    holder = held(limiter, "a")
    with pytest.raises(Rejected, match="tenant_limit"):
        await limiter.acquire(tenant="a")
    holder.release()


async def test_tenant_limit_retry_after_uses_the_tenant_cap() -> None:
    clock = FakeClock()
    limiter = Limiter("db", max_concurrency=8, tenant_concurrency=2, clock=clock)
    permit = held(limiter, "a")
    clock.now += 1.0
    permit.release()
    assert limiter._reject("tenant_limit", "a").retry_after == pytest.approx(0.5)


async def test_higher_priority_pushes_the_lowest_out_of_a_full_queue() -> None:
    limiter = Limiter("db", max_concurrency=1, max_queue=2, clock=FakeClock())
    holder = held(limiter)
    got: list[tuple[str, Permit]] = []
    low = spawn(limiter, got, "low", priority=1)
    mid = spawn(limiter, got, "mid", priority=5)
    await settle()
    with pytest.raises(Rejected, match="queue_full"):
        await limiter.acquire(priority=0)
    with pytest.raises(Rejected, match="queue_full"):
        await limiter.acquire(priority=1)  # equal to the lowest: no push-out
    spawn(limiter, got, "high", priority=9)
    await settle()
    with pytest.raises(Rejected) as info:
        await low
    assert info.value.reason == "priority"
    assert await drain_in_order(holder, got, 2) == ["high", "mid"]
    assert mid.done()
    check_idle(limiter)


async def test_a_tenant_filling_the_queue_is_pushed_out_by_another() -> None:
    limiter = Limiter("db", max_concurrency=1, max_queue=4, tenant_weights=EQUAL, clock=FakeClock())
    holder = held(limiter)
    got: list[tuple[str, Permit]] = []
    hogs = [spawn(limiter, got, f"hog{i}", tenant="hog") for i in range(4)]
    await settle()
    spawn(limiter, got, "b1", tenant="b")
    spawn(limiter, got, "b2", tenant="b")
    await settle()
    with pytest.raises(Rejected, match="queue_full"):
        await limiter.acquire(tenant="b")  # b now holds its fair half
    # The hog's newest waiters made room, and were told the queue was full.
    results = await asyncio.gather(*hogs[2:], return_exceptions=True)
    assert [getattr(r, "reason", None) for r in results] == ["queue_full", "queue_full"]
    order = await drain_in_order(holder, got, 4)
    assert order == ["hog0", "b1", "hog1", "b2"]
    check_idle(limiter)


async def test_overload_cuts_new_waits_and_serves_in_order_once_holds_are_known() -> None:
    clock = FakeClock()
    limiter = Limiter(
        "db", max_concurrency=1, max_queue=10, codel_target=0.001, codel_interval=0.1, clock=clock
    )
    holder = held(limiter)
    got: list[tuple[str, Permit]] = []
    for name in ["first", "second", "third"]:
        spawn(limiter, got, name)
        await settle()
    assert not limiter.overloaded
    clock.now += 0.05
    assert not limiter.overloaded
    clock.now += 0.06  # the queue has not been empty for a whole interval
    assert limiter.overloaded
    assert limiter.state().overloaded
    with pytest.raises(Rejected) as info:
        await limiter.acquire(deadline_at=clock.now + 30)  # capped at codel_target
    assert info.value.reason == "queue_timeout"
    # The first release teaches the limiter its hold time: from then on it only
    # queues what it predicts it can serve, so it serves them in order (LIFO
    # would starve the oldest into slow 503s).
    assert await drain_in_order(holder, got, 3) == ["first", "second", "third"]
    check_idle(limiter)
    assert not limiter.overloaded


async def test_without_a_known_hold_time_overload_serves_newest_first() -> None:
    clock = FakeClock()
    limiter = Limiter("db", max_concurrency=1, max_queue=10, clock=clock)
    holder = held(limiter)
    got: list[tuple[str, Permit]] = []
    for name in ["first", "second", "third"]:
        spawn(limiter, got, name)
        await settle()
    clock.now += 0.2
    assert limiter.overloaded
    holder._discard()  # slots back without a hold sample (as for a grant nobody took)
    await settle()
    got[0][1]._discard()
    await settle()
    got[1][1]._discard()
    await settle()
    assert [name for name, _ in got] == ["third", "second", "first"]
    got[2][1].release()
    check_idle(limiter)


async def test_queue_that_empties_is_not_overloaded() -> None:
    clock = FakeClock()
    limiter = Limiter("db", max_concurrency=1, max_queue=10, clock=clock)
    holder = held(limiter)
    got: list[tuple[str, Permit]] = []
    spawn(limiter, got, "a")
    await settle()
    clock.now += 0.06
    holder.release()  # the queue empties ...
    await settle()
    spawn(limiter, got, "b")  # ... and fills again: the clock restarts
    await settle()
    clock.now += 0.06
    assert not limiter.overloaded
    clock.now += 0.06
    assert limiter.overloaded
    got[0][1].release()
    await settle()
    got[1][1].release()
    check_idle(limiter)


async def test_codel_is_per_tenant_a_flood_trips_it_for_the_flooder_only() -> None:
    clock = FakeClock()
    limiter = Limiter(
        "db",
        max_concurrency=1,
        max_queue=50,
        codel_target=0.001,
        tenant_weights=EQUAL,
        clock=clock,
    )
    holder = held(limiter, "noisy")
    got: list[tuple[str, Permit]] = []
    for i in range(3):
        spawn(limiter, got, f"noisy{i}", tenant="noisy")
    await settle()
    clock.now += 0.2  # the noisy backlog has stood for two intervals
    assert limiter.overloaded
    with pytest.raises(Rejected, match="queue_timeout"):
        await limiter.acquire(tenant="noisy")  # its new waiters get codel_target
    spawn(limiter, got, "quiet1", tenant="quiet")  # no cap at all: FIFO, waits its turn
    spawn(limiter, got, "quiet2", tenant="quiet")
    await settle()
    order = await drain_in_order(holder, got, 5)
    # Round robin between the two tenants, each in order (hold times are known).
    assert order == ["noisy0", "quiet1", "noisy1", "quiet2", "noisy2"]
    check_idle(limiter)


async def test_push_out_of_a_cancelled_waiter_needs_no_verdict() -> None:
    limiter = Limiter("db", max_concurrency=1, max_queue=1, clock=FakeClock())
    holder = held(limiter)
    got: list[tuple[str, Permit]] = []
    low = spawn(limiter, got, "low")
    await settle()
    low.cancel()  # its future is cancelled; its acquire() has not unwound yet
    high = asyncio.ensure_future(limiter.acquire(priority=3))
    await asyncio.sleep(0)
    assert limiter.state().rejected["priority"] == 0
    with pytest.raises(asyncio.CancelledError):
        await low
    holder.release()
    (await high).release()
    check_idle(limiter)


def test_wait_queue_round_robin_respects_fractional_weights() -> None:
    loop = asyncio.new_event_loop()
    try:
        queue = WaitQueue({"half": 0.5})  # quanta: half -> 1, everyone else -> 2
        for tenant in ["half"] * 6 + ["full"] * 6:
            queue.push(Waiter(loop.create_future(), 0, tenant, 0.0), now=0.0)
        order = [queue.pop(lifo_since=-1.0, busy=None, cap=0) for _ in range(9)]
        assert [w.tenant for w in order if w is not None] == [
            "half", "full", "full", "half", "full", "full", "half", "full", "full",
        ]  # fmt: skip
        assert queue.quantum("half") == 1.0
        assert queue.quantum("anyone") == 2.0
        assert queue.victim(0, "half", lifo_since=-1.0) is None  # half holds less than full
    finally:
        loop.close()


def test_wait_queue_removes_from_the_middle() -> None:
    loop = asyncio.new_event_loop()
    try:
        queue = WaitQueue()
        waiters = [Waiter(loop.create_future(), 0, "t", 0.0) for _ in range(3)]
        other = Waiter(loop.create_future(), 0, "u", 0.0)
        for waiter in [*waiters, other]:
            queue.push(waiter, now=0.0)
        assert queue.remove(waiters[1])
        assert not queue.remove(waiters[1])
        assert queue.remove(other)  # a lane that is not the current one empties
        assert queue.waiters() == [waiters[0], waiters[2]]
        assert queue.pop(lifo_since=1.0, busy=None, cap=0) is waiters[2]
        assert queue.pop(lifo_since=1.0, busy={"t": 1}, cap=1) is None  # t is at its cap
        assert queue.victim(0, "t", lifo_since=-1.0) is None
        assert queue.victim(1, "t", lifo_since=1.0) is waiters[0]  # the oldest: t is LIFO
        assert queue.remove(waiters[0])
        assert queue.count == 0
        assert queue.victim(5, "t", lifo_since=-1.0) is None
    finally:
        loop.close()
