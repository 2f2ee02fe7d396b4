"""``tailguard demo``, part two: a mini game-day that makes the shop's inventory slow.

After the budget table, :func:`run` serves the app again and plays a short
game-day against ``examples/shop.py``'s ``GET /stock/{item_id}``, which reads
through the ``inventory`` bulkhead (4 at a time, 8 waiting) within 250 ms:

1. a baseline burst to the stock route;
2. ``POST /_tailguard/experiments`` over HTTP with the bearer token: half the
   inventory calls get a log-normal delay (:data:`EXPERIMENT`);
3. a burst to the stock route with ``GET /items/{item_id}`` (no inventory)
   alongside, while ``GET /_tailguard/snapshot`` watches the bulkhead;
4. ``POST /_tailguard/halt``, the kill switch, then one more burst;
5. what changed on ``/metrics`` in the series that matter.

Requests go out on a fixed schedule (open loop, as real clients arrive), so a
shed request is not replaced at once by the next. Nothing here asserts a
timing: the report says what happened on this machine.

Chaos and the control API are switched on when the app is *created*, which
for ``tailguard demo`` is when the command imports it, in this process: it
does so inside :func:`chaos_environment`, which sets ``TAILGUARD_CHAOS=1`` and
a random ``TAILGUARD_TOKEN`` for the import only. An app created without them,
or without an ``inventory`` dependency, gets a one-line note instead.

>>> plan = stock_scenario(3)
>>> plan.label, plan.requests()
('GET /stock/{item_id}', ['/stock/1', '/stock/2', '/stock/3'])
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import secrets
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from typing import Any, TextIO

import httpx

from tailguard._gameday_report import (
    DEPENDENCY,
    EXPERIMENT,
    METRICS_PATH,
    Burst,
    GameDay,
    explain,
    format_bursts,
    format_changes,
    metric_changes,
    report,
)
from tailguard.chaos.control import ControlAPI
from tailguard.demo import CLIENT_TIMEOUT, Outcome, Scenario, Stopwatch, _send_one, find_guard
from tailguard.guard import Tailguard
from tailguard.server import serve_in_thread

__all__ = [
    "EXPERIMENT",
    "Burst",
    "GameDay",
    "chaos_environment",
    "explain",
    "format_bursts",
    "format_changes",
    "items_scenario",
    "metric_changes",
    "play",
    "report",
    "run",
    "stock_scenario",
]

CHAOS_ENV = "TAILGUARD_CHAOS"
TOKEN_ENV = "TAILGUARD_TOKEN"

RATE = 100.0
"""Stock requests per second; ``GET /items`` gets a quarter of that during the experiment."""

REQUESTS = {"baseline": 20, "during": 80, "after halt": 20}
"""Stock requests in each step."""


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


class _Sender:
    """Sends a scenario's requests on a fixed schedule, numbered for the stopwatch."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.ids = itertools.count()

    async def paced(self, scenario: Scenario, rate: float) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        async with asyncio.TaskGroup() as group:
            for n, path in enumerate(scenario.requests()):
                await asyncio.sleep(max(0.0, start + n / rate - loop.time()))
                sent = _send_one(self.client, scenario, path, f"gameday-{next(self.ids)}")
                tasks.append(group.create_task(sent))
        return [task.result() for task in tasks]


async def _control(client: httpx.AsyncClient, game: GameDay, path: str, body: object) -> bool:
    """``POST`` to the control API; the line goes to ``game.actions``. Whether it was 2xx."""
    line = f"POST {game.control}{path} ->"
    try:
        response = await client.post(game.control + path, json=body)
        answer = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        game.actions.append(f"{line} failed: {type(exc).__name__}: {exc}")
        return False
    if not response.is_success:
        detail = answer.get("detail") if isinstance(answer, dict) else answer
        game.actions.append(f"{line} {response.status_code}: {detail}")
        return False
    text = json.dumps(answer)
    game.actions.append(f"{line} {response.status_code} {text if len(text) < 40 else ''}".rstrip())
    return True


