"""Per-request overhead of tailguard's deadline middleware, against bare Starlette and peers.

Goals. Deadlines (issue 2): with deadlines only, tailguard adds at most 8 µs
per request in-process and keeps at least 0.88x bare Starlette's requests per
second over HTTP. Telemetry (issue 4), in-process, paired per round: the
metrics-only arm costs at most 0.5x the cheaper of
prometheus-fastapi-instrumentator and starlette-exporter. Tracing (issue 18):
the full stack (deadlines, admission, metrics and tailguard's own lean server
span, as ``install()`` does by default) costs at most 0.4x OTel's ASGI
middleware alone with the same span settings (receive/send spans off), and at
most 0.25x OTel (default spans) plus starlette-exporter; at 1 % sampling it
costs at most 5 µs more than metrics only. Task attribution has its own script
(``task_attribution.py``).

Arms (built in ``_arms.py`` from one Starlette app whose measured route is
``GET /items/{item_id}``, returning a small ``PlainTextResponse``): ``bare``;
``tailguard`` (deadlines only); ``tailguard-metrics`` (metrics only);
``tailguard-full`` (deadlines, a route limiter, metrics and tracing through
``guard.install``: tailguard's own lean server span, every request sampled);
``tailguard-full-otel`` (the same with ``server_spans="otel"``: OTel's ASGI
middleware makes the span); ``tailguard-full-1pct`` (the lean span, 1 % of
traces sampled); ``tailguard-full-untraced`` (``tracing=False``);
``passthrough``, a no-op pure-ASGI middleware (calibration, about 1.5 µs);
``sdk-span-floor``, a middleware that only starts and ends one SDK span with the
lean span's attributes precomputed (what the SDK itself costs: a yardstick);
``otel-asgi`` and ``otel-asgi-noreceive-send`` (OpenTelemetry's ASGI
middleware with a real SDK tracer provider whose spans are dropped at export);
``prometheus-fastapi-instrumentator``;
``starlette-exporter``; ``otel-asgi+starlette-exporter``; and ``basehttp``, a
no-op ``BaseHTTPMiddleware``, the control that must come out clearly costly or
the harness is not measuring middleware at all.

Method. Machines are shared and noisy, so every measurement is interleaved:
each round runs every arm once, the order rotates by one arm per round (no arm
is always first or last), and results are medians over rounds. Overhead and
ratios are computed per round against the same round's ``bare`` measurement
(paired), then the median is taken, so slow drift in machine load cancels out.

1. In-process. A minimal ASGI driver sends ``GET /items/42`` straight to the
   app: a fresh copy of an http scope per request, a ``receive`` that returns
   one ``http.request`` message (then ``http.disconnect``, as uvicorn does once
   the response is complete) and a ``send`` that discards. Each request runs
   in its own asyncio task, as under uvicorn (which also makes task-factory
   costs visible); requests run one after another in one event loop per
   (round, arm) batch, with ``gc.collect()`` before each batch and the
   collector left on. The clock is this thread's CPU time
   (``time.thread_time_ns``): the driver never waits on I/O, so on a quiet
   machine it equals wall time, and on a busy one the time other processes
   hold the CPU is left out. Result: µs per request; overhead = arm - bare.
2. Over HTTP. Each arm runs in its own uvicorn process (``_serve.py``: one
   worker, log level warning, no access log, httptools when importable, else
   h11, or as ``--http`` says), all started before the in-process phase (so
   both phases load the same tailguard source) and idle except during their
   own turn; ``wrk -t1 -c32`` loads one at a time on 127.0.0.1 after a
   warm-up. With two or more CPUs the servers are pinned to one and wrk to
   another (``--no-pin`` to let them share), so a server owns its core as
   behind a real load balancer. One process per arm, rather than
   ``tailguard.server.serve_in_thread`` in this process, so that a server
   never shares a GIL, heap, garbage collector or process-wide globals
   (OpenTelemetry, the default Prometheus registry) with the harness or with
   another arm, as in production where a worker serves one app, and so that a
   crashing arm cannot take the harness down. Results: req/s, ratio = arm /
   bare; and the server process's CPU time per request (from ``/proc``), a
   second, less load-sensitive view of the same cost.

Sanity checks mark a phase INVALID instead of reporting a verdict: ``basehttp``
must cost clearly more than ``passthrough`` (in-process: at least 10 µs and 4x
its overhead; over HTTP: a ratio at least 0.05 lower), and wrk must see no
socket errors or non-2xx responses; the script then exits with status 3.
Finally the ``tailguard`` arm is run in-process under cProfile to list the hot
spots in tailguard's own code (profiler-inflated: for ranking, not costs).

Results go to ``benchmarks/RESULTS.md`` under ``## overhead`` (other sections
are kept), with the machine, the versions, the git revision and a hash of
tailguard's source. Options: ``--quick`` (smoke run; prints, writes only with
``--output``), ``--no-http`` (skip wrk), ``--no-profile``, ``--no-pin``, ``--http
{auto,h11,httptools}``, ``--output PATH``. The default run takes about eight
minutes. Server processes are stopped on normal exit, on errors, on Ctrl-C
and on SIGTERM; if this process is killed outright they exit when their
stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import datetime
import gc
import hashlib
import os
import platform
import pstats
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

from starlette.types import ASGIApp, Message, Scope

from _arms import ARMS, TARGET_PATH, build
from _serve import http_implementation, loop_implementation

HERE = Path(__file__).resolve().parent
BASELINE = "bare"
SUBJECT = "tailguard"
FLOOR = "deadline-floor"
GOAL_OVERHEAD_US = 8.0
GOAL_RATIO = 0.88
GOAL_METRICS_SHARE = 0.5
"""Issue 4: metrics-only overhead ≤ 0.5x the cheaper Prometheus middleware's."""
GOAL_OVER_OTEL_SHARE = 0.4
"""Issue 18: the full stack (lean server span) costs ≤ 0.4x OTel's ASGI middleware alone
with the same span settings (one span: receive/send off)."""
GOAL_FULL_SHARE = 0.25
"""Issue 18: the full stack costs ≤ 0.25x OTel (default spans) + starlette-exporter."""
GOAL_SAMPLED_US = 5.0
GOAL_SHADOW_US = 1.0
"""Shadow mode's cost over enforcing, per request (issue 15)."""
"""Issue 18: the full stack at 1 % sampling costs ≤ metrics-only + 5 µs."""
PEERS = (
    "opentelemetry-instrumentation-asgi",
    "opentelemetry-sdk",
    "prometheus-fastapi-instrumentator",
    "starlette-exporter",
    "prometheus-client",
)


