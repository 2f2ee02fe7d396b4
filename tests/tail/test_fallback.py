"""fallback(): tiers in order, each within its share of the budget left.

Timing rule: a tier that must run out of its share waits forever, and the
shares are 30 ms or more out of a 30 s budget; no test asserts how long
anything took, only what each tier saw as its budget.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import tailguard
from tailguard import DeadlineExceeded
from tests.tail.support import FOREVER, SHORT, Metrics, Remote, forever, watch_loop

pytestmark = pytest.mark.anyio


class Tier:
    """A tier that records the budget it saw, then answers, fails, or hangs."""

    def __init__(self, answer: Any = None, *, error: Exception | None = None, hang: bool = False):
        self.answer = answer
        self.error = error
        self.hang = hang
        self.budgets: list[float] = []

    async def __call__(self) -> Any:
        self.budgets.append(tailguard.remaining())
        if self.hang:
            await forever()
        if self.error is not None:
            raise self.error
        return self.answer


async def test_the_first_tier_that_succeeds_answers(metrics: Metrics) -> None:
    cache, replica = Tier(error=KeyError("miss")), Tier("row")
    primary = Tier("never")
    assert await tailguard.fallback(cache, replica, primary, name="reads") == "row"
    assert (len(cache.budgets), len(replica.budgets), len(primary.budgets)) == (1, 1, 0)
    assert metrics.attempts("reads", "fallback") == 2


async def test_every_tier_failing_raises_each_failure() -> None:
    tiers = [Tier(error=KeyError("cache")), Tier(error=OSError("replica"))]
    with pytest.raises(ExceptionGroup) as info:
        await tailguard.fallback(*tiers)
    assert [type(e) for e in info.value.exceptions] == [KeyError, OSError]
    assert "fallback 'unnamed': all 2 tiers failed" in str(info.value)


async def test_each_tier_runs_within_its_share_of_what_is_left() -> None:
    cache = Tier(hang=True)  # runs out of its share
    replica = Tier(error=OSError("replica down"))
    primary = Tier("row")
    with tailguard.deadline(FOREVER):
        result = await tailguard.fallback(cache, replica, primary, budget_split=[1, 1, 998])
    assert result == "row"
    (cache_budget,) = cache.budgets
    (replica_budget,) = replica.budgets
    (primary_budget,) = primary.budgets
    assert 0 < cache_budget <= FOREVER / 1000
    # The replica's share is computed from what was left when it started.
    assert replica_budget <= (FOREVER - cache_budget) / 999
    assert replica_budget > 0.9 * (FOREVER - 1) / 999
    # The last tier has all that is left (the request's own scope bounds it).
    assert primary_budget > FOREVER - 1


async def test_a_tier_out_of_its_share_hands_over_without_failing_the_caller(
    spans: InMemorySpanExporter,
) -> None:
    with tailguard.deadline(FOREVER):
        assert await tailguard.fallback(Tier(hang=True), Tier("row"), budget_split=[1, 999])
    finished = spans.get_finished_spans()
    tiers = sorted(
        (s for s in finished if s.name == "tailguard.fallback.attempt"),
        key=lambda s: s.attributes["tailguard.attempt"] if s.attributes else -1,
    )
    assert [t.attributes["tailguard.outcome"] for t in tiers if t.attributes] == [
        "deadline_exceeded",
        "ok",
    ]
    assert tiers[0].attributes is not None
    assert tiers[0].attributes["tailguard.fallback.share"] == pytest.approx(0.03, rel=0.05)
    (outer,) = [s for s in finished if s.name == "tailguard.fallback"]
    assert [link.context.span_id for link in outer.links] == [tiers[1].context.span_id]
    assert outer.attributes is not None
    assert outer.attributes["tailguard.fallback.tier"] == 1
    assert outer.attributes["tailguard.outcome"] == "ok"
    assert outer.attributes["tailguard.attempts"] == 2
    assert {t.parent.span_id for t in tiers if t.parent} == {outer.context.span_id}


async def test_the_request_deadline_ends_the_last_tier_at_its_own_scope() -> None:
    with watch_loop() as loop:
        with pytest.raises(DeadlineExceeded) as info:
            with tailguard.deadline(SHORT):
                await tailguard.fallback(Tier(error=KeyError("miss")), Tier(hang=True))
        assert loop.created == 0  # tiers run in the caller's task
    assert info.value.deadline is not None
    assert info.value.deadline.budget == SHORT


async def test_without_a_deadline_tiers_are_not_timed() -> None:
    first, second = Tier(error=KeyError("miss")), Tier("row")
    assert await tailguard.fallback(first, second, budget_split=[1, 2]) == "row"
    assert first.budgets == [math.inf]
    assert second.budgets == [math.inf]


async def test_cancelling_the_caller_cancels_the_tier_and_propagates(
    spans: InMemorySpanExporter,
) -> None:
    remote = Remote()
    call = asyncio.create_task(tailguard.fallback(remote, remote))
    first = await remote.arrival()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert first.cancelled.is_set()
    assert len(remote.calls) == 1
    spans_by_name = {s.name: s for s in spans.get_finished_spans()}
    for name in ("tailguard.fallback", "tailguard.fallback.attempt"):
        attributes = spans_by_name[name].attributes
        assert attributes is not None
        assert attributes["tailguard.outcome"] == "cancelled"


async def test_all_failed_marks_the_span_as_an_error(spans: InMemorySpanExporter) -> None:
    with pytest.raises(ExceptionGroup):
        await tailguard.fallback(Tier(error=KeyError("a")), name="reads")
    (outer,) = [s for s in spans.get_finished_spans() if s.name == "tailguard.fallback"]
    assert outer.attributes is not None
    assert outer.attributes["tailguard.outcome"] == "error"
    assert outer.attributes["tailguard.attempts"] == 1
    assert outer.status.description == "all tiers failed"


@pytest.mark.parametrize(
    ("fns", "split", "message"),
    [
        ((), None, "at least one"),
        ((forever, forever), [1], "budget_split must be a sequence of 2"),
        ((forever, forever), "ab", "budget_split must be a sequence of 2"),
        ((forever, forever), 2, "budget_split must be a sequence of 2"),
        ((forever, forever), [1, 0], r"budget_split\[1\] must be"),
        ((forever, forever), [1, math.inf], r"budget_split\[1\] must be"),
        ((forever, forever), [True, 1], r"budget_split\[0\] must be"),
    ],
)
async def test_bad_input_names_the_field(fns: tuple[Any, ...], split: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        await tailguard.fallback(*fns, budget_split=split)
