"""``tailguard demo``: the bundled shop, a burst of requests, then a mini game-day.

:func:`run` serves the app under uvicorn on 127.0.0.1 and does two things:

1. sends the burst of :func:`shop_plan` and prints what tailguard did per
   route (:func:`tailguard.gameday.report.print_table`). The burst is
   deterministic by design: every request either fits its budget or overruns
   it by a wide margin, so the counts come out the same on a fast laptop and
   on a loaded CI machine; only the latencies vary.
2. given the app's control token, :func:`run_gameday` serves it again and
   plays a short game-day against the shop's ``GET /stock/{item_id}``, which
   reads through the ``inventory`` bulkhead (4 at a time, 8 waiting) within
   250 ms: a baseline; ``POST /_tailguard/experiments`` over HTTP with the
   bearer token, so half the inventory calls get a log-normal delay
   (:data:`EXPERIMENT`); a burst to the stock route with ``GET
   /items/{item_id}`` (no inventory) alongside, while ``GET
   /_tailguard/snapshot`` watches the bulkhead; ``POST /_tailguard/halt``,
   the kill switch, then one more burst; and what changed on ``/metrics``.

Game-day requests go out on a fixed schedule (open loop). Nothing here
asserts a timing: the report says what happened on this machine.

Both steps are written for :mod:`tailguard.gameday.shop`. Chaos and the
control API are switched on when the app is *created*, which for ``tailguard
demo`` is when the command imports it, in this process: it does so inside
:func:`chaos_environment`. An app created without them, or without an
``inventory`` dependency, gets a one-line note instead of the game-day.

>>> [scenario.label for scenario in shop_plan(2)][:2]
['GET /items/{item_id}', 'GET /search']
>>> stock_scenario(3).requests()
['/stock/1', '/stock/2', '/stock/3']
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sys
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

from tailguard.chaos._client import describe_fault
from tailguard.chaos.control import ControlAPI
from tailguard.chaos.engine import ENV_VAR as CHAOS_ENV
from tailguard.gameday import control
from tailguard.gameday.load import (
    CLIENT_TIMEOUT,
    CONCURRENCY,
    PacedSender,
    Scenario,
    Stopwatch,
    import_httpx,
    send_burst,
)
from tailguard.gameday.report import (
    Burst,
    Series,
    format_bursts,
    format_changes,
    format_ms,
    logfmt,
    median_ms,
    metric_changes,
    paragraph,
    print_table,
    slowest_ms,
)
from tailguard.gameday.target import budget_for, find_guard
from tailguard.guard import Tailguard
from tailguard.server import serve_in_thread

__all__ = [
    "DEPENDENCY",
    "EXPERIMENT",
    "FOLLOWED",
    "METRICS_PATH",
    "RATE",
    "REQUESTS",
    "TOKEN_ENV",
    "GameDay",
    "chaos_environment",
    "check_extras",
    "explain_gameday",
    "items_scenario",
    "play_gameday",
    "print_gameday",
    "run",
    "run_gameday",
    "shop_plan",
    "stock_scenario",
]

TOKEN_ENV = "TAILGUARD_TOKEN"
"""The control token the shop mounts its control API with (``guard.install(control_token=)``)."""

DEPENDENCY = "inventory"
"""The shop's dependency the game-day makes slow."""

METRICS_PATH = "/metrics"

EXPERIMENT: Mapping[str, Any] = {
    "name": "slow-inventory",
    "ttl": 30,  # should the demo die before its halt, the experiment still ends
    "faults": [
        {
            "kind": "latency",
            "target": DEPENDENCY,
            "delay": {"lognormal": {"p50": 0.1, "p99": 1.0}},
            "rate": 0.5,
        }
    ],
}
"""The experiment the game-day starts: the body of ``POST {prefix}/experiments``."""

_BULKHEAD = {"limiter": DEPENDENCY, "kind": "dependency"}
FOLLOWED: tuple[Series, ...] = (
    Series("tailguard_chaos_injections_total", {}, ("target", "fault")),
    Series("tailguard_chaos_experiments_ended_total", {}, ("experiment", "reason")),
    Series("tailguard_requests_total", {"route": "/stock/{item_id}"}, ("route", "outcome")),
    Series("tailguard_requests_total", {"route": "/items/{item_id}"}, ("route", "outcome")),
    Series(
        "tailguard_dependency_calls_total", {"dependency": DEPENDENCY}, ("dependency", "outcome")
    ),
    Series("tailguard_limiter_rejections_total", _BULKHEAD, ("limiter", "reason")),
    Series("tailguard_queue_wait_seconds_count", _BULKHEAD, ("limiter", "kind")),
    Series("tailguard_queue_wait_seconds_sum", _BULKHEAD, ("limiter", "kind")),
)
"""The ``/metrics`` series the game-day's report follows."""

