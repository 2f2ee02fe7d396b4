"""fanout(): required legs must all succeed, optional ones are kept within a grace period.

Timing rule: legs wait on futures the test resolves. ``grace=0`` cuts the
optional legs still running the moment the required ones are done; the one
test that lets a deadline bound the grace gives the cut a 50 ms margin.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import tailguard
from tailguard import FanoutResult
from tailguard.tail import sites
from tailguard.tail.fanout import _cutoff
from tests.tail.support import FOREVER, SHORT, Metrics, Remote, forever, watch_loop

pytestmark = pytest.mark.anyio


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_every_leg_in_time_makes_a_complete_result(metrics: Metrics) -> None:
    remote = Remote()
    with watch_loop() as loop:
        call = asyncio.create_task(
            tailguard.fanout(required=[remote, remote], optional=[remote], grace=FOREVER)
        )
        user, cart, ads = await remote.arrivals(3)
        cart.succeed("cart")
        ads.succeed("ads")
        await settle()
        assert not call.done()
        user.succeed("user")
        result = await call
        assert loop.pending() == []
    assert result == FanoutResult(["user", "cart"], {0: "ads"}, (), {})
    assert result.complete
    assert metrics.attempts("unnamed", "fanout") == 3


async def test_optional_legs_get_the_grace_period_after_the_required_ones() -> None:
    remote = Remote()
    call = asyncio.create_task(
        tailguard.fanout(required=[remote], optional=[remote], grace=FOREVER)
    )
    user, ads = await remote.arrivals(2)
    user.succeed("user")
    await settle()
    assert not call.done()  # waiting for the optional leg, within its grace
    ads.succeed("ads")
    assert (await call).optional == {0: "ads"}


async def test_optional_legs_still_running_at_the_end_of_the_grace_are_cut(
    metrics: Metrics,
) -> None:
    remote = Remote()
    with watch_loop() as loop:
        call = asyncio.create_task(
            tailguard.fanout(required=[remote], optional=[remote, remote], grace=0, name="page")
        )
        user, ads, recs = await remote.arrivals(3)
        recs.succeed("recs")
        await settle()
        user.succeed("user")
        result = await call
        assert loop.pending() == []
    assert ads.cancelled.is_set()
    assert result.required == ["user"]
    assert result.optional == {1: "recs"}
    assert (result.missing, result.cut, result.complete) == ((0,), (0,), False)
    assert metrics.cancelled("page", "fanout") == 1


async def test_a_failed_optional_leg_is_missing_with_its_error() -> None:
    remote = Remote()
    call = asyncio.create_task(
        tailguard.fanout(required=[remote], optional=[remote], grace=FOREVER)
    )
    user, ads = await remote.arrivals(2)
    ads.fail(OSError("ads down"))
    await settle()
    user.succeed("user")
    result = await call
    assert result.missing == (0,)
    assert result.cut == ()
    assert str(result.errors[0]) == "ads down"


async def test_a_required_failure_fails_at_once_and_cancels_every_other_leg() -> None:
    remote = Remote()
    with watch_loop() as loop:
        call = asyncio.create_task(
            tailguard.fanout(required=[remote, remote], optional=[remote], grace=FOREVER)
        )
        user, cart, ads = await remote.arrivals(3)
        cart.fail(ConnectionResetError("cart"))
        with pytest.raises(ExceptionGroup) as info:
            await call
        assert loop.pending() == []
    assert user.cancelled.is_set()
    assert ads.cancelled.is_set()
    assert [str(e) for e in info.value.exceptions] == ["cart"]
    assert "1 of 2 required legs failed" in str(info.value)


async def test_only_optional_legs_start_their_grace_at_once(
    spans: InMemorySpanExporter,
) -> None:
    remote = Remote()
    with watch_loop() as loop:
        result = await tailguard.fanout(optional=[remote, remote], grace=0)
        assert loop.pending() == []
    assert result.required == []
    assert result.missing == (0, 1)
    assert remote.calls == []  # cut before they even started
    attempts = [s for s in spans.get_finished_spans() if s.name == "tailguard.fanout.attempt"]
    assert [a.attributes["tailguard.outcome"] for a in attempts if a.attributes] == [
        "cancelled",
        "cancelled",
    ]


async def test_without_grace_or_deadline_optional_legs_are_awaited() -> None:
    remote = Remote()
    call = asyncio.create_task(tailguard.fanout(required=[remote], optional=[remote]))
    user, ads = await remote.arrivals(2)
    user.succeed("user")
    await settle()
    assert not call.done()
    ads.succeed("ads")
    assert (await call).complete


async def test_without_grace_the_deadline_bounds_the_optional_legs() -> None:
    async def user() -> str:
        return "user"

    with watch_loop() as loop:
        with tailguard.deadline(0.5):
            # Cut with a tenth of the budget left: no DeadlineExceeded.
            result = await tailguard.fanout(required=[user], optional=[forever])
        assert loop.pending() == []
    assert result.required == ["user"]
    assert result.cut == (0,)


def test_the_cut_keeps_a_tenth_of_the_time_left() -> None:
    async def main() -> None:
        assert _cutoff(100.0, None) == math.inf
        assert _cutoff(100.0, 2.0) == 102.0
        with tailguard.deadline(FOREVER):
            assert _cutoff(0.0, None) == pytest.approx(0.9 * FOREVER, abs=0.5)
            assert _cutoff(0.0, 2.0) == 2.0
        with tailguard.deadline(0.0):
            assert _cutoff(5.0, 2.0) == 5.0

    asyncio.run(main())


async def test_a_deadline_before_the_required_legs_finish_raises_at_its_scope() -> None:
    with watch_loop() as loop:
        with pytest.raises(tailguard.DeadlineExceeded):
            with tailguard.deadline(SHORT):
                await tailguard.fanout(required=[forever, forever], optional=[forever])
        assert loop.pending() == []


async def test_cancelling_a_fanout_cancels_every_leg() -> None:
    remote = Remote()
    with watch_loop() as loop:
        call = asyncio.create_task(tailguard.fanout(required=[remote], optional=[remote]))
        legs = await remote.arrivals(2)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert loop.pending() == []
    assert all(leg.cancelled.is_set() for leg in legs)


# -- the pace metric ---------------------------------------------------------------------------


async def test_a_slowest_leg_beyond_the_site_p99_counts_as_slow_paced(
    metrics: Metrics, spans: InMemorySpanExporter
) -> None:
    page = sites.leg_latency("page")
    for _ in range(1000):
        page.observe(1e-6)  # every leg so far took a microsecond

    remote = Remote()
    call = asyncio.create_task(tailguard.fanout(required=[remote, remote], name="page"))
    for leg in await remote.arrivals(2):
        leg.succeed(None)
    await call
    assert metrics.value("tailguard_fanout_calls_total", site="page") == 1
    assert metrics.value("tailguard_fanout_slow_paced_total", site="page") == 1
    assert page.count == 1002
    (helper,) = [s for s in spans.get_finished_spans() if s.name == "tailguard.fanout"]
    assert helper.attributes is not None
    assert helper.attributes["tailguard.fanout.slowest"] > 1e-6
    assert helper.attributes["tailguard.fanout.missing"] == 0


async def test_a_fanout_within_the_p99_is_counted_but_not_slow_paced(metrics: Metrics) -> None:
    page = sites.leg_latency("page")
    for _ in range(1000):
        page.observe(FOREVER)

    async def leg() -> None:
        return None

    await tailguard.fanout(required=[leg, leg], name="page")
    assert metrics.value("tailguard_fanout_calls_total", site="page") == 1
    assert metrics.value("tailguard_fanout_slow_paced_total", site="page") == 0


async def test_until_the_site_knows_its_p99_fanouts_are_not_judged(metrics: Metrics) -> None:
    async def leg() -> None:
        return None

    await tailguard.fanout(required=[leg], name="page")
    await tailguard.fanout(required=[leg])  # unnamed: nothing to judge against
    assert metrics.value("tailguard_fanout_calls_total", site="page") == 0
    assert sites.leg_latency("page").count == 1
    assert "unnamed" not in sites._legs
    assert sites._sites == {}  # a fan-out's sketch is not a hedge's


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({}, ValueError, "at least one"),
        ({"required": [forever], "grace": -1}, ValueError, "grace must be"),
        ({"required": [forever], "grace": math.nan}, ValueError, "grace must be"),
        ({"required": [forever], "grace": True}, ValueError, "grace must be"),
        ({"required": forever}, TypeError, "required must be a sequence"),
        ({"optional": [forever, 1]}, TypeError, r"optional\[1\] must be"),
        ({"required": [forever], "name": ""}, ValueError, "name must be"),
    ],
)
async def test_bad_input_names_the_field(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with watch_loop() as loop:
        with pytest.raises(error, match=message):
            await tailguard.fanout(**options)
        assert loop.created == 0
