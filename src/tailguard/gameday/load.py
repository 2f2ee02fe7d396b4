"""Open-loop load for a game-day: requests sent at their intended times, whatever the service does.

A closed-loop client (wrk, a pool of workers) sends the next request only
when an answer came back, so a stalled service also stalls the load and its
worst second is barely sampled: "coordinated omission". Here the send times
are drawn in advance (constant spacing, or Poisson arrivals from a seeded
stream) and each request goes out at its time on its own task; its latency
runs from the **intended** send time to the end of the answer, so the time a
request waited for the generator (or for a service that stopped reading)
counts. The generator's own lateness (the *send lag*) is recorded too, so a
run whose generator fell behind can be marked unreliable rather than blamed
on the service.

Latencies go into HDR histograms (``hdrhistogram``), per request of the mix
and phase (3 significant digits) and per second (2). The client is aiohttp
(``tailguard[gameday]``), which sustains several hundred requests a second
on one core; it is imported when a :class:`OpenLoop` opens.

>>> arrivals = Arrivals("constant", rate=4, seed=0)
>>> [arrivals.next_after(t) for t in (0.0, 0.25)]
[0.25, 0.5]
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import json
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final, Literal

from tailguard.gameday.plan import RequestSpec

if TYPE_CHECKING:
    import aiohttp
    from hdrh.histogram import HdrHistogram

__all__ = [
    "ERROR",
    "TIMEOUT",
    "Arrivals",
    "Histogram",
    "OpenLoop",
    "Second",
    "Stats",
    "Window",
    "import_aiohttp",
]

TIMEOUT: Final = "timeout"
"""A request the client gave up on after ``timeout`` seconds."""
ERROR: Final = "error"
"""A request that got no HTTP answer (refused, reset, malformed)."""
_MICROS: Final = 1_000_000
_HIGHEST: Final = 120 * _MICROS  # the longest latency kept: timeout (<= 60 s) plus send lag
_YIELD_EVERY: Final = 64  # a generator catching up lets its requests' tasks run this often


def import_aiohttp() -> ModuleType:
    """aiohttp, the load's client: an ``ImportError`` naming the extra if it is missing."""
    try:
        import aiohttp
    except ImportError as exc:
        raise ImportError(
            f"game-day load needs aiohttp: pip install 'tailguard[gameday]' ({exc})"
        ) from exc
    return aiohttp


def _hdr(digits: int) -> HdrHistogram:
    try:
        from hdrh.histogram import HdrHistogram
    except ImportError as exc:
        raise ImportError(
            f"game-day latencies need hdrhistogram: pip install 'tailguard[gameday]' ({exc})"
        ) from exc
    return HdrHistogram(1, _HIGHEST, digits)


class Histogram:
    """Latencies in seconds, in an HDR histogram (microsecond resolution).

    >>> h = Histogram()
    >>> for seconds in (0.010, 0.020, 1.0):
    ...     h.record(seconds)
    >>> h.count, round(h.percentile(50), 3), round(h.max, 2), h.count_within(0.05)
    (3, 0.02, 1.0, 2)
    """

    def __init__(self, digits: int = 3) -> None:
        self.hdr = _hdr(digits)

    def record(self, seconds: float) -> None:
        """Add one latency (clipped to the histogram's range)."""
        self.hdr.record_value(min(max(1, round(seconds * _MICROS)), _HIGHEST))

    def add(self, other: Histogram) -> None:
        """Add every value of ``other``."""
        self.hdr.add(other.hdr)

    @property
    def count(self) -> int:
        """How many values were recorded."""
        return int(self.hdr.get_total_count())

    def percentile(self, percent: float) -> float:
        """The ``percent`` percentile in seconds (0 when empty)."""
        return float(self.hdr.get_value_at_percentile(percent)) / _MICROS

    @property
    def max(self) -> float:
        """The largest value in seconds (0 when empty)."""
        return float(self.hdr.get_max_value()) / _MICROS if self.count else 0.0

    def count_within(self, seconds: float) -> int:
        """How many values are at most ``seconds`` (to the histogram's precision)."""
        limit = seconds * _MICROS
        total = 0
        for item in self.hdr.get_recorded_iterator():
            if self.hdr.get_lowest_equivalent_value(item.value_iterated_to) > limit:
                break
            total += item.count_at_value_iterated_to
        return total