@dataclass(frozen=True)
class Settings:
    """How much work each phase does."""

    rounds: int
    requests: int
    warmup_requests: int
    http_rounds: int
    http_seconds: int
    http_warmup_seconds: int
    connections: int
    profile_requests: int


DEFAULT = Settings(
    rounds=25,
    requests=1000,
    warmup_requests=500,
    http_rounds=7,
    http_seconds=4,
    http_warmup_seconds=2,
    connections=32,
    profile_requests=5000,
)
QUICK = Settings(
    rounds=3,
    requests=300,
    warmup_requests=100,
    http_rounds=1,
    http_seconds=2,
    http_warmup_seconds=1,
    connections=32,
    profile_requests=1000,
)


@dataclass
class ArmResult:
    """Per-round measurements of one arm."""

    us: list[float] = field(default_factory=list)
    """In-process CPU µs per request, one value per round."""
    rps: list[float] = field(default_factory=list)
    """Requests per second under wrk, one value per round."""
    server_us: list[float] = field(default_factory=list)
    """Server process CPU µs per request under wrk, one value per round."""


def rotated(names: Sequence[str], round_index: int) -> list[str]:
    """``names`` starting at position ``round_index`` (mod len), wrapping around."""
    k = round_index % len(names)
    return [*names[k:], *names[:k]]


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- in-process


def http_scope(path: str) -> Scope:
    """An http scope like uvicorn's for ``GET path`` (copy it per request)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
        "method": "GET",
        "root_path": "",
        "path": path,
        "raw_path": path.encode("ascii"),
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"user-agent", b"tailguard-overhead-bench"),
            (b"accept", b"*/*"),
        ],
    }


_REQUEST: Message = {"type": "http.request", "body": b"", "more_body": False}
_DISCONNECT: Message = {"type": "http.disconnect"}


class _Receive:
    """One request's ``receive``: the (empty) body once, then ``http.disconnect``."""

    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent = False

    async def __call__(self) -> Message:
        if self.sent:
            return _DISCONNECT
        self.sent = True
        return _REQUEST


async def _discard(message: Message) -> None:
    return None


async def drive(app: ASGIApp, n: int, path: str = TARGET_PATH) -> float:
    """Send ``n`` requests to ``app``, one task each, one after another.

    Returns this thread's CPU time per request in µs (the loop runs here, and
    time the OS gives to other processes is not counted).
    """
    loop = asyncio.get_running_loop()
    template = http_scope(path)
    started = time.thread_time_ns()
    for _ in range(n):
        scope = template.copy()
        scope["state"] = {}
        await loop.create_task(app(scope, _Receive(), _discard))
    return (time.thread_time_ns() - started) / n / 1000.0


