"""``tailguard gameday FILE``: serve or find the target, drive it, inject, check, always roll back.

:func:`run` plays a :class:`~tailguard.gameday.plan.Plan`: it starts the
target (:mod:`~tailguard.gameday.serve`), sends the open-loop load
(:mod:`~tailguard.gameday.load`) across all phases back to back while a
second task starts each phase's experiments at the phase's start and stops
them at its end, scrapes ``/metrics`` every second, and shows progress. At
the end, on a failure, on Ctrl-C and on SIGTERM it halts every experiment
through the control API, checks that none is left running, and stops a
served target. Then it checks the hypothesis per phase
(:mod:`~tailguard.gameday.hypothesis`) and writes ``report.json``,
``report.md`` and ``report.png`` (:mod:`~tailguard.gameday.plot`).

Exit status (:func:`exit_status`): 0 the hypothesis held in every phase, 1 it
broke, 2 the file or target was unusable or the run unreliable, 130 interrupted.

>>> exit_status({"verdict": "held", "unreliable": False, "error": None, "interrupted": None})
0
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

from tailguard.gameday.control import SERVICE_COUNTS, Control, ControlError, Service, scrape
from tailguard.gameday.hypothesis import evaluate, route_labels
from tailguard.gameday.load import Histogram, OpenLoop, Stats, Window, import_aiohttp
from tailguard.gameday.plan import ALL_ROUTES, Plan
from tailguard.gameday.report import check_entry, format_markdown, format_table, route_entry
from tailguard.gameday.serve import Served, TargetError, start_target, stop_target

__all__ = [
    "EXIT_BROKE",
    "EXIT_HELD",
    "EXIT_INTERRUPTED",
    "EXIT_UNUSABLE",
    "Stop",
    "exit_status",
    "run",
    "run_folder",
    "run_plan",
]

EXIT_HELD: Final = 0
EXIT_BROKE: Final = 1
EXIT_UNUSABLE: Final = 2
EXIT_INTERRUPTED: Final = 130
LEAD: Final = 0.2
"""Seconds between the first phase's experiments being asked for and the first request."""
PROGRESS_EVERY: Final = 2.0
"""Seconds between two plain progress lines (the live view refreshes faster)."""


@dataclass(slots=True)
class Stop:
    """Set by a signal handler: which signal asked the run to stop (the run is then cancelled)."""

    signal: str | None = None


@dataclass(slots=True)
class _State:
    plan: Plan
    started_at: float = field(default_factory=time.time)
    phase_times: list[tuple[float, float]] = field(default_factory=list)
    boundaries: list[Service | None] = field(default_factory=list)
    """What ``/metrics`` said at the start of each phase, and at the end."""
    per_second: list[tuple[float, Service]] = field(default_factory=list)
    """``(seconds after the origin, scrape)``, about once a second."""
    actions: list[str] = field(default_factory=list)
    known_routes: set[tuple[str, str]] = field(default_factory=set)
    error: str | None = None
    interrupted: str | None = None
    halted: int | None = None
    left_running: list[str] = field(default_factory=list)
    rollback_errors: list[str] = field(default_factory=list)
    target_status: int | None = None


def exit_status(report: dict[str, Any]) -> int:
    """The command's exit status for ``report`` (see the module's docstring)."""
    if report.get("interrupted"):
        return EXIT_INTERRUPTED
    if report.get("error") or report["unreliable"]:
        return EXIT_UNUSABLE
    return EXIT_HELD if report["verdict"] == "held" else EXIT_BROKE


