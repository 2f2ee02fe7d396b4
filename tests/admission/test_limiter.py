from __future__ import annotations

import asyncio
import math
import re
from typing import Any

import pytest

from tailguard.admission import Limiter, LimiterState, Permit, Rejected
from tests.admission.support import FakeClock, check_idle, settle, spawn

pytestmark = pytest.mark.anyio


# -- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": 3}, "name"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"max_concurrency": True}, "max_concurrency"),
        ({"max_concurrency": 2.0}, "max_concurrency"),
        ({"max_queue": -1}, "max_queue"),
        ({"max_queue": False}, "max_queue"),
        ({"queue_timeout": 0}, "queue_timeout"),
        ({"queue_timeout": -1.0}, "queue_timeout"),
        ({"queue_timeout": math.inf}, "queue_timeout"),
        ({"queue_timeout": math.nan}, "queue_timeout"),
        ({"queue_timeout": True}, "queue_timeout"),
        ({"queue_timeout": "1"}, "queue_timeout"),
        ({"tenant_concurrency": 0}, "tenant_concurrency"),
        ({"tenant_concurrency": True}, "tenant_concurrency"),
        ({"tenant_weights": {"a": 0}}, "tenant_weights['a']"),
        ({"tenant_weights": {None: -1.0}}, "tenant_weights[None]"),
        ({"tenant_weights": {"a": math.inf}}, "tenant_weights['a']"),
        ({"unlisted_tenants": "each"}, "unlisted_tenants"),
        ({"unlisted_tenants": None}, "unlisted_tenants"),
        ({"max_tenants": 0}, "max_tenants"),
        ({"max_tenants": 1.5}, "max_tenants"),
        ({"codel_target": 0}, "codel_target"),
        ({"codel_interval": math.nan}, "codel_interval"),
        ({"clock": 5}, "clock"),
    ],
)
def test_bad_config_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    config: dict[str, Any] = {"name": "db", "max_concurrency": 2, **kwargs}
    name = config.pop("name")
    with pytest.raises(ValueError, match=rf"^Limiter\.{re.escape(field)} must be"):
        Limiter(name, **config)


def test_good_config_is_kept() -> None:
    limiter = Limiter(
        "db",
        max_concurrency=4,
        max_queue=8,
        queue_timeout=1,
        tenant_concurrency=2,
        tenant_weights={"gold": 2, None: 0.5},
    )
    assert (limiter.name, limiter.max_concurrency, limiter.max_queue) == ("db", 4, 8)
    assert (limiter.queue_timeout, limiter.tenant_concurrency, limiter.limit) == (1, 2, 4)
    assert repr(limiter) == "<Limiter 'db' in_use=0/4 queued=0/8>"


@pytest.mark.parametrize("priority", [-1, 10, 1.0, True, "1", None])
async def test_bad_priority_raises_at_the_call(priority: Any) -> None:
    limiter = Limiter("db", max_concurrency=1)
    with pytest.raises(ValueError, match=r"^priority must be an int from 0 to 9"):
        limiter.try_acquire(priority)
    with pytest.raises(ValueError, match=r"^priority must be an int from 0 to 9"):
        await limiter.acquire(priority=priority)
    assert limiter.in_use == 0


@pytest.mark.parametrize("estimate", [-0.1, math.nan])
async def test_bad_service_estimate(estimate: float) -> None:
    limiter = Limiter("db", max_concurrency=1, max_queue=1)
    with pytest.raises(ValueError, match="service_estimate"):
        await limiter.acquire(service_estimate=estimate)
    check_idle(limiter)


# -- fast path and permits ------------------------------------------------------------------


def test_fast_path_grants_until_full_then_says_no() -> None:
    limiter = Limiter("db", max_concurrency=2, tenant_weights={"t": 1.0})
    first, second = limiter.try_acquire(), limiter.try_acquire(9, "t")
    assert isinstance(first, Permit)
    assert isinstance(second, Permit)
    assert second.tenant == "t"
    assert limiter.try_acquire() is None
    assert limiter.in_use == 2
    first.release()
    assert limiter.in_use == 1
    assert limiter.try_acquire() is not None
    assert limiter.state().admitted == 3


async def test_acquire_takes_the_fast_path_without_queueing() -> None:
    limiter = Limiter("db", max_concurrency=1)
    permit = await limiter.acquire(deadline_at=0.0, service_estimate=5.0)
    # A free slot is granted: deadline-aware shedding only guards waiting.
    assert limiter.in_use == 1
    permit.release()
    check_idle(limiter)


def test_release_is_idempotent() -> None:
    clock = FakeClock()
    limiter = Limiter("db", max_concurrency=2, clock=clock)
    permit = limiter.try_acquire()
    assert permit is not None
    assert not permit.released
    clock.now += 2.0
    permit.release()
    permit.release()
    permit.release(ok=False)
    assert permit.released
    assert limiter.in_use == 0
    assert limiter.state().mean_hold == 2.0


