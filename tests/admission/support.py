"""Shared helpers for the admission tests: a fake clock, settling, invariant checks."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

from tailguard.admission import Limiter, Permit


class FakeClock:
    """A clock the test moves by hand; the limiter's timers still run on the loop's clock."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def settle(rounds: int = 5) -> None:
    """Let every ready task run to its next real wait."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def spawn(
    limiter: Limiter,
    got: list[tuple[str, Permit]],
    name: str,
    **kwargs: object,
) -> asyncio.Task[Permit]:
    """Start an acquirer that records ``(name, permit)`` when it is admitted."""

    async def acquirer() -> Permit:
        permit = await limiter.acquire(**kwargs)  # type: ignore[arg-type]
        got.append((name, permit))
        return permit

    return asyncio.get_running_loop().create_task(acquirer(), name=name)


async def drain_in_order(holder: Permit, got: list[tuple[str, Permit]], n: int) -> list[str]:
    """With a limit of 1: release the holder, then each grantee in turn; the grant order."""
    holder.release()
    for i in range(n):
        await settle()
        assert len(got) == i + 1, f"expected {i + 1} grants, got {len(got)}"
        got[i][1].release()
    return [name for name, _ in got]


def check_invariants(limiter: Limiter, *, adaptive: bool = False) -> None:
    """Bookkeeping agrees with the queue's actual contents and the limits hold."""
    queue = limiter._queue
    waiters = queue.waiters()
    assert queue.count == len(waiters) == limiter.queued
    assert limiter.queued <= limiter.max_queue
    assert 0 <= limiter.in_use <= limiter.max_concurrency
    assert limiter.limit <= limiter.max_concurrency
    if not adaptive:  # an adaptive limit may fall below what is already held
        assert limiter.in_use <= limiter.limit
    if limiter.in_use < limiter.limit:
        # A free slot with an eligible waiter would let newcomers jump the queue.
        cap = limiter.tenant_concurrency
        held = limiter._tenant_in_use or {}
        for waiter in waiters:
            if not waiter.future.done():
                assert cap is not None
                assert held.get(waiter.tenant, 0) >= cap
    per_tenant: dict[Hashable, int] = {}
    for waiter in waiters:
        per_tenant[waiter.tenant] = per_tenant.get(waiter.tenant, 0) + 1
        assert waiter.lane is not None
    assert per_tenant == queue.tenant_counts
    for level in queue.levels:
        assert level.count == sum(lane.count for lane in level.ring)
        assert set(level.lanes.values()) == set(level.ring)
        assert all(lane.count > 0 for lane in level.ring)
    counts = limiter._tenant_in_use
    if counts is not None:
        cap = limiter.tenant_concurrency
        assert cap is not None
        assert all(0 < held <= cap for held in counts.values())
        assert sum(counts.values()) == limiter.in_use
        assert all(n <= cap for n in per_tenant.values())


def check_idle(limiter: Limiter) -> None:
    """Nothing held, nothing queued, nothing leaked."""
    check_invariants(limiter)
    assert limiter.in_use == 0
    assert limiter.queued == 0
    assert limiter._queue.tenant_counts == {}
    assert not limiter._tenant_in_use
    assert all(not level.lanes and not level.ring for level in limiter._queue.levels)
