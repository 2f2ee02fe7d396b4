"""Who counts as a tenant: listed tenants apart, unlisted ones pooled, and tables that stay bounded.

A client can put anything in a tenant header. Per-tenant lanes and caps for
every id it sends would let it take a lane (and a cap) per request; so only
tenants listed in ``tenant_weights`` (and ``None``, no tenant) are counted
apart, and the rest count as ``UNLISTED``, unless the operator says tenants
cannot be forged (``unlisted_tenants="separate"``), and even then the table of
tenants the limiter keeps is bounded by ``max_tenants``.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from tailguard import RoutePolicy, Tailguard
from tailguard.admission import MAX_TENANTS, UNLISTED, Limiter, Permit, Rejected
from tailguard.routing.limits import build_limiters
from tests.admission.support import FakeClock, check_idle, check_invariants, settle, spawn

pytestmark = pytest.mark.anyio


def table(limiter: Limiter) -> int:
    """Tenants the limiter keeps any state for: in-use counts, queue counts, lanes."""
    queue = limiter._queue
    lanes = {tenant for level in queue.levels for tenant in level.lanes}
    keys = lanes | queue.tenant_counts.keys() | queue.standing_since.keys()
    keys |= (limiter._tenant_in_use or {}).keys()
    assert limiter.state().tenants == len(
        queue.tenant_counts.keys() | (limiter._tenant_in_use or {}).keys()
    )
    return len(keys)


def test_unlisted_tenants_share_one_cap_listed_ones_and_none_have_their_own() -> None:
    limiter = Limiter("api", max_concurrency=8, tenant_concurrency=2, tenant_weights={"gold": 3})
    assert limiter.unlisted_tenants == "shared"
    pooled = [limiter.try_acquire(tenant=f"rnd{i}") for i in range(2)]
    assert [p.tenant for p in pooled if p is not None] == [UNLISTED, UNLISTED]
    assert limiter.try_acquire(tenant="rnd2") is None  # a new id is no way around the cap
    gold = [limiter.try_acquire(tenant="gold") for _ in range(2)]
    anonymous = [limiter.try_acquire() for _ in range(2)]
    assert all(p is not None for p in gold + anonymous)
    assert limiter.try_acquire(tenant="gold") is None
    assert limiter._tenant_in_use == {UNLISTED: 2, "gold": 2, None: 2}
    assert limiter.state().tenants == 3
    for permit in pooled + gold + anonymous:
        assert permit is not None
        permit.release()
    check_idle(limiter)
    assert limiter.state().tenants == 0
    assert repr(UNLISTED) == "UNLISTED"


async def test_unlisted_tenants_queue_in_one_lane_behind_a_listed_one() -> None:
    limiter = Limiter("api", max_concurrency=1, max_queue=50, tenant_weights={"quiet": 1})
    holder = limiter.try_acquire(tenant="quiet")
    assert holder is not None
    got: list[tuple[str, Permit]] = []
    for i in range(20):
        spawn(limiter, got, f"rnd{i}", tenant=f"rnd{i}")
    await settle()
    spawn(limiter, got, "quiet", tenant="quiet")
    await settle()
    assert limiter._queue.tenant_counts == {UNLISTED: 20, "quiet": 1}
    check_invariants(limiter)
    holder.release()
    for i in range(21):
        await settle()
        got[i][1].release()
    order = [name for name, _ in got]
    # Round robin between two lanes: the quiet tenant is served second at the latest,
    # not after the twenty lanes a tenant id per request used to open.
    assert order.index("quiet") <= 1
    check_idle(limiter)


async def test_a_full_queue_of_unlisted_tenants_makes_room_for_a_listed_one() -> None:
    limiter = Limiter("api", max_concurrency=1, max_queue=4, tenant_weights={"quiet": 1})
    holder = limiter.try_acquire(tenant="rnd")
    assert holder is not None
    got: list[tuple[str, Permit]] = []
    flood = [spawn(limiter, got, f"rnd{i}", tenant=f"rnd{i}") for i in range(4)]
    await settle()
    quiet = spawn(limiter, got, "quiet", tenant="quiet")
    await settle()
    # The pool is the tenant filling the queue: its newest waiter makes room.
    with pytest.raises(Rejected, match="queue_full"):
        await flood[-1]
    holder.release()
    await settle()
    got[0][1].release()
    await settle()
    assert quiet.done()  # served within one round of the two lanes
    assert "quiet" in [name for name, _ in got[:2]]
    for task in flood[:-1]:
        task.cancel()
    await asyncio.gather(*flood[:-1], return_exceptions=True)
    got[1][1].release()
    check_idle(limiter)


def test_separate_tenants_each_get_their_own_up_to_max_tenants() -> None:
    limiter = Limiter(
        "api",
        max_concurrency=100,
        tenant_concurrency=1,
        tenant_weights={"gold": 1},
        unlisted_tenants="separate",
        max_tenants=3,
    )
    own = [limiter.try_acquire(tenant=name) for name in ("a", "b", "c")]
    assert [p.tenant for p in own if p is not None] == ["a", "b", "c"]
    assert limiter.try_acquire(tenant="a") is None  # at its own cap
    # The table is full: a fourth unlisted tenant is counted with the pool,
    overflow = limiter.try_acquire(tenant="d")
    assert overflow is not None
    assert overflow.tenant is UNLISTED
    assert limiter.try_acquire(tenant="e") is None  # whose one slot is taken,
    gold = limiter.try_acquire(tenant="gold")  # while a listed tenant is always itself.
    assert gold is not None
    assert gold.tenant == "gold"
    assert limiter.state().tenants == 5
    for permit in (own[0], own[1], gold):
        assert permit is not None
        permit.release()
    later = limiter.try_acquire(tenant="e")  # room again: its own
    assert later is not None
    assert later.tenant == "e"
    for permit in [own[2], overflow, later]:
        assert permit is not None
        permit.release()
    check_idle(limiter)


@pytest.mark.parametrize("cap", [None, 2])
@pytest.mark.parametrize("unlisted", ["shared", "separate"])
async def test_thousands_of_random_tenants_leave_the_tables_bounded(
    unlisted: Any, cap: int | None
) -> None:
    """A rotating tenant id never grows the limiter's tables, queued or holding."""
    rng = random.Random(10)
    listed = {"gold": 2.0, "silver": 1.0}
    limiter = Limiter(
        "api",
        max_concurrency=8,
        max_queue=4000,
        tenant_concurrency=cap,
        tenant_weights=listed,
        unlisted_tenants=unlisted,
        max_tenants=32,
        clock=FakeClock(),
    )
    bound = (1 if unlisted == "shared" else 32) + len(listed) + 2  # + UNLISTED and None
    got: list[tuple[str, Permit]] = []
    tasks: list[asyncio.Task[Permit]] = []
    largest = 0
    for i in range(3000):
        tenant = rng.choice(["gold", "silver", None]) if i % 10 == 0 else f"{rng.getrandbits(64):x}"
        tasks.append(spawn(limiter, got, str(i), tenant=tenant))
        if i % 50 == 49:
            await settle()
            largest = max(largest, table(limiter))
            for _, permit in got[-4:]:
                permit.release()  # some are served, most keep waiting
            check_invariants(limiter)
    await settle()
    largest = max(largest, table(limiter))
    if cap is None:
        assert limiter.queued > 1000  # a real backlog of thousands of distinct ids
    else:  # the pool's cap sheds most of them
        assert sum(limiter.state().rejected.values()) > 1000
    assert largest <= bound
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, Permit):
            result.release()
    for _, permit in got:
        permit.release()
    check_idle(limiter)
    assert table(limiter) == 0


