"""Per-loop bookkeeping that lets fast requests skip timers and watcher tasks entirely.

Most requests finish within a few milliseconds. Arming an asyncio timer for
each one's deadline, or starting a task to watch for its client going away,
costs more than everything else the middleware does — and holding each
finished request in a timer heap until its deadline would keep it (and its
task) alive for the whole budget. Instead a request registers in a dict on
arrival and leaves when it is done. One periodic sweep, armed only while
requests are in flight, finds those still running after ``grace`` seconds and
*promotes* them: they get their own deadline timer and a disconnect watcher.
A request whose budget is shorter than ``grace`` gets its timer at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from typing import Protocol

__all__ = ["Promotable", "Sweeper"]


class Promotable(Protocol):
    """A request that can be told it has outlived the grace period."""

    def promote(self) -> None: ...


class Sweeper:
    """Promotes each registered request that is still running ``grace`` seconds later.

    >>> import asyncio, time
    >>> class Slow:
    ...     promoted = False
    ...     def promote(self): self.promoted = True
    >>> async def main():
    ...     sweeper, slow, fast = Sweeper(asyncio.get_running_loop(), 0.01), Slow(), Slow()
    ...     now = time.monotonic()
    ...     sweeper.add(slow, now); sweeper.add(fast, now); sweeper.discard(fast)
    ...     await asyncio.sleep(0.05)
    ...     return slow.promoted, fast.promoted
    >>> asyncio.run(main())
    (True, False)
    """

    __slots__ = ("_handle", "grace", "loop", "young")

    def __init__(self, loop: asyncio.AbstractEventLoop, grace: float) -> None:
        self.loop = loop
        self.grace = grace
        self.young: dict[Promotable, float] = {}
        """Requests not yet promoted, by arrival; the middleware pops finished ones directly."""
        self._handle: asyncio.TimerHandle | None = None

    def add(self, request: Promotable, now: float) -> None:
        """Register a request that arrived at ``now`` (``time.monotonic()``)."""
        self.young[request] = now
        if self._handle is None:
            self._schedule(self.grace)

    def _schedule(self, delay: float) -> None:
        # In an empty context: the chain of sweeps lasts as long as traffic does
        # and must not keep (or run watchers and timers in) the context of the
        # request that happened to start it.
        self._handle = self.loop.call_later(delay, self._sweep, context=contextvars.Context())

    def discard(self, request: Promotable) -> None:
        """Forget a request that has finished (promoted or not)."""
        self.young.pop(request, None)

    def __len__(self) -> int:
        return len(self.young)

    def _sweep(self) -> None:
        self._handle = None
        young = self.young
        due = time.monotonic() - self.grace
        # Insertion order is arrival order: the due requests come first.
        for request, arrived in list(young.items()):
            if arrived > due:
                self._schedule(arrived - due)
                return
            del young[request]
            request.promote()
