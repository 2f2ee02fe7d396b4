"""A waiting room: priority levels, one fair lane per tenant.

Waiters are kept per priority level (0..9, highest served first), and within a
level per tenant, in a *lane*: a doubly linked list in arrival order, so any
waiter can leave in O(1) when it is cancelled or times out, and the oldest or
newest can be taken in O(1) (FIFO normally, LIFO while overloaded).

Lanes of one level take turns by deficit round robin (Shreedhar & Varghese,
1995): when a lane's turn comes it is credited its *quantum* (its tenant's
weight, scaled so the smallest weight is 1) and it is served while its credit
lasts, one credit per request. Each active tenant is therefore served in
proportion to its weight whatever its arrival rate, and a newcomer from a quiet
tenant waits at most one round, however deep a noisy tenant's backlog is.
Lanes whose tenant is at its concurrency cap are passed over without credit.

The queue also records since when each tenant has had waiters without a break
(``standing_since``), for a CoDel check per tenant as in Linux's ``fq_codel``:
a tenant whose backlog never drains can be served newest first, while a tenant
whose requests come and go keeps plain FIFO.

The queue knows nothing of what its waiters wait for: a :class:`Waiter` holds a
future of any type, and the queue only orders waiters, never resolves them.
:class:`~tailguard.admission.limiter.Limiter` builds on it (its slow path:
nothing here runs for a request that is admitted at once).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable, Mapping
from typing import Generic, TypeVar

__all__ = ["PRIORITY_LEVELS", "WaitQueue", "Waiter"]

PRIORITY_LEVELS = 10
"""Priorities are ints ``0 .. PRIORITY_LEVELS - 1``; higher is served first."""

Outcome = TypeVar("Outcome")
"""What a waiter's future resolves to (for the limiter: a permit or a rejection)."""


class Waiter(Generic[Outcome]):
    """One queued request: its future, its timer (if any), and its place in the queue.

    The queue never resolves the future: whoever pops the waiter does.

    >>> loop = asyncio.new_event_loop()
    >>> waiter: Waiter[str] = Waiter(loop.create_future(), 5, "gold", enqueued_at=0.0)
    >>> queue: WaitQueue[str] = WaitQueue()
    >>> queue.push(waiter, now=0.0)
    >>> queue.pop(lifo_since=-1.0, busy=None, cap=0) is waiter
    True
    >>> waiter.future.set_result("served")
    >>> loop.close()
    """

    __slots__ = ("enqueued_at", "future", "handle", "lane", "next", "prev", "priority", "tenant")

    def __init__(
        self,
        future: asyncio.Future[Outcome],
        priority: int,
        tenant: Hashable,
        enqueued_at: float,
    ) -> None:
        self.future = future
        self.priority = priority
        self.tenant = tenant
        self.enqueued_at = enqueued_at
        self.handle: asyncio.TimerHandle | None = None
        self.lane: _Lane[Outcome] | None = None
        self.prev: Waiter[Outcome] | None = None
        self.next: Waiter[Outcome] | None = None


class _Lane(Generic[Outcome]):
    """One tenant's waiters at one priority level, oldest at ``head``."""

    __slots__ = ("count", "deficit", "head", "level", "quantum", "tail", "tenant")

    def __init__(self, level: _Level[Outcome], tenant: Hashable, quantum: float) -> None:
        self.level = level
        self.tenant = tenant
        self.quantum = quantum
        self.deficit = 0.0
        self.count = 0
        self.head: Waiter[Outcome] | None = None
        self.tail: Waiter[Outcome] | None = None


class _Level(Generic[Outcome]):
    """The lanes of one priority level; ``ring[0]`` is the lane whose turn it is."""

    __slots__ = ("count", "lanes", "ring")

    def __init__(self) -> None:
        self.count = 0
        self.lanes: dict[Hashable, _Lane[Outcome]] = {}
        self.ring: deque[_Lane[Outcome]] = deque()


