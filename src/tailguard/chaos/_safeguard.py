"""The in-process safeguard: watch the affected routes and trip on an SLO breach.

A :class:`Watcher` keeps the outcomes of the last ``window`` seconds of
requests in ten time slices (so old slices drop off whole), and evaluates
the :class:`~tailguard.chaos.AbortWhen` conditions as requests complete:
the error rate every time (a sum over ten slices), the p99 every
``1 + n // 100`` requests (an exact nearest-rank p99 over the ``n``
durations in the window, so about 1% of requests pay for a selection).

>>> from tailguard.chaos import AbortWhen
>>> watcher = Watcher(AbortWhen(error_rate=0.5, min_requests=4))
>>> [watcher.observe(0.0, status, 0.01) for status in (200, 500, 503)]
[None, None, None]
>>> watcher.observe(0.1, 502, 0.01)
'error rate 0.75 > 0.5 over the last 30s (4 requests)'
"""

from __future__ import annotations

import heapq
import math
from collections import deque

from tailguard.chaos.experiment import AbortWhen

__all__ = ["Watcher"]

_SLICES = 10


class _Slice:
    __slots__ = ("count", "durations", "errors", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.count = 0
        self.errors = 0
        self.durations: list[float] = []


class Watcher:
    """The request outcomes of one experiment's affected routes, over its window."""

    __slots__ = ("_abort", "_slices", "_span", "_until_p99")

    def __init__(self, abort: AbortWhen) -> None:
        self._abort = abort
        self._span = abort.window / _SLICES
        self._slices: deque[_Slice] = deque()
        self._until_p99 = 0

    def observe(self, now: float, status: int, duration: float, failed: bool = False) -> str | None:
        """Record one request; return why the experiment must stop, or ``None``.

        An error is a 5xx ``status`` or ``failed`` (a client that gave up is
        ``failed``, with status 0); status 0 without ``failed`` is not counted.
        """
        if status == 0 and not failed:
            return None
        slices = self._slices
        span = self._span
        if not slices or now >= slices[-1].start + span:
            slices.append(_Slice(now))
        while slices[0].start + span <= now - self._abort.window:
            slices.popleft()
        current = slices[-1]
        current.count += 1
        current.errors += failed or status >= 500
        current.durations.append(duration)
        return self._verdict()

    def _verdict(self) -> str | None:
        abort = self._abort
        total = sum(s.count for s in self._slices)
        if total < abort.min_requests:
            return None
        where = f"over the last {abort.window:g}s ({total} requests)"
        if abort.error_rate is not None:
            rate = sum(s.errors for s in self._slices) / total
            if rate > abort.error_rate:
                return f"error rate {rate:.3g} > {abort.error_rate:g} {where}"
        if abort.p99 is not None:
            self._until_p99 -= 1
            if self._until_p99 <= 0:
                self._until_p99 = 1 + total // 100
                p99 = self._p99(total)
                if p99 > abort.p99:
                    return f"p99 {p99:.3g}s > {abort.p99:g}s {where}"
        return None

    def _p99(self, total: int) -> float:
        # Nearest rank: the smallest of the top (total - ceil(0.99 total) + 1) durations.
        top = total - math.ceil(0.99 * total) + 1
        durations = (d for s in self._slices for d in s.durations)
        return heapq.nlargest(top, durations)[-1]
