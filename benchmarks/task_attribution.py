"""Task attribution: what tailguard's task factory adds to ``create_task`` + ``await``.

Arms, interleaved in one process: ``plain`` (no task factory), ``outside``
(tailguard's factory, no request current), ``unsampled`` (inside a request
whose server span is not recording: the case the goal is about, <= 1.5x
plain) and ``sampled`` (each task gets a span; for scale, not a goal).
Wall-clock medians and minimums per task, and, with ``--instructions``,
callgrind instruction counts (deterministic on a noisy machine).

    .venv/bin/python benchmarks/task_attribution.py                 # ~30 s
    .venv/bin/python benchmarks/task_attribution.py --instructions --arms plain unsampled  # ~2 min
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from overhead import load_average, machine_info, write_section

ARMS = ("plain", "outside", "unsampled", "sampled")
GOAL_RATIO = 1.5
"""Issue 4: task attribution costs ≤ 1.5x a plain create_task for an unsampled request."""
HERE = Path(__file__).resolve().parent


async def work() -> int:
    return 1


async def spawn(n: int) -> None:
    create = asyncio.create_task
    for _ in range(n):
        await create(work())


def enter(arm: str, loop: asyncio.AbstractEventLoop) -> object:
    """Set the loop and context up for ``arm``; returns what undoes it."""
    from tailguard import _context
    from tailguard.telemetry import tasks
    from tailguard.telemetry.tracing import use_tracer_provider

    loop.set_task_factory(None)
    if arm == "plain":
        return None
    tasks.ensure_task_factory(loop)
    if arm == "outside":
        return None
    owner = tasks.RequestTasks()
    if arm == "sampled":
        from opentelemetry.sdk.trace import TracerProvider

        provider = TracerProvider()  # no processor: span work without export
        use_tracer_provider(provider)
        owner.span = provider.get_tracer("bench").start_span("GET /bench")
    return _context.current.set(_context.Frame(None, owner))


def leave(token: object) -> None:
    from tailguard import _context

    if token is not None:
        _context.current.reset(token)  # type: ignore[arg-type]


async def timed(arms: list[str], n: int, rounds: int) -> dict[str, list[float]]:
    loop = asyncio.get_running_loop()
    results: dict[str, list[float]] = {arm: [] for arm in arms}
    for _ in range(rounds):
        for arm in arms:
            token = enter(arm, loop)
            try:
                started = time.perf_counter()
                await spawn(n)
                results[arm].append((time.perf_counter() - started) / n)
            finally:
                leave(token)
    loop.set_task_factory(None)
    return results


def child(arm: str, n: int) -> None:
    import gc

    gc.disable()  # collections at different moments would blur the instruction counts

    async def main() -> None:
        token = enter(arm, asyncio.get_running_loop())
        try:
            await spawn(200)  # warm-up
            await spawn(n)
        finally:
            leave(token)

    asyncio.run(main())


def instructions(arm: str, n: int) -> int:
    run = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, __file__, "--child", arm, str(n)],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "0"},
    )  # fmt: skip
    found = re.search(r"Collected : (\d+)", run.stderr)
    assert found is not None, run.stderr[-2000:]
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--instructions", action="store_true")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument(
        "--output", type=Path, default=HERE / "RESULTS.md", help="where the section is written"
    )
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return 0
    began = time.monotonic()
    results = asyncio.run(timed(args.arms, args.tasks, args.rounds))
    base_median = statistics.median(results["plain"]) if "plain" in results else None
    base_min = min(results["plain"]) if "plain" in results else None
    lines = [
        "## task attribution",
        "",
        f"Recorded {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC} by "
        f"`benchmarks/task_attribution.py` ({time.monotonic() - began:.0f} s for the timed "
        f"phase): `create_task` + `await` of a trivial coroutine, {args.tasks} tasks per "
        f"round, {args.rounds} interleaved rounds. Load average: {load_average()}.",
        "",
        "| arm | median µs/task | min µs/task | median ratio | min ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for arm, samples in results.items():
        med, low = statistics.median(samples), min(samples)
        ratio = f"{med / base_median:.2f}x" if base_median else ""
        low_ratio = f"{low / base_min:.2f}x" if base_min else ""
        lines.append(f"| `{arm}` | {med * 1e6:.2f} | {low * 1e6:.2f} | {ratio} | {low_ratio} |")
    verdict = None
    if args.instructions:
        small, large = 200, 1200
        per_task = {
            arm: (instructions(arm, large) - instructions(arm, small)) / (large - small)
            for arm in args.arms
        }
        plain = per_task.get("plain")
        lines += ["", "| arm | instructions/task (callgrind) | ratio |", "|---|---:|---:|"]
        for arm, value in per_task.items():
            ratio = f"{value / plain:.2f}x" if plain else ""
            lines.append(f"| `{arm}` | {value:,.0f} | {ratio} |")
        if plain and "unsampled" in per_task:
            verdict = per_task["unsampled"] / plain
    elif base_median and "unsampled" in results:
        verdict = statistics.median(results["unsampled"]) / base_median
    if verdict is not None:
        source = "callgrind instructions" if args.instructions else "median wall clock"
        result = "PASS" if verdict <= GOAL_RATIO else "FAIL"
        lines[2:2] = [
            "| goal | target | result |",
            "|---|---|---|",
            f"| task attribution, unsampled request | ≤ {GOAL_RATIO:g}x a plain `create_task` "
            f"| {result} ({verdict:.2f}x, {source}) |",
            "",
        ]
    lines += ["", "| machine | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in machine_info()]
    section = "\n".join(lines) + "\n"
    print(section)
    if args.output is not None:
        write_section(args.output, "task attribution", section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
