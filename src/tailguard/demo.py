"""``tailguard demo``: serve an app, send it a short burst of requests, show what tailguard did.

:func:`run` serves the app under uvicorn on 127.0.0.1, sends the burst with
:func:`send_burst`, and prints :func:`format_table` and :func:`explain`.
Given the app's control token, a mini game-day follows: see
:mod:`tailguard.demo_gameday`.

The burst (:func:`shop_plan`) is written for ``examples/shop.py`` and is
deterministic by design: every request either fits its budget or overruns it
by a wide margin, so the counts come out the same on a fast laptop and on a
loaded CI machine; only the latencies vary.

>>> [scenario.label for scenario in shop_plan(2)][:2]
['GET /items/{item_id}', 'GET /search']
"""

from __future__ import annotations

import asyncio
import sys
import textwrap
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Literal, TextIO

import httpx
from starlette.types import ASGIApp, Receive, Scope, Send

from tailguard._demo_report import _REASON, Row, explain, format_table
from tailguard.guard import Tailguard
from tailguard.middleware.asgi import TailguardMiddleware
from tailguard.server import serve_in_thread

__all__ = [
    "Budget",
    "Outcome",
    "Row",
    "Scenario",
    "Stopwatch",
    "budget_for",
    "explain",
    "find_guard",
    "format_table",
    "report",
    "run",
    "send_burst",
    "shop_plan",
]

Kind = Literal["2xx", "504", "aborted", "other"]
"""How one request ended, as the client saw it."""

CONCURRENCY = 16
"""Requests in flight at once: enough for a burst, few enough that the server's
event loop never gets so busy that queueing eats a fast route's budget."""

CLIENT_TIMEOUT = 30.0
"""The client's own timeout: far beyond any budget, so tailguard always acts first."""

DEMO_ID_HEADER = "x-tailguard-demo-id"
"""Numbers each request of the burst, so the :class:`Stopwatch` can time it."""

WIDTH = 100
"""Column the explanation is wrapped at."""


@dataclass(frozen=True, slots=True)
class Scenario:
    """A row of the demo: ``count`` requests to one route, all sent the same way."""

    method: str
    template: str
    """The route template as the app declares it; the budget is looked up by it."""
    paths: tuple[str, ...]
    """Concrete paths, query string included, used in turn."""
    count: int
    headers: tuple[tuple[str, str], ...] = ()
    """Extra request headers, such as an inbound deadline."""

    @property
    def label(self) -> str:
        """``METHOD /template``, as in a route key."""
        return f"{self.method} {self.template}"

    @property
    def name(self) -> str:
        """The label, plus the extra headers if there are any."""
        if not self.headers:
            return self.label
        sent = ", ".join(f"{header}: {value}" for header, value in self.headers)
        return f"{self.label} with {sent}"

    def requests(self) -> list[str]:
        """The path of each of the ``count`` requests, cycling through ``paths``."""
        return [self.paths[n % len(self.paths)] for n in range(self.count)]


def shop_plan(requests: int) -> list[Scenario]:
    """The burst for ``examples.shop``: ``requests`` per route, plus one with a tight header.

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


@dataclass(frozen=True, slots=True)
class Budget:
    """The budget a scenario's requests get, and where it comes from."""

    seconds: float | None
    """The effective budget; ``None`` when no deadline applies."""
    source: str
    """The route key that set it, ``default``, or the inbound header that shrank it."""
    route_seconds: float | None
    """The route's own budget, before inbound headers."""
    header: str | None = None
    """The inbound deadline header that shrank the route's budget, if one did."""


def find_guard(app: object) -> Tailguard | None:
    """The :class:`Tailguard` an app is guarded by, or ``None`` if there is none.

    Understands ``guard.install(app)`` and ``app.add_middleware(TailguardMiddleware, ...)``
    on Starlette and FastAPI apps, and an app wrapped as ``TailguardMiddleware(app, ...)``.
    """
    if isinstance(app, TailguardMiddleware):
        return app.guard
    for middleware in getattr(app, "user_middleware", ()):
        if getattr(middleware, "cls", None) is TailguardMiddleware:
            # Build it the way the app will, around an app that is never called.
            return TailguardMiddleware(_unused, *middleware.args, **middleware.kwargs).guard
    return None


async def _unused(scope: Scope, receive: Receive, send: Send) -> None:  # pragma: no cover
    raise AssertionError("find_guard() builds a middleware only to read its guard")