@dataclass(slots=True)
class Stats:
    """One request of the mix in one phase (or, merged, a route): counts and latencies.

    ``responses`` counts answers by status code (as a string), plus
    ``timeout`` and ``error``; ``ok`` holds the latencies of the 2xx answers,
    for goodput.
    """

    offered: int = 0
    sent: int = 0
    responses: Counter[str] = field(default_factory=Counter)
    latency: Histogram = field(default_factory=Histogram)
    ok: Histogram = field(default_factory=Histogram)

    def merge(self, other: Stats) -> None:
        """Add ``other``'s counts and latencies to these."""
        self.offered += other.offered
        self.sent += other.sent
        self.responses.update(other.responses)
        self.latency.add(other.latency)
        self.ok.add(other.ok)

    @property
    def dropped(self) -> int:
        """Offered but never sent (the generator could not)."""
        return self.offered - self.sent

    @property
    def answered(self) -> int:
        """Requests that have ended so far, however."""
        return sum(self.responses.values())

    @property
    def errors(self) -> int:
        """5xx answers, timeouts and requests with no answer."""
        return sum(n for key, n in self.responses.items() if not key.isdigit() or key[0] == "5")


@dataclass(slots=True)
class Second:
    """One second of the run for one request of the mix: counts, and latencies until summed up."""

    offered: int = 0
    sent: int = 0
    responses: Counter[str] = field(default_factory=Counter)
    latency: Histogram | None = field(default_factory=lambda: Histogram(2))
    summary: tuple[float, float, float] | None = None
    """``(p50, p99, max)`` once the second is closed and its histogram dropped."""

    def close(self) -> None:
        """Keep the percentiles, drop the histogram (bounds memory on long runs)."""
        if self.latency is not None:
            h = self.latency
            self.summary = (h.percentile(50), h.percentile(99), h.max) if h.count else None
            self.latency = None


@dataclass(frozen=True, slots=True)
class Window:
    """A stretch of the schedule: ``start`` to ``end`` (seconds after the origin) at ``rate``."""

    start: float
    end: float
    rate: float


class Arrivals:
    """Intended send times from ``start``: every ``1/rate`` s, or Poisson arrivals (seeded).

    Constant times are computed from their index, so no rounding error piles up.
    """

    def __init__(
        self, kind: Literal["poisson", "constant"], *, rate: float, seed: int, start: float = 0.0
    ) -> None:
        self.kind = kind
        self.rate = rate
        self.start = start
        self._random = random.Random(seed)
        self._count = 0

    def next_after(self, previous: float) -> float:
        """The send time after ``previous`` (for constant arrivals: the next of the schedule)."""
        self._count += 1
        if self.kind == "constant":
            return self.start + self._count / self.rate
        return previous + self._random.expovariate(self.rate)


