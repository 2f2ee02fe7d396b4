"""Hundreds of acquirers with every outcome at once leave nothing held or queued."""

from __future__ import annotations

import asyncio
import random

import pytest

from tailguard.admission import Limiter, Rejected
from tests.admission.support import check_idle, check_invariants

pytestmark = pytest.mark.anyio


async def test_stress_mixed_outcomes_leave_nothing_behind() -> None:
    rng = random.Random(7)
    limiter = Limiter(
        "stress",
        max_concurrency=5,
        max_queue=8,
        queue_timeout=0.02,
        tenant_concurrency=3,
        tenant_weights={"a": 3, "b": 1},
    )
    outcomes: dict[str, int] = {}

    async def worker(i: int) -> None:
        tenant = rng.choice(["a", "b", "c", None])
        deadline_at = None
        if rng.random() < 0.3:
            deadline_at = asyncio.get_running_loop().time() + rng.uniform(-0.001, 0.01)
        try:
            with await limiter.acquire(
                priority=rng.randrange(4), tenant=tenant, deadline_at=deadline_at
            ):
                check_invariants(limiter)
                for _ in range(rng.randrange(4)):
                    await asyncio.sleep(0)
                if i >= 380:  # the last ones hold longer than queue_timeout: waiters time out
                    await asyncio.sleep(0.05)
                if i % 7 == 0:
                    raise RuntimeError("handler failed")
        except Rejected as exc:
            outcomes[exc.reason] = outcomes.get(exc.reason, 0) + 1
        except RuntimeError:
            outcomes["error"] = outcomes.get("error", 0) + 1
        else:
            outcomes["ok"] = outcomes.get("ok", 0) + 1

    tasks = []
    for i in range(400):
        tasks.append(asyncio.create_task(worker(i)))
        if rng.random() < 0.5:
            await asyncio.sleep(0)
        live = [task for task in tasks[-12:] if not task.done()]
        if live and rng.random() < 0.2:
            rng.choice(live).cancel()  # queued, holding, or just granted
    results = await asyncio.gather(*tasks, return_exceptions=True)
    cancelled = sum(isinstance(r, asyncio.CancelledError) for r in results)
    assert not [r for r in results if r is not None and not isinstance(r, asyncio.CancelledError)]
    check_idle(limiter)
    assert outcomes["ok"] > 0
    assert outcomes["error"] > 0
    assert cancelled > 0
    assert sum(outcomes.values()) + cancelled == 400
    shed = {reason for reason in outcomes if reason not in ("ok", "error")}
    assert len(shed) >= 3  # typically all five reasons; exact counts depend on timers
