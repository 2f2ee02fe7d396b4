"""Instructions per request under callgrind: a noise-free companion to overhead.py.

Wall-clock and CPU-time benchmarks on a shared 2-core machine move by tens of
percent between runs. ``valgrind --tool=callgrind`` counts instructions instead,
which repeat exactly for the same code and input whatever else the machine is
doing. For each arm this drives ``GET /items/42`` in-process (one task per
request, as in ``overhead.py``) twice, with ``SMALL`` and ``LARGE`` requests
after the same warm-up, and reports ``(large - small) / (LARGE - SMALL)``:
start-up and import cost cancel out. The children run with ``PYTHONHASHSEED=0``:
with salted string hashes, the same child's count moved by ~1.2k
instructions per request from run to run; fixed, by under 30.

Instructions are not time: code that allocates and touches new memory costs
more per instruction than a tight loop. Read this next to ``overhead.py``'s
CPU times, not instead of them.

    .venv/bin/python benchmarks/instructions.py            # ~3 minutes (4 arms)
    .venv/bin/python benchmarks/instructions.py --arms bare tailguard
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SMALL, LARGE, WARMUP = 200, 1200, 200
DEFAULT_ARMS = ("bare", "passthrough", "deadline-floor", "tailguard")


TIME_DILATION = 100
"""How much longer tailguard's periodic timers are made in the children.

Under callgrind the program runs about 50 times slower, so a timer fires about
50 times more often per request than it does natively: the sweeper's 20 ms
grace would promote requests (a deadline timer and a disconnect watcher each)
that natively finish in 50 µs, and the loop monitor would refresh the gauges
every hundred requests instead of every few thousand. Stretching both keeps
the mix of work per request what it is at native speed.
"""


def _undo_time_dilation() -> None:
    from tailguard.middleware.sweeper import Sweeper
    from tailguard.telemetry.loop import LoopMonitor

    sweeper_init, monitor_init = Sweeper.__init__, LoopMonitor.__init__

    def sweeper(self: Sweeper, loop: asyncio.AbstractEventLoop, grace: float) -> None:
        sweeper_init(self, loop, grace * TIME_DILATION)

    def monitor(self: LoopMonitor, *, interval: float = 0.25, **kwargs: Any) -> None:
        monitor_init(self, interval=interval * TIME_DILATION, **kwargs)

    Sweeper.__init__ = sweeper  # type: ignore[method-assign]
    LoopMonitor.__init__ = monitor  # type: ignore[method-assign]


def drive(arm: str, requests: int) -> None:
    """Child process body: build the arm and serve ``WARMUP + requests`` requests."""
    sys.path.insert(0, str(HERE))
    from _arms import ARMS, TARGET_PATH
    from overhead import _discard, _Receive, http_scope

    _undo_time_dilation()
    random.seed(7)  # the same trace ids, so the same requests sampled, in every run
    app = ARMS[arm]()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        scope = http_scope(TARGET_PATH)
        for _ in range(WARMUP + requests):
            await loop.create_task(app(dict(scope), _Receive(), _discard))

    asyncio.run(main())


def count(arm: str, requests: int) -> int:
    """Instructions callgrind collected for one child run."""
    run = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--child",
            arm,
            str(requests),
        ],
        capture_output=True,
        text=True,
        check=True,
        # String hashing is salted per process: dict and set layouts, and with them a
        # few thousand instructions per request, would change from run to run.
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    found = re.search(r"Collected : (\d+)", run.stderr)
    if found is None:
        raise RuntimeError(f"no callgrind total for {arm}:\n{run.stderr[-2000:]}")
    return int(found.group(1))


def per_request(arms: list[str]) -> dict[str, float]:
    """Instructions per request for each arm; two callgrind runs at a time (counts do not mind)."""
    runs = [(arm, size) for arm in arms for size in (SMALL, LARGE)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        totals = dict(zip(runs, pool.map(lambda run: count(*run), runs), strict=True))
    return {arm: (totals[arm, LARGE] - totals[arm, SMALL]) / (LARGE - SMALL) for arm in arms}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS))
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument(
        "--section",
        default="instructions",
        help="name of the RESULTS.md section to write, e.g. 'instructions (CPython 3.13)' "
        "when run with another interpreter's venv",
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        drive(args.child[0], int(args.child[1]))
        return 0
    sys.path.insert(0, str(HERE))
    from _arms import ARMS
    from overhead import machine_info, source_digest, write_section

    for arm in args.arms:
        ARMS[arm]()  # import what the children measure, so the digest names that code
    results = per_request(args.arms)
    bare = results.get("bare")
    lines = [
        f"## {args.section}",
        "",
        f"Instructions per `GET /items/42` under callgrind ({LARGE} vs {SMALL} requests after "
        f"{WARMUP} warm-up, one task per request; deterministic; tailguard's periodic timers "
        f"stretched {TIME_DILATION}x to undo valgrind's slowdown, see the docstring). "
        f"tailguard source {source_digest()}.",
        "",
        "| arm | instructions/request | over bare | over bare (%) |",
        "|---|---:|---:|---:|",
    ]
    for arm, value in results.items():
        extra = "" if bare is None else f"{value - bare:+,.0f}"
        share = "" if bare is None else f"{(value - bare) / bare:+.1%}"
        lines.append(f"| `{arm}` | {value:,.0f} | {extra} | {share} |")
    lines += telemetry_view(results, otel_us(args.output))
    lines += ["", "| machine | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in machine_info()]
    section = "\n".join(lines)
    print(section)
    write_section(args.output, args.section, section)
    return 0


def otel_us(results_md: Path) -> float | None:
    """OTel's ASGI middleware's overhead (receive/send spans off), µs per request, as the
    ``## overhead`` section of ``results_md`` last measured it; ``None`` if it has none."""
    try:
        text = results_md.read_text(encoding="utf-8")
    except OSError:
        return None
    found = re.search(r"^\| `otel-asgi-noreceive-send` \| [^|]+\| \+([0-9.]+) \|", text, re.M)
    return float(found.group(1)) if found else None