class WaitQueue(Generic[Outcome]):
    """Waiters by priority, then fairly across tenants by weight.

    >>> q: WaitQueue[str] = WaitQueue({"gold": 2.0})
    >>> loop = asyncio.new_event_loop()
    >>> for tenant in ["free"] * 3 + ["gold"] * 3:
    ...     q.push(Waiter(loop.create_future(), 0, tenant, 0.0), now=0.0)
    >>> [q.pop(lifo_since=-1.0, busy=None, cap=0).tenant for _ in range(6)]
    ['free', 'gold', 'gold', 'free', 'gold', 'free']
    >>> loop.close()
    """

    __slots__ = ("_quanta", "count", "levels", "standing_since", "tenant_counts")

    def __init__(self, weights: Mapping[Hashable, float] | None = None) -> None:
        weights = dict(weights or {})
        smallest = min(1.0, *weights.values()) if weights else 1.0
        # Quanta are weights scaled so every lane's turn grants at least one request.
        self._quanta = {tenant: weight / smallest for tenant, weight in weights.items()}
        self._quanta[_DEFAULT] = 1.0 / smallest
        self.levels: tuple[_Level[Outcome], ...] = tuple(_Level() for _ in range(PRIORITY_LEVELS))
        self.count = 0
        self.tenant_counts: dict[Hashable, int] = {}
        """Waiters queued per tenant (tenants with none are absent)."""
        self.standing_since: dict[Hashable, float] = {}
        """Per tenant with waiters: when its backlog last went from none to some."""

    def ahead(self, priority: int, tenant: Hashable) -> int:
        """About how many waiters would be served before a newcomer of ``tenant``.

        Everything at higher priorities, plus, at its own level, one turn of
        every other lane per waiter of its own lane (deficit round robin with
        equal weights; weights are ignored in this estimate).
        """
        levels = self.levels
        count = sum(levels[p].count for p in range(priority + 1, PRIORITY_LEVELS))
        level = levels[priority]
        lane = level.lanes.get(tenant)
        own = 0 if lane is None else lane.count
        for other in level.ring:
            count += own if other is lane else min(other.count, own + 1)
        return count

    def quantum(self, tenant: Hashable) -> float:
        """The share a tenant's lane is credited per turn."""
        quanta = self._quanta
        return quanta[tenant] if tenant in quanta else quanta[_DEFAULT]

    def push(self, waiter: Waiter[Outcome], now: float) -> None:
        """Queue ``waiter`` at the back of its tenant's lane at its priority."""
        level = self.levels[waiter.priority]
        tenant = waiter.tenant
        lane = level.lanes.get(tenant)
        if lane is None:
            lane = level.lanes[tenant] = _Lane(level, tenant, self.quantum(tenant))
            level.ring.append(lane)
        tail = lane.tail
        waiter.lane = lane
        waiter.prev = tail
        if tail is None:
            lane.head = waiter
        else:
            tail.next = waiter
        lane.tail = waiter
        lane.count += 1
        level.count += 1
        self.count += 1
        queued = self.tenant_counts.get(tenant, 0)
        if not queued:
            self.standing_since[tenant] = now
        self.tenant_counts[tenant] = queued + 1

    def remove(self, waiter: Waiter[Outcome]) -> bool:
        """Take ``waiter`` out of the queue; ``False`` if it was no longer queued."""
        lane = waiter.lane
        if lane is None:
            return False
        waiter.lane = None
        prev, nxt = waiter.prev, waiter.next
        if prev is None:
            lane.head = nxt
        else:
            prev.next = nxt
        if nxt is None:
            lane.tail = prev
        else:
            nxt.prev = prev
        waiter.prev = waiter.next = None
        lane.count -= 1
        level = lane.level
        level.count -= 1
        self.count -= 1
        tenant = lane.tenant
        left = self.tenant_counts[tenant] - 1
        if left:
            self.tenant_counts[tenant] = left
        else:
            del self.tenant_counts[tenant]
            del self.standing_since[tenant]
        if not lane.count:
            # An empty lane leaves the rotation and forgets its credit, as in DRR.
            del level.lanes[tenant]
            ring = level.ring
            if ring[0] is lane:
                ring.popleft()
            else:
                ring.remove(lane)
        return True

    def pop(
        self, *, lifo_since: float, busy: Mapping[Hashable, int] | None, cap: int
    ) -> Waiter[Outcome] | None:
        """Remove and return the next waiter to serve, or ``None`` if none is eligible.

        The highest priority level with an eligible waiter wins; within it, the
        lane whose turn it is. A lane whose tenant holds ``cap`` permits or more
        (``busy`` maps tenants to permits held) is not eligible. The lane's
        oldest waiter is served, or its newest if the tenant has had waiters
        continuously since ``lifo_since`` or earlier.
        """
        for level in reversed(self.levels):
            if not level.count:
                continue
            ring = level.ring
            for _ in range(len(ring)):
                lane = ring[0]
                if busy is not None and busy.get(lane.tenant, 0) >= cap:
                    ring.rotate(-1)
                    continue
                if lane.deficit < 1.0:  # the lane's turn starts: credit it
                    lane.deficit += lane.quantum
                lane.deficit -= 1.0
                lifo = self.standing_since[lane.tenant] <= lifo_since
                waiter = lane.tail if lifo else lane.head
                assert waiter is not None
                if lane.deficit < 1.0 and lane.count > 1:  # turn over, lane stays
                    ring.rotate(-1)
                self.remove(waiter)
                return waiter
        return None

    def victim(
        self, priority: int, tenant: Hashable, *, lifo_since: float
    ) -> Waiter[Outcome] | None:
        """Whom a newcomer may push out of a full queue; ``None`` if nobody.

        Only waiters of the lowest priority present are candidates, from the
        tenant with the most of them for its weight. A newcomer of higher
        priority displaces one (the victim's ``priority`` is then lower than the
        newcomer's). At equal priority a newcomer displaces one only if its own
        tenant would still hold a smaller share of that level afterwards (the
        victim's tenant is the one filling the queue). The victim is the one
        that would be served last: the newest when its tenant is served FIFO,
        the oldest when LIFO (see :meth:`pop` for ``lifo_since``). The victim
        stays queued: the caller removes it.
        """
        lowest = next((i for i, level in enumerate(self.levels) if level.count), None)
        if lowest is None or lowest > priority:
            return None
        lanes = self.levels[lowest].lanes
        heaviest = max(lanes.values(), key=_share)
        if lowest == priority:
            own = lanes.get(tenant)
            mine = (own.count if own is not None else 0) + 1
            if mine / self.quantum(tenant) >= _share(heaviest):
                return None
        lifo = self.standing_since[heaviest.tenant] <= lifo_since
        waiter = heaviest.head if lifo else heaviest.tail
        assert waiter is not None
        return waiter

    def waiters(self) -> list[Waiter[Outcome]]:
        """Every queued waiter, highest priority first (for introspection and tests)."""
        found = []
        for level in reversed(self.levels):
            for lane in level.ring:
                waiter = lane.head
                while waiter is not None:
                    found.append(waiter)
                    waiter = waiter.next
        return found


_DEFAULT = object()
"""Key of the default quantum (tenants without a configured weight)."""


def _share(lane: _Lane[Outcome]) -> float:
    return lane.count / lane.quantum