async def run(
    plan: Plan,
    folder: Path,
    *,
    out: TextIO | None = None,
    live: bool | None = None,
    stop: Stop | None = None,
    picture: bool = True,
) -> dict[str, Any]:
    """Play ``plan``, write the report files into ``folder``; the report (``report.json``'s data).

    ``live`` chooses the rich progress view (default: when ``out`` is a
    terminal); ``stop`` is what a signal handler set before cancelling the
    run: a cancellation with ``stop.signal`` set is an interruption, rolled
    back and reported; any other cancellation is rolled back and re-raised.
    """
    stream = out if out is not None else sys.stdout
    folder.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before anything runs
    state = _State(plan)
    aiohttp = import_aiohttp()
    windows = _windows(plan)
    load = OpenLoop(
        "http://placeholder",
        plan.load.requests,
        timeout=plan.load.timeout,
        arrivals=plan.load.arrivals,
        seed=plan.load.seed,
    )
    served: Served | None = None
    control: Control | None = None
    cancelled: BaseException | None = None
    async with aiohttp.ClientSession() as session:
        try:
            served = await start_target(plan.target, folder)
            metrics_url = served.url + plan.target.metrics_path
            control = Control(session, served.url, plan.target.control_path, served.token)
            if served.token is None and any(p.experiments for p in plan.phases):
                raise TargetError(
                    f"the phases start experiments but there is no control token: "
                    f"set {plan.target.token_env}"
                )
            load.base_url = served.url
            print(f"game-day {plan.title!r} against {served.url}", file=stream)
            async with load:
                await _play(
                    state, load, windows, control, session, metrics_url, served, stream, live
                )
        except asyncio.CancelledError as exc:
            current = asyncio.current_task()
            if stop is None or stop.signal is None or current is None:
                cancelled = exc
            else:
                current.uncancel()
                state.interrupted = stop.signal
        except (TargetError, ControlError) as exc:
            state.error = str(exc)
        finally:
            await _rollback(state, control, served, session, plan)
    if cancelled is not None:
        raise cancelled
    report = _report(state, load, windows)
    _write(report, folder, picture=picture)
    print("\n" + format_table(report), file=stream)
    print(f"\nreport: {folder / 'report.md'}", file=stream)
    return report


def _windows(plan: Plan) -> list[Window]:
    windows, start = [], 0.0
    for phase in plan.phases:
        windows.append(Window(start, start + phase.duration, phase.rate or plan.load.rate))
        start += phase.duration
    return windows


