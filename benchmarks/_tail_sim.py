"""The tail benchmark's simulator: an asyncio loop on a virtual clock, and replicas that queue.

``VirtualLoop`` is an ordinary ``SelectorEventLoop`` whose clock only moves
when the loop would otherwise sleep: when nothing is ready, ``select(timeout)``
advances the clock by ``timeout`` (to the next timer) instead of waiting. So
``asyncio.sleep``, ``call_later`` and everything tailguard's helpers measure
with ``loop.time()`` run on simulated time, as fast as the CPU allows, and a
run is a pure function of its seed: no machine noise in the latencies. The
simulated code never does I/O (a real socket would break the illusion).

Fan-outs (:func:`run_fanout`) need no replicas: each leg sleeps its drawn
latency, so the share of slow fan-outs is the formula's to predict.

A :class:`Replica` serves ``slots`` requests at once and queues the rest
(FIFO, ``asyncio.Semaphore``); a request holds its slot for its service time.
Cancelling a request frees its slot (or its place in the queue) at once, as a
server that honours cancellation (gRPC, HTTP/2 RST_STREAM) would.
"""

from __future__ import annotations

import asyncio
import functools
import math
import random
import selectors
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

import tailguard
from tailguard import _context
from tailguard.telemetry.catalog import Catalog


class _SkippingSelector(selectors.SelectSelector):
    """``select(timeout)`` returns at once and moves the virtual clock forward by ``timeout``."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise RuntimeError("virtual loop: nothing ready and no timer: it would sleep forever")
        if timeout > 0:
            self.now += timeout
        return super().select(0)


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop on simulated time (see the module docstring)."""

    def __init__(self) -> None:
        self._skipping = _SkippingSelector()
        super().__init__(self._skipping)

    def time(self) -> float:
        return self._skipping.now


def run_virtual(main: Callable[[], Awaitable[Any]]) -> Any:
    """``asyncio.run(main())`` on a fresh :class:`VirtualLoop`."""
    loop = VirtualLoop()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main())
    finally:
        asyncio.set_event_loop(None)
        loop.close()


class _Request:
    """The request the simulated calls run in, as the tail helpers see it: it carries the catalog.

    The helpers record their metrics into the catalog of the request they run
    in (``tailguard._context.RequestView.catalog``); the simulation has no
    guard in front, so it stands in for the guard's per-request object.
    """

    method = "GET"
    route = "/simulated"
    tenant: str | None = None

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def header(self, name: str) -> str | None:
        return None

    def add(self, task: asyncio.Future[Any]) -> None:
        pass  # the simulation's tasks are the helpers' own: they cancel and await them


@contextmanager
def in_request(catalog: Catalog) -> Iterator[None]:
    """Run what starts inside (:func:`run_virtual`) as one request recording into ``catalog``."""
    token = _context.current.set(_context.Frame(None, _Request(catalog)))
    try:
        yield
    finally:
        _context.current.reset(token)


class Replica:
    """``slots`` requests in service at once; the rest wait in FIFO order."""

    def __init__(self, slots: int) -> None:
        self._slots = asyncio.Semaphore(slots)
        self.busy_time = 0.0

    async def serve(self, service: float) -> None:
        async with self._slots:
            loop = asyncio.get_running_loop()
            began = loop.time()
            try:
                await asyncio.sleep(service)
            finally:
                self.busy_time += loop.time() - began


@dataclass(frozen=True)
class Latency:
    """A service time: lognormal with median ``median`` and shape ``sigma``, plus stalls."""

    median: float = 0.005
    sigma: float = 0.5
    stall_rate: float = 0.02
    stall: float = 0.200

    def draw(self, rng: random.Random) -> float:
        body = rng.lognormvariate(math.log(self.median), self.sigma)
        return body + (self.stall if rng.random() < self.stall_rate else 0.0)

    def mean(self) -> float:
        return self.median * math.exp(self.sigma**2 / 2) + self.stall_rate * self.stall


