"""One timer per event loop for every request's deadline and disconnect watch.

Arming an asyncio timer per request (``loop.call_at`` plus cancelling it when
the request ends) costs more than the rest of the middleware's bookkeeping.
Requests instead push ``(when, id, request)`` onto a heap, and a single timer
is armed for the earliest entry of a request still running. When an entry
comes due, the request's ``expire()`` runs and may return a later time to be
called again (the middleware uses this to start a disconnect watcher first and
enforce the deadline later). Finished requests are dropped lazily when they
reach the top, so a request that ends in time costs one ``heappush``.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from typing import Protocol

__all__ = ["Expirable", "ExpiryQueue"]


class Expirable(Protocol):
    """A request that can be told its time came; it may ask to be called again."""

    @property
    def finished(self) -> bool: ...

    def expire(self) -> float | None: ...


class ExpiryQueue:
    """Fires ``expire()`` on each registered request whose deadline passes first."""

    __slots__ = ("_armed_at", "_compact_at", "_handle", "_heap", "loop")

    COMPACT_AT = 4096
    """Heap size that triggers dropping finished requests that are not at the top."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._heap: list[tuple[float, int, Expirable]] = []
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = float("inf")
        self._compact_at = self.COMPACT_AT

    def add(self, at: float, request: Expirable) -> None:
        """Expire ``request`` at monotonic time ``at`` unless it has finished by then."""
        heap = self._heap
        heapq.heappush(heap, (at, id(request), request))
        if at < self._armed_at:
            self._arm(at)
        if len(heap) > self._compact_at:
            # Long budgets leave many finished requests below the top; drop them
            # now and then so the heap tracks what is running, amortised O(1).
            heap[:] = [entry for entry in heap if not entry[2].finished]
            heapq.heapify(heap)
            self._compact_at = max(self.COMPACT_AT, 2 * len(heap))

    def __len__(self) -> int:
        return len(self._heap)

    def _arm(self, at: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = at
        loop = self.loop
        # Deadlines are on time.monotonic(); convert in case the loop's clock differs.
        self._handle = loop.call_at(loop.time() + (at - time.monotonic()), self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._armed_at = float("inf")
        heap = self._heap
        now = time.monotonic()
        while heap:
            at, _, request = heap[0]
            if request.finished:
                heapq.heappop(heap)
            elif at <= now:
                again = request.expire()
                if again is None:
                    heapq.heappop(heap)
                else:
                    heapq.heapreplace(heap, (again, id(request), request))
            else:
                self._arm(at)
                return
