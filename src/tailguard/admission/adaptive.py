"""Adaptive concurrency limits: find the limit from observed hold times.

A fixed limit is right when the capacity behind it is known and hard (a pool of
8 connections, a licence for 4 calls). When it is not — a downstream whose
speed varies with its own load, a shared database — a fixed limit is either too
low (wasted capacity on good days) or too high (a queue builds up *inside* the
downstream on bad days, and every request gets slow). An adaptive limit watches
how long permits are held: if hold times rise above their long-term norm, work
is queueing somewhere downstream, so the limit shrinks; while they stay at the
norm, it grows. The limiter's ``max_concurrency`` stays a hard ceiling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from tailguard._numbers import finite

__all__ = ["AdaptiveLimit", "Gradient2", "LimitController"]


class LimitController(Protocol):
    """The per-limiter state of an adaptive limit."""

    limit: int
    """The limit in force now, between the configured minimum and ``max_limit``."""

    def sample(self, hold: float, in_flight: int, ok: bool) -> int:
        """Record a released permit's hold time; return the limit now in force.

        ``in_flight`` counts permits held just before this one was released,
        ``ok`` is whether the work it covered succeeded.
        """
        ...


class AdaptiveLimit(Protocol):
    """Configuration of an adaptive limit: shareable, stateless, starts a controller."""

    def start(self, max_limit: int) -> LimitController:
        """A fresh controller for one limiter whose ceiling is ``max_limit``."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Gradient2:
    """Netflix's Gradient2 limit: shrink when hold times rise above their long-term mean.

    Every ``window`` samples, the mean hold time of the window (*short*) is
    compared with a slow exponential average of past windows (*long*, over
    ``long_window`` windows). The gradient ``tolerance * long / short``, clamped
    to ``[0.5, 1]``, scales the limit, and ``queue_size`` is added so a healthy
    service keeps probing upwards::

        new = limit * gradient + queue_size
        limit = limit * (1 - smoothing) + new * smoothing   # within [min_limit, max]

    As in Netflix's ``Gradient2Limit`` (and Envoy's adaptive concurrency
    filter, which compares sampled latencies with a measured minimum): the limit
    does not grow while fewer than half of it is in use (there is no evidence
    that more would be served well), and when *long* is more than twice
    *short* (latency has recovered after a long bad spell) *long* decays 5% per
    window so the limit recovers promptly. A failed permit (``release(ok=False)``)
    counts only if it was slower than *long*: a timeout is evidence of
    overload, a fast error is not evidence of health.

    Use it where capacity is unknown or shifts. For a known hard capacity use a
    plain ``max_concurrency``. Put it *before* fault injection, not after, or
    injected latency teaches it a false limit.

    >>> controller = Gradient2(min_limit=2, window=1).start(max_limit=20)
    >>> controller.limit
    20
    >>> for _ in range(20):
    ...     _ = controller.sample(0.010, in_flight=controller.limit, ok=True)
    >>> for _ in range(20):  # latency five times its norm
    ...     _ = controller.sample(0.050, in_flight=controller.limit, ok=True)
    >>> controller.limit < 12
    True
    """

    min_limit: int = 1
    """The limit never goes below this."""
    initial_limit: int | None = None
    """Where the limit starts; ``None`` starts at the limiter's ``max_concurrency``."""
    tolerance: float = 1.5
    """How much slower than the long-term mean is still considered normal."""
    smoothing: float = 0.2
    """Weight of each new estimate (0 < smoothing <= 1)."""
    queue_size: float = 4.0
    """Headroom added per update; the speed at which the limit grows."""
    long_window: int = 600
    """Number of windows the long-term mean hold time averages over."""
    window: int = 10
    """Releases averaged into one sample; the limit updates once per window."""

    def __post_init__(self) -> None:
        for name in ("min_limit", "long_window", "window"):
            _check_int(name, getattr(self, name))
        if self.initial_limit is not None:
            _check_int("initial_limit", self.initial_limit)
        _check_number("tolerance", self.tolerance, low=1.0, inclusive=True)
        _check_number("smoothing", self.smoothing, low=0.0, high=1.0)
        _check_number("queue_size", self.queue_size, low=0.0, inclusive=True)

    def start(self, max_limit: int) -> LimitController:
        if self.min_limit > max_limit:
            raise ValueError(
                f"Gradient2.min_limit ({self.min_limit}) exceeds max_concurrency ({max_limit})"
            )
        return _Gradient2Controller(self, max_limit)


class _Gradient2Controller:
    __slots__ = (
        "_config",
        "_estimate",
        "_factor",
        "_long",
        "_long_count",
        "_max_limit",
        "_peak",
        "_samples",
        "_sum",
        "limit",
    )

    _WARMUP = 10  # windows averaged plainly before the long mean becomes exponential

    def __init__(self, config: Gradient2, max_limit: int) -> None:
        self._config = config
        self._max_limit = max_limit
        initial = max_limit if config.initial_limit is None else config.initial_limit
        self._estimate = float(max(config.min_limit, min(max_limit, initial)))
        self.limit = int(self._estimate)
        self._factor = 2.0 / (config.long_window + 1)
        self._long = 0.0
        self._long_count = 0
        self._samples = 0
        self._sum = 0.0
        self._peak = 0

    def sample(self, hold: float, in_flight: int, ok: bool) -> int:
        if not ok and hold < self._long:
            return self.limit
        self._sum += hold
        if in_flight > self._peak:
            self._peak = in_flight
        samples = self._samples + 1
        if samples < self._config.window:
            self._samples = samples
            return self.limit
        short = self._sum / samples
        peak = self._peak
        self._samples = 0
        self._sum = 0.0
        self._peak = 0
        if short > 0.0:  # a clock that did not move says nothing about latency
            self._update(short, peak)
        return self.limit

    def _update(self, short: float, in_flight: int) -> None:
        config = self._config
        count = self._long_count
        if count < self._WARMUP:
            self._long_count = count + 1
            long = self._long = (self._long * count + short) / (count + 1)
        else:
            long = self._long = self._long + (short - self._long) * self._factor
        if long > 2.0 * short:
            long = self._long = long * 0.95
        estimate = self._estimate
        if in_flight < estimate / 2:
            return
        gradient = max(0.5, min(1.0, config.tolerance * long / short))
        new = estimate * gradient + config.queue_size
        new = estimate * (1.0 - config.smoothing) + new * config.smoothing
        self._estimate = max(config.min_limit, min(self._max_limit, new))
        self.limit = int(self._estimate)


def _check_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Gradient2.{name} must be an int >= 1, got {value!r}")


def _check_number(
    name: str, value: object, *, low: float, high: float = math.inf, inclusive: bool = False
) -> None:
    number = finite(value)
    if number is None or not (number >= low if inclusive else number > low) or number > high:
        bound = f">= {low}" if inclusive else f"> {low}"
        upper = f" and <= {high}" if high != math.inf else ""
        raise ValueError(f"Gradient2.{name} must be a finite number {bound}{upper}, got {value!r}")
