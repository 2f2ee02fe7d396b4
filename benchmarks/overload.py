"""Admission control, load shedding and tenant fairness under overload, over HTTP.

Goals (from the issue), for the ``tailguard`` arm at 2x, 4x and 10x the
dependency's capacity C: goodput (2xx answered within the deadline D, per
second) at least 0.90 C at 2x and 4x and at least 0.80 C at 10x; admitted
(2xx) p99 latency at most D; shed requests (503) answered fast, p99 at most
5 ms. Fairness: a quiet tenant's p99 with a noisy tenant present at most 1.2x
its p99 alone. The arm without admission control is reported beside it.

The dependency (``_overload_app.py``): ``GET /work`` waits for one of k
permits of an ``asyncio.Semaphore`` and holds it for ``await
asyncio.sleep(s)``, so capacity is C = k / s however many requests wait. We use
k = 10, s = 100 ms (C = 100 req/s) and D = 500 ms (5 s). Why: 10x C is
1,000 req/s, which the Python generator offers on a 2-core machine shared with
the server with a send-lag p99 of a few ms; and with k = 10 slots a slot frees
every s / k = 10 ms, short next to s, so a quiet tenant's request that has to
wait for the next free slot is not slowed down much by the wait alone (with
k = 2 and s = 20 ms it would wait up to a whole service time behind a noisy
tenant's two requests, whatever the scheduler does).

Arms, each served by uvicorn on 127.0.0.1 in its own process (1 worker,
httptools when importable, no access log), a fresh process for every run so no
run inherits another's backlog:

- ``none``: the plain Starlette app. Every request queues on the semaphore.
- ``tailguard``: the same app with ``Tailguard(routes={"GET /work":
  RoutePolicy(deadline=D, max_concurrency=k, max_queue=Q,
  queue_timeout=T)})``. ``max_concurrency = k``: admit exactly what the
  dependency runs at once, so nothing admitted waits inside the handler.
  ``T = D - 1.5 s`` (350 ms): a request that has waited longer than D - s
  cannot finish within D; half a service time of headroom absorbs service
  jitter and event-loop lag, so a request admitted from the queue still
  finishes within its deadline instead of becoming a 504. (tailguard also caps
  each wait at ``deadline - now - service estimate``, about 400 ms here, and its
  CoDel rule cuts waits to 5 ms under a standing backlog.) ``Q = k T / s``
  (35): what k slots drain within T, i.e. the queued requests that can still be
  served in time; a longer queue only holds requests that will time out (slow
  503s), a shorter one sheds requests that could have been served.
- ``tailguard-noqueue``: the same with ``max_queue=0``, a control: every shed
  is immediate, which separates the cost of shedding in the HTTP path from
  the time requests spend in the queue before being shed.

Load (``_loadgen.py``): open loop, Poisson arrivals drawn in advance from a
seeded RNG, each request sent at its intended time over a pool of keep-alive
HTTP/1.1 connections that grows as needed up to 2,000 (past that a request
fails on the client, ``no_connection``). Latency runs from the intended send
time, so a slow server cannot slow the load down (no coordinated omission).
Clients give up after 4 D (2 s) and drop the connection; Starlette does not
cancel the abandoned handler, so in the ``none`` arm the dependency goes on
serving requests nobody waits for, as in production. Each run offers its load
for a 2 s warm-up, then a 7 s measured window; requests belong to the window
by their intended send time, and the run waits for their answers. The send lag
(actual minus intended send time), the achieved send rate and the generator's
CPU use are reported. A run whose send-lag p99 exceeds 5 ms (the 503 goal
itself), or that sent fewer than 98 % of its window's requests within the
window, is INVALID: its verdicts say so and the script exits with status 3.
The ``none`` runs carry no verdict and are exempt: there every request needs a
new connection (the others are all held by requests stuck in the queue), which
loads the generator, and their collapse does not depend on the lag.

Fairness: two tenants (``x-tenant-id``) of equal weight, so each one's share
is C/2. The quiet tenant sends 0.4 C (80 % of its share), the noisy one 10x
its share (5 C). Each tenant configuration is run with the quiet tenant alone
and with both; the quiet stream has the same seed in both runs (identical
arrivals), so its p99s compare like for like. The goal's configuration is
``tenant_concurrency = k/2`` (5): each tenant may hold half the slots (and
queue as many), a bulkhead per tenant, so the noisy tenant can never take the
slots the quiet one needs. Beside it, ``tenant_concurrency = k`` (shared
slots): the limiter stays work-conserving (a tenant alone may use every slot)
and only the fair queue (deficit round robin between tenant lanes) separates
the tenants; and a control without tenant configuration (the ``tailguard``
server): what the quiet tenant suffers without per-tenant fairness.

Rounds: a round runs every (arm, load) pair and every fairness run once, in
an order rotated by one run per round, so drift in the machine's load hits
every arm alike; the default is 3 rounds (about 7 minutes). Counts and
latency percentiles pool the rounds' measured windows; goodput also shows the
min-max over rounds. The server reports its own stalls (event-loop lag, GC
pauses), CPU use and the deepest queue on the dependency.

Results go to ``benchmarks/RESULTS.md`` under ``## overload`` (other sections
are kept), with the machine, the versions and the load average, using the
overhead benchmark's helpers. Options: ``--quick`` (1 round of short runs;
prints, writes only with ``--output``), ``--output PATH``, ``--rounds N``,
``--only REGEX`` (development: only the runs whose name matches),
``--http {auto,h11,httptools}``. Server processes are killed on normal exit, on
errors, on Ctrl-C and on SIGTERM; if this process is killed outright they exit
when their stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _loadgen import CLIENT_FAILURES, LoadResult, Stream, run_load
from _overload_app import TENANT_HEADER, ArmSpec
from _serve import http_implementation
from overhead import (
    PEERS,
    _read_line,
    _stop,
    _terminate,
    _version,
    cpu_seconds,
    load_average,
    log,
    machine_info,
    rotated,
    source_digest,
    write_section,
)

HERE = Path(__file__).resolve().parent
SECTION = "overload"

SLOTS = 10
"""k: the dependency's concurrent calls."""
SERVICE = 0.100
"""s: seconds per dependency call."""
CAPACITY = SLOTS / SERVICE
"""C: the dependency's capacity in requests per second."""
DEADLINE = 0.500
"""D: the route's deadline, and the bound for goodput."""
QUEUE_TIMEOUT = DEADLINE - 1.5 * SERVICE
"""T: a queued request that waits longer cannot finish within D with headroom."""
MAX_QUEUE = round(SLOTS * QUEUE_TIMEOUT / SERVICE)
"""Q: what k slots drain within T."""
TENANT_CONCURRENCY = SLOTS // 2
"""Per-tenant cap of the ``tenants`` arm: each of the two tenants may hold half the slots."""
LEVELS = (2, 4, 10)
"""Offered load, in multiples of C."""
QUIET_SHARE = 0.4
"""The quiet tenant's rate, as a fraction of C (its fair share is 0.5)."""
NOISY_FACTOR = 10
"""The noisy tenant's rate, as a multiple of its fair share (C / 2)."""
CLIENT_TIMEOUT = 4 * DEADLINE
MAX_CONNECTIONS = 2000