async def check_response(app: ASGIApp, path: str = TARGET_PATH) -> None:
    """Fail unless ``app`` answers ``GET path`` with 200 and a body."""
    messages: list[Message] = []

    async def record(message: Message) -> None:
        messages.append(message)

    scope = http_scope(path)
    scope["state"] = {}
    await app(scope, _Receive(), record)
    status = messages[0].get("status") if messages else None
    body = b"".join(m.get("body", b"") for m in messages[1:])
    if status != 200 or not body:
        raise RuntimeError(f"GET {path} answered {status} {body!r}, expected 200 with a body")


def run_in_process(names: Sequence[str], settings: Settings, results: dict[str, ArmResult]) -> None:
    apps = {name: build(name) for name in names}
    for app in apps.values():
        asyncio.run(check_response(app))
        asyncio.run(drive(app, settings.warmup_requests))
    for r in range(settings.rounds):
        for name in rotated(names, r):
            gc.collect()
            results[name].us.append(asyncio.run(drive(apps[name], settings.requests)))
        log(
            f"in-process round {r + 1}/{settings.rounds}: "
            + ", ".join(f"{n} {results[n].us[-1]:.1f}" for n in names)
        )


# --------------------------------------------------------------------------- over HTTP


@dataclass
class Server:
    """One arm's uvicorn child process."""

    arm: str
    process: subprocess.Popen[str]
    url: str = ""
    http: str = ""
    loop: str = ""


def cpu_plan() -> tuple[set[int], set[int]] | None:
    """CPUs for (servers, wrk) when this process may use two or more; else ``None``.

    Pinned, the server under load owns a core and wrk another, so req/s
    measures the server rather than how the scheduler shares two cores
    between a Python server and a C load generator.
    """
    usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(usable) < 2:
        return None
    return {usable[-1]}, {usable[0]}


def _pin(cpus: set[int] | None) -> Callable[[], None] | None:
    if cpus is None:
        return None

    def pin() -> None:  # runs in the child before exec: wrk's threads inherit it
        os.sched_setaffinity(0, cpus)

    return pin


def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        raise RuntimeError("server did not report its port in time")
    return process.stdout.readline()


