"""What chaos costs when it is not injecting, and how faithfully it injects latency.

Goals (from the issue): with chaos disabled, and with an unrelated experiment
running, a dependency call costs at most 1 µs more than a bare dependency
call; injected latency matches its distribution, p50 error at most 1 ms on an
idle event loop.

1. Overhead. Three dependencies with the same bulkhead: ``bare`` (no chaos
   engine), ``disabled`` (``Chaos(enabled=False)``, what every service runs)
   and ``unrelated`` (an enabled engine running an experiment whose faults
   target another dependency, ``payments*``, and a route). Each is called
   through ``async with`` and through ``dep.call`` on a no-op coroutine
   function, in one event loop. Every round runs a batch of calls per (seam,
   arm), the arm order rotating by one per round; the clock is this thread's
   CPU time (``time.thread_time_ns``), so time other processes hold the CPU is
   left out. Overhead is the median over rounds of (arm - the same round's
   ``bare``). The cost of the check itself, ``Chaos.plan`` on an untargeted
   dependency, is also timed alone (``timeit``, best of 7), a noise-free
   floor for the end-to-end figure.
   A fourth arm, ``store``, is an enabled engine that follows a fleet store
   (SQLite) with nothing running: the request path must not notice the store.
2. Accuracy. An experiment injects latency from a distribution into every
   call (``rate=1``); calls run one after another on an otherwise idle loop,
   each inside an OpenTelemetry span, so the injection's span event gives the
   delay that was drawn. Per call, error = elapsed wall time - drawn delay
   (what the timer adds); and the measured p50 is compared with the
   distribution's own p50 (what the draws plus the timer give). Both must be
   within 1 ms.

3. Fleet halt. Real uvicorn on 127.0.0.1 serving ``tests/chaos/fleet_app.py``:
   ``--workers 3`` over a SQLite store, and two separate uvicorn processes
   over a redis-server of the benchmark's own (skipped if ``redis-server`` is
   missing). Per trial: start an experiment through one worker's control API
   (``Raise`` on every call), wait until every worker injects, ``halt``
   through the control API while client threads call every worker on fresh
   connections, and take the time from sending the halt to receiving the
   last injected answer. Goal: the slowest of the trials at most 1 s.

Results go to ``benchmarks/RESULTS.md`` under ``## chaos`` (other sections
are kept). ``--quick`` runs a smoke version and only prints unless
``--output`` is given. About a minute; exits 1 when a goal fails.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from overhead import PEERS, load_average, log, machine_info, rotated, source_digest, write_section
from tailguard.chaos import (
    Chaos,
    Distribution,
    Experiment,
    Fixed,
    Latency,
    LogNormal,
    Respond,
    Uniform,
)
from tailguard.dependency import Dependency

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests.chaos.fleet_support: the fleet the tests run

from tests.chaos.fleet_support import (  # noqa: E402
    EXPERIMENT,
    RedisServer,
    Traffic,
    fleet,
    halt_to_last_injection,
    injected_by,
)

SECTION = "chaos"
OVERHEAD_GOAL_NS = 1_000
ACCURACY_GOAL = 0.001
HALT_GOAL = 1.0
ARMS = ("bare", "disabled", "unrelated", "store")
SEAMS = ("async with", "dep.call")


@dataclass(frozen=True)
class Settings:
    rounds: int
    calls: int
    warmup: int
    accuracy_calls: int
    halt_trials: int


DEFAULT = Settings(rounds=31, calls=4000, warmup=2000, accuracy_calls=600, halt_trials=20)
QUICK = Settings(rounds=5, calls=1000, warmup=500, accuracy_calls=60, halt_trials=3)


# --------------------------------------------------------------------------- overhead


async def noop() -> None:
    pass


def make_arms(store: str) -> tuple[dict[str, Dependency], Chaos]:
    engine = Chaos(enabled=True, seed=1)
    engine.start(
        Experiment(
            "unrelated",
            faults=[
                Latency("payments*", delay=0.1),
                Respond("GET /admin/*", status=503),
            ],
            ttl=3600,
        ),
        actor="benchmark",
    )
    arms = {
        "bare": Dependency("inventory", max_concurrency=8),
        "disabled": Dependency("inventory", max_concurrency=8, chaos=Chaos(enabled=False)),
        "unrelated": Dependency("inventory", max_concurrency=8, chaos=engine),
        "store": Dependency("inventory", max_concurrency=8, chaos=Chaos(enabled=True, store=store)),
    }
    return arms, engine


async def with_block(dep: Dependency, calls: int) -> None:
    for _ in range(calls):
        async with dep:
            pass


async def with_call(dep: Dependency, calls: int) -> None:
    call = dep.call
    for _ in range(calls):
        await call(noop)


RUNNERS: dict[str, Callable[[Dependency, int], Awaitable[None]]] = {
    "async with": with_block,
    "dep.call": with_call,
}


@dataclass
class Overhead:
    per_call: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    """ns per call, per (seam, arm), one value per round."""
    check_ns: float = 0.0
    """``Chaos.plan`` on an untargeted dependency, alone."""


async def measure_overhead(settings: Settings, store: str) -> Overhead:
    arms, engine = make_arms(store)
    result = Overhead({(seam, arm): [] for seam in SEAMS for arm in ARMS})
    try:
        for seam in SEAMS:
            for arm in ARMS:
                await RUNNERS[seam](arms[arm], settings.warmup)
        for r in range(settings.rounds):
            for seam in SEAMS:
                for arm in rotated(ARMS, r):
                    gc.collect()
                    began = time.thread_time_ns()
                    await RUNNERS[seam](arms[arm], settings.calls)
                    spent = time.thread_time_ns() - began
                    result.per_call[(seam, arm)].append(spent / settings.calls)
        plan = engine.plan
        number = 200_000
        best = min(timeit.repeat(lambda: plan("inventory"), number=number, repeat=7))
        empty = min(timeit.repeat(lambda: None, number=number, repeat=7))
        result.check_ns = (best - empty) / number * 1e9
    finally:
        engine.halt(actor="benchmark")
        for dep in arms.values():
            if dep.chaos is not None:
                dep.chaos.close()
    return result


def paired_overhead(result: Overhead, seam: str, arm: str) -> float:
    base = result.per_call[(seam, "bare")]
    return statistics.median(a - b for a, b in zip(result.per_call[(seam, arm)], base, strict=True))


# --------------------------------------------------------------------------- accuracy


@dataclass
class Accuracy:
    name: str
    distribution: Distribution
    elapsed: list[float] = field(default_factory=list)
    drawn: list[float] = field(default_factory=list)

    @property
    def errors(self) -> list[float]:
        return [e - d for e, d in zip(self.elapsed, self.drawn, strict=True)]

    @property
    def p50_error(self) -> float:
        return statistics.median(self.errors)

    @property
    def measured_p50(self) -> float:
        return statistics.median(self.elapsed)

    @property
    def distribution_error(self) -> float:
        return self.measured_p50 - self.distribution.quantile(0.5)


SHAPES: tuple[tuple[str, Distribution], ...] = (
    ("Fixed(10 ms)", Fixed(0.010)),
    ("Uniform(2-8 ms)", Uniform(0.002, 0.008)),
    ("LogNormal(p50=5 ms, p99=20 ms)", LogNormal(p50=0.005, p99=0.020)),
)


async def measure_accuracy(calls: int) -> list[Accuracy]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("benchmark")
    results = []
    for name, shape in SHAPES:
        engine = Chaos(enabled=True, seed=3)
        dep = Dependency("inventory", max_concurrency=1, chaos=engine)
        engine.start(
            Experiment("accuracy", faults=[Latency("inventory", delay=shape)], ttl=600),
            actor="benchmark",
        )
        accuracy = Accuracy(name, shape)
        try:
            for _ in range(calls):
                exporter.clear()
                with tracer.start_as_current_span("call"):
                    began = time.perf_counter()
                    async with dep:
                        pass
                    accuracy.elapsed.append(time.perf_counter() - began)
                [span] = exporter.get_finished_spans()
                [event] = span.events
                assert event.attributes is not None
                delay = event.attributes["tailguard.chaos.delay"]
                assert isinstance(delay, float)
                accuracy.drawn.append(delay)
        finally:
            engine.halt(actor="benchmark")
        results.append(accuracy)
    provider.shutdown()
    return results


# --------------------------------------------------------------------------- fleet halt


@dataclass
class Halt:
    store: str
    layout: str
    reaches: list[float] = field(default_factory=list)
    """Seconds from sending the halt to the last injected answer, per trial."""


def measure_halt(trials: int) -> list[Halt]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sqlite = Halt("SQLite (WAL)", "uvicorn --workers 3")
        with fleet(root, f"sqlite://{root / 'chaos.db'}") as running:
            server = running.spawn(workers=3)
            _trials(sqlite, trials, running.control(server), [server.url], 3)
        results.append(sqlite)
        if shutil.which("redis-server") is None:
            log("redis-server is missing: the Redis halt is not measured")
            return results
        directory = root / "redis"
        directory.mkdir()
        redis = RedisServer(directory)
        redis.start()
        try:
            measured = Halt("Redis", "2 uvicorn processes")
            with fleet(root, redis.url) as running:
                first, second = running.spawn(), running.spawn()
                _trials(measured, trials, running.control(second), [first.url, second.url], 2)
            results.append(measured)
        finally:
            redis.kill()
    return results


def _trials(halt: Halt, trials: int, control: Any, urls: list[str], workers: int) -> None:
    log(f"fleet halt: {halt.store}, {halt.layout}, {trials} trials")
    with control, Traffic(urls, threads=6) as traffic:
        answers = traffic.wait_for(lambda a: len({x.pid for x in a}) >= workers, 0)
        pids = {answer.pid for answer in answers}
        for _ in range(trials):
            started = time.monotonic()
            assert control.post("/experiments", json=EXPERIMENT).status_code == 201
            traffic.wait_for(lambda got: injected_by(got) >= pids, started)
            halt.reaches.append(halt_to_last_injection(traffic, control, pids, settle=1.5))


# --------------------------------------------------------------------------- report


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def render(
    settings: Settings,
    mode: str,
    seconds: float,
    overhead: Overhead,
    accuracy: list[Accuracy],
    halts: list[Halt],
    load_before: str,
    changed: bool,
) -> tuple[str, bool]:
    worst_overhead = max(
        paired_overhead(overhead, seam, arm) for seam in SEAMS for arm in ARMS if arm != "bare"
    )
    slowest = max((max(h.reaches) for h in halts), default=0.0)
    ok_halt = slowest <= HALT_GOAL
    worst_p50 = max(abs(a.p50_error) for a in accuracy)
    worst_distribution = max(abs(a.distribution_error) for a in accuracy)
    ok_overhead = worst_overhead <= OVERHEAD_GOAL_NS
    ok_accuracy = worst_p50 <= ACCURACY_GOAL and worst_distribution <= ACCURACY_GOAL
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## {SECTION}",
        "",
        f"Recorded {stamp} by `benchmarks/chaos.py` ({mode} run, {seconds:.0f} s); method in "
        "that file's docstring. Load average before the run: " + load_before + ".",
        "",
    ]
    if changed:
        lines += [
            "Warning: tailguard's source changed during the run; run again on a quiet checkout.",
            "",
        ]
    lines += [
        "| goal | target | result |",
        "|---|---|---|",
        f"| overhead per dependency call, chaos disabled, an unrelated experiment running, "
        f"or a fleet store followed with nothing running "
        f"| ≤ 1 µs | {_verdict(ok_overhead)} (worst {worst_overhead:+.0f} ns) |",
        f"| injected latency, p50 error on an idle loop | ≤ 1 ms | {_verdict(ok_accuracy)} "
        f"(timer {worst_p50 * 1e3:.3f} ms, vs distribution {worst_distribution * 1e3:.3f} ms) |",
        f"| fleet halt: from `halt` to the last injection in any worker, slowest trial "
        f"| ≤ 1 s | {_verdict(ok_halt)} (slowest {slowest * 1e3:.0f} ms) |",
        "",
        f"Overhead: {settings.rounds} rounds x {settings.calls} calls per (seam, arm), after "
        f"{settings.warmup} warm-up calls; CPU time of the calling thread; medians over rounds "
        "(min-max in brackets); overhead = median of per-round differences with `bare`.",
        "",
        "| seam | arm | ns/call | overhead vs bare (ns) |",
        "|---|---|---:|---:|",
    ]
    for seam in SEAMS:
        for arm in ARMS:
            values = overhead.per_call[(seam, arm)]
            diff = "0" if arm == "bare" else f"{paired_overhead(overhead, seam, arm):+.0f}"
            lines.append(
                f"| `{seam}` | `{arm}` | {statistics.median(values):,.0f} "
                f"({min(values):,.0f}-{max(values):,.0f}) | {diff} |"
            )
    lines += [
        "",
        f"The check alone: `Chaos.plan()` on a dependency no running fault targets costs "
        f"{overhead.check_ns:.0f} ns (timeit, best of 7, loop overhead subtracted); with chaos "
        "disabled the seam reads one attribute (`engine.armed`) and never calls it.",
        "",
        f"Accuracy: {settings.accuracy_calls} calls per distribution, one after another on an "
        "idle loop, `async with` seam, rate 1. Timer error = elapsed - the drawn delay (from the "
        "injection's span event); distribution error = measured p50 - the distribution's p50.",
        "",
        "| distribution | p50 | measured p50 | timer error p50 | timer error p99 "
        "| vs distribution p50 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for a in accuracy:
        errors = sorted(a.errors)
        p99 = errors[max(0, round(0.99 * len(errors)) - 1)]
        lines.append(
            f"| {a.name} | {a.distribution.quantile(0.5) * 1e3:.3f} ms "
            f"| {a.measured_p50 * 1e3:.3f} ms | {a.p50_error * 1e3:+.3f} ms "
            f"| {p99 * 1e3:+.3f} ms | {a.distribution_error * 1e3:+.3f} ms |"
        )
    lines += [
        "",
        f"Fleet halt: {settings.halt_trials} trials per store; the halt goes through one "
        "worker's control API while 6 client threads call every worker on fresh connections; "
        "reach = time from sending the halt to receiving the last injected answer (an upper "
        "bound). Followers poll SQLite every 50 ms; Redis wakes them by pub/sub.",
        "",
        "| store | fleet | trials | median | slowest |",
        "|---|---|---:|---:|---:|",
    ]
    for halt in halts:
        lines.append(
            f"| {halt.store} | {halt.layout} | {len(halt.reaches)} "
            f"| {statistics.median(halt.reaches) * 1e3:.0f} ms | {max(halt.reaches) * 1e3:.0f} ms |"
        )
    skip = {*PEERS, "wrk", "uvicorn"}
    lines += [
        "",
        f"Load average at the end of the run: {load_average()}.",
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in machine_info() if key not in skip),
    ]
    return "\n".join(lines) + "\n", ok_overhead and ok_accuracy and ok_halt


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short smoke run; prints only")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"markdown file whose '## {SECTION}' section is replaced "
        "(default: benchmarks/RESULTS.md; with --quick, only printed unless given)",
    )
    return parser.parse_args(argv)


async def run(settings: Settings, store: str) -> tuple[Overhead, list[Accuracy]]:
    log("overhead: bare / disabled / unrelated / store, interleaved")
    overhead = await measure_overhead(settings, store)
    log("accuracy: injected latency against its distribution")
    accuracy = await measure_accuracy(settings.accuracy_calls)
    return overhead, accuracy


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = QUICK if args.quick else DEFAULT
    load_before = load_average()
    began = time.monotonic()
    digest = source_digest()
    with tempfile.TemporaryDirectory() as tmp:
        overhead, accuracy = asyncio.run(run(settings, f"sqlite://{tmp}/chaos.db"))
    halts = measure_halt(settings.halt_trials)
    changed = source_digest() != digest
    section, ok = render(
        settings,
        "quick" if args.quick else "full",
        time.monotonic() - began,
        overhead,
        accuracy,
        halts,
        load_before,
        changed,
    )
    print(section)
    output: Path | None = args.output
    if output is None and not args.quick:
        output = HERE / "RESULTS.md"
    if output is not None:
        write_section(output, SECTION, section)
        log(f"wrote the '## {SECTION}' section of {output}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