SUBJECT = "tailguard"
ARMS = ("none", SUBJECT, "tailguard-noqueue")
"""Arms loaded at every level: no admission control, tailguard, tailguard without a queue."""
TENANT_ARMS = ("tenants", "tenants-shared")
"""tailguard with ``tenant_header``: ``tenant_concurrency`` k/2 (the goal's arm), and k."""
GOAL_GOODPUT = {2: 0.90, 4: 0.90, 10: 0.80}
GOAL_SHED_P99 = 0.005
GOAL_FAIRNESS = 1.2
VALID_LAG_P99 = 0.005
"""A run whose send lag p99 is above this is INVALID: the generator fell behind."""
VALID_SENT = 0.98
"""A run that sent fewer of its window's requests within the window is INVALID."""


@dataclass(frozen=True)
class Settings:
    rounds: int
    warmup: float
    seconds: float


DEFAULT = Settings(rounds=3, warmup=2.0, seconds=7.0)
QUICK = Settings(rounds=1, warmup=1.0, seconds=3.0)


def arm_spec(arm: str, http: str) -> ArmSpec:
    """The server for an arm: an entry of :data:`ARMS` or of :data:`TENANT_ARMS`."""
    if arm not in (*ARMS, *TENANT_ARMS):
        raise ValueError(f"unknown arm {arm!r}")
    noqueue = arm == "tailguard-noqueue"
    tenant_concurrency = {"tenants": TENANT_CONCURRENCY, "tenants-shared": SLOTS}.get(arm)
    return ArmSpec(
        arm="none" if arm == "none" else SUBJECT if tenant_concurrency is None else "tenants",
        slots=SLOTS,
        service=SERVICE,
        deadline=DEADLINE,
        max_queue=0 if noqueue else MAX_QUEUE,
        queue_timeout=None if noqueue else QUEUE_TIMEOUT,
        tenant_concurrency=tenant_concurrency,
        http=http,
    )