def _wait_ready(server: Server, timeout: float = 30.0) -> None:
    give_up = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.arm} server exited with {server.process.returncode}")
        try:
            with urllib.request.urlopen(server.url + TARGET_PATH, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > give_up:
            raise RuntimeError(f"{server.arm} server did not answer on {server.url}")
        time.sleep(0.05)


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        with contextlib.suppress(OSError):
            process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


@contextlib.contextmanager
def servers(
    names: Sequence[str], http: str, cpus: set[int] | None = None
) -> Iterator[dict[str, Server]]:
    """Start one uvicorn process per arm (on ``cpus``); stop them all when the block exits."""
    started: dict[str, Server] = {}
    try:
        for name in names:
            process = subprocess.Popen(
                [sys.executable, str(HERE / "_serve.py"), name, http],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=HERE,
                preexec_fn=_pin(cpus),
            )
            server = started[name] = Server(name, process)
            found = re.match(r"PORT (\d+) HTTP (\S+) LOOP (\S+)", _read_line(process, 30.0))
            if found is None:
                raise RuntimeError(f"{name} server did not report its port")
            server.url = f"http://127.0.0.1:{found[1]}"
            server.http, server.loop = found[2], found[3]
        for server in started.values():
            _wait_ready(server)
        yield started
    finally:
        for server in started.values():
            _stop(server.process)


@dataclass(frozen=True)
class WrkRun:
    rps: float
    requests: int
    errors: int
    output: str


def wrk(url: str, seconds: int, connections: int, cpus: set[int] | None = None) -> WrkRun:
    """Load ``url`` with one wrk thread for ``seconds`` (on ``cpus``); req/s and errors."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "2s", url]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
        preexec_fn=_pin(cpus),
    )
    out = done.stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise RuntimeError(f"cannot read wrk output:\n{out}\n{done.stderr}")
    count = re.search(r"(\d+) requests in", out)
    errors = sum(int(x) for x in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    socket_errors = re.search(r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket_errors is not None:
        errors += sum(int(x) for x in socket_errors.groups())
    return WrkRun(float(found[1]), int(count[1]) if count else 0, errors, out)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class HttpInfo:
    http: str = ""
    loop: str = ""
    errors: dict[str, int] = field(default_factory=dict)
    pinned: tuple[set[int], set[int]] | None = None  # CPUs of (servers, wrk)


def run_http(
    running: dict[str, Server],
    settings: Settings,
    results: dict[str, ArmResult],
    wrk_cpus: set[int] | None = None,
) -> HttpInfo:
    """Load each running server with wrk, interleaved; fills ``rps`` and ``server_us``."""
    names = list(running)
    first = running[names[0]]
    info = HttpInfo(first.http, first.loop, dict.fromkeys(names, 0))
    for name in names:
        url = running[name].url + TARGET_PATH
        wrk(url, settings.http_warmup_seconds, settings.connections, wrk_cpus)
    for r in range(settings.http_rounds):
        for name in rotated(names, r):
            pid = running[name].process.pid
            cpu_before = cpu_seconds(pid)
            url = running[name].url + TARGET_PATH
            run = wrk(url, settings.http_seconds, settings.connections, wrk_cpus)
            cpu = cpu_seconds(pid) - cpu_before
            results[name].rps.append(run.rps)
            results[name].server_us.append(cpu / max(run.requests, 1) * 1e6)
            info.errors[name] += run.errors
        log(
            f"http round {r + 1}/{settings.http_rounds}: "
            + ", ".join(f"{n} {results[n].rps[-1]:.0f}" for n in names)
        )
    return info


# --------------------------------------------------------------------------- profile


@dataclass(frozen=True)
class Hotspot:
    function: str
    calls_per_request: float
    self_us: float
    cumulative_us: float

    def row(self) -> str:
        return (
            f"| `{self.function}` | {self.calls_per_request:.2f} | {self.self_us:.2f} "
            f"| {self.cumulative_us:.2f} |"
        )


def _label(key: tuple[str, int, str]) -> str:
    filename, line, name = key
    if filename == "~":
        return re.sub(r" at 0x[0-9a-f]+", "", name)
    path = Path(filename)
    parts = path.parts
    short = "/".join(parts[parts.index("tailguard") :]) if "tailguard" in parts else path.name
    return f"{short}:{line}({name})"


_WRAPPERS = frozenset({"send", "receive", "tailguard_task_factory"})
"""tailguard functions whose Python-level callees are the work they wrap."""


def profile_subject(n: int) -> tuple[float, list[Hotspot], list[Hotspot]]:
    """cProfile the tailguard arm; (µs/request under the profiler, own code, direct callees).

    Own code: functions defined in tailguard's package, by self time. Direct
    callees: functions outside tailguard called from tailguard's code, with the
    time spent in them on tailguard's behalf. Left out are the calls tailguard
    only wraps, which the request makes anyway: the downstream app, the
    server's ``send``/``receive`` called from tailguard's wrappers, and the
    Python-level work of creating the task inside the task factory.
    """
    app = build(SUBJECT)
    asyncio.run(drive(app, 500))  # builds Starlette's middleware stack
    middleware = _find_tailguard_middleware(app)
    downstream = type(middleware.app).__call__.__code__ if middleware is not None else None
    skip = (
        {(downstream.co_filename, downstream.co_firstlineno, downstream.co_name)}
        if downstream is not None
        else set()
    )
    profiler = cProfile.Profile()
    gc.collect()
    profiler.enable()
    per_request = asyncio.run(drive(app, n))
    profiler.disable()
    stats: dict[Any, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]

    def ours(key: tuple[str, int, str]) -> bool:
        return f"{os.sep}tailguard{os.sep}" in key[0]

    def wrapped(caller: tuple[str, int, str], callee: tuple[str, int, str]) -> bool:
        return caller[2] in _WRAPPERS and callee[0] != "~"

    own = [
        Hotspot(_label(key), nc / n, tt / n * 1e6, ct / n * 1e6)
        for key, (_cc, nc, tt, ct, _callers) in stats.items()
        if ours(key)
    ]
    callees: list[Hotspot] = []
    for key, (_cc, _nc, _tt, _ct, callers) in stats.items():
        if ours(key) or key in skip:
            continue
        from_us = [v for c, v in callers.items() if ours(c) and not wrapped(c, key)]
        if from_us:
            calls = sum(v[1] for v in from_us)
            self_time = sum(v[2] for v in from_us)
            cumulative = sum(v[3] for v in from_us)
            callees.append(
                Hotspot(_label(key), calls / n, self_time / n * 1e6, cumulative / n * 1e6)
            )
    own.sort(key=lambda h: h.self_us, reverse=True)
    callees.sort(key=lambda h: h.cumulative_us, reverse=True)
    return per_request, own, callees


def _find_tailguard_middleware(app: Any) -> Any:
    node = getattr(app, "middleware_stack", None)
    while node is not None:
        if type(node).__module__.startswith("tailguard"):
            return node
        node = getattr(node, "app", None)
    return None


# --------------------------------------------------------------------------- report


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _tailguard_origin() -> str:
    """Which tailguard was measured: the checkout's git revision, or the directory."""
    import tailguard

    package = Path(tailguard.__file__).resolve().parent
    checkout_src = (HERE.parent / "src").resolve()
    if not package.is_relative_to(checkout_src):
        return f"imported from {package}"
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "src"],
            cwd=HERE,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "git revision unknown"
    return f"git {head}{' + uncommitted changes to tracked files in src/' if dirty else ''}"


