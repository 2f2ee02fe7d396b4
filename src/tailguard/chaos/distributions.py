"""Latency distributions for :class:`~tailguard.chaos.Latency`, in seconds.

Latency is rarely a constant: it is described by its percentiles ("p50 of
50 ms, p99 of 500 ms") and has a long right tail. Each distribution here
draws with :meth:`~Distribution.sample` from the engine's seeded
:class:`random.Random`, so an experiment replays the same delays under the
same seed, and reports its own quantiles with :meth:`~Distribution.quantile`
(what the benchmark compares injected delays with).

>>> import random
>>> slow = LogNormal(p50=0.05, p99=0.5)
>>> round(slow.quantile(0.5), 3), round(slow.quantile(0.99), 3)
(0.05, 0.5)
>>> 0 < slow.sample(random.Random(7))
True
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Final

from tailguard._numbers import finite

__all__ = ["LARGEST_DRAW", "Distribution", "Empirical", "Fixed", "LogNormal", "Pareto", "Uniform"]

_Z99: Final = NormalDist().inv_cdf(0.99)
"""The standard normal's 99th percentile (about 2.326): fits a log-normal to p50 and p99."""

LARGEST_DRAW: Final = 1e300
"""The largest delay, in seconds, a distribution may be able to draw.

Far beyond any experiment's TTL (an injected wait ends with its experiment
anyway), and far enough below the largest float that delays added together
stay finite. Parameters that could draw more are refused when the
distribution is created, naming the field: a Pareto with a tiny ``alpha`` or
a log-normal with a huge ``p99`` would otherwise overflow (or divide by zero)
while a call waits for its fault.
"""
_LOG_LARGEST: Final = math.log(LARGEST_DRAW)
_UNIFORM_BITS: Final = 53
""":class:`random.Random` draws its uniforms as multiples of 2**-53: never closer to 0 than that."""
_LOG_SMALLEST_U: Final = -_UNIFORM_BITS * math.log(2)
_Z_MAX: Final = 2 * math.sqrt(-_LOG_SMALLEST_U) + 0.1
"""The most standard deviations :meth:`random.Random.normalvariate` can draw (about 12.2).

Its Kinderman-Monahan method accepts ``z`` only when ``z*z/4 <= -log(u)``,
with ``u`` a uniform no smaller than 2**-53, so ``|z| <= 2*sqrt(53 log 2)``;
the 0.1 is a margin.
"""


class Distribution:
    """A distribution of delays in seconds: what :class:`~tailguard.chaos.Latency` draws from."""

    __slots__ = ()

    def sample(self, rng: random.Random) -> float:
        """One delay in seconds (never negative), drawn with ``rng``."""
        raise NotImplementedError

    def quantile(self, q: float) -> float:
        """The delay below which a share ``q`` (0 < q < 1) of the draws fall."""
        raise NotImplementedError


def _seconds(owner: str, name: str, value: object, *, positive: bool = False) -> float:
    """``value`` as a float number of seconds, or ``ValueError`` naming ``owner.name``."""
    number = finite(value)
    if number is None:
        raise ValueError(f"{owner}: {name} must be a finite number of seconds, got {value!r}")
    if number < 0 or (positive and number == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{owner}: {name} must be {bound} seconds, got {value!r}")
    if number > LARGEST_DRAW:
        raise ValueError(f"{owner}: {name} must be at most {LARGEST_DRAW:g} seconds, got {value!r}")
    return number


def _check_q(q: float) -> None:
    if not 0 < q < 1:
        raise ValueError(f"q must be between 0 and 1 (exclusive), got {q!r}")


@dataclass(frozen=True, slots=True)
class Fixed(Distribution):
    """Always ``seconds``.

    >>> import random
    >>> Fixed(0.2).sample(random.Random()), Fixed(0.2).quantile(0.99)
    (0.2, 0.2)
    """

    seconds: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "seconds", _seconds("Fixed", "seconds", self.seconds))

    def sample(self, rng: random.Random) -> float:
        return self.seconds

    def quantile(self, q: float) -> float:
        _check_q(q)
        return self.seconds


@dataclass(frozen=True, slots=True)
class Uniform(Distribution):
    """Any delay between ``low`` and ``high`` seconds, equally likely.

    >>> Uniform(0.1, 0.3).quantile(0.5)
    0.2
    """

    low: float
    high: float

    def __post_init__(self) -> None:
        low = _seconds("Uniform", "low", self.low)
        high = _seconds("Uniform", "high", self.high)
        if high < low:
            raise ValueError(f"Uniform: high must be >= low ({low!r}), got {high!r}")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)

    def quantile(self, q: float) -> float:
        _check_q(q)
        return self.low + q * (self.high - self.low)