FAIR_CONTROL = "quiet + noisy, no tenant limits"


def fair_run(arm: str, noisy: bool) -> str:
    suffix = "" if arm == "tenants" else ", shared slots"
    return f"quiet {'+ noisy' if noisy else 'alone'}{suffix}"


@dataclass(frozen=True)
class Run:
    """One server process under one load: an arm, and the streams offered to it."""

    name: str
    arm: str
    """An entry of :data:`ARMS` or :data:`TENANT_ARMS`."""
    streams: tuple[Stream, ...]


def level_run(arm: str, level: int) -> str:
    return f"{arm} {level}x"


def runs_for_round(round_index: int) -> list[Run]:
    """Every run of a round; runs meant to be compared share their seeds."""
    runs: list[Run] = []
    for level in LEVELS:
        stream = Stream("load", level * CAPACITY, seed=1000 * round_index + level)
        runs += [Run(level_run(arm, level), arm, (stream,)) for arm in ARMS]
    quiet = Stream(
        "quiet", QUIET_SHARE * CAPACITY, ((TENANT_HEADER, "quiet"),), seed=7000 + round_index
    )
    noisy = Stream(
        "noisy",
        NOISY_FACTOR * CAPACITY / 2,
        ((TENANT_HEADER, "noisy"),),
        seed=8000 + round_index,
    )
    for arm in TENANT_ARMS:
        runs += [
            Run(fair_run(arm, noisy=False), arm, (quiet,)),
            Run(fair_run(arm, noisy=True), arm, (quiet, noisy)),
        ]
    runs.append(Run(FAIR_CONTROL, SUBJECT, (quiet, noisy)))
    return runs


# --------------------------------------------------------------------------- one run


@dataclass
class Server:
    process: subprocess.Popen[str]
    port: int
    http: str
    loop: str