def test_with_permit_releases_ok_or_not() -> None:
    samples: list[bool] = []
    limiter = Limiter("db", max_concurrency=1, adaptive=Recorder(samples))
    with limiter.try_acquire() as permit:  # type: ignore[union-attr]
        assert limiter.in_use == 1
    assert permit.released
    with pytest.raises(KeyError):
        with limiter.try_acquire():  # type: ignore[union-attr]
            raise KeyError("boom")
    assert limiter.in_use == 0
    assert samples == [True, False]


class Recorder:
    """An adaptive limit that records ``ok`` flags and keeps the limit as is."""

    def __init__(self, samples: list[bool]) -> None:
        self.samples = samples
        self.limit = 0

    def start(self, max_limit: int) -> Recorder:
        self.limit = max_limit
        return self

    def sample(self, hold: float, in_flight: int, ok: bool) -> int:
        self.samples.append(ok)
        return self.limit


# -- shedding reasons -----------------------------------------------------------------------


async def test_no_queue_sheds_at_once_with_queue_full() -> None:
    limiter = Limiter("db", max_concurrency=1)
    held = limiter.try_acquire()
    assert held is not None
    with pytest.raises(Rejected) as info:
        await limiter.acquire()
    assert (info.value.reason, info.value.limiter) == ("queue_full", "db")
    held.release()
    assert limiter.state().rejected["queue_full"] == 1


async def test_full_queue_sheds_newcomers_of_equal_priority() -> None:
    limiter = Limiter("db", max_concurrency=1, max_queue=2)
    held = limiter.try_acquire()
    got: list[tuple[str, Permit]] = []
    tasks = [spawn(limiter, got, f"w{i}") for i in range(2)]
    await settle()
    assert limiter.queued == 2
    with pytest.raises(Rejected, match="queue_full"):
        await limiter.acquire()
    assert held is not None
    held.release()
    await settle()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for _, permit in got:
        permit.release()
    check_idle(limiter)


async def test_queue_timeout_sheds_the_waiter() -> None:
    limiter = Limiter("db", max_concurrency=1, max_queue=4, queue_timeout=0.01)
    held = limiter.try_acquire()
    with pytest.raises(Rejected) as info:
        await limiter.acquire()  # the slot is held for the whole test: the cap fires
    assert info.value.reason == "queue_timeout"
    assert limiter.queued == 0
    assert held is not None
    held.release()
    state = limiter.state()
    assert state.rejected["queue_timeout"] == 1
    assert state.mean_queue_wait > 0
    check_idle(limiter)


async def test_deadline_caps_the_wait() -> None:
    clock = FakeClock()
    limiter = Limiter("db", max_concurrency=1, max_queue=4, queue_timeout=30, clock=clock)
    held = limiter.try_acquire()
    with pytest.raises(Rejected) as info:
        await limiter.acquire(deadline_at=clock.now + 0.01)
    assert info.value.reason == "deadline"
    with pytest.raises(Rejected) as info:
        # The deadline is far, but the work needs all but 0.01 s of it.
        await limiter.acquire(deadline_at=clock.now + 30, service_estimate=29.99)
    assert info.value.reason == "deadline"
    assert held is not None
    held.release()
    assert limiter.state().rejected["deadline"] == 2


async def test_queue_timeout_wins_when_it_is_shorter_than_the_deadline() -> None:
    clock = FakeClock()
    limiter = Limiter("db", max_concurrency=1, max_queue=4, queue_timeout=0.01, clock=clock)
    held = limiter.try_acquire()
    with pytest.raises(Rejected, match="queue_timeout"):
        await limiter.acquire(deadline_at=clock.now + 30)
    assert held is not None
    held.release()


@pytest.mark.parametrize(
    ("deadline_in", "estimate"), [(-1.0, None), (0.0, None), (0.05, 0.1), (math.nan, None)]
)
async def test_no_time_to_wait_is_shed_at_once(deadline_in: float, estimate: float | None) -> None:
    clock = FakeClock()
    limiter = Limiter("db", max_concurrency=1, max_queue=4, clock=clock)
    held = limiter.try_acquire()
    with pytest.raises(Rejected) as info:
        await limiter.acquire(deadline_at=clock.now + deadline_in, service_estimate=estimate)
    assert info.value.reason == "deadline"
    assert limiter.queued == 0
    assert held is not None
    held.release()


async def test_no_deadline_waits_as_long_as_it_takes() -> None:
    limiter = Limiter("db", max_concurrency=1, max_queue=1, queue_timeout=None)
    held = limiter.try_acquire()
    task = asyncio.create_task(limiter.acquire(service_estimate=1.0))
    await settle()
    assert limiter.queued == 1
    assert held is not None
    held.release()
    permit = await task
    assert limiter.in_use == 1
    permit.release()
    check_idle(limiter)


def test_retry_after_drains_the_queue_at_the_observed_rate() -> None:
    clock = FakeClock()
    limiter = Limiter("db", max_concurrency=4, clock=clock)
    assert limiter._reject("queue_full", None).retry_after == 0.0  # nothing observed yet
    for hold in (0.1, 0.3):
        permit = limiter.try_acquire()
        clock.now += hold
        assert permit is not None
        permit.release()
    assert limiter.state().mean_hold == pytest.approx(0.2)
    # One request (this one) at 0.2 s each, 4 at a time.
    assert limiter._reject("queue_full", None).retry_after == pytest.approx(0.05)