def source_digest() -> str:
    """A short hash of the tailguard modules this process has imported, as on disk now.

    Call it after the arms are built: comparing it with a later call tells
    whether the code that was measured changed on disk during the run.
    """
    files = sorted(
        str(module.__file__)
        for name, module in list(sys.modules.items())
        if (name == "tailguard" or name.startswith("tailguard."))
        and getattr(module, "__file__", None)
    )
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.encode())
        with contextlib.suppress(OSError):
            digest.update(Path(file).read_bytes())
    return digest.hexdigest()[:12]


def _wrk_version() -> str:
    if shutil.which("wrk") is None:
        return "not installed"
    done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    first = (done.stdout or done.stderr).strip().splitlines()
    return first[0].split(" [")[0] if first else "unknown"


def load_average() -> str:
    try:
        return " / ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def machine_info() -> list[tuple[str, str]]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return [
        ("CPU", _cpu_model()),
        ("cores", f"{os.cpu_count()} ({usable} usable)"),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("starlette", _version("starlette")),
        ("uvicorn", _version("uvicorn")),
        ("tailguard", f"{_version('tailguard')} ({_tailguard_origin()}, source {source_digest()})"),
        *((peer, _version(peer)) for peer in PEERS),
        ("wrk", _wrk_version()),
    ]


def _minus(arm: float, base: float) -> float:
    return arm - base


def _ratio(arm: float, base: float) -> float:
    return arm / base


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def paired(
    results: dict[str, ArmResult], name: str, metric: str, op: Callable[[float, float], float]
) -> float | None:
    """Median over rounds of ``op(arm, bare)`` for the same round."""
    arm: list[float] = getattr(results[name], metric)
    base: list[float] = getattr(results[BASELINE], metric)
    return _median([op(a, b) for a, b in zip(arm, base, strict=True)]) if arm else None


def per_round(
    results: dict[str, ArmResult], combine: Callable[[dict[str, float]], float], *names: str
) -> float | None:
    """Median over rounds of ``combine({arm: in-process overhead over bare})`` for ``names``."""
    base = results[BASELINE].us
    columns = [results[name].us for name in names]
    if not base or not all(columns):
        return None
    rounds = [
        combine({name: column[i] - base[i] for name, column in zip(names, columns, strict=True)})
        for i in range(len(base))
    ]
    return statistics.median(rounds)


def telemetry_goals(results: dict[str, ArmResult], valid: bool | None) -> list[str]:
    """The telemetry goals (issues 4 and 18), judged on in-process overheads paired per round."""
    rows = []
    needed = {
        "tailguard-metrics",
        "tailguard-full",
        "tailguard-full-1pct",
        "otel-asgi-noreceive-send",
        "prometheus-fastapi-instrumentator",
        "starlette-exporter",
        "otel-asgi+starlette-exporter",
    }
    if not needed <= results.keys():
        return rows
    metrics = per_round(
        results,
        lambda o: (
            o["tailguard-metrics"]
            / min(o["prometheus-fastapi-instrumentator"], o["starlette-exporter"])
        ),
        "tailguard-metrics",
        "prometheus-fastapi-instrumentator",
        "starlette-exporter",
    )
    over_otel = per_round(
        results,
        lambda o: o["tailguard-full"] / o["otel-asgi-noreceive-send"],
        "tailguard-full",
        "otel-asgi-noreceive-send",
    )
    against_pair = per_round(
        results,
        lambda o: o["tailguard-full"] / o["otel-asgi+starlette-exporter"],
        "tailguard-full",
        "otel-asgi+starlette-exporter",
    )
    sampled = per_round(
        results,
        lambda o: o["tailguard-full-1pct"] - o["tailguard-metrics"],
        "tailguard-full-1pct",
        "tailguard-metrics",
    )
    rows.append(
        "| tailguard metrics-only vs the cheaper of instrumentator / starlette-exporter "
        f"| ≤ {GOAL_METRICS_SHARE:g}x their overhead "
        f"| {_verdict(valid, metrics, lambda v: v <= GOAL_METRICS_SHARE, '.2f', 'x')} |"
    )
    rows.append(
        "| tailguard full stack (deadlines + admission + metrics + lean server span) vs OTel "
        f"ASGI alone, same spans | ≤ {GOAL_OVER_OTEL_SHARE:g}x its overhead "
        f"| {_verdict(valid, over_otel, lambda v: v <= GOAL_OVER_OTEL_SHARE, '.2f', 'x')} |"
    )
    rows.append(
        "| tailguard full stack vs OTel (default spans) + starlette-exporter "
        f"| ≤ {GOAL_FULL_SHARE:g}x their overhead "
        f"| {_verdict(valid, against_pair, lambda v: v <= GOAL_FULL_SHARE, '.2f', 'x')} |"
    )
    rows.append(
        "| tailguard full stack at 1 % sampling over metrics-only "
        f"| ≤ +{GOAL_SAMPLED_US:g} µs/request "
        f"| {_verdict(valid, sampled, lambda v: v <= GOAL_SAMPLED_US, '+.1f', ' µs')} |"
    )
    return rows