@contextlib.contextmanager
def server(spec: ArmSpec) -> Iterator[Server]:
    """A fresh uvicorn process serving ``spec``; killed when the block exits, however."""
    process = subprocess.Popen(
        [sys.executable, str(HERE / "_overload_app.py"), spec.to_json()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=HERE,
    )
    try:
        found = re.match(r"PORT (\d+) HTTP (\S+) LOOP (\S+)", _read_line(process, 30.0))
        if found is None:
            raise RuntimeError(f"{spec.arm} server did not report its port")
        running = Server(process, int(found[1]), found[2], found[3])
        give_up = time.monotonic() + 30.0
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{spec.arm} server exited with {process.returncode}")
            try:
                fetch_stats(running.port)
                break
            except OSError:
                if time.monotonic() > give_up:
                    raise
            time.sleep(0.05)
        yield running
    finally:
        # Killed, not terminated: a `none` server holds thousands of abandoned
        # requests that a graceful shutdown would wait for, and nothing it
        # would do on the way out is measured.
        if process.poll() is None:
            process.kill()
        _stop(process)


def fetch_stats(port: int, window: tuple[float, float] | None = None) -> dict[str, Any]:
    """The server's ``/stats``; stalls restricted to ``window`` (``time.monotonic()``)."""
    query = "" if window is None else f"?start={window[0]!r}&end={window[1]!r}"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats{query}", timeout=5) as response:
        stats: dict[str, Any] = json.loads(response.read())
    return stats


@dataclass
class Measured:
    """What one run produced: the generator's records and the server's view."""

    run: Run
    load: LoadResult
    server_cpu: float
    """CPU seconds the server used during the measured window."""
    stats: dict[str, Any]
    http: str
    loop: str


def execute(run: Run, settings: Settings, http: str) -> Measured:
    """Start a fresh server for ``run``, offer its load, collect what both sides saw."""
    with server(arm_spec(run.arm, http)) as running:
        pid = running.process.pid
        cpu: dict[str, float] = {}

        def on_window(name: str) -> None:
            with contextlib.suppress(OSError):
                cpu[name] = cpu_seconds(pid)

        load = asyncio.run(
            run_load(
                "127.0.0.1",
                running.port,
                "/work",
                run.streams,
                warmup=settings.warmup,
                seconds=settings.seconds,
                client_timeout=CLIENT_TIMEOUT,
                max_connections=MAX_CONNECTIONS,
                on_window=on_window,
            )
        )
        stats = fetch_stats(running.port, load.window)
    server_cpu = cpu.get("end", 0.0) - cpu.get("start", 0.0)
    return Measured(run, load, server_cpu, stats, running.http, running.loop)


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by linear interpolation; ``None`` if empty."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class Tally:
    """One stream of one run, pooled over rounds (measured windows only)."""

    seconds: float = 0.0
    offered: int = 0
    sent: int = 0
    lags: list[float] = field(default_factory=list)
    good: int = 0
    late: int = 0
    ok_latency: list[float] = field(default_factory=list)
    shed_latency: list[float] = field(default_factory=list)
    shed_from_send: list[float] = field(default_factory=list)
    """503 latencies from the actual send time (the generator's lag taken out)."""
    shed_reasons: Counter[str] = field(default_factory=Counter)
    deadline_504: int = 0
    other_status: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    goodput_rounds: list[float] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)
    client_cpu: list[float] = field(default_factory=list)
    peak_queue: list[int] = field(default_factory=list)
    loop_lag_max: list[float] = field(default_factory=list)
    gc_max_pause: list[float] = field(default_factory=list)

    @property
    def goodput(self) -> float:
        return self.good / self.seconds if self.seconds else 0.0

    @property
    def lag_p99(self) -> float | None:
        return percentile(self.lags, 99)

    @property
    def sent_ratio(self) -> float:
        return self.sent / self.offered if self.offered else 1.0

    @property
    def valid(self) -> bool:
        lag = self.lag_p99
        return (lag is None or lag <= VALID_LAG_P99) and self.sent_ratio >= VALID_SENT

    @property
    def errors(self) -> int:
        return sum(self.other_status.values()) + sum(self.failures.values())


Tallies = dict[tuple[str, str], Tally]
"""Pooled results by (run name, stream name)."""


def add(tallies: Tallies, measured: Measured) -> None:
    """Fold one run's measured window into the pooled tallies, per stream."""
    load = measured.load
    begin, end = load.warmup, load.warmup + load.seconds
    stalls = measured.stats.get("stalls", {})
    per_stream: list[Tally] = []
    for stream in load.streams:
        tally = tallies.setdefault((measured.run.name, stream.name), Tally())
        tally.seconds += load.seconds
        tally.server_cpu.append(measured.server_cpu / load.seconds)
        tally.client_cpu.append(load.client_cpu / load.seconds)
        tally.peak_queue.append(int(measured.stats["dependency"]["peak_waiting"]))
        tally.loop_lag_max.append(float(stalls.get("loop_lag_max", 0.0)))
        tally.gc_max_pause.append(float(stalls.get("gc_max_pause", 0.0)))
        per_stream.append(tally)
    good = [0] * len(load.streams)
    for record in load.records:
        if not begin <= record.intended < end:
            continue
        tally = per_stream[record.stream]
        tally.offered += 1
        if record.intended + record.lag < end:
            tally.sent += 1
        tally.lags.append(record.lag)
        status = record.status
        if 200 <= status < 300:
            tally.ok_latency.append(record.latency)
            if record.latency <= DEADLINE:
                tally.good += 1
                good[record.stream] += 1
            else:
                tally.late += 1
        elif status == 503:
            tally.shed_latency.append(record.latency)
            tally.shed_from_send.append(record.latency - record.lag)
            tally.shed_reasons[record.reason or "(none)"] += 1
        elif status == 504:
            tally.deadline_504 += 1
        elif status < 0:
            tally.failures[CLIENT_FAILURES[status]] += 1
        else:
            tally.other_status[status] += 1
    for tally, count in zip(per_stream, good, strict=True):
        tally.goodput_rounds.append(count / load.seconds)


