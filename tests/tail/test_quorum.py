"""race() and quorum(): everything at once, the first k successes win, the rest are cancelled.

Timing rule: legs wait on futures the test resolves, in the order it chooses
(hypothesis draws random orders); nothing sleeps.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import tailguard
from tests.tail.support import SHORT, Metrics, Remote, forever, watch_loop

pytestmark = pytest.mark.anyio


async def settle() -> None:
    """Let every callback the last step scheduled run (no I/O, no timers involved)."""
    for _ in range(10):
        await asyncio.sleep(0)


# -- race ---------------------------------------------------------------------------------


async def test_race_returns_the_first_success_and_cancels_the_rest(metrics: Metrics) -> None:
    remote = Remote()
    with watch_loop() as loop:
        call = asyncio.create_task(tailguard.race(remote, remote, remote, name="replicas"))
        a, b, c = await remote.arrivals(3)
        b.succeed("b")
        assert await call == "b"
        assert loop.pending() == []
    assert (a.cancelled.is_set(), c.cancelled.is_set()) == (True, True)
    assert metrics.attempts("replicas", "race") == 3
    assert metrics.cancelled("replicas", "race") == 2


async def test_race_skips_failures_until_a_success() -> None:
    remote = Remote()
    call = asyncio.create_task(tailguard.race(remote, remote))
    a, b = await remote.arrivals(2)
    a.fail(OSError("a"))
    await settle()
    assert not call.done()
    b.succeed("b")
    assert await call == "b"


async def test_race_raises_every_failure_when_all_fail(metrics: Metrics) -> None:
    remote = Remote()
    with watch_loop() as loop:
        call = asyncio.create_task(tailguard.race(remote, remote, remote))
        a, b, c = await remote.arrivals(3)
        c.fail(OSError("c"))
        a.fail(KeyError("a"))
        await settle()
        b.fail(ValueError("b"))
        with pytest.raises(ExceptionGroup) as info:
            await call
        assert loop.pending() == []
    assert [type(e) for e in info.value.exceptions] == [OSError, KeyError, ValueError]
    assert "race 'unnamed': all 3 attempts failed" in str(info.value)
    assert metrics.attempts("unnamed", "race") == 3


async def test_cancelling_a_race_cancels_every_leg() -> None:
    remote = Remote()
    with watch_loop() as loop:
        call = asyncio.create_task(tailguard.race(remote, remote))
        legs = await remote.arrivals(2)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert loop.pending() == []
    assert all(leg.cancelled.is_set() for leg in legs)


async def test_a_deadline_ends_a_race_with_deadline_exceeded() -> None:
    with watch_loop() as loop:
        with pytest.raises(tailguard.DeadlineExceeded):
            with tailguard.deadline(SHORT):
                await tailguard.race(forever, forever)
        assert loop.pending() == []


async def test_race_spans_link_the_winner(spans: InMemorySpanExporter) -> None:
    remote = Remote()
    call = asyncio.create_task(tailguard.race(remote, remote, name="replicas"))
    a, _ = await remote.arrivals(2)
    a.succeed("a")
    await call
    finished = spans.get_finished_spans()
    (helper,) = [s for s in finished if s.name == "tailguard.race"]
    by_index = {
        s.attributes["tailguard.attempt"]: s
        for s in finished
        if s.name == "tailguard.race.attempt" and s.attributes
    }
    assert [link.context.span_id for link in helper.links] == [by_index[0].context.span_id]
    assert [link.context.span_id for link in by_index[1].links] == [by_index[0].context.span_id]


async def test_race_needs_callables() -> None:
    with pytest.raises(ValueError, match="at least one"):
        await tailguard.race()
    with pytest.raises(TypeError, match=r"race: fns\[1\] must be"):
        await tailguard.race(forever, "forever")  # type: ignore[arg-type]


async def test_race_closes_every_coroutine_passed_by_mistake() -> None:
    with pytest.raises(TypeError, match=r"fns\[0\] is a coroutine"):
        await tailguard.race(forever(), forever())  # type: ignore[arg-type]


# -- quorum ---------------------------------------------------------------------------------


async def test_quorum_returns_the_first_k_successes_in_the_order_they_came() -> None:
    remote = Remote()
    with watch_loop() as loop:
        call = asyncio.create_task(tailguard.quorum(2, [remote, remote, remote], name="reads"))
        a, b, c = await remote.arrivals(3)
        c.succeed("c")
        await settle()
        a.succeed("a")
        assert await call == ["c", "a"]
        assert loop.pending() == []
    assert b.cancelled.is_set()


async def test_quorum_fails_as_soon_as_k_is_impossible(metrics: Metrics) -> None:
    remote = Remote()
    with watch_loop() as loop:
        call = asyncio.create_task(tailguard.quorum(3, [remote] * 4, name="reads"))
        a, b, c, d = await remote.arrivals(4)
        a.succeed("a")
        b.fail(OSError("b"))
        await settle()
        assert not call.done()  # one failure still leaves 3 of 4 possible
        c.fail(OSError("c"))
        with pytest.raises(ExceptionGroup) as info:
            await call
        assert loop.pending() == []
    assert d.cancelled.is_set()
    assert [str(e) for e in info.value.exceptions] == ["b", "c"]
    assert "2 of 4 attempts failed, 3 successes are impossible" in str(info.value)
    assert metrics.cancelled("reads", "quorum") == 1


@pytest.mark.parametrize("k", [0, 4, -1, 1.5, True])
async def test_quorum_k_must_fit_the_legs(k: Any) -> None:
    with pytest.raises(ValueError, match="k must be an int from 1 to len"):
        await tailguard.quorum(k, [forever, forever, forever])


async def test_quorum_wants_a_sequence_of_callables() -> None:
    with pytest.raises(TypeError, match="must be a sequence"):
        await tailguard.quorum(1, forever)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be a sequence"):
        await tailguard.quorum(1, "ab")  # type: ignore[arg-type]


# -- random orders ----------------------------------------------------------------------------

scenarios = st.integers(1, 6).flatmap(
    lambda n: st.tuples(
        st.integers(1, n),
        st.lists(st.booleans(), min_size=n, max_size=n),
        st.permutations(range(n)),
    )
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios)
def test_quorum_under_any_order_of_successes_and_failures(
    scenario: tuple[int, list[bool], list[int]],
) -> None:
    asyncio.run(check_quorum(*scenario))


def test_random_orders_leave_no_unretrieved_exception() -> None:
    # The property test skips the slow garbage collection; one run here does not.
    async def run() -> None:
        with watch_loop():
            await check_quorum(2, [False, True, False, True], [0, 2, 1, 3])

    asyncio.run(run())


async def check_quorum(k: int, succeeds: list[bool], order: list[int]) -> None:
    n = len(succeeds)
    remote = Remote()
    with watch_loop(collect=False) as loop:
        call = asyncio.create_task(tailguard.quorum(k, [remote] * n))
        legs = await remote.arrivals(n)
        won: list[int] = []
        lost: list[int] = []
        resolved: set[int] = set()
        for i in order:
            if legs[i].reply.done():  # cancelled because the quorum was already decided
                break
            if succeeds[i]:
                legs[i].succeed(i)
                won.append(i)
            else:
                legs[i].fail(OSError(str(i)))
                lost.append(i)
            resolved.add(i)
            await settle()
            decided = len(won) == k or len(lost) > n - k
            assert call.done() == decided
            if decided:
                break
        if len(won) == k:
            assert call.result() == won
        else:
            with pytest.raises(ExceptionGroup) as info:
                call.result()
            assert [str(e) for e in info.value.exceptions] == [str(i) for i in lost]
        assert loop.pending() == []
        for i, leg in enumerate(legs):
            assert leg.cancelled.is_set() == (i not in resolved)