async def _watch(client: httpx.AsyncClient, game: GameDay, stop: asyncio.Event) -> None:
    """Reads the bulkhead from ``GET {control}/snapshot`` until ``stop``; keeps the peaks."""
    while not stop.is_set():
        try:
            response = await client.get(game.control + "/snapshot")
            limiter = response.json()["dependencies"][DEPENDENCY]["limiter"]
        except (httpx.HTTPError, ValueError, LookupError, TypeError):
            return
        for key in ("in_use", "queued", "max_concurrency", "max_queue"):
            game.peak[key] = max(game.peak.get(key, 0), int(limiter[key]))
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.02)


async def play(base_url: str, token: str, control: str) -> GameDay:
    """Play the game-day against the server at ``base_url``, its control API at ``control``."""
    game = GameDay(control)
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    auth = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        base_url=base_url, timeout=CLIENT_TIMEOUT, limits=limits, headers=auth
    ) as client:
        sender = _Sender(client)
        before = (await client.get(METRICS_PATH)).text
        baseline = stock_scenario(REQUESTS["baseline"])
        game.bursts.append(Burst("baseline", baseline, await sender.paced(baseline, RATE)))
        game.started = await _control(client, game, "/experiments", EXPERIMENT)
        try:
            stock = stock_scenario(REQUESTS["during"])
            items = items_scenario(REQUESTS["during"] // 4)
            stop = asyncio.Event()
            async with asyncio.TaskGroup() as group:
                group.create_task(_watch(client, game, stop))
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
            game.halted = await _control(client, game, "/halt", None)
        after = stock_scenario(REQUESTS["after halt"])
        game.bursts.append(Burst("after halt", after, await sender.paced(after, RATE)))
        game.changes = metric_changes(before, (await client.get(METRICS_PATH)).text)
    return game


def _target(app: object) -> tuple[Tailguard, str] | str:
    """The app's guard and control API prefix, or why the game-day cannot run."""
    guard = find_guard(app)
    if guard is None:
        return "the app has no tailguard guard"
    if not guard.chaos.enabled:
        return f"chaos is off in this app ({CHAOS_ENV} was not set when it was created)"
    control = next((a for _, a in guard.endpoints if isinstance(a, ControlAPI)), None)
    if control is None:
        return f"the app has no control API ({TOKEN_ENV} was not set when it was created)"
    if METRICS_PATH not in (path for path, _ in guard.endpoints):
        return f"the app does not serve {METRICS_PATH}"
    if DEPENDENCY not in guard.dependencies:
        return f"the app has no {DEPENDENCY!r} dependency"
    return guard, control.prefix


class _Collect(logging.Handler):
    """Keeps the chaos engine's audit lines for the report (and off stderr)."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def run(app: Any, *, control_token: str, out: TextIO | None = None) -> None:
    """Serve ``app``, play the game-day with ``control_token``, print the report.

    Prints a one-line note instead when the app cannot play it (chaos off,
    no control API or ``/metrics``, no ``inventory`` dependency).
    """
    stream = out if out is not None else sys.stdout
    target = _target(app)
    if isinstance(target, str):
        print(f"\ngame-day skipped: {target}", file=stream)
        return
    guard, control = target
    stopwatch = Stopwatch(app)
    logger, collect = logging.getLogger("tailguard.chaos"), _Collect()
    logger.addHandler(collect)
    try:
        # Like demo.run: uvicorn in one thread, the client's event loop in another.
        with (
            serve_in_thread(stopwatch, log_level="critical") as base_url,
            ThreadPoolExecutor(1, thread_name_prefix="tailguard-demo-client") as client,
        ):
            game = client.submit(lambda: asyncio.run(play(base_url, control_token, control)))
            played = game.result()
    finally:
        logger.removeHandler(collect)
    played.bursts = [Burst(b.step, b.scenario, stopwatch.attach(b.outcomes)) for b in played.bursts]
    played.logs = collect.messages
    report(played, guard, out=stream)
