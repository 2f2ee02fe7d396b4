"""hedge(): a second copy after the delay, first success wins, losers cancelled and awaited.

Timing rule: attempts wait on futures the test resolves (support.Remote);
``delay=0`` makes a hedge due at once and ``delay=FOREVER`` never, so no test
depends on how long anything takes.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import tailguard
from tailguard import DeadlineExceeded, HedgeSite
from tailguard.tail import LatencySketch, sites
from tailguard.tail.hedge import parse_delay
from tests.tail.support import FOREVER, SHORT, WAIT, Metrics, Remote, forever, watch_loop

pytestmark = pytest.mark.anyio


def warm(site: HedgeSite, seconds: float, n: int = 1000) -> None:
    """Give ``site`` a latency history of ``n`` calls of ``seconds`` each, and budget to spend."""
    for _ in range(n):
        site.latency.observe(seconds)
    for _ in range(200):
        site.budget.earn(0.05)


def funded(name: str = "inventory", **options: Any) -> HedgeSite:
    site = HedgeSite(name, **options)
    for _ in range(200):
        site.budget.earn(0.05)
    return site


# -- winning and losing -----------------------------------------------------------------


async def test_a_fast_first_attempt_is_the_only_one(metrics: Metrics) -> None:
    remote = Remote()
    site = funded()
    with watch_loop() as loop:
        call = asyncio.create_task(tailguard.hedge(remote, delay=FOREVER, site=site))
        (await remote.arrival()).succeed("stock: 3")
        assert await call == "stock: 3"
        assert loop.pending() == []
    assert len(remote.calls) == 1
    assert metrics.attempts("inventory", "hedge") == 1
    assert metrics.hedges("inventory", "sent") == 0
    assert metrics.cancelled("inventory", "hedge") == 0


async def test_a_hedge_that_answers_first_wins_and_the_primary_is_cancelled(
    metrics: Metrics,
) -> None:
    remote = Remote()
    site = funded()
    with watch_loop() as loop:
        call = asyncio.create_task(tailguard.hedge(remote, delay=0, site=site))
        primary, second = await remote.arrivals(2)
        second.succeed("from the hedge")
        assert await call == "from the hedge"
        # Returned only after the loser had finished: nothing of the hedge's is left.
        assert loop.pending() == []
        assert primary.cancelled.is_set()
    assert metrics.hedges("inventory", "sent") == 1
    assert metrics.hedges("inventory", "won") == 1
    assert metrics.attempts("inventory", "hedge") == 2
    assert metrics.cancelled("inventory", "hedge") == 1


async def test_the_primary_answering_after_a_hedge_was_sent_cancels_the_hedge(
    metrics: Metrics,
) -> None:
    remote = Remote()
    with watch_loop() as loop:
        call = asyncio.create_task(tailguard.hedge(remote, delay=0, site=funded()))
        primary, second = await remote.arrivals(2)
        primary.succeed("primary")
        assert await call == "primary"
        assert loop.pending() == []
        assert second.cancelled.is_set()
    assert metrics.hedges("inventory", "sent") == 1
    assert metrics.hedges("inventory", "won") == 0


async def test_max_hedges_sends_several_copies_delay_apart() -> None:
    remote = Remote()
    with watch_loop() as loop:
        call = asyncio.create_task(tailguard.hedge(remote, delay=0, max_hedges=3, site=funded()))
        calls = await remote.arrivals(4)
        calls[2].succeed("third")
        assert await call == "third"
        assert loop.pending() == []
    assert [c.cancelled.is_set() for c in calls] == [True, True, False, True]


async def test_max_hedges_zero_never_hedges(metrics: Metrics) -> None:
    remote = Remote()
    call = asyncio.create_task(tailguard.hedge(remote, delay=0, max_hedges=0, site=funded()))
    (await remote.arrival()).succeed(1)
    assert await call == 1
    assert len(remote.calls) == 1
    assert metrics.hedges("inventory", "budget_exhausted") == 0


# -- failures -----------------------------------------------------------------------------


async def test_when_every_attempt_fails_an_exception_group_holds_each_failure() -> None:
    remote = Remote()
    with watch_loop() as loop:
        call = asyncio.create_task(tailguard.hedge(remote, delay=0, site=funded()))
        primary, second = await remote.arrivals(2)
        primary.fail(ConnectionResetError("primary"))
        await primary.finished.wait()
        assert not call.done()  # the hedge is still running: wait for it
        second.fail(TimeoutError("hedge"))
        with pytest.raises(ExceptionGroup) as info:
            await call
        assert loop.pending() == []
    assert [str(e) for e in info.value.exceptions] == ["primary", "hedge"]
    assert "all 2 attempts failed" in str(info.value)


async def test_a_failure_is_not_retried_as_a_hedge() -> None:
    remote = Remote()
    call = asyncio.create_task(tailguard.hedge(remote, delay=FOREVER, site=funded()))
    (await remote.arrival()).fail(KeyError("missing"))
    with pytest.raises(ExceptionGroup) as info:
        await call
    assert info.group_contains(KeyError)
    assert len(remote.calls) == 1


async def test_a_failed_hedge_leaves_the_primary_to_win() -> None:
    remote = Remote()
    call = asyncio.create_task(tailguard.hedge(remote, delay=0, site=funded()))
    primary, second = await remote.arrivals(2)
    second.fail(OSError("hedge failed"))
    await second.finished.wait()
    primary.succeed("primary")
    assert await call == "primary"


async def test_an_attempt_cancelled_from_outside_is_reported_as_a_cancellation() -> None:
    remote = Remote()
    with watch_loop() as loop:
        call = asyncio.create_task(tailguard.hedge(remote, delay=FOREVER, site=funded()))
        await remote.arrival()
        (attempt,) = [
            t
            for t in loop.tasks
            if isinstance(t, asyncio.Task) and t.get_name().startswith("tailguard.hedge")
        ]
        attempt.cancel()  # as a request's sweeper would
        with pytest.raises(asyncio.CancelledError):
            await call
        assert loop.pending() == []


async def test_a_base_exception_from_an_attempt_ends_the_hedge_at_once() -> None:
    class Fatal(BaseException):
        pass

    remote = Remote()
    with watch_loop() as loop:
        call = asyncio.create_task(tailguard.hedge(remote, delay=0, site=funded()))
        primary, second = await remote.arrivals(2)
        second.fail(Fatal())
        with pytest.raises(Fatal):
            await call
        assert loop.pending() == []
        assert primary.cancelled.is_set()


# -- cancellation and deadlines ------------------------------------------------------------


async def test_cancelling_the_caller_cancels_every_attempt_and_propagates(
    spans: InMemorySpanExporter, metrics: Metrics
) -> None:
    remote = Remote()
    with watch_loop() as loop:
        call = asyncio.create_task(tailguard.hedge(remote, delay=0, site=funded()))
        calls = await remote.arrivals(2)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert loop.pending() == []
    assert all(c.cancelled.is_set() for c in calls)
    assert metrics.cancelled("inventory", "hedge") == 2
    helper = next(s for s in spans.get_finished_spans() if s.name == "tailguard.hedge")
    assert helper.attributes is not None
    assert helper.attributes["tailguard.outcome"] == "cancelled"


async def test_a_second_cancellation_while_attempts_wind_down_still_waits_for_them() -> None:
    cleanup_started = asyncio.Event()
    release = asyncio.Event()

    async def stubborn() -> None:
        try:
            await forever()
        except asyncio.CancelledError:
            cleanup_started.set()
            await release.wait()  # slow cleanup, e.g. closing a connection
            raise

    with watch_loop() as loop:
        call = asyncio.create_task(tailguard.hedge(stubborn, delay=FOREVER, site=funded()))
        await asyncio.sleep(0)
        call.cancel()
        await asyncio.wait_for(cleanup_started.wait(), WAIT)
        call.cancel()
        for _ in range(5):
            await asyncio.sleep(0)
        assert not call.done()  # it must not return while its attempt still runs
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert loop.pending() == []


async def test_a_deadline_expiring_mid_flight_cancels_the_attempts_and_raises_at_its_scope(
    metrics: Metrics,
) -> None:
    remote = Remote()
    with watch_loop() as loop:
        with pytest.raises(DeadlineExceeded) as info:
            with tailguard.deadline(SHORT):
                # An inner scope whose own deadline did not fire lets it through.
                with tailguard.deadline(FOREVER):
                    await tailguard.hedge(remote, delay=0, site=funded())
        assert loop.pending() == []
    assert info.value.deadline is not None
    assert info.value.deadline.budget == SHORT
    assert [c.cancelled.is_set() for c in remote.calls] == [True, True]
    assert metrics.cancelled("inventory", "hedge") == 2


async def test_no_hedge_when_the_remaining_deadline_cannot_fit_one(metrics: Metrics) -> None:
    remote = Remote()
    site = funded()
    for _ in range(50):
        site.latency.observe(FOREVER)  # a typical call takes longer than the budget left
    with tailguard.deadline(FOREVER / 2):
        call = asyncio.create_task(tailguard.hedge(remote, delay=0, site=site))
        primary = await remote.arrival()
        await asyncio.sleep(0)
        primary.succeed("alone")
        assert await call == "alone"
    assert len(remote.calls) == 1
    assert metrics.hedges("inventory", "deadline") == 1
    assert metrics.hedges("inventory", "sent") == 0


async def test_without_a_latency_history_the_delay_itself_must_fit_the_deadline(
    metrics: Metrics,
) -> None:
    remote = Remote()
    with tailguard.deadline(FOREVER):
        call = asyncio.create_task(tailguard.hedge(remote, delay=0, site=funded()))
        calls = await remote.arrivals(2)
        calls[0].succeed("ok")
        assert await call == "ok"
    assert metrics.hedges("inventory", "sent") == 1


# -- the budget -----------------------------------------------------------------------------


async def test_a_hedge_due_with_no_budget_left_is_not_sent(metrics: Metrics) -> None:
    remote = Remote()
    site = HedgeSite("inventory")  # an empty bucket
    call = asyncio.create_task(tailguard.hedge(remote, delay=0, site=site))
    primary = await remote.arrival()
    await asyncio.sleep(0)
    primary.succeed("alone")
    assert await call == "alone"
    assert len(remote.calls) == 1
    assert metrics.hedges("inventory", "budget_exhausted") == 1


async def test_each_call_earns_max_extra_of_a_hedge() -> None:
    site = HedgeSite("inventory")
    sent = 0
    for _ in range(40):
        remote = Remote()
        call = asyncio.create_task(tailguard.hedge(remote, delay=0, max_extra=0.25, site=site))
        primary = await remote.arrival()
        await asyncio.sleep(0)
        sent += len(remote.calls) - 1
        primary.succeed(None)
        await call
    assert sent == 10  # a quarter of a hedge per call, never more


async def test_max_extra_zero_never_hedges() -> None:
    site = HedgeSite("inventory")
    for _ in range(5):
        remote = Remote()
        call = asyncio.create_task(tailguard.hedge(remote, delay=0, max_extra=0, site=site))
        primary = await remote.arrival()
        await asyncio.sleep(0)
        primary.succeed(None)
        await call
        assert len(remote.calls) == 1


# -- percentile delays and the sketch -------------------------------------------------------


async def test_a_percentile_delay_waits_for_enough_history() -> None:
    remote = Remote()
    site = funded()
    for _ in range(150):  # p95 needs 200
        site.latency.observe(1e-6)
    call = asyncio.create_task(tailguard.hedge(remote, delay="p95", site=site))
    primary = await remote.arrival()
    await asyncio.sleep(0)
    primary.succeed("cold")
    assert await call == "cold"
    assert len(remote.calls) == 1


async def test_a_percentile_delay_hedges_once_the_site_has_a_history(
    spans: InMemorySpanExporter,
) -> None:
    remote = Remote()
    site = HedgeSite("inventory")
    warm(site, 1e-6)  # p95 is a microsecond: the hedge is due at once
    call = asyncio.create_task(tailguard.hedge(remote, delay="p95", site=site))
    _, second = await remote.arrivals(2)
    second.succeed("hedge")
    assert await call == "hedge"
    helper = next(s for s in spans.get_finished_spans() if s.name == "tailguard.hedge")
    assert helper.attributes is not None
    assert helper.attributes["tailguard.hedge.delay"] == pytest.approx(1e-6, rel=0.05)


async def test_the_sketch_learns_the_primary_latency_even_when_a_hedge_beat_it() -> None:
    remote = Remote()
    site = funded()
    call = asyncio.create_task(tailguard.hedge(remote, delay=0, site=site))
    _, second = await remote.arrivals(2)
    second.succeed("hedge")
    await call
    assert site.latency.count == 1  # the primary's running time; the hedge's is not counted
    remote = Remote()
    call = asyncio.create_task(tailguard.hedge(remote, delay=FOREVER, site=site))
    (await remote.arrival()).succeed("primary")
    await call
    assert site.latency.count == 2


async def test_a_failed_primary_teaches_the_sketch_nothing() -> None:
    remote = Remote()
    site = funded()
    call = asyncio.create_task(tailguard.hedge(remote, delay=0, site=site))
    primary, second = await remote.arrivals(2)
    primary.fail(OSError("down"))
    await primary.finished.wait()
    second.succeed("hedge")
    assert await call == "hedge"
    assert site.latency.count == 0


async def test_a_site_that_does_not_observe_leaves_its_sketch_alone() -> None:
    shared = LatencySketch()
    site = HedgeSite("inventory", latency=shared, observe=False)
    remote = Remote()
    call = asyncio.create_task(tailguard.hedge(remote, delay=FOREVER, site=site))
    (await remote.arrival()).succeed(1)
    await call
    assert shared.count == 0


# -- spans ------------------------------------------------------------------------------------


async def test_each_attempt_is_a_child_span_and_the_helper_links_the_winner(
    spans: InMemorySpanExporter,
) -> None:
    remote = Remote()
    call = asyncio.create_task(tailguard.hedge(remote, delay=0, site=funded()))
    _, second = await remote.arrivals(2)
    second.succeed("hedge")
    await call
    finished = spans.get_finished_spans()
    (helper,) = [s for s in finished if s.name == "tailguard.hedge"]
    attempts = sorted(
        (s for s in finished if s.name == "tailguard.hedge.attempt"),
        key=lambda s: s.attributes["tailguard.attempt"] if s.attributes else -1,
    )
    assert [a.parent.span_id if a.parent else None for a in attempts] == [
        helper.context.span_id,
        helper.context.span_id,
    ]
    loser, winner = attempts
    assert loser.attributes is not None
    assert winner.attributes is not None
    assert (loser.attributes["tailguard.outcome"], winner.attributes["tailguard.outcome"]) == (
        "cancelled",
        "ok",
    )
    assert [link.context.span_id for link in helper.links] == [winner.context.span_id]
    assert [link.context.span_id for link in loser.links] == [winner.context.span_id]
    assert helper.attributes is not None
    assert helper.attributes["tailguard.hedges"] == 1
    assert helper.attributes["tailguard.site"] == "inventory"


async def test_a_failed_attempt_span_records_the_error(spans: InMemorySpanExporter) -> None:
    remote = Remote()
    call = asyncio.create_task(tailguard.hedge(remote, delay=FOREVER, site=funded()))
    (await remote.arrival()).fail(OSError("refused"))
    with pytest.raises(ExceptionGroup):
        await call
    finished = {s.name: s for s in spans.get_finished_spans()}
    attempt = finished["tailguard.hedge.attempt"]
    assert attempt.attributes is not None
    assert attempt.attributes["tailguard.outcome"] == "error"
    assert attempt.status.description == "OSError: refused"
    assert [e.name for e in attempt.events] == ["exception"]
    helper = finished["tailguard.hedge"]
    assert helper.attributes is not None
    assert helper.attributes["tailguard.outcome"] == "error"


# -- names and sites --------------------------------------------------------------------------


async def fetch_stock() -> str:
    return "stock"


class Inventory:
    async def fetch(self) -> str:
        return "method"


async def test_a_function_names_its_own_site(metrics: Metrics) -> None:
    assert await tailguard.hedge(fetch_stock, delay=FOREVER) == "stock"
    assert await tailguard.hedge(Inventory().fetch, delay=FOREVER) == "method"
    assert set(sites._sites) == {
        f"{__name__}.fetch_stock",
        f"{__name__}.Inventory.fetch",
    }
    assert metrics.attempts(f"{__name__}.fetch_stock", "hedge") == 1


async def test_a_name_selects_a_shared_site() -> None:
    assert await tailguard.hedge(fetch_stock, delay=FOREVER, name="stock") == "stock"
    assert sites.site("stock").latency.count == 1


async def test_a_lambda_needs_a_name() -> None:
    with pytest.raises(TypeError, match="name= is required"):
        await tailguard.hedge(lambda: fetch_stock(), delay=0.1)
    assert sites._sites == {}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"delay": -1}, "delay must be"),
        ({"delay": math.nan}, "delay must be"),
        ({"delay": math.inf}, "delay must be"),
        ({"delay": True}, "delay must be"),
        ({"delay": "p100"}, "delay must be"),
        ({"delay": "p0"}, "delay must be"),
        ({"delay": "95"}, "delay must be"),
        ({"delay": "p95ms"}, "delay must be"),
        ({"delay": None}, "delay must be"),
        ({"delay": 0.1, "max_hedges": -1}, "max_hedges must be"),
        ({"delay": 0.1, "max_hedges": 1.0}, "max_hedges must be"),
        ({"delay": 0.1, "max_hedges": True}, "max_hedges must be"),
        ({"delay": 0.1, "max_extra": -0.1}, "max_extra must be"),
        ({"delay": 0.1, "max_extra": math.inf}, "max_extra must be"),
        ({"delay": 0.1, "max_extra": False}, "max_extra must be"),
        ({"delay": 0.1, "name": ""}, "name must be"),
        ({"delay": 0.1, "name": "x", "site": HedgeSite("y")}, "not both"),
    ],
)
async def test_bad_settings_name_the_field_and_change_nothing(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await tailguard.hedge(fetch_stock, **options)
    assert sites._sites == {}


async def test_a_site_must_be_a_hedge_site() -> None:
    with pytest.raises(TypeError, match="site must be a HedgeSite"):
        await tailguard.hedge(fetch_stock, delay=0.1, site="inventory")  # type: ignore[arg-type]


async def test_a_coroutine_instead_of_a_function_is_refused_without_a_warning() -> None:
    with pytest.raises(TypeError, match=r"fetch, not fetch\(\)"):
        await tailguard.hedge(fetch_stock(), delay=0.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="zero-argument async callable"):
        await tailguard.hedge(42, delay=0.1)  # type: ignore[arg-type]


def test_parse_delay_reads_fractional_percentiles() -> None:
    assert parse_delay("p99.9") == (None, 0.999)
    assert parse_delay("p50") == (None, 0.5)
    assert parse_delay(1) == (1.0, None)
