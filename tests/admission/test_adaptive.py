from __future__ import annotations

import math
from collections import deque
from typing import Any

import pytest

from tailguard.admission import Gradient2, LimitController, Limiter, Permit
from tests.admission.support import FakeClock, check_idle, settle, spawn

pytestmark = pytest.mark.anyio


def feed(controller: LimitController, hold: float, n: int, *, ok: bool = True) -> int:
    """``n`` samples of ``hold`` seconds with the limit fully in use."""
    for _ in range(n):
        controller.sample(hold, controller.limit, ok)
    return controller.limit


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"min_limit": 0}, "min_limit"),
        ({"min_limit": True}, "min_limit"),
        ({"initial_limit": 0}, "initial_limit"),
        ({"long_window": 1.5}, "long_window"),
        ({"window": 0}, "window"),
        ({"tolerance": 0.9}, "tolerance"),
        ({"tolerance": math.inf}, "tolerance"),
        ({"tolerance": 10**400}, "tolerance"),
        ({"smoothing": 0}, "smoothing"),
        ({"smoothing": 1.5}, "smoothing"),
        ({"queue_size": -1}, "queue_size"),
        ({"queue_size": True}, "queue_size"),
    ],
)
def test_bad_config_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=rf"^Gradient2\.{field} must be"):
        Gradient2(**kwargs)


def test_min_limit_above_the_ceiling_is_refused_by_the_limiter() -> None:
    with pytest.raises(ValueError, match=r"Gradient2\.min_limit \(5\) exceeds max_concurrency"):
        Limiter("db", max_concurrency=4, adaptive=Gradient2(min_limit=5))


def test_starts_at_the_ceiling_or_the_clamped_initial_limit() -> None:
    assert Gradient2().start(50).limit == 50
    assert Gradient2(initial_limit=10).start(50).limit == 10
    assert Gradient2(initial_limit=100).start(50).limit == 50
    assert Gradient2(min_limit=5, initial_limit=2).start(50).limit == 5


def test_limit_falls_when_latency_rises_and_recovers_when_it_falls() -> None:
    controller = Gradient2(min_limit=2).start(max_limit=40)
    assert feed(controller, 0.010, 500) == 40  # steady: stays at the ceiling
    low = feed(controller, 0.050, 400)  # five times slower: work queues downstream
    assert 2 <= low < 15
    assert feed(controller, 0.010, 600) == 40  # back to normal: back to the ceiling


def test_never_below_min_or_above_max() -> None:
    controller = Gradient2(min_limit=3, window=1, smoothing=1.0, queue_size=0).start(8)
    seen = set()
    for hold in [0.01] * 20 + [1.0] * 50 + [0.01] * 50:
        seen.add(controller.sample(hold, controller.limit, True))
    assert min(seen) == 3
    assert max(seen) == 8


def test_does_not_move_while_app_limited() -> None:
    controller = Gradient2(window=1).start(max_limit=40)
    feed(controller, 0.010, 50)
    for _ in range(100):  # slow, but only a handful in flight: no evidence either way
        controller.sample(0.100, 3, True)
    assert controller.limit == 40


def test_fast_failures_are_not_evidence_of_health() -> None:
    controller = Gradient2(window=1, min_limit=1).start(max_limit=40)
    feed(controller, 0.010, 50)
    feed(controller, 0.050, 200)
    shrunk = controller.limit
    assert shrunk < 40
    feed(controller, 0.0001, 200, ok=False)  # fast errors: ignored
    assert controller.limit == shrunk
    feed(controller, 1.0, 50, ok=False)  # timeouts: counted, the limit falls further
    assert controller.limit < shrunk


def test_a_clock_that_does_not_move_is_ignored() -> None:
    controller = Gradient2(window=1).start(max_limit=40)
    assert feed(controller, 0.0, 100) == 40


async def test_limiter_follows_the_adaptive_limit_and_never_exceeds_its_ceiling() -> None:
    clock = FakeClock()
    limiter = Limiter(
        "downstream",
        max_concurrency=20,
        max_queue=100,
        adaptive=Gradient2(min_limit=2, window=5),
        clock=clock,
    )
    in_flight: deque[Permit] = deque()
    limits = []

    def run(hold: float, steps: int) -> None:
        # Keep the limit in flight; each step the oldest finishes after ``hold``.
        for _ in range(steps):
            while (permit := limiter.try_acquire()) is not None:
                in_flight.append(permit)
            assert limiter.in_use <= limiter.max_concurrency
            clock.now += hold / len(in_flight)
            in_flight.popleft().release()
            limits.append(limiter.limit)

    run(0.01, 500)
    assert limiter.limit == 20
    run(0.08, 200)
    assert limiter.limit < 10
    assert limiter.state().limit == limiter.limit
    low = limiter.limit
    # When the limit rises again, waiters queued in the meantime are let in.
    got: list[tuple[str, Permit]] = []
    tasks = [spawn(limiter, got, f"w{i}") for i in range(5)]
    await settle()
    assert limiter.queued >= 3
    run(0.01, 3000)
    await settle()
    assert limiter.limit == 20
    assert len(got) == 5
    assert max(limits) == 20
    assert min(limits) <= low
    for _, permit in got:
        permit.release()
    for task in tasks:
        await task
    while in_flight:
        in_flight.pop().release()
    check_idle(limiter)