class OpenLoop:
    """Sends the mix open loop against ``base_url`` and records what came back.

    Use as ``async with OpenLoop(...) as load: await load.run(windows)``.
    ``max_in_flight`` caps requests awaiting an answer; one that would pass
    it is *dropped* (offered, not sent) and counted, never queued.
    """

    def __init__(
        self,
        base_url: str,
        requests: Sequence[RequestSpec],
        *,
        timeout: float,
        arrivals: Literal["poisson", "constant"] = "poisson",
        seed: int = 0,
        max_in_flight: int = 4096,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.requests = tuple(requests)
        self.timeout = timeout
        self.arrivals = arrivals
        self.seed = seed
        self.max_in_flight = max_in_flight
        self.phases: list[list[Stats]] = []
        """Per phase (window), per request of the mix."""
        self.seconds: dict[tuple[int, int], Second] = {}
        """Per (request of the mix, second after the origin)."""
        self.lag = Histogram()
        self.in_flight = 0
        self.origin = 0.0
        """The event loop's time at which the schedule starts."""
        self._choose = random.Random(seed ^ 0x5EED)
        total = sum(spec.weight for spec in self.requests)
        self._cumulative = list(itertools.accumulate(spec.weight / total for spec in self.requests))
        self._bodies = [
            None if spec.json is None else json.dumps(spec.json).encode() for spec in self.requests
        ]
        self._headers = [
            {**dict(spec.headers), **({"content-type": "application/json"} if body else {})}
            for spec, body in zip(self.requests, self._bodies, strict=True)
        ]
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._aiohttp: Any = None

    async def __aenter__(self) -> OpenLoop:
        aiohttp = self._aiohttp = import_aiohttp()
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        if self._session is not None:
            await self._session.close()

    def _pick(self) -> int:
        return min(
            bisect.bisect_left(self._cumulative, self._choose.random()), len(self.requests) - 1
        )

    async def run(self, windows: Sequence[Window], origin: float | None = None) -> None:
        """Send on the schedule of ``windows`` (back to back), starting at ``origin`` (now)."""
        loop = asyncio.get_running_loop()
        self.origin = loop.time() if origin is None else origin
        self.phases = [[Stats() for _ in self.requests] for _ in windows]
        for index, window in enumerate(windows):
            arrivals = Arrivals(
                self.arrivals, rate=window.rate, seed=self.seed + index, start=window.start
            )
            first = window.start
            intended = first if self.arrivals == "constant" else arrivals.next_after(first)
            burst = 0
            while intended < window.end:
                now = loop.time() - self.origin
                if intended > now:
                    burst = 0
                    await asyncio.sleep(intended - now)
                    now = loop.time() - self.origin
                else:
                    burst += 1
                    if burst % _YIELD_EVERY == 0:
                        await asyncio.sleep(0)
                        now = loop.time() - self.origin
                self._dispatch(index, intended, now)
                intended = arrivals.next_after(intended)

    def _dispatch(self, phase: int, intended: float, now: float) -> None:
        choice = self._pick()
        stats = self.phases[phase][choice]
        second = self._second(choice, intended)
        stats.offered += 1
        second.offered += 1
        if self.in_flight >= self.max_in_flight:
            return
        stats.sent += 1
        second.sent += 1
        self.lag.record(max(0.0, now - intended))
        self.in_flight += 1
        task = asyncio.create_task(self._send(choice, stats, second, intended))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _second(self, choice: int, intended: float) -> Second:
        key = (choice, int(intended))
        found = self.seconds.get(key)
        if found is None:
            found = self.seconds[key] = Second()
        return found

    async def _send(self, choice: int, stats: Stats, second: Second, intended: float) -> None:
        spec = self.requests[choice]
        assert self._session is not None
        loop = asyncio.get_running_loop()
        outcome = ERROR
        try:
            async with self._session.request(
                spec.method,
                self.base_url + spec.path,
                data=self._bodies[choice],
                headers=self._headers[choice],
            ) as response:
                await response.read()
                outcome = str(response.status)
        except TimeoutError:
            outcome = TIMEOUT
        except (self._aiohttp.ClientError, OSError, ValueError):
            outcome = ERROR
        finally:
            self.in_flight -= 1
        seconds = loop.time() - self.origin - intended
        stats.responses[outcome] += 1
        stats.latency.record(seconds)
        second.responses[outcome] += 1
        if second.latency is not None:
            second.latency.record(seconds)
        if outcome.startswith("2"):
            stats.ok.record(seconds)

    async def drain(self) -> None:
        """Wait for the requests still in flight (each ends by its timeout)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.timeout + 5)

    def close_seconds(self, before: float) -> None:
        """Sum up the seconds before ``before`` (after the origin) and drop their histograms.

        Only seconds whose every request has ended are safe to close: pass
        ``now - timeout - 1``.
        """
        for (_, at), second in self.seconds.items():
            if at + 1 <= before:
                second.close()

    def progress(self, phase: int) -> Iterator[Stats]:
        """The stats of ``phase`` so far, per request of the mix."""
        if 0 <= phase < len(self.phases):
            yield from self.phases[phase]