def test_build_limiters_refuses_a_tenant_cap_that_would_cap_everyone_together() -> None:
    capped = [("/a", RoutePolicy(max_concurrency=4, tenant_concurrency=1))]
    with pytest.raises(ValueError, match=r"routes\['/a'\] sets tenant_concurrency.*tenant_weights"):
        build_limiters(capped, tenants=True)
    with pytest.raises(ValueError, match="unlisted_tenants='separate'"):
        Tailguard(
            routes={"/a": RoutePolicy(max_concurrency=4, tenant_concurrency=1)},
            tenant_header="x-tenant-id",
        )
    # Fine with tenants listed, with separate tenants, or with no tenants at all.
    assert build_limiters(capped, {"gold": 1.0}, tenants=True)["/a"].unlisted_tenants == "shared"
    separate = build_limiters(capped, unlisted_tenants="separate", tenants=True)
    assert separate["/a"].unlisted_tenants == "separate"
    assert build_limiters(capped)["/a"].tenant_concurrency == 1
    with pytest.raises(ValueError, match=r"^unlisted_tenants must be 'shared' or 'separate'"):
        build_limiters(capped, unlisted_tenants="each")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^unlisted_tenants must be"):
        Tailguard(unlisted_tenants="all")  # type: ignore[arg-type]


def test_the_guard_passes_unlisted_tenants_to_its_limiters() -> None:
    guard = Tailguard(
        routes={"/a": RoutePolicy(max_concurrency=4, tenant_concurrency=1)},
        tenant=lambda scope: scope.get("user"),
        unlisted_tenants="separate",
        metrics=False,
    )
    limiter = guard.limiters["/a"]
    assert (limiter.unlisted_tenants, limiter.max_tenants) == ("separate", MAX_TENANTS)