async def test_state_snapshot() -> None:
    limiter = Limiter("db", max_concurrency=2, max_queue=3)
    permit = limiter.try_acquire()
    state = limiter.state()
    assert isinstance(state, LimiterState)
    assert state._asdict() == {
        "name": "db",
        "in_use": 1,
        "queued": 0,
        "limit": 2,
        "max_concurrency": 2,
        "max_queue": 3,
        "overloaded": False,
        "rejected": dict.fromkeys(state.rejected, 0),
        "admitted": 1,
        "mean_hold": 0.0,
        "mean_queue_wait": 0.0,
        "tenants": 0,
    }
    state.rejected["queue_full"] = 99  # a copy: the limiter's counters are untouched
    assert limiter.state().rejected["queue_full"] == 0
    assert permit is not None
    permit.release()


# -- waiting, granting, cancelling ----------------------------------------------------------


async def test_release_hands_the_slot_to_the_waiter_not_to_a_newcomer() -> None:
    limiter = Limiter("db", max_concurrency=1, max_queue=4)
    held = limiter.try_acquire()
    got: list[tuple[str, Permit]] = []
    task = spawn(limiter, got, "waiter")
    await settle()
    assert held is not None
    held.release()
    assert limiter.in_use == 1  # already the waiter's, before it even runs
    assert limiter.try_acquire() is None
    permit = await task
    permit.release()
    check_idle(limiter)


async def test_cancelled_waiter_leaves_the_queue() -> None:
    limiter = Limiter("db", max_concurrency=1, max_queue=4, queue_timeout=30)
    held = limiter.try_acquire()
    got: list[tuple[str, Permit]] = []
    first, second = spawn(limiter, got, "first"), spawn(limiter, got, "second")
    await settle()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert limiter.queued == 1
    assert held is not None
    held.release()
    permit = await second
    assert [name for name, _ in got] == ["second"]
    permit.release()
    check_idle(limiter)


async def test_grant_and_cancel_in_the_same_step_leaks_no_slot() -> None:
    samples: list[bool] = []
    limiter = Limiter("db", max_concurrency=1, max_queue=4, adaptive=Recorder(samples))
    held = limiter.try_acquire()
    got: list[tuple[str, Permit]] = []
    first, second = spawn(limiter, got, "first"), spawn(limiter, got, "second")
    await settle()
    assert held is not None
    held.release()  # grants "first": its future has a permit ...
    first.cancel()  # ... and it is cancelled before it can run
    with pytest.raises(asyncio.CancelledError):
        await first
    permit = await second  # the abandoned slot went on to the next waiter
    assert [name for name, _ in got] == ["second"]
    permit.release()
    check_idle(limiter)
    assert samples == [True, True]  # the abandoned permit is no hold-time sample


async def test_cancelled_waiter_still_queued_is_skipped_by_a_release() -> None:
    limiter = Limiter("db", max_concurrency=1, max_queue=4)
    held = limiter.try_acquire()
    got: list[tuple[str, Permit]] = []
    first, second = spawn(limiter, got, "first"), spawn(limiter, got, "second")
    await settle()
    first.cancel()  # its future is cancelled, but its acquire() has not run yet
    assert held is not None
    held.release()
    assert limiter.queued == 0
    with pytest.raises(asyncio.CancelledError):
        await first
    permit = await second
    permit.release()
    check_idle(limiter)


async def test_cancel_after_being_shed_still_propagates() -> None:
    limiter = Limiter("db", max_concurrency=1, max_queue=1)
    held = limiter.try_acquire()
    got: list[tuple[str, Permit]] = []
    low = spawn(limiter, got, "low", priority=0)
    await settle()
    high = spawn(limiter, got, "high", priority=5)
    await asyncio.sleep(0)  # "high" pushed "low" out: low's future holds a Rejected ...
    assert limiter.state().rejected["priority"] == 1
    assert not low.done()
    low.cancel()  # ... and low is cancelled before it could raise it
    with pytest.raises(asyncio.CancelledError):
        await low
    assert held is not None
    held.release()
    (await high).release()
    check_idle(limiter)


def test_waiter_left_behind_by_a_closed_loop_is_dropped() -> None:
    # A test client that runs each request in its own event loop can close a
    # loop with a waiter still queued; a later release must not grant to it.
    limiter = Limiter("db", max_concurrency=1, max_queue=2)
    holder = limiter.try_acquire()
    loop = asyncio.new_event_loop()
    task = loop.create_task(limiter.acquire())
    loop.run_until_complete(asyncio.sleep(0))
    assert limiter.queued == 1
    task._log_destroy_pending = False  # type: ignore[attr-defined]  # it stays pending
    loop.close()
    assert holder is not None
    holder.release()
    check_idle(limiter)
