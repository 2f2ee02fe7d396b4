"""What a Prometheus scrape costs a tailguard service, before and after issue 13, over HTTP.

Issue 13 (item 11) measured 12-19 ms per ``/metrics`` scrape on a real app,
and 62 scrapes a second took the service from 100 to 9.5 requests/s: the
exposition was rendered on the event loop, one per scrape. The fix renders
it in a thread, shares one exposition between the scrapes that arrive while
it is rendered, and offers ``install(metrics_port=...)``.

Arms, each a fresh uvicorn process (``_scrape_app.py``: 300 routes, tailguard
installed with its defaults, no tracing), run in the same session:

- ``before``: tailguard at ``--before`` (default: the revision this branch
  started from), exported with ``git archive`` and put first on the server's
  ``PYTHONPATH``; ``/metrics`` on the app's port;
- ``after``: this checkout's tailguard, ``/metrics`` on the app's port;
- ``after-port``: this checkout, ``install(metrics_path=None, metrics_port=0)``.

Each server is warmed with one request to each of ``--routes`` routes (25 by
default: an exposition of about 2,000 samples, what a service of a few
hundred routes exposes once a few dozen are used). Then three phases:

1. **scrape cost**: ``SCRAPES`` scrapes on one connection, ``SCRAPE_GAP``
   apart (lone scrapes, as a scraper's are), nothing else running; the median
   latency, and the server's CPU time per scrape (``/proc``; it includes the
   idle server's own ticks during the gaps, well under a millisecond a scrape).
2. **load alone**: open-loop Poisson load (``_loadgen.py``) on ``GET /work``
   (2 ms of CPU on the loop, then 2 ms of ``asyncio.sleep``) at ``RATE``
   requests/s, about half a core: goodput (200s answered within ``SLO`` of
   their intended send time, per second), p50 and p99 latency.
3. **load + heavy scraping**: the same load (same seed) while ``SCRAPERS``
   clients scrape back to back, each on its own keep-alive connection, as fast
   as they are answered: goodput and latency of ``/work`` again, and the
   scrapes answered per second with their median latency.

Arms run round-robin over ``--rounds`` rounds (3) in a rotating order;
results pool the rounds (medians over rounds for goodput, scrapes/s and CPU;
percentiles over every request). The load generator runs in this process
(one event loop, shared with the scrapers).

Results go to ``benchmarks/RESULTS.md`` under ``## scrape`` with the machine
and versions (the overhead benchmark's helpers); ``--quick`` (1 round of short
phases) only prints unless ``--output`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from _loadgen import Stream, run_load
from _scrape_app import ROUTES, WORK_CPU, WORK_WAIT
from overhead import (
    PEERS,
    _read_line,
    _stop,
    _terminate,
    cpu_seconds,
    load_average,
    log,
    machine_info,
    rotated,
    source_digest,
    write_section,
)
from overload import percentile

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SECTION = "scrape"
ARMS = ("before", "after", "after-port")
DEFAULT_BEFORE = "c793a8d"
"""The revision issue 13's branch started from: /metrics rendered on the loop."""
RATE = 200.0
"""Requests/s offered to ``GET /work``."""
SCRAPERS = 8
"""Clients scraping back to back in phase 3."""
SCRAPES = 20
"""Sequential scrapes in phase 1."""
SCRAPE_GAP = 0.25
"""Seconds between phase 1's scrapes: each is a lone scrape, as a scraper's every 15 s is."""
CLIENT_TIMEOUT = 10.0
SLO = 0.250
"""Goodput counts ``GET /work`` answered 200 within this many seconds of its intended send."""


@dataclass(frozen=True)
class Settings:
    rounds: int
    warmup: float
    seconds: float


DEFAULT = Settings(rounds=3, warmup=1.0, seconds=6.0)
QUICK = Settings(rounds=1, warmup=0.5, seconds=2.0)


@dataclass
class Tally:
    """One arm, pooled over rounds."""

    scrape_latency: list[float] = field(default_factory=list)
    scrape_cpu: list[float] = field(default_factory=list)
    """Server CPU seconds per scrape, one value per round."""
    scrape_bytes: int = 0
    alone_goodput: list[float] = field(default_factory=list)
    alone_latency: list[float] = field(default_factory=list)
    busy_goodput: list[float] = field(default_factory=list)
    busy_latency: list[float] = field(default_factory=list)
    busy_failures: int = 0
    scrapes_per_second: list[float] = field(default_factory=list)
    busy_scrape_latency: list[float] = field(default_factory=list)
    tailguard: str = ""


@dataclass
class Server:
    process: subprocess.Popen[str]
    port: int
    metrics_port: int
    http: str
    tailguard: str


