"""The event-loop lag monitor.

A callback scheduled for a known time runs late by exactly as long as the loop
was busy with something else: a blocking call in a handler, a long stretch of
CPU work, a flood of ready callbacks. :class:`LoopMonitor` schedules one every
``interval`` seconds and observes how late it ran into
``tailguard_event_loop_lag_seconds``. The same tick refreshes the limiter and
pool gauges, which keeps every worker's gauges fresh in multiprocess mode.

It is a timer callback, not a task: it never keeps a loop or a process
alive, and a loop closed under it (a test client's, a server's on shutdown)
just drops it, without a "Task was destroyed but it is pending" complaint.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Callable

from tailguard._numbers import finite
from tailguard.telemetry.catalog import Catalog

__all__ = ["LoopMonitor"]

logger = logging.getLogger("tailguard.telemetry")


class LoopMonitor:
    """Observes event-loop lag every ``interval`` seconds and calls ``refresh()`` then.

    :meth:`start` is idempotent and cheap, so it can be called at lifespan
    startup *and* on every request (apps without lifespan). One monitor
    watches one loop: starting it on another loop moves it there.
    ``lag`` is the most recent lag in seconds. A ``refresh`` that raises is
    logged (once until it succeeds again) and does not stop the monitor.

    >>> import asyncio
    >>> async def main():
    ...     monitor = LoopMonitor(interval=0.001)
    ...     monitor.start()
    ...     await asyncio.sleep(0.01)
    ...     monitor.stop()
    ...     return monitor.lag >= 0.0, monitor.running
    >>> asyncio.run(main())
    (True, False)
    """

    __slots__ = ("_failing", "_handle", "_loop", "catalog", "interval", "lag", "refresh")

    def __init__(
        self,
        *,
        interval: float = 0.25,
        refresh: Callable[[], None] | None = None,
        catalog: Catalog | None = None,
    ) -> None:
        number = finite(interval)
        if number is None or number <= 0:
            raise ValueError(
                f"LoopMonitor.interval must be a positive, finite number of seconds, "
                f"got {interval!r}"
            )
        if refresh is not None and not callable(refresh):
            raise ValueError(f"LoopMonitor.refresh must be callable or None, got {refresh!r}")
        self.interval = float(interval)
        self.refresh = refresh
        self.catalog = catalog
        """Where lag is observed (``tailguard_event_loop_lag_seconds``); ``None``: nowhere."""
        self.lag = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._failing = False

    @property
    def running(self) -> bool:
        """Whether a tick is scheduled on a loop that is still open."""
        loop = self._loop
        return self._handle is not None and loop is not None and not loop.is_closed()

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Watch ``loop`` (default: the running one); call it from that loop's thread."""
        if loop is None:
            loop = asyncio.get_running_loop()
        if loop is self._loop and self._handle is not None:
            return
        self.stop()
        self._loop = loop
        # An empty context: started by the first request of an app without a
        # lifespan, the ticks must not keep that request's context alive for good.
        self._handle = loop.call_at(
            loop.time() + self.interval, self._tick, loop, context=contextvars.Context()
        )

    def stop(self) -> None:
        """Stop watching; safe from any thread, and on a loop that has closed."""
        handle, self._handle = self._handle, None
        loop, self._loop = self._loop, None
        if handle is None or loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop or not loop.is_running():
            handle.cancel()
            return
        with contextlib.suppress(RuntimeError):  # closed since we looked: nothing to cancel
            loop.call_soon_threadsafe(handle.cancel)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        handle = self._handle
        if handle is None or self._loop is not loop:  # stopped or moved meanwhile
            return
        now = loop.time()
        # A timer may run up to the clock's resolution early: that is no lag.
        lag = self.lag = max(0.0, now - handle.when())
        self._handle = loop.call_at(now + self.interval, self._tick, loop)
        catalog = self.catalog
        if catalog is not None:
            catalog.event_loop_lag.observe(lag)
        refresh = self.refresh
        if refresh is None:
            return
        try:
            refresh()
        except Exception:
            if not self._failing:
                self._failing = True
                logger.exception("tailguard: refreshing the limiter and pool gauges failed")
            return
        self._failing = False