def budget_for(guard: Tailguard | None, scenario: Scenario) -> Budget | None:
    """The budget ``guard`` gives ``scenario``'s requests; ``None`` without a guard.

    Uses the guard's own route table and inbound-header rules, so it is the
    budget the middleware computes for these requests.
    """
    if guard is None:
        return None
    resolved = guard.routes.lookup(scenario.method, scenario.template)
    route_seconds = resolved.policy.deadline
    if guard.inbound is not None:
        sent = [(h.lower().encode("latin-1"), v.encode("latin-1")) for h, v in scenario.headers]
        found = guard.inbound.budget(sent)
        if found is not None and (route_seconds is None or found[0] < route_seconds):
            return Budget(found[0], found[1], route_seconds, header=found[1])
    return Budget(route_seconds, resolved.key or "default", route_seconds)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request: how it ended for the client, and how long it took."""

    kind: Kind
    request_id: str
    """Its ``x-tailguard-demo-id``, to match it with the server's timing."""
    client_seconds: float
    """From sending the request to the end of its body (or its failure), at the client."""
    status: int | None = None
    body: bytes = b""
    """The body of a 2xx response, for the explanation; empty otherwise."""
    server_seconds: float | None = None
    """From the request reaching the app to the app returning, if the server saw it."""

    @property
    def seconds(self) -> float:
        """The server's timing when there is one, else the client's.

        The demo's client and server share a process, so the client's clock
        also counts waiting for its own event loop and for the GIL.
        """
        return self.server_seconds if self.server_seconds is not None else self.client_seconds


class Stopwatch:
    """ASGI wrapper that times each request carrying a ``x-tailguard-demo-id`` header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.seconds: dict[str, float] = {}
        """Seconds each request spent in the app, by demo id (complete once the server stops)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = None
        if scope["type"] == "http":
            request_id = dict(scope["headers"]).get(DEMO_ID_HEADER.encode("latin-1"))
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            if request_id is not None:
                self.seconds[request_id.decode("latin-1")] = time.perf_counter() - started

    def attach(self, outcomes: Sequence[Outcome]) -> list[Outcome]:
        """``outcomes`` with the server's timing filled in where it has one."""
        return [replace(o, server_seconds=self.seconds.get(o.request_id)) for o in outcomes]


async def _send_one(
    client: httpx.AsyncClient, scenario: Scenario, path: str, request_id: str
) -> Outcome:
    headers = [*scenario.headers, (DEMO_ID_HEADER, request_id)]
    started = time.perf_counter()
    try:
        async with client.stream(scenario.method, path, headers=headers) as response:
            body = await response.aread()
    except (httpx.RemoteProtocolError, httpx.ReadError):
        # The server dropped the connection mid-response: a response whose
        # budget ran out after it had started, aborted by tailguard.
        return Outcome("aborted", request_id, time.perf_counter() - started)
    except httpx.HTTPError:
        return Outcome("other", request_id, time.perf_counter() - started)
    elapsed = time.perf_counter() - started
    status = response.status_code
    if 200 <= status < 300:
        return Outcome("2xx", request_id, elapsed, status, body)
    if status == 504 and response.headers.get(_REASON) == "deadline_exceeded":
        return Outcome("504", request_id, elapsed, status)
    return Outcome("other", request_id, elapsed, status)


async def send_burst(
    base_url: str,
    scenarios: Sequence[Scenario],
    *,
    concurrency: int = CONCURRENCY,
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[list[Outcome]]:
    """Send all the scenarios' requests, ``concurrency`` at a time; outcomes per scenario.

    The scenarios' requests are interleaved, so each route sees the others'
    load. Each request carries a ``x-tailguard-demo-id`` header, its position
    in the burst. Transport failures become outcomes; nothing is raised.
    """
    order = sorted(
        (n, index, path)
        for index, scenario in enumerate(scenarios)
        for n, path in enumerate(scenario.requests())
    )
    results: list[list[Outcome]] = [[] for _ in scenarios]
    slots = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def one(index: int, path: str, request_id: str) -> None:
        async with slots:
            outcome = await _send_one(client, scenarios[index], path, request_id)
        results[index].append(outcome)

    async with (
        httpx.AsyncClient(
            base_url=base_url, timeout=CLIENT_TIMEOUT, limits=limits, transport=transport
        ) as client,
        asyncio.TaskGroup() as group,
    ):
        for number, (_, index, path) in enumerate(order):
            group.create_task(one(index, path, str(number)))
    return results


def run(
    app: ASGIApp,
    *,
    requests: int = 8,
    scenarios: Sequence[Scenario] | None = None,
    out: TextIO | None = None,
    control_token: str | None = None,
) -> int:
    """Serve ``app`` under uvicorn, send the burst, print the table and the explanation.

    ``scenarios`` defaults to :func:`shop_plan` with ``requests`` per route;
    ``out`` to ``sys.stdout``. With the app's ``control_token``, a mini
    game-day follows (:func:`tailguard.demo_gameday.run`). Returns the exit
    status, 0.
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
    report(app, plan, [stopwatch.attach(found) for found in outcomes], out=stream)
    if control_token is not None:
        from tailguard import demo_gameday

        demo_gameday.run(app, control_token=control_token, out=stream)
    return 0


def report(
    app: object, plan: Sequence[Scenario], outcomes: Sequence[Sequence[Outcome]], *, out: TextIO
) -> None:
    """Print the table and the explanation for ``plan``'s ``outcomes``.

    The budgets come from ``app``'s guard, as :func:`find_guard` finds it.
    """
    guard = find_guard(app)
    rows = [
        Row(scenario, budget_for(guard, scenario), found)
        for scenario, found in zip(plan, outcomes, strict=True)
    ]
    print(format_table(rows), file=out)
    print("latency: time in the app, from the request arriving to its response ending\n", file=out)
    print(textwrap.fill(explain(rows), width=WIDTH, break_on_hyphens=False), file=out)