@dataclass(frozen=True)
class Plan:
    """Everything random about one request, drawn in advance so every arm sees the same."""

    arrival: float
    replicas: tuple[int, ...]
    """The replica of attempt 0, 1, ...: all different."""
    services: tuple[float, ...]
    """The service time attempt 0, 1, ... would need."""


def plans(
    *,
    seed: int,
    requests: int,
    rate: float,
    replicas: int,
    attempts: int,
    latency: Callable[[int], Latency],
) -> list[Plan]:
    """Poisson arrivals at ``rate``; request ``i``'s service times come from ``latency(i)``."""
    rng = random.Random(seed)
    now = 0.0
    made = []
    for i in range(requests):
        now += rng.expovariate(rate)
        chosen = tuple(rng.sample(range(replicas), attempts))
        law = latency(i)
        made.append(Plan(now, chosen, tuple(law.draw(rng) for _ in range(attempts))))
    return made


async def replay(
    schedule: Sequence[Plan],
    replicas: Sequence[Replica],
    call: Callable[[Callable[[], Awaitable[None]]], Awaitable[None]],
) -> list[float]:
    """Send every planned request at its arrival time through ``call``; their latencies.

    ``call(attempt)`` is the arm: ``attempt()`` runs the request's next
    attempt (the first on its first replica, the next on the next, ...).
    """
    loop = asyncio.get_running_loop()
    latencies = [math.nan] * len(schedule)
    done = asyncio.Event()
    left = len(schedule)

    async def request(i: int, plan: Plan) -> None:
        nonlocal left
        next_attempt = 0

        async def attempt() -> None:
            nonlocal next_attempt
            j = next_attempt
            next_attempt += 1
            await replicas[plan.replicas[j]].serve(plan.services[j])

        began = loop.time()
        await call(attempt)
        latencies[i] = loop.time() - began
        left -= 1
        if left == 0:
            done.set()

    running = set()
    for i, plan in enumerate(schedule):
        wait = plan.arrival - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        task = loop.create_task(request(i, plan))
        running.add(task)
        task.add_done_callback(running.discard)
    await done.wait()
    return latencies


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-quantile (0 < q < 1) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass(frozen=True)
class FanoutRun:
    legs: int
    p: float
    fanouts: int
    slow: int
    """Fan-outs slower than the slow threshold (at least one stalled leg)."""
    judged: float = 0.0
    slow_paced: float = 0.0

    @property
    def observed(self) -> float:
        return self.slow / self.fanouts

    @property
    def predicted(self) -> float:
        return tailguard.amplification(self.p, self.legs)


def run_fanout(
    legs: int, fanouts: int, seed: int, draw: Callable[[random.Random], float]
) -> FanoutRun:
    """``fanouts`` fan-outs of ``legs`` legs, one after another; each leg sleeps ``draw(rng)``."""
    rng = random.Random(seed)
    catalog = Catalog(CollectorRegistry())
    slow = 0
    name = f"fanout-{legs}"

    async def main() -> None:
        nonlocal slow
        loop = asyncio.get_running_loop()
        for _ in range(fanouts):
            waits = [draw(rng) for _ in range(legs)]
            began = loop.time()
            await tailguard.fanout(
                required=[functools.partial(asyncio.sleep, w) for w in waits], name=name
            )
            if loop.time() - began > 0.100:
                slow += 1

    with in_request(catalog):
        run_virtual(main)
    value = catalog.registry.get_sample_value
    return FanoutRun(
        legs,
        0.01,
        fanouts,
        slow,
        value("tailguard_fanout_calls_total", {"site": name}) or 0.0,
        value("tailguard_fanout_slow_paced_total", {"site": name}) or 0.0,
    )


def stalled_leg(rng: random.Random) -> float:
    body = rng.lognormvariate(math.log(0.005), 0.5)
    return body + (0.200 if rng.random() < 0.01 else 0.0)


def continuous_leg(rng: random.Random) -> float:
    return rng.lognormvariate(math.log(0.005), 1.0)