RATE = 100.0
"""Stock requests per second; ``GET /items`` gets a quarter of that during the experiment."""

REQUESTS = {"baseline": 20, "during": 80, "after halt": 20}
"""Stock requests in each step."""


def check_extras() -> None:
    """Raise ``ImportError`` naming the extras when httpx or uvicorn is missing.

    The demo needs both (``tailguard[httpx,server]``); this finds out before
    the app is imported and served.
    """
    import_httpx()
    try:
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"serving the app needs uvicorn: pip install 'tailguard[server]' ({exc})"
        ) from exc


# --- the burst ----------------------------------------------------------------------------


def shop_plan(requests: int) -> list[Scenario]:
    """The burst for the shop: ``requests`` per route, plus one with a tight header.

    * ``GET /items/{item_id}``: a few ms of work against 100 ms; all succeed;
    * ``GET /search``: alternately 10 ms and 5 s of work against 150 ms; half get a 504;
    * ``GET /reports/{name}``: 300 ms of work under the 2 s ``/reports/*`` budget;
    * the same with ``x-request-timeout-ms: 50``: the caller's budget wins, a 504;
    * ``GET /feed``: a 5 s stream against 300 ms; aborted after it started;
    * ``GET /quote/{item_id}``: the default budget; reports what it would forward.
    """
    return [
        Scenario("GET", "/items/{item_id}", ("/items/1", "/items/2", "/items/3"), requests),
        Scenario(
            "GET", "/search", ("/search?q=la&work_ms=10", "/search?q=la&work_ms=5000"), requests
        ),
        Scenario("GET", "/reports/{name}", ("/reports/sales?work_ms=300",), requests),
        Scenario(
            "GET",
            "/reports/{name}",
            ("/reports/sales?work_ms=300",),
            1,
            headers=(("x-request-timeout-ms", "50"),),
        ),
        Scenario("GET", "/feed", ("/feed",), requests),
        Scenario("GET", "/quote/{item_id}", ("/quote/1", "/quote/2", "/quote/3"), requests),
    ]


def run(
    app: Any,
    *,
    requests: int = 8,
    scenarios: Sequence[Scenario] | None = None,
    out: TextIO | None = None,
    control_token: str | None = None,
) -> int:
    """Serve ``app`` under uvicorn, send the burst, print the table and the explanation.

    ``scenarios`` defaults to :func:`shop_plan` with ``requests`` per route;
    ``out`` to ``sys.stdout``. With the app's ``control_token``, the
    game-day follows (:func:`run_gameday`). Returns the exit status, 0.
    """
    stream = out if out is not None else sys.stdout
    plan = list(scenarios) if scenarios is not None else shop_plan(requests)
    stopwatch = Stopwatch(app)
    # uvicorn logs a traceback for every aborted stream (that is how it reports
    # an ASGI app that fails mid-response); keep its output out of the table.
    with serve_in_thread(stopwatch, log_level="critical") as base_url:
        total = sum(scenario.count for scenario in plan)
        print(
            f"tailguard demo: {total} requests to {base_url}, up to {CONCURRENCY} at a time\n",
            file=stream,
        )
        # The client gets an event loop in a thread of its own, so run() also
        # works where a loop is already running (a notebook, an async test).
        with ThreadPoolExecutor(1, thread_name_prefix="tailguard-demo-client") as client:
            outcomes = client.submit(lambda: asyncio.run(send_burst(base_url, plan))).result()
    print_table(app, plan, [stopwatch.attach(found) for found in outcomes], out=stream)
    if control_token is not None:
        run_gameday(app, control_token=control_token, out=stream)
    return 0


# --- the game-day -------------------------------------------------------------------------


def stock_scenario(count: int) -> Scenario:
    """``count`` requests to ``GET /stock/{item_id}``, which reads through the bulkhead."""
    return Scenario("GET", "/stock/{item_id}", ("/stock/1", "/stock/2", "/stock/3"), count)