# --------------------------------------------------------------------------- verdicts


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:,.1f} ms"


def _verdict(valid: bool, ok: bool | None, measured: str) -> str:
    if ok is None:
        return f"not measured ({measured})"
    if not valid:
        return f"INVALID run ({measured})"
    return f"{'PASS' if ok else 'FAIL'} ({measured})"


@dataclass
class Judged:
    rows: list[tuple[str, str, str, str, str]]
    """(goal, target, tailguard verdict, tailguard-noqueue beside it, none beside it)."""
    fairness: list[tuple[str, str, str, str, str]]
    """(goal, target, verdict, shared slots beside it, no tenant limits beside it)."""
    valid: bool
    notes: list[str]


def _goodput_cell(tally: Tally | None) -> str:
    return "n/a" if tally is None else f"{tally.goodput / CAPACITY:.2f} C"


def _p99_cell(tally: Tally | None) -> str:
    return "n/a" if tally is None else _ms(percentile(tally.ok_latency, 99))


def _shed_cell(tally: Tally | None) -> str:
    if tally is None:
        return "n/a"
    if not tally.shed_latency:
        return "no 503s"
    return (
        f"{_ms(percentile(tally.shed_latency, 99))} "
        f"({_ms(percentile(tally.shed_from_send, 99))} from send)"
    )


def quiet_ratio(tallies: Tallies, arm: str) -> tuple[str, bool | None, bool]:
    """The quiet tenant's p99 with noise over its p99 alone: (text, goal met, runs valid)."""
    alone = tallies.get((fair_run(arm, noisy=False), "quiet"))
    noisy = tallies.get((fair_run(arm, noisy=True), "quiet"))
    if alone is None or noisy is None:
        return "n/a", None, True
    p_alone = percentile(alone.ok_latency, 99)
    p_noisy = percentile(noisy.ok_latency, 99)
    if not p_alone or not p_noisy:
        return "n/a", None, True
    ratio = p_noisy / p_alone
    runs_valid = all(
        tally.valid
        for (run, _), tally in tallies.items()
        if run in (fair_run(arm, noisy=False), fair_run(arm, noisy=True))
    )
    text = (
        f"{_ms(p_noisy)} / {_ms(p_alone)} = {ratio:.2f}x; quiet requests shed: "
        f"{_shed_share(noisy):.1%} with noisy, {_shed_share(alone):.1%} alone"
    )
    return text, ratio <= GOAL_FAIRNESS, runs_valid


def _shed_share(tally: Tally) -> float:
    return len(tally.shed_latency) / tally.offered if tally.offered else 0.0