async def _play(
    state: _State,
    load: OpenLoop,
    windows: Sequence[Window],
    control: Control,
    session: Any,
    metrics_url: str,
    served: Served,
    stream: TextIO,
    live: bool | None,
) -> None:
    loop = asyncio.get_running_loop()
    first = await scrape(session, metrics_url)
    if first is not None:
        state.known_routes |= first.routes
    origin = loop.time() + LEAD
    tasks = [
        asyncio.create_task(load.run(windows, origin), name="gameday-load"),
        asyncio.create_task(
            _phases(state, windows, origin, control, session, metrics_url, first),
            name="gameday-phases",
        ),
    ]
    helpers = [
        asyncio.create_task(_watch(state, load, origin, session, metrics_url)),
        asyncio.create_task(_progress(state, load, windows, origin, stream, live)),
    ]
    pending = set(tasks)
    if served.process is not None:
        crash = asyncio.create_task(_crash(served))
        helpers.append(crash)
        pending.add(crash)
    try:
        while any(not task.done() for task in tasks):
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a failure (or the target's exit) ends the run here
        await load.drain()
    finally:
        for task in [*tasks, *helpers]:
            task.cancel()
        await asyncio.gather(*tasks, *helpers, return_exceptions=True)


async def _crash(served: Served) -> None:
    assert served.process is not None
    status = await served.process.wait()
    raise TargetError(
        f"the target exited with status {status} during the run:\n{served.log_tail()}"
    )


async def _sleep_until(loop: asyncio.AbstractEventLoop, when: float) -> None:
    await asyncio.sleep(max(0.0, when - loop.time()))


async def _phases(
    state: _State,
    windows: Sequence[Window],
    origin: float,
    control: Control,
    session: Any,
    metrics_url: str,
    first: Service | None,
) -> None:
    loop = asyncio.get_running_loop()
    state.boundaries.append(first)
    for phase, window in zip(state.plan.phases, windows, strict=True):
        started: list[str] = []
        for experiment in phase.experiments:
            await control.start(experiment.document)
            started.append(experiment.name)
            state.actions.append(f"{phase.name}: started {experiment.name}")
        await _sleep_until(loop, origin + window.start)
        begin = time.time()
        await _sleep_until(loop, origin + window.end)
        state.phase_times.append((begin, time.time()))
        for name in started:
            try:
                await control.stop(name)
                state.actions.append(f"{phase.name}: stopped {name}")
            except ControlError as exc:  # its ttl may have ended it: the halt will tell
                state.actions.append(f"{phase.name}: stopping {name}: {exc}")
        state.boundaries.append(await scrape(session, metrics_url))


async def _watch(
    state: _State, load: OpenLoop, origin: float, session: Any, metrics_url: str
) -> None:
    loop = asyncio.get_running_loop()
    for second in itertools.count(1):
        await _sleep_until(loop, origin + second)  # each scrape covers the second before it
        found = await scrape(session, metrics_url)
        if found is not None:
            state.per_second.append((float(second), found))
            state.known_routes |= found.routes
        if len(load.seconds) > 20_000:  # long runs: keep percentiles, not histograms
            load.close_seconds(loop.time() - origin - load.timeout - 1)


def _current(windows: Sequence[Window], at: float) -> int:
    for index, window in enumerate(windows):
        if at < window.end:
            return index
    return len(windows) - 1


def _status_line(
    state: _State, load: OpenLoop, windows: Sequence[Window], at: float, rate: float
) -> tuple[str, list[str]]:
    index = _current(windows, max(at, 0.0))
    window = windows[index]
    merged = Stats()
    for stats in load.progress(index):
        merged.merge(stats)
    phase = state.plan.phases[index].name
    left = max(0.0, window.end - at)
    p99 = merged.latency.percentile(99) if merged.latency.count else 0.0
    errors = merged.errors / merged.answered if merged.answered else 0.0
    cells = [
        phase,
        f"{left:.0f}s left",
        f"offered {window.rate:.0f}/s",
        f"achieved {rate:.0f}/s",
        f"p99 {p99 * 1000:.0f}ms",
        f"errors {errors:.1%}",
        f"in flight {load.in_flight}",
    ]
    return "  ".join(cells), cells


async def _progress(
    state: _State,
    load: OpenLoop,
    windows: Sequence[Window],
    origin: float,
    stream: TextIO,
    live: bool | None,
) -> None:
    loop = asyncio.get_running_loop()
    fancy = live if live is not None else stream.isatty()
    view: Any = None
    if fancy:
        with contextlib.suppress(ImportError):
            from rich.console import Console
            from rich.live import Live

            view = Live(console=Console(file=stream), auto_refresh=False, transient=True)
    every = 0.25 if view is not None else PROGRESS_EVERY
    last_sent, last_at = 0, loop.time()
    try:
        if view is not None:
            view.start()
        while True:
            await asyncio.sleep(every)
            now = loop.time()
            sent = sum(stats.sent for phase in load.phases for stats in phase)
            rate = (sent - last_sent) / max(now - last_at, 1e-9)
            last_sent, last_at = sent, now
            line, cells = _status_line(state, load, windows, now - origin, rate)
            if view is not None:
                view.update(_rich_progress(cells), refresh=True)
            else:
                print(line, file=stream, flush=True)
    finally:
        if view is not None:
            view.stop()


def _rich_progress(cells: list[str]) -> Any:
    from rich.table import Table

    table = Table(show_header=True, header_style="bold", box=None)
    for heading in ("phase", "time", "offered", "achieved", "p99", "errors", "in flight"):
        table.add_column(heading)
    table.add_row(*cells)
    return table


async def _rollback(
    state: _State, control: Control | None, served: Served | None, session: Any, plan: Plan
) -> None:
    """Halt every experiment, check none is left, stop a served target: whatever happened."""
    if control is not None and control.token is not None:
        alive = served is None or served.process is None or served.process.returncode is None
        if alive:
            try:
                state.halted = await control.halt()
                state.actions.append(f"rollback: halted {state.halted}")
                state.left_running = await control.running()
            except ControlError as exc:
                state.rollback_errors.append(str(exc))
        else:
            state.rollback_errors.append("the target is gone: nothing left to halt")
        if served is not None and len(state.boundaries) <= len(plan.phases):
            found = await scrape(session, served.url + plan.target.metrics_path)
            state.boundaries.append(found)
    if served is not None:
        state.target_status = await stop_target(served)


def _merge(stats: Sequence[Stats]) -> Stats:
    merged = Stats()
    for found in stats:
        merged.merge(found)
    return merged


def _service_delta(before: Service | None, after: Service | None) -> dict[str, float]:
    if before is None or after is None:
        return {}
    return {name: after.counts[name] - before.counts[name] for name in SERVICE_COUNTS}


def _report(state: _State, load: OpenLoop, windows: Sequence[Window]) -> dict[str, Any]:
    plan = state.plan
    labels = route_labels(
        plan.load.requests,
        [check for phase in plan.phases for check in phase.checks(plan)],
        state.known_routes,
    )
    timeout = plan.load.timeout
    phases = []
    total = Stats()
    for index, phase in enumerate(plan.phases):
        if index >= len(load.phases):
            break
        stats = load.phases[index]
        routes: dict[str, Stats] = {}
        for label, found in zip(labels, stats, strict=True):
            routes.setdefault(label, Stats()).merge(found)
        routes[ALL_ROUTES] = _merge(stats)
        total.merge(routes[ALL_ROUTES])
        verdicts = evaluate(phase.checks(plan), routes, timeout=timeout)
        within = {
            check.route: check.within for check in phase.checks(plan) if check.within is not None
        }
        entries = {
            label: route_entry(
                found,
                [v for v in verdicts if v.route == label],
                within=within.get(label, timeout),
            )
            for label, found in routes.items()
        }
        begin, end = (
            state.phase_times[index]
            if index < len(state.phase_times)
            else (state.started_at + windows[index].start, time.time())
        )
        before = state.boundaries[index] if index < len(state.boundaries) else None
        after = state.boundaries[index + 1] if index + 1 < len(state.boundaries) else None
        phases.append(
            {
                "name": phase.name,
                "start": begin,
                "end": end,
                "duration": windows[index].end - windows[index].start,
                "rate": windows[index].rate,
                "experiments": [e.name for e in phase.experiments],
                "held": all(v.held for v in verdicts),
                "routes": entries,
                "checks": [{"route": v.route, **check_entry(v)} for v in verdicts],
                "service": _service_delta(before, after),
            }
        )
    lag = load.lag
    reasons = []
    if total.offered and total.sent < plan.load.min_sent * total.offered:
        reasons.append(
            f"the generator sent {total.sent} of {total.offered} offered requests "
            f"(under {plan.load.min_sent:.0%})"
        )
    if lag.count and lag.percentile(99) > plan.load.send_lag_p99:
        reasons.append(
            f"send lag p99 {lag.percentile(99) * 1000:.1f}ms is over "
            f"{plan.load.send_lag_p99 * 1000:g}ms: the generator fell behind"
        )
    complete = len(phases) == len(plan.phases) and state.error is None and not state.interrupted
    if not complete and not state.error and not state.interrupted:
        reasons.append("not every phase ran")
    verdict_held = complete and all(phase["held"] for phase in phases)
    return {
        "title": plan.title,
        "verdict": "held" if verdict_held else "broke",
        "unreliable": bool(reasons),
        "reasons": reasons,
        "error": state.error,
        "interrupted": state.interrupted,
        "started_at": state.started_at,
        "source": plan.source,
        "load": {
            "rate": plan.load.rate,
            "arrivals": plan.load.arrivals,
            "timeout": timeout,
            "offered": total.offered,
            "sent": total.sent,
            "dropped": total.dropped,
            "send_lag": _summary(lag),
        },
        "hypothesis": [
            {"route": c.route, **c.slos, **({"within": c.within} if c.within else {})}
            for c in plan.hypothesis
        ],
        "phases": phases,
        "timeline": _timeline(state, load, labels, windows),
        "actions": state.actions,
        "rollback": {
            "halted": state.halted,
            "left_running": state.left_running,
            "errors": state.rollback_errors,
            "target_exit_status": state.target_status,
        },
    }


def _summary(histogram: Histogram) -> dict[str, float | None]:
    if not histogram.count:
        return {"p50": None, "p99": None, "max": None}
    return {
        "p50": histogram.percentile(50),
        "p99": histogram.percentile(99),
        "max": histogram.max,
    }


def _timeline(
    state: _State, load: OpenLoop, labels: Sequence[str], windows: Sequence[Window]
) -> list[dict[str, Any]]:
    """Per second: per route the counts and p50/p99/max, and the injections the service made."""
    if not windows:
        return []
    seconds = math.ceil(windows[-1].end)
    injections = _injections_per_second(state, seconds)
    timeline = []
    for second in range(seconds):
        routes: dict[str, dict[str, Any]] = {}
        for label in dict.fromkeys(labels):
            found = [
                load.seconds[(n, second)]
                for n, own in enumerate(labels)
                if own == label and (n, second) in load.seconds
            ]
            offered = sum(f.offered for f in found)
            responses: dict[str, int] = {}
            for f in found:
                for key, count in f.responses.items():
                    responses[key] = responses.get(key, 0) + count
            entry: dict[str, Any] = {
                "offered": offered,
                "sent": sum(f.sent for f in found),
                "responses": responses,
                "p50": None,
                "p99": None,
                "max": None,
            }
            if all(f.latency is not None for f in found):
                merged = Histogram(2)
                for f in found:
                    assert f.latency is not None
                    merged.add(f.latency)
                if merged.count:
                    entry.update(
                        p50=merged.percentile(50), p99=merged.percentile(99), max=merged.max
                    )
            else:  # closed seconds: the worst of the requests' own percentiles
                sums = [f.summary for f in found if f.summary is not None]
                if sums:
                    entry.update(
                        p50=max(s[0] for s in sums),
                        p99=max(s[1] for s in sums),
                        max=max(s[2] for s in sums),
                    )
            routes[label] = entry
        timeline.append(
            {
                "t": second,
                "phase": state.plan.phases[_current(windows, second + 0.5)].name,
                "routes": routes,
                "injections": injections[second],
            }
        )
    return timeline


def _injections_per_second(state: _State, seconds: int) -> list[float]:
    found = [0.0] * seconds
    previous = (
        state.boundaries[0].counts["injections"]
        if state.boundaries and state.boundaries[0]
        else None
    )
    for at, scraped in state.per_second:
        now = scraped.counts["injections"]
        if previous is not None:
            # The scrape at ``at`` (a whole second after the origin) covers the second before.
            index = min(max(round(at) - 1, 0), seconds - 1)
            found[index] += max(0.0, now - previous)
        previous = now
    return found


def _write(report: dict[str, Any], folder: Path, *, picture: bool) -> None:
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    drawn = None
    if picture:
        try:
            from tailguard.gameday.plot import draw

            draw(report, folder / "report.png")
            drawn = "report.png"
        except ImportError as exc:
            report.setdefault("notes", []).append(f"no report.png: {exc}")
    (folder / "report.md").write_text(format_markdown(report, drawn), encoding="utf-8")


def run_folder(out: str | None, title: str) -> Path:
    """``out``, or a fresh folder under ``./gameday-runs/`` named after the time and ``title``.

    >>> run_folder("here", "x")
    PosixPath('here')
    """
    if out is not None:
        return Path(out)
    slug = "-".join("".join(c if c.isalnum() else " " for c in title.lower()).split())[:40]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("gameday-runs") / f"{stamp}-{slug or 'gameday'}"
    folder, n = base, 1
    while folder.exists():
        n += 1
        folder = base.with_name(f"{base.name}-{n}")
    return folder


def run_plan(
    plan: Plan, folder: Path, *, out: TextIO | None = None, live: bool | None = None
) -> int:
    """Run ``plan`` on a new event loop, SIGINT and SIGTERM rolling it back; the exit status."""

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        stop = Stop()

        def interrupt(name: str) -> None:
            if stop.signal is None:  # a second Ctrl-C does not cut the rollback short
                stop.signal = name
                task.cancel()

        installed = []
        for number, name in ((signal.SIGINT, "SIGINT"), (signal.SIGTERM, "SIGTERM")):
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                loop.add_signal_handler(number, interrupt, name)
                installed.append(number)
        try:
            return await run(plan, folder, out=out, live=live, stop=stop)
        finally:
            for number in installed:
                loop.remove_signal_handler(number)

    return exit_status(asyncio.run(main()))