def export_revision(revision: str, into: Path) -> Path:
    """``src/tailguard`` of ``revision`` under ``into``; the directory for ``PYTHONPATH``."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", revision, "src/tailguard"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(
        ["tar", "-x", "-C", str(into), "--strip-components=1"], input=archive, check=True
    )
    return into


@contextlib.contextmanager
def server(arm: str, pythonpath: str) -> Iterator[Server]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([pythonpath, str(HERE)])}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    process = subprocess.Popen(
        [sys.executable, str(HERE / "_scrape_app.py"), arm],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=HERE,
        env=env,
    )
    try:
        line = _read_line(process, 60.0)
        found = re.match(r"PORT (\d+) METRICS (\d+) HTTP (\S+) LOOP \S+ TAILGUARD (\S+)", line)
        if found is None:
            raise RuntimeError(f"{arm} server did not report its ports: {line!r}")
        yield Server(process, int(found[1]), int(found[2]), found[3], found[4])
    finally:
        _stop(process)


async def _get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
) -> tuple[int, bytes]:
    writer.write(f"GET {path} HTTP/1.1\r\nhost: bench\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])  # type: ignore[index]
    return status, await reader.readexactly(length)


async def scrape_cost(port: int, count: int) -> tuple[list[float], int]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
    latencies = []
    size = 0
    try:
        for _ in range(count):
            await asyncio.sleep(SCRAPE_GAP)
            started = time.perf_counter()
            status, body = await _get(reader, writer, "/metrics")
            latencies.append(time.perf_counter() - started)
            assert status == 200, status
            size = len(body)
    finally:
        writer.close()
    return latencies, size


async def scraper(port: int, stop: asyncio.Event, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
    try:
        while not stop.is_set():
            started = time.perf_counter()
            status, _ = await _get(reader, writer, "/metrics")
            if status == 200:
                latencies.append(time.perf_counter() - started)
    finally:
        writer.close()


async def phases(running: Server, settings: Settings, seed: int, tally: Tally) -> None:
    pid = running.process.pid
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    await _get(reader, writer, f"/warm?routes={ROUTES_WARMED}")
    writer.close()
    # 1. scrape cost
    before = cpu_seconds(pid)
    latencies, size = await scrape_cost(running.metrics_port, SCRAPES)
    tally.scrape_cpu.append((cpu_seconds(pid) - before) / SCRAPES)
    tally.scrape_latency += latencies
    tally.scrape_bytes = size
    # 2. load alone
    stream = Stream("work", RATE, seed=seed)
    alone = await run_load(
        "127.0.0.1",
        running.port,
        "/work",
        (stream,),
        warmup=settings.warmup,
        seconds=settings.seconds,
        client_timeout=CLIENT_TIMEOUT,
        max_connections=500,
    )
    _add_load(alone, tally.alone_goodput, tally.alone_latency)
    # 3. load + heavy scraping
    stop = asyncio.Event()
    scraped: list[float] = []
    windows: dict[str, tuple[float, int]] = {}

    def on_window(name: str) -> None:
        windows[name] = (time.monotonic(), len(scraped))

    tasks = [
        asyncio.create_task(scraper(running.metrics_port, stop, scraped)) for _ in range(SCRAPERS)
    ]
    try:
        busy = await run_load(
            "127.0.0.1",
            running.port,
            "/work",
            (stream,),
            warmup=settings.warmup,
            seconds=settings.seconds,
            client_timeout=CLIENT_TIMEOUT,
            max_connections=500,
            on_window=on_window,
        )
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    tally.busy_failures += _add_load(busy, tally.busy_goodput, tally.busy_latency)
    (t0, n0), (t1, n1) = windows["start"], windows["end"]
    tally.scrapes_per_second.append((n1 - n0) / (t1 - t0))
    tally.busy_scrape_latency += scraped[n0:n1]


def _add_load(result: object, goodput: list[float], latency: list[float]) -> int:
    records = [r for r in result.records if r.intended >= result.warmup]  # type: ignore[attr-defined]
    ok = [r.latency for r in records if r.status == 200]
    good = sum(1 for value in ok if value <= SLO)
    goodput.append(good / result.seconds)  # type: ignore[attr-defined]
    latency += ok
    return len(records) - len(ok)


ROUTES_WARMED = 25


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.1f} ms"


def _median(values: Sequence[float]) -> float | None:
    return percentile(values, 50)


def render(tallies: dict[str, Tally], settings: Settings, mode: str, info: dict[str, str]) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    base = tallies.get("before")
    lines = [
        f"## {SECTION}",
        "",
        f"Recorded {now} by `benchmarks/scrape.py` ({mode} run, {info['elapsed']}); method in "
        f"that file's docstring. `before` is tailguard at `{info['before']}` (exported with "
        "`git archive`), `after` and `after-port` this checkout. "
        f"{ROUTES} routes, {ROUTES_WARMED} of them warmed; `GET /work` ({WORK_CPU * 1000:g} ms "
        f"CPU + {WORK_WAIT * 1000:g} ms wait) offered {RATE:.0f} req/s open-loop; "
        f"heavy scraping: {SCRAPERS} clients scraping back to back. "
        f"{settings.rounds} round(s) of {settings.warmup:g} s warm-up + {settings.seconds:g} s "
        f"per load phase, arms interleaved. Load average before the run: {info['load_before']}.",
        "",
        "| arm | scrape latency (alone, median) | server CPU per scrape | `/work` goodput, "
        "no scraping | `/work` p99, no scraping | `/work` goodput, heavy scraping | "
        "ratio to no scraping | `/work` p50 / p99, heavy scraping | failed | scrapes/s answered "
        "| scrape latency (heavy, median) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm, tally in tallies.items():
        alone = _median(tally.alone_goodput)
        busy = _median(tally.busy_goodput)
        ratio = f"{busy / alone:.2f}x" if alone and busy is not None else "n/a"
        lines.append(
            f"| `{arm}` | {_ms(_median(tally.scrape_latency))} | {_ms(_median(tally.scrape_cpu))} "
            f"| {alone or 0:.0f}/s | {_ms(percentile(tally.alone_latency, 99))} "
            f"| {busy or 0:.0f}/s | {ratio} "
            f"| {_ms(percentile(tally.busy_latency, 50))} / "
            f"{_ms(percentile(tally.busy_latency, 99))} | {tally.busy_failures} "
            f"| {_median(tally.scrapes_per_second) or 0:.0f} "
            f"| {_ms(_median(tally.busy_scrape_latency))} |"
        )
    lines.append("")
    if base is not None:
        size = base.scrape_bytes
        lines.append(f"Exposition size: {size / 1024:.0f} KiB (text format, no gzip).")
        lines.append("")
    lines += [
        f"Goodput: `GET /work` answered 200 within {SLO * 1000:.0f} ms, per second of the "
        "measured window (median over "
        "rounds); latencies from the intended send time, pooled over rounds. Scrapes/s: "
        "scrapes answered during the measured window of the heavy-scraping phase. Server CPU "
        "per scrape: the server process's CPU time over phase 1 (lone scrapes "
        f"{SCRAPE_GAP * 1000:.0f} ms apart) divided by its scrapes.",
        f"Servers: uvicorn, 1 worker, http={info['http']}, no access log. "
        f"Load average at the end of the run: {load_average()}.",
        "",
        "| machine | |",
        "|---|---|",
    ]
    skip = {*PEERS, "wrk"}
    lines += [f"| {key} | {value} |" for key, value in machine_info() if key not in skip]
    lines.append(f"| prometheus-client | {_dist('prometheus-client')} |")
    return "\n".join(lines) + "\n"


def _dist(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="one round of short phases")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--before", default=DEFAULT_BEFORE, help="revision of the before arm")
    parser.add_argument(
        "--arms", default=",".join(ARMS), help=f"comma-separated subset of {', '.join(ARMS)}"
    )
    parser.add_argument("--output", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = QUICK if args.quick else DEFAULT
    if args.rounds is not None:
        settings = Settings(args.rounds, settings.warmup, settings.seconds)
    signal.signal(signal.SIGTERM, _terminate)
    arms = [arm for arm in args.arms.split(",") if arm]
    unknown = set(arms) - set(ARMS)
    if unknown:
        log(f"unknown arms: {sorted(unknown)}")
        return 2
    began = time.monotonic()
    load_before = load_average()
    digest = source_digest()
    import tailguard

    after_path = str(Path(tailguard.__file__).resolve().parent.parent)
    tallies = {arm: Tally() for arm in arms}
    http = "?"
    with tempfile.TemporaryDirectory(prefix="tailguard-before-") as tmp:
        before_path = str(export_revision(args.before, Path(tmp))) if "before" in arms else ""
        for r in range(settings.rounds):
            for arm in rotated(arms, r):
                path = before_path if arm == "before" else after_path
                with server(arm, path) as running:
                    http = running.http
                    tallies[arm].tailguard = running.tailguard
                    asyncio.run(phases(running, settings, 1000 + r, tallies[arm]))
                t = tallies[arm]
                log(
                    f"round {r + 1}/{settings.rounds} {arm}: scrape "
                    f"{_ms(_median(t.scrape_latency))}, goodput alone "
                    f"{t.alone_goodput[-1]:.0f}/s, with scraping {t.busy_goodput[-1]:.0f}/s, "
                    f"{t.scrapes_per_second[-1]:.0f} scrapes/s"
                )
    info = {
        "elapsed": f"{time.monotonic() - began:.0f} s",
        "before": args.before,
        "load_before": load_before,
        "http": http,
    }
    section = render(tallies, settings, "quick" if args.quick else "full", info)
    if source_digest() != digest:
        section += "\n**Warning: tailguard's source changed during the run.**\n"
    cores = os.cpu_count() or 1
    busiest = max(float(load_before.split(" / ")[0]), float(load_average().split(" / ")[0]))
    if busiest > cores:
        section += (
            f"\n**Warning: load average {busiest:.1f} on {cores} cores: other processes "
            "competed for the CPU with the server, its render thread and the load generator; "
            "the heavy-scraping numbers are not reliable. Run again on a quiet machine.**\n"
        )
    print(section)
    output: Path | None = args.output
    if output is None and not args.quick:
        output = HERE / "RESULTS.md"
    if output is not None:
        write_section(output, SECTION, section)
        log(f"wrote the '## {SECTION}' section of {output}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; every server this run started has been stopped")
        sys.exit(130)