def _difference(first: str, second: str, overheads: dict[str, float]) -> float:
    return overheads[second] - overheads[first]


def shadow_goals(results: dict[str, ArmResult], valid: bool | None) -> list[str]:
    """Shadow mode beside enforcing (issue 15), paired per round, for deadlines only and full."""
    rows: list[str] = []
    for on, shadow, what in (
        ("tailguard", "tailguard-shadow", "deadlines only"),
        ("tailguard-full", "tailguard-full-shadow", "full stack, every request sampled"),
    ):
        if not {on, shadow} <= results.keys():
            continue
        extra = per_round(results, partial(_difference, on, shadow), on, shadow)
        rows.append(
            f"| shadow mode over enforcing, {what} | ≤ +{GOAL_SHADOW_US:g} µs/request "
            f"| {_verdict(valid, extra, lambda v: v <= GOAL_SHADOW_US, '+.2f', ' µs')} |"
        )
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _summary(values: Sequence[float], spec: str) -> str:
    """Median, then the min-max over rounds in brackets."""
    if not values:
        return "n/a"
    spread = f" ({min(values):{spec}}-{max(values):{spec}})" if len(values) > 1 else ""
    return f"{statistics.median(values):{spec}}{spread}"


def _against(
    results: dict[str, ArmResult],
    name: str,
    metric: str,
    op: Callable[[float, float], float],
    spec: str,
    baseline: str,
) -> str:
    if not getattr(results[name], metric):
        return "n/a"
    return baseline if name == BASELINE else _fmt(paired(results, name, metric, op), spec)


@dataclass
class Verdicts:
    in_process_valid: bool | None
    http_valid: bool | None
    overhead_us: float | None
    ratio: float | None
    notes: list[str]
    best_overhead_us: float | None = None

    def overhead(self) -> str:
        verdict = _verdict(
            self.in_process_valid, self.overhead_us, lambda v: v <= GOAL_OVERHEAD_US, ".2f", " µs"
        )
        if self.best_overhead_us is not None and self.overhead_us is not None:
            verdict += f"; fastest rounds: {self.best_overhead_us:+.2f} µs"
        return verdict

    def throughput(self) -> str:
        return _verdict(self.http_valid, self.ratio, lambda v: v >= GOAL_RATIO, ".3f", "x")


def _verdict(
    valid: bool | None, value: float | None, ok: Callable[[float], bool], spec: str, unit: str
) -> str:
    if valid is None or value is None:
        return "not measured"
    if not valid:
        return f"INVALID run (measured {value:{spec}}{unit})"
    return f"{'PASS' if ok(value) else 'FAIL'} ({value:{spec}}{unit})"