def judge(tallies: Tallies) -> Judged:
    """PASS/FAIL per goal for the tailguard arm, the other arms beside it."""
    rows: list[tuple[str, str, str, str, str]] = []
    fairness: list[tuple[str, str, str, str, str]] = []
    notes: list[str] = []
    valid = True
    for (run, stream), tally in tallies.items():
        if tally.valid:
            continue
        judged = not run.startswith("none ")
        valid = valid and not judged
        notes.append(
            f"Run '{run}' ({stream}) {'is INVALID' if judged else 'lagged'}: send-lag p99 "
            f"{_ms(tally.lag_p99)} (limit {_ms(VALID_LAG_P99)}), {tally.sent_ratio:.1%} of its "
            f"requests sent within the window (limit {VALID_SENT:.0%}); the generator could "
            "not keep its schedule"
            + (
                "."
                if judged
                else " (the `none` arm carries no verdict: every request needs a new "
                "connection there, and its collapse does not depend on the lag)."
            )
        )
    for level in LEVELS:
        guard = tallies.get((level_run(SUBJECT, level), "load"))
        if guard is None:
            continue
        noqueue = tallies.get((level_run("tailguard-noqueue", level), "load"))
        none = tallies.get((level_run("none", level), "load"))
        target = GOAL_GOODPUT[level]
        rows.append(
            (
                f"goodput at {level}x C",
                f"≥ {target:.2f} C",
                _verdict(guard.valid, guard.goodput >= target * CAPACITY, _goodput_cell(guard)),
                _goodput_cell(noqueue),
                _goodput_cell(none),
            )
        )
        p99 = percentile(guard.ok_latency, 99)
        rows.append(
            (
                f"admitted (2xx) p99 at {level}x C",
                f"≤ D = {_ms(DEADLINE)}",
                _verdict(guard.valid, None if p99 is None else p99 <= DEADLINE, _ms(p99)),
                _p99_cell(noqueue),
                _p99_cell(none),
            )
        )
        shed = percentile(guard.shed_latency, 99)
        rows.append(
            (
                f"503 p99 at {level}x C",
                f"≤ {_ms(GOAL_SHED_P99)}",
                _verdict(
                    guard.valid, None if shed is None else shed <= GOAL_SHED_P99, _shed_cell(guard)
                ),
                _shed_cell(noqueue),
                _shed_cell(none),
            )
        )
    ratios: list[tuple[str, bool | None, bool]] = []
    for arm in TENANT_ARMS:
        ratios.append(quiet_ratio(tallies, arm))
    control = tallies.get((FAIR_CONTROL, "quiet"))
    alone = tallies.get((fair_run("tenants", noisy=False), "quiet"))
    if ratios[0][1] is not None:
        measured, ok, runs_valid = ratios[0]
        beside = "n/a"
        if control is not None and alone is not None:
            p_alone = percentile(alone.ok_latency, 99)
            p_control = percentile(control.ok_latency, 99)
            beside = (
                f"{_shed_share(control):.0%} of quiet requests shed (goodput "
                f"{control.goodput / CAPACITY:.2f} C); p99 of the rest {_ms(p_control)}"
            )
            if p_control and p_alone:
                beside += f" ({p_control / p_alone:.2f}x alone)"
        fairness.append(
            (
                "quiet tenant p99, with noisy / alone",
                f"≤ {GOAL_FAIRNESS:g}x",
                _verdict(runs_valid, ok, measured),
                ratios[1][0],
                beside,
            )
        )
    return Judged(rows, fairness, valid, notes)


# --------------------------------------------------------------------------- report


def _int(value: int) -> str:
    return f"{value:,}"


def _counts(counts: Counter[str]) -> str:
    return ", ".join(f"{key} {value:,}" for key, value in counts.most_common())


def _with_reasons(total: int, counts: Counter[str]) -> str:
    return _int(total) + (f" ({_counts(counts)})" if counts else "")


def _goodput(tally: Tally) -> str:
    rounds = tally.goodput_rounds
    spread = f" [{min(rounds):.0f}-{max(rounds):.0f}]" if len(rounds) > 1 else ""
    return f"{tally.goodput:.1f}{spread} ({tally.goodput / CAPACITY:.2f} C)"


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else 0.0


def _errors(tally: Tally) -> str:
    counts: Counter[str] = Counter(tally.failures)
    counts.update({f"HTTP {status}": n for status, n in tally.other_status.items()})
    return _with_reasons(tally.errors, counts)


def _stalls(tally: Tally) -> str:
    return f"{_ms(max(tally.loop_lag_max))} / {_ms(max(tally.gc_max_pause))}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _cells(tally: Tally) -> list[str]:
    return [
        f"{tally.offered / tally.seconds:,.0f}",
        f"{tally.sent / tally.seconds:,.0f}",
        _ms(tally.lag_p99),
        _goodput(tally),
        _ms(percentile(tally.ok_latency, 50)),
        _ms(percentile(tally.ok_latency, 99)),
        _int(tally.late),
        _with_reasons(len(tally.shed_latency), tally.shed_reasons),
        _ms(percentile(tally.shed_latency, 99)),
        _int(tally.deadline_504),
        _errors(tally),
        f"{_median(tally.server_cpu):.0%}",
        _stalls(tally),
    ]


_COLUMNS = (
    "offered/s | sent/s | send lag p99 | goodput/s [rounds] (x C) | 2xx p50 | 2xx p99 | late 2xx "
    "| 503 (reasons) | 503 p99 | 504 | client errors | server CPU | server stalls: loop lag max "
    "/ GC max"
)
_ALIGN = "---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---:|---:"


def level_table(tallies: Tallies) -> list[str]:
    lines = [
        f"| load | arm | {_COLUMNS} | peak dependency queue |",
        f"|---|---|{_ALIGN}|---:|",
    ]
    for level in LEVELS:
        for arm in ARMS:
            tally = tallies.get((level_run(arm, level), "load"))
            if tally is not None:
                cells = [f"{level}x", f"`{arm}`", *_cells(tally), _int(max(tally.peak_queue))]
                lines.append(_row(cells))
    return lines


