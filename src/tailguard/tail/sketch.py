"""A streaming latency sketch: p50, p95, p99 of recent observations, online and cheap.

:class:`LatencySketch` is a DDSketch-style histogram: every observation goes
into a logarithmic bucket, so any quantile is known to within a *relative*
error (1 % by default) whatever the scale, and recording one costs a
logarithm and a dict update. To follow a service whose latency changes, it
keeps two windows of ``window`` observations, the previous and the current
one, and answers from both: old behaviour is forgotten after two windows.

>>> sketch = LatencySketch()
>>> for ms in range(1, 1001):
...     sketch.observe(ms / 1000)
>>> f"p50 {sketch.quantile(0.5):.2f} s, p99 {sketch.quantile(0.99):.2f} s"
'p50 0.50 s, p99 0.99 s'
"""

from __future__ import annotations

import math
from bisect import bisect_right
from itertools import accumulate
from typing import Final

from tailguard._numbers import finite

__all__ = ["LatencySketch", "samples_needed"]

SMALLEST: Final = 1e-6
"""Observations below a microsecond (and zero) count as one microsecond."""
REFRESH: Final = 16
"""Observations after which a cached quantile is recomputed."""


def samples_needed(q: float) -> int:
    """Observations a sketch needs before it reports quantile ``q``.

    At least 20, and enough that about ten of them are expected above ``q``:
    an estimate of p99 made from 50 observations is the maximum, not a p99.

    >>> samples_needed(0.5), samples_needed(0.95), samples_needed(0.99)
    (20, 200, 1000)
    """
    return max(20, math.ceil(10 / (1 - q) - 1e-9))


class LatencySketch:
    """Quantiles of the last ``window`` to ``2 * window`` latencies, within ``relative_accuracy``.

    :meth:`quantile` returns ``None`` until the sketch has seen
    :func:`samples_needed` observations for the quantile asked, so callers
    can tell "not known yet" from a number. A tail quantile needs a window
    much larger than ``1 / (1 - q)`` (the default 2048 suits p99; p99.9
    wants 20000). One sketch serves one event loop (it is not locked).

    >>> sketch = LatencySketch(window=100)
    >>> sketch.quantile(0.95) is None
    True
    >>> for _ in range(150):
    ...     sketch.observe(0.010)
    >>> sketch.count, round(sketch.quantile(0.5), 3)
    (150, 0.01)
    """

    __slots__ = (
        "_cache",
        "_cached_at",
        "_current",
        "_current_count",
        "_gamma",
        "_inv_log_gamma",
        "_previous",
        "_previous_count",
        "_seen",
        "relative_accuracy",
        "window",
    )

    def __init__(self, *, relative_accuracy: float = 0.01, window: int = 2048) -> None:
        accuracy = finite(relative_accuracy)
        if accuracy is None or not 0 < accuracy < 1:
            raise ValueError(
                f"relative_accuracy must be a number between 0 and 1, got {relative_accuracy!r}"
            )
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an int >= 1, got {window!r}")
        self.relative_accuracy: Final = accuracy
        self.window: Final = window
        self._gamma = (1 + accuracy) / (1 - accuracy)
        self._inv_log_gamma = 1 / math.log(self._gamma)
        self._current: dict[int, int] = {}
        self._previous: dict[int, int] = {}
        self._current_count = 0
        self._previous_count = 0
        self._seen = 0
        self._cache: dict[float, float] = {}
        self._cached_at = 0

    def __repr__(self) -> str:
        return f"<LatencySketch count={self.count} window={self.window}>"

    @property
    def count(self) -> int:
        """Observations the estimates come from: ``window`` to ``2 * window`` once warm."""
        return self._previous_count + self._current_count

    def observe(self, seconds: float) -> None:
        """Record one latency in seconds (negative and NaN values are ignored)."""
        if not seconds >= SMALLEST:  # also false for NaN
            if not seconds >= 0:
                return
            seconds = SMALLEST
        index = math.ceil(math.log(seconds) * self._inv_log_gamma)
        current = self._current
        current[index] = current.get(index, 0) + 1
        self._current_count += 1
        self._seen += 1
        if self._current_count >= self.window:
            self._previous, self._current = current, {}
            self._previous_count, self._current_count = self._current_count, 0
            self._cache.clear()

    def quantile(self, q: float) -> float | None:
        """The ``q``-quantile (``0 < q < 1``) in seconds, or ``None`` with too few observations.

        Recomputed at most every few observations: the answer lags the
        newest ones slightly, which no caller of a p95 can notice.
        """
        if not 0 < q < 1:
            raise ValueError(f"q must be between 0 and 1 (exclusive), got {q!r}")
        # Counted over the sketch's life, so that a window turning over does not
        # make a warm sketch look cold.
        if self._seen < samples_needed(q):
            return None
        cache = self._cache
        if self._seen - self._cached_at >= REFRESH:
            cache.clear()
            self._cached_at = self._seen
        found = cache.get(q)
        if found is None:
            found = cache[q] = self._compute(q, self._previous_count + self._current_count)
        return found

    def _compute(self, q: float, total: int) -> float:
        previous, current = self._previous, self._current
        indexes = sorted(previous.keys() | current.keys())
        counts = accumulate(previous.get(i, 0) + current.get(i, 0) for i in indexes)
        index = indexes[bisect_right(list(counts), q * (total - 1))]
        # The bucket's value with the smallest relative error to anything in it.
        return 2 * self._gamma**index / (self._gamma + 1)