def judge(results: dict[str, ArmResult], http: HttpInfo | None) -> Verdicts:
    notes: list[str] = []
    in_process_valid: bool | None = None
    if results[BASELINE].us and "basehttp" in results and "passthrough" in results:
        control = paired(results, "basehttp", "us", _minus) or 0.0
        calibration = paired(results, "passthrough", "us", _minus) or 0.0
        in_process_valid = control >= 10.0 and control >= 4 * max(calibration, 1.0)
        if not in_process_valid:
            notes.append(
                f"In-process run INVALID: basehttp adds {control:.1f} µs, passthrough "
                f"{calibration:.1f} µs; the control is not clearly more expensive."
            )
        if calibration > 5.0:
            notes.append(
                f"Warning: passthrough adds {calibration:.1f} µs (expected about 1.5 µs); "
                "the machine was noisy, read small overheads with care."
            )
    http_valid: bool | None = None
    if http is not None and results[BASELINE].rps:
        http_valid = True
        if "basehttp" in results and "passthrough" in results:
            control_ratio = paired(results, "basehttp", "rps", _ratio) or 1.0
            calibration_ratio = paired(results, "passthrough", "rps", _ratio) or 1.0
            if control_ratio > calibration_ratio - 0.05:
                http_valid = False
                notes.append(
                    f"HTTP run INVALID: basehttp at {control_ratio:.3f}x bare is not clearly "
                    f"slower than passthrough at {calibration_ratio:.3f}x."
                )
            rounds = [
                arm / base
                for arm, base in zip(results["passthrough"].rps, results[BASELINE].rps, strict=True)
            ]
            notes.append(
                f"HTTP noise: the do-nothing passthrough arm measured {calibration_ratio:.3f}x "
                f"bare (rounds {min(rounds):.2f}-{max(rounds):.2f}x); read a ratio verdict "
                "within that spread of its goal as undecided."
            )
        failed = {name: count for name, count in http.errors.items() if count}
        if failed:
            http_valid = False
            notes.append(f"HTTP run INVALID: wrk saw errors or non-2xx responses: {failed}.")
    floor = paired(results, FLOOR, "us", _minus) if results.get(FLOOR, ArmResult()).us else None
    if floor is not None:
        notes.append(
            f"Floor: `{FLOOR}` (benchmarks/_floor.py: route regex, ContextVar, send wrapper, "
            f"registration; no timer, no header, no 504) adds {floor:.1f} µs in the same run."
        )
    needed = ("sdk-span-floor", "tailguard-full-untraced", "otel-asgi-noreceive-send")
    if all(results.get(name, ArmResult()).us for name in needed):
        span_floor = paired(results, "sdk-span-floor", "us", _minus)
        share = per_round(
            results,
            lambda o: (
                (o["sdk-span-floor"] + o["tailguard-full-untraced"]) / o["otel-asgi-noreceive-send"]
            ),
            *needed,
        )
        if span_floor is not None and share is not None:
            notes.append(
                f"Span floor: `sdk-span-floor` (one SDK span with the lean span's 13 attributes, "
                f"precomputed; nothing else) adds {span_floor:.1f} µs in the same run; with the "
                f"untraced full stack that is {share:.2f}x OTel ASGI alone before tailguard does "
                "anything for the span."
            )
    subject, base = results[SUBJECT].us, results[BASELINE].us
    return Verdicts(
        in_process_valid,
        http_valid,
        paired(results, SUBJECT, "us", _minus) if subject else None,
        paired(results, SUBJECT, "rps", _ratio) if results[SUBJECT].rps else None,
        notes,
        min(subject) - min(base) if subject and base else None,
    )