@dataclass(frozen=True, slots=True)
class LogNormal(Distribution):
    """A log-normal fitted to its median ``p50`` and 99th percentile ``p99``.

    That is how latency is usually described; the fit puts exactly 50% of
    the draws below ``p50`` and 99% below ``p99``, with the long right tail
    real services have. ``p99 == p50`` is a constant. A ``p99`` so far above
    ``p50`` that draws could pass :data:`LARGEST_DRAW` is refused.

    >>> d = LogNormal(p50=0.01, p99=0.1)
    >>> round(d.quantile(0.9), 4)
    0.0356
    """

    p50: float
    p99: float
    mu: float = field(init=False, repr=False, compare=False)
    sigma: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        p50 = _seconds("LogNormal", "p50", self.p50, positive=True)
        p99 = _seconds("LogNormal", "p99", self.p99, positive=True)
        if p99 < p50:
            raise ValueError(f"LogNormal: p99 must be >= p50 ({p50!r}), got {p99!r}")
        mu = math.log(p50)
        sigma = (math.log(p99) - mu) / _Z99
        if mu + _Z_MAX * sigma > _LOG_LARGEST:
            # The largest p99 whose draws all stay below LARGEST_DRAW, for this p50.
            most = math.exp(mu + (_LOG_LARGEST - mu) / _Z_MAX * _Z99)
            raise ValueError(
                f"LogNormal: p99 is too far above p50={p50!r} for draws to stay finite: "
                f"at most {most:.4g} seconds, got {p99!r}"
            )
        object.__setattr__(self, "p50", p50)
        object.__setattr__(self, "p99", p99)
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "sigma", sigma)

    def sample(self, rng: random.Random) -> float:
        return rng.lognormvariate(self.mu, self.sigma)

    def quantile(self, q: float) -> float:
        _check_q(q)
        return math.exp(self.mu + self.sigma * NormalDist().inv_cdf(q))


@dataclass(frozen=True, slots=True)
class Pareto(Distribution):
    """A power-law tail: never below ``minimum`` seconds, shape ``alpha``.

    The smaller ``alpha``, the heavier the tail (at ``alpha <= 1`` the mean
    is infinite; waits are still bounded by the experiment's end and the
    request's deadline). An ``alpha`` so small that draws could pass
    :data:`LARGEST_DRAW` (below about 0.05) is refused.

    >>> Pareto(minimum=0.01, alpha=2).quantile(0.75)
    0.02
    """

    minimum: float
    alpha: float

    def __post_init__(self) -> None:
        minimum = _seconds("Pareto", "minimum", self.minimum, positive=True)
        alpha = self.alpha
        number = finite(alpha)
        if number is None or number <= 0:
            raise ValueError(f"Pareto: alpha must be a finite number > 0, got {alpha!r}")
        # paretovariate draws u ** (-1 / alpha) with u >= 2**-53.
        least = -_LOG_SMALLEST_U / max(_LOG_LARGEST - math.log(minimum), 1e-9)
        if number < least:
            raise ValueError(
                f"Pareto: alpha must be at least {least:.4g} with minimum={minimum!r} "
                f"(smaller ones draw delays that overflow), got {alpha!r}"
            )
        object.__setattr__(self, "minimum", minimum)
        object.__setattr__(self, "alpha", number)

    def sample(self, rng: random.Random) -> float:
        return self.minimum * rng.paretovariate(self.alpha)

    def quantile(self, q: float) -> float:
        _check_q(q)
        return self.minimum * math.pow(1 - q, -1 / self.alpha)


@dataclass(frozen=True, slots=True)
class Empirical(Distribution):
    """Draws, with replacement, from delays observed on the real dependency.

    Feed it a sample of real latencies (from traces or a histogram's raw
    data) to replay exactly the shape production sees.

    >>> d = Empirical([0.01, 0.02, 0.03, 0.5])
    >>> d.quantile(0.5), d.quantile(0.99)
    (0.02, 0.5)
    """

    samples: Sequence[float]

    def __post_init__(self) -> None:
        samples = self.samples
        if isinstance(samples, str | bytes) or not isinstance(samples, Sequence) or not samples:
            raise ValueError(
                f"Empirical: samples must be a non-empty sequence of seconds, got {samples!r}"
            )
        checked = tuple(
            _seconds("Empirical", f"samples[{i}]", value) for i, value in enumerate(samples)
        )
        object.__setattr__(self, "samples", checked)

    def sample(self, rng: random.Random) -> float:
        return float(rng.choice(self.samples))

    def quantile(self, q: float) -> float:
        """The nearest-rank quantile of the samples."""
        _check_q(q)
        ordered = sorted(self.samples)
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