def items_scenario(count: int) -> Scenario:
    """``count`` requests to ``GET /items/{item_id}``, which never uses inventory."""
    return Scenario("GET", "/items/{item_id}", ("/items/1", "/items/2", "/items/3"), count)


@contextmanager
def chaos_environment() -> Iterator[str]:
    """Chaos on and a fresh control token, for an app created inside the block.

    Sets ``TAILGUARD_CHAOS=1`` and ``TAILGUARD_TOKEN`` (a random token, which
    it yields), and restores both afterwards.

    >>> with chaos_environment() as token:
    ...     os.environ["TAILGUARD_CHAOS"], os.environ["TAILGUARD_TOKEN"] == token
    ('1', True)
    """
    token = secrets.token_urlsafe(32)
    saved = {name: os.environ.get(name) for name in (CHAOS_ENV, TOKEN_ENV)}
    os.environ[CHAOS_ENV], os.environ[TOKEN_ENV] = "1", token
    try:
        yield token
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass(slots=True)
class GameDay:
    """What the game-day did and saw."""

    control: str
    """Where the control API answers, such as ``/_tailguard``."""
    bursts: list[Burst] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    """Each control request and its answer, one line each."""
    started: bool = False
    halted: bool = False
    peak: dict[str, int] = field(default_factory=dict)
    """The bulkhead's highest ``in_use`` and ``queued`` in the snapshots, and its limits."""
    changes: list[tuple[str, float]] = field(default_factory=list)
    """``(series, change)`` of :data:`FOLLOWED`, from :func:`.report.metric_changes`."""
    logs: list[str] = field(default_factory=list)
    """What the ``tailguard.chaos`` logger said meanwhile."""