def fairness_table(tallies: Tallies) -> list[str]:
    lines = [f"| run | tenant | {_COLUMNS} |", f"|---|---|{_ALIGN}|"]
    for (run, stream), tally in tallies.items():
        if stream != "load":
            lines.append(_row([run, stream, *_cells(tally)]))
    return lines


def other_benchmarks() -> list[str]:
    """Command lines of other benchmark processes running now (for the report)."""
    found = []
    own = str(os.getpid())
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or proc.name == own:
            continue
        with contextlib.suppress(OSError):
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            if re.search(r"benchmarks/\w+\.py", command) and not re.search(
                r"benchmarks/(overload|_overload\w*)\.py", command
            ):
                found.append(command)
    return found


@dataclass(frozen=True)
class Context:
    """How the run went, for the report's preamble and footer."""

    settings: Settings
    mode: str
    elapsed: float
    load_before: str
    http: str
    loop: str
    busy: list[str]


def render(tallies: Tallies, judged: Judged, context: Context) -> str:
    settings = context.settings
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## {SECTION}",
        "",
        f"Recorded {now} by `benchmarks/overload.py` ({context.mode} run, "
        f"{context.elapsed:.0f} s); method and choices in that file's docstring. Dependency: "
        f"k = {SLOTS} slots x s = {_ms(SERVICE)}, capacity C = {CAPACITY:.0f} req/s; "
        f"deadline D = {_ms(DEADLINE)}. `tailguard`: `RoutePolicy(deadline={DEADLINE:g}, "
        f"max_concurrency={SLOTS}, max_queue={MAX_QUEUE}, queue_timeout={QUEUE_TIMEOUT:g})`; "
        "`tailguard-noqueue`: the same with `max_queue=0`; `none`: no middleware. Open-loop "
        "Poisson load, latency from the intended send time; "
        f"{settings.rounds} round(s) of {settings.warmup:g} s warm-up + {settings.seconds:g} s "
        "measured per run, runs interleaved, a fresh server process per run; counts and "
        "percentiles pool the rounds, goodput brackets give the min-max over rounds. "
        "Goodput: 2xx answered within D, per second. Clients give up after "
        f"{_ms(CLIENT_TIMEOUT)}. Load average before the run: {context.load_before}.",
    ]
    if context.busy:
        lines += [
            "",
            "**Warning: other benchmarks were running when this run started: "
            + "; ".join(f"`{command}`" for command in context.busy)
            + ".**",
        ]
    lines += [
        "",
        "| goal (`tailguard` arm) | target | result | `tailguard-noqueue` | `none` |",
        "|---|---|---|---|---|",
        *(_row(row) for row in judged.rows),
        "",
    ]
    if judged.fairness:
        lines += [
            f"| goal | target | result (`tenant_concurrency={TENANT_CONCURRENCY}`) "
            f"| shared slots (`tenant_concurrency={SLOTS}`) | no tenant limits (`tailguard`) |",
            "|---|---|---|---|---|",
            *(_row(row) for row in judged.fairness),
            "",
        ]
    for note in judged.notes:
        lines += [f"**{note}**", ""]
    lines += [
        "### overload: arms x load",
        "",
        *level_table(tallies),
        "",
        "### overload: tenant fairness",
        "",
        f"Quiet tenant at {QUIET_SHARE:g} C, noisy tenant at {NOISY_FACTOR}x its share "
        f"({NOISY_FACTOR * CAPACITY / 2:.0f}/s); the quiet tenant's arrivals are the same in "
        "every run of a round. Tenant runs: the `tailguard` policy plus "
        f'`tenant_header="{TENANT_HEADER}"` and `tenant_concurrency={TENANT_CONCURRENCY}` '
        f"(k/2: each tenant may hold half the slots), or `tenant_concurrency={SLOTS}` "
        f"(shared slots: only the fair queue separates the tenants); `{FAIR_CONTROL}`: the "
        "`tailguard` arm's server, which knows no tenants.",
        "",
        *fairness_table(tallies),
        "",
    ]
    client_cpu = max((max(t.client_cpu) for t in tallies.values()), default=0.0)
    lines += [
        f"Servers: uvicorn, 1 worker, http={context.http}, loop={context.loop}, no access "
        "log. Server CPU: share of one core during the measured window (median over rounds). "
        "Server stalls: the longest event-loop lag (a 10 ms ticker) and the longest garbage "
        "collection in the server during a measured window. Peak dependency queue: the most "
        "requests waiting on the dependency's semaphore at once. Generator: this process, "
        f"one event loop; its CPU use peaked at {client_cpu:.0%} of a core in a measured window.",
        f"Load average at the end of the run: {load_average()}.",
        "",
        "| machine | |",
        "|---|---|",
    ]
    skip = {*PEERS, "wrk"}
    info = [(key, value) for key, value in machine_info() if key not in skip]
    info.append(("httptools", _version("httptools")))
    lines += [f"| {key} | {value} |" for key, value in info]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="one round of short runs (smoke)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3, quick 1)")
    parser.add_argument(
        "--only",
        default=None,
        metavar="REGEX",
        help="run only the runs whose name matches (for development; prints only)",
    )
    parser.add_argument(
        "--http",
        choices=("auto", "h11", "httptools"),
        default="auto",
        help="uvicorn's HTTP implementation; auto: httptools when importable, else h11",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"markdown file whose '## {SECTION}' section is replaced (default: "
        "benchmarks/RESULTS.md; with --quick or --only, only printed unless --output is given)",
    )
    return parser.parse_args(argv)