def telemetry_view(results: dict[str, float], otel_timed_us: float | None = None) -> list[str]:
    """The telemetry goals (issues 4 and 18) read in instructions instead of time.

    ``otel_timed_us``: OTel's overhead in time in the same RESULTS (see :func:`otel_us`),
    to turn instructions into µs at OTel's own rate; without it, none are given.
    """
    needed = (
        "bare",
        "tailguard-metrics",
        "tailguard-full",
        "tailguard-full-1pct",
        "otel-asgi-noreceive-send",
        "otel-asgi+starlette-exporter",
    )
    if not all(arm in results for arm in needed):
        return []
    over = {arm: results[arm] - results["bare"] for arm in needed}
    otel = over["otel-asgi-noreceive-send"]
    sampled = over["tailguard-full-1pct"] - over["tailguard-metrics"]
    if otel_timed_us:
        # Convert with OTel's own rate: the arms are similar Python code.
        in_time = (
            f" (about {sampled / (otel / otel_timed_us):+.1f} µs at OTel's own instructions "
            f"per µs, taking OTel at +{otel_timed_us:g} µs from `## overhead`)"
        )
    else:
        in_time = ""
    lines = [
        "",
        "The tracing goals (issue 18), read in instructions (the time goals are judged in "
        f"`## overhead`): the full stack with the lean server span costs "
        f"{over['tailguard-full'] / otel:.2f}x OTel's ASGI middleware alone with the same "
        f"spans (goal ≤ 0.4x) and "
        f"{over['tailguard-full'] / over['otel-asgi+starlette-exporter']:.2f}x OTel (default "
        f"spans) + starlette-exporter (goal ≤ 0.25x); at 1 % sampling it costs "
        f"{sampled:+,.0f} instructions over metrics only{in_time} (goal ≤ +5 µs).",
    ]
    if "sdk-span-floor" in results and "tailguard-full-untraced" in results:
        floor = results["sdk-span-floor"] - results["bare"]
        untraced = results["tailguard-full-untraced"] - results["bare"]
        lines[-1] += (
            f" One SDK span with the same 13 attributes and nothing else (`sdk-span-floor`) "
            f"costs {floor:+,.0f} ({floor / otel:.2f}x OTel); with the untraced full stack "
            f"({untraced:+,.0f}) that is {(floor + untraced) / otel:.2f}x before tailguard does "
            "anything for the span."
        )
    if "tailguard-full-otel" in results:
        lines[-1] += (
            f' With OTel\'s middleware making the span (`server_spans="otel"`) the full '
            f"stack costs {(results['tailguard-full-otel'] - results['bare']) / otel:.2f}x "
            "OTel alone."
        )
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