async def play_gameday(base_url: str, token: str, prefix: str) -> GameDay:
    """Play the game-day against the server at ``base_url``, its control API at ``prefix``."""
    httpx = import_httpx()
    game = GameDay(prefix)
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    auth = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        base_url=base_url, timeout=CLIENT_TIMEOUT, limits=limits, headers=auth
    ) as client:

        async def post(path: str, body: object) -> bool:
            ok, line = await control.post(client, prefix + path, body)
            game.actions.append(line)
            return ok

        sender = PacedSender(client)
        before = (await client.get(METRICS_PATH)).text
        baseline = stock_scenario(REQUESTS["baseline"])
        game.bursts.append(Burst("baseline", baseline, await sender.paced(baseline, RATE)))
        game.started = await post("/experiments", EXPERIMENT)
        try:
            stock = stock_scenario(REQUESTS["during"])
            items = items_scenario(REQUESTS["during"] // 4)
            stop = asyncio.Event()
            async with asyncio.TaskGroup() as group:
                group.create_task(
                    control.watch_limiter(client, prefix, DEPENDENCY, game.peak, stop)
                )
                stocked = group.create_task(sender.paced(stock, RATE))
                itemed = group.create_task(sender.paced(items, RATE / 4))
                await asyncio.wait([stocked, itemed])
                stop.set()
            step = f"{EXPERIMENT['name']} running" if game.started else "no experiment"
            game.bursts += [
                Burst(step, stock, stocked.result()),
                Burst(step, items, itemed.result()),
            ]
        finally:
            game.halted = await post("/halt", None)
        after = stock_scenario(REQUESTS["after halt"])
        game.bursts.append(Burst("after halt", after, await sender.paced(after, RATE)))
        game.changes = metric_changes(before, (await client.get(METRICS_PATH)).text, FOLLOWED)
    return game


def _target(app: object) -> tuple[Tailguard, str] | str:
    """The app's guard and control API prefix, or why the game-day cannot run."""
    guard = find_guard(app)
    if guard is None:
        return "the app has no tailguard guard"
    if not guard.chaos.enabled:
        return f"chaos is off in this app ({CHAOS_ENV} was not set when it was created)"
    api = next((a for _, a in guard.endpoints if isinstance(a, ControlAPI)), None)
    if api is None:
        return f"the app has no control API ({TOKEN_ENV} was not set when it was created)"
    if METRICS_PATH not in (path for path, _ in guard.endpoints):
        return f"the app does not serve {METRICS_PATH}"
    if DEPENDENCY not in guard.dependencies:
        return f"the app has no {DEPENDENCY!r} dependency"
    return guard, api.prefix


class _Collect(logging.Handler):
    """Keeps the chaos engine's audit lines for the report (and off stderr)."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def run_gameday(app: Any, *, control_token: str, out: TextIO | None = None) -> None:
    """Serve ``app``, play the game-day with ``control_token``, print the report.

    Prints a one-line note instead when the app cannot play it (chaos off,
    no control API or ``/metrics``, no ``inventory`` dependency).
    """
    stream = out if out is not None else sys.stdout
    target = _target(app)
    if isinstance(target, str):
        print(f"\ngame-day skipped: {target}", file=stream)
        return
    guard, prefix = target
    stopwatch = Stopwatch(app)
    logger, collect = logging.getLogger("tailguard.chaos"), _Collect()
    logger.addHandler(collect)
    try:
        # Like run(): uvicorn in one thread, the client's event loop in another.
        with (
            serve_in_thread(stopwatch, log_level="critical") as base_url,
            ThreadPoolExecutor(1, thread_name_prefix="tailguard-demo-client") as client,
        ):
            game = client.submit(lambda: asyncio.run(play_gameday(base_url, control_token, prefix)))
            played = game.result()
    finally:
        logger.removeHandler(collect)
    played.bursts = [Burst(b.step, b.scenario, stopwatch.attach(b.outcomes)) for b in played.bursts]
    played.logs = collect.messages
    print_gameday(played, guard, out=stream)


def explain_gameday(game: GameDay, guard: Tailguard | None = None) -> str:
    """A short paragraph, built from what the game-day saw; ``guard`` gives the budgets."""

    def budget(burst: Burst) -> str:
        found = budget_for(guard, burst.scenario)
        return "the" if found is None else f"the {format_ms(found.seconds)}"

    def find(step: str, template: str) -> Burst | None:
        found = (
            b for b in game.bursts if b.step.endswith(step) and b.scenario.template == template
        )
        return next(found, None)

    stock, items = find("running", "/stock/{item_id}"), find("running", "/items/{item_id}")
    after = find("after halt", "/stock/{item_id}")
    if game.started:
        injected = sum(v for k, v in game.changes if k.startswith("tailguard_chaos_injections"))
        parts = [f"Chaos delayed {injected:.0f} inventory calls."]
    else:
        parts = ["The experiment did not start (see the control API's answer above)."]
    if stock is not None:
        late, shed, peak = stock.seconds(504), stock.seconds(503), game.peak
        if late:
            parts.append(
                f"Deadlines held: {len(late)} stock requests slowed by the delays got a 504 when "
                f"{budget(stock)} budget ran out (slowest {slowest_ms(late)}) instead of hanging."
            )
        else:
            parts.append("No stock request ran out of its budget this time.")
        capped = (
            f"The bulkhead capped inventory at {peak.get('max_concurrency', '?')} calls at once "
            f"(snapshots: up to {peak.get('in_use', '?')} in use, {peak.get('queued', '?')} queued)"
        )
        parts.append(
            f"{capped} and shed {len(shed)} requests fast with 503 (median {median_ms(shed)})."
            if shed
            else f"{capped}; it shed none."
        )
    if items is not None:
        unaffected = "The rest of the shop was unaffected: " if items.ok() == len(items) else ""
        parts.append(
            f"{unaffected}GET /items/{{item_id}}, which does not use inventory, answered "
            f"{items.ok()} of {len(items)} within {budget(items)} budget "
            f"(max {slowest_ms(items.seconds())})."
        )
    if game.halted and after is not None:
        parts.append(
            f"After the halt, {after.ok()} of {len(after)} stock requests succeeded "
            f"(max {slowest_ms(after.seconds())})."
        )
    return " ".join(parts)


def print_gameday(game: GameDay, guard: Tailguard | None, *, out: TextIO) -> None:
    """Print the game-day: what was done, the bursts, the metrics that changed, a summary."""
    print(
        f"\ngame-day: {EXPERIMENT['name']}, started and halted through the control API "
        f"at {game.control}",
        file=out,
    )
    for fault in EXPERIMENT["faults"]:
        print(f"  fault: {describe_fault(fault)}, ttl {EXPERIMENT['ttl']} s", file=out)
    for line in [*game.actions, *(f"logged: {logfmt(m)}" for m in game.logs)]:
        print(f"  {line}", file=out)
    print(f"\n{format_bursts(game.bursts, guard)}", file=out)
    print(f"\nfrom {METRICS_PATH}, change over the game-day:", file=out)
    print(format_changes(game.changes), file=out)
    print("\n" + paragraph(explain_gameday(game, guard)), file=out)