def _progress(label: str, measured: Measured, tallies: Tallies) -> str:
    parts = []
    for stream in measured.run.streams:
        tally = tallies[(measured.run.name, stream.name)]
        parts.append(
            f"{stream.name}: goodput {tally.goodput_rounds[-1]:.0f}/s, 2xx p99 "
            f"{_ms(percentile(tally.ok_latency, 99))}, 503 p99 "
            f"{_ms(percentile(tally.shed_latency, 99))}, lag p99 {_ms(tally.lag_p99)}"
        )
    return f"{label} {measured.run.name}: " + "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = QUICK if args.quick else DEFAULT
    if args.rounds is not None:
        settings = Settings(args.rounds, settings.warmup, settings.seconds)
    signal.signal(signal.SIGTERM, _terminate)
    http = http_implementation() if args.http == "auto" else args.http
    if http == "h11":
        log("httptools is not importable: the servers use h11 (slower; noted in the results)")
    began = time.monotonic()
    load_before = load_average()
    busy = other_benchmarks()
    for command in busy:
        log(f"warning: another benchmark is running: {command}")
    digest_before = source_digest()

    def selected(run: Run) -> bool:
        return args.only is None or re.search(args.only, run.name) is not None

    # The tallies' insertion order fixes the order of the tables' rows.
    tallies: Tallies = {
        (run.name, stream.name): Tally()
        for run in runs_for_round(0)
        if selected(run)
        for stream in run.streams
    }
    seen = (http, "")
    for r in range(settings.rounds):
        runs = {run.name: run for run in runs_for_round(r) if selected(run)}
        for name in rotated(list(runs), r):
            measured = execute(runs[name], settings, http)
            seen = (measured.http, measured.loop)
            add(tallies, measured)
            log(_progress(f"round {r + 1}/{settings.rounds}", measured, tallies))
    tallies = {key: tally for key, tally in tallies.items() if tally.seconds}
    judged = judge(tallies)
    if source_digest() != digest_before:
        judged.notes.insert(
            0,
            "Warning: tailguard's source changed during the run; runs may have measured "
            "different code. Run again on a quiet checkout.",
        )
    if seen[0] == "h11":
        judged.notes.append(
            "The servers ran with h11 (httptools is not importable): each request costs the "
            "server several times more CPU than with httptools."
        )
    context = Context(
        settings,
        "quick" if args.quick else "full",
        time.monotonic() - began,
        load_before,
        *seen,
        busy,
    )
    section = render(tallies, judged, context)
    print(section)
    output: Path | None = args.output
    if output is None and not (args.quick or args.only):
        output = HERE / "RESULTS.md"
    if output is not None:
        write_section(output, SECTION, section)
        log(f"wrote the '## {SECTION}' section of {output}")
    return 0 if judged.valid else 3


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; every server this run started has been stopped")
        sys.exit(130)