def render(
    results: dict[str, ArmResult],
    settings: Settings,
    http: HttpInfo | None,
    verdicts: Verdicts,
    profile: tuple[float, list[Hotspot], list[Hotspot]] | None,
    mode: str,
    elapsed: float,
    load_before: str,
) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## overhead",
        "",
        f"Recorded {now} by `benchmarks/overhead.py` ({mode} run, {elapsed:.0f} s); "
        "method in that file's docstring. Medians over interleaved rounds; overhead and "
        "ratio are medians of per-round differences/ratios against the same round's "
        "`bare`; brackets give the min-max over rounds. 'Fastest rounds' is tailguard's "
        "best round minus bare's best, the usual estimate of a pure CPU cost on a busy "
        "machine. Load average before the run: "
        f"{load_before}.",
        "",
        "| goal | target | result |",
        "|---|---|---|",
        f"| tailguard (deadlines only) in-process overhead | ≤ {GOAL_OVERHEAD_US:g} µs/request "
        f"| {verdicts.overhead()} |",
        f"| tailguard (deadlines only) over HTTP | ≥ {GOAL_RATIO:g}x bare req/s "
        f"| {verdicts.throughput()} |",
        *telemetry_goals(results, verdicts.in_process_valid),
        *shadow_goals(results, verdicts.in_process_valid),
        "",
        "| arm | in-process µs/request | overhead vs bare (µs) | HTTP req/s | ratio vs bare "
        "| server CPU µs/request | server overhead (µs) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, result in results.items():
        cells = [
            f"`{name}`",
            _summary(result.us, ".1f"),
            _against(results, name, "us", _minus, "+.1f", "0"),
            _summary(result.rps, ",.0f"),
            _against(results, name, "rps", _ratio, ".3f", "1.000"),
            _summary(result.server_us, ".1f"),
            _against(results, name, "server_us", _minus, "+.1f", "0"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for note in verdicts.notes:
        lines += [f"**{note}**", ""]
    lines += [
        f"In-process: {settings.rounds} rounds x {settings.requests} requests per arm "
        f"(after {settings.warmup_requests} warm-up), `GET {TARGET_PATH}`, one asyncio task "
        "per request, direct ASGI calls; CPU time of the driving thread per request.",
    ]
    if http is not None:
        lines.append(
            f"HTTP: one uvicorn process per arm (1 worker, http={http.http}, loop={http.loop}, "
            f"no access log), `wrk -t1 -c{settings.connections} -d{settings.http_seconds}s`, "
            f"{settings.http_rounds} rounds after a {settings.http_warmup_seconds} s warm-up "
            f"per arm; {_placement(http.pinned)}. Server CPU: the uvicorn process's "
            "user+system time during a wrk run divided by the requests wrk completed."
        )
        if http.http == "h11":
            lines.append(
                "h11 parses HTTP several times slower than httptools, so middleware is a "
                "smaller share of each request and the ratios come out closer to 1 than "
                "with httptools, the usual choice in production."
            )
    else:
        lines.append("HTTP: not run (`--no-http`).")
    lines.append(f"Load average at the end of the run: {load_average()}.")
    lines += ["", "| machine | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in machine_info()]
    if profile is not None:
        per_request, own, callees = profile
        lines += [
            "",
            "### tailguard hot spots (cProfile)",
            "",
            f"`tailguard` arm under cProfile: {per_request:.1f} µs/request with the profiler "
            "on (profiling inflates small calls; use the numbers to rank, not as costs). "
            "Cumulative times of the middleware include the app it calls. The second table "
            "lists what tailguard's code calls outside tailguard, leaving out what it only "
            "wraps (the app, the server's send/receive, creating the task in the task factory).",
            "",
            "| tailguard function | calls/request | self µs/request | cumulative µs/request |",
            "|---|---:|---:|---:|",
        ]
        lines += [h.row() for h in own[:12]]
        lines += [
            "",
            "| called by tailguard (outside it) | calls/request | self µs/request "
            "| cumulative µs/request |",
            "|---|---:|---:|---:|",
        ]
        lines += [h.row() for h in callees[:12]]
    return "\n".join(lines) + "\n"


def _placement(pinned: tuple[set[int], set[int]] | None) -> str:
    if pinned is None:
        return "wrk and the servers share the machine's cores"
    servers_on, wrk_on = (",".join(map(str, sorted(cpus))) for cpus in pinned)
    return f"servers pinned to CPU {servers_on}, wrk to CPU {wrk_on}"


def write_section(path: Path, name: str, section: str) -> None:
    """Replace (or append) the ``## name`` section of ``path``, keeping the others."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^## {re.escape(name)}[ \t]*\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")


# --------------------------------------------------------------------------- main


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="few, short rounds (smoke run)")
    parser.add_argument("--no-http", action="store_true", help="skip the wrk phase")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile phase")
    parser.add_argument(
        "--no-pin", action="store_true", help="let servers and wrk share every CPU (no pinning)"
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
        help="markdown file whose '## overhead' section is replaced (default: "
        "benchmarks/RESULTS.md; with --quick, only printed unless --output is given)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = QUICK if args.quick else DEFAULT
    signal.signal(signal.SIGTERM, _terminate)
    names = list(ARMS)
    results = {name: ArmResult() for name in names}
    began = time.monotonic()
    load_before = load_average()
    notes: list[str] = []
    http: HttpInfo | None = None
    if not args.no_http and shutil.which("wrk") is None:
        log("wrk not found: install it (apt-get install -y wrk) or pass --no-http")
        return 2
    for name in names:  # imports tailguard's modules (some lazily, by option), for source_digest()
        if name.startswith(SUBJECT):
            build(name)
    digest_before = source_digest()
    with contextlib.ExitStack() as stack:
        # Servers start first, so that both phases load tailguard's source as it
        # was at the start of the run; they sit idle during the in-process phase.
        running: dict[str, Server] = {}
        if not args.no_http:
            impl = http_implementation() if args.http == "auto" else args.http
            log(f"starting {len(names)} uvicorn servers ({impl}/{loop_implementation()})")
            plan = None if args.no_pin else cpu_plan()
            server_cpus, wrk_cpus = plan if plan is not None else (None, None)
            running = stack.enter_context(servers(names, impl, server_cpus))
        log(f"in-process: {settings.rounds} rounds x {settings.requests} requests x {len(names)}")
        run_in_process(names, settings, results)
        if running:
            log(f"http: {settings.http_rounds} rounds x {settings.http_seconds} s x {len(names)}")
            http = run_http(running, settings, results, wrk_cpus)
            http.pinned = plan
    profile = None if args.no_profile else profile_subject(settings.profile_requests)
    if source_digest() != digest_before:
        notes.append(
            "Warning: tailguard's source changed during the run; arms may have measured "
            "different code. Run again on a quiet checkout or an exported copy "
            "(benchmarks/README.md)."
        )
    verdicts = judge(results, http)
    verdicts.notes[:0] = notes
    section = render(
        results,
        settings,
        http,
        verdicts,
        profile,
        "quick" if args.quick else "full",
        time.monotonic() - began,
        load_before,
    )
    print(section)
    output: Path | None = args.output
    if output is None and not args.quick:
        output = HERE / "RESULTS.md"
    if output is not None:
        write_section(output, "overhead", section)
        log(f"wrote the '## overhead' section of {output}")
    invalid = verdicts.in_process_valid is False or verdicts.http_valid is False
    return 3 if invalid else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; every server this run started has been stopped")
        sys.exit(130)
