"""Load for a game-day: requests described as :class:`Scenario`\\ s, sent, and how each ended.

Two ways to send: :func:`send_burst` keeps up to ``concurrency`` requests in
flight (closed loop, for a table of outcomes per route), and
:class:`PacedSender` sends on a fixed schedule (open loop, as real clients
arrive, so a shed request is not replaced at once by the next). Each request
carries an ``x-tailguard-demo-id`` header; a :class:`Stopwatch` around the
app times it on the server.

The client is httpx, an optional extra: it is imported when a request is
sent (:func:`import_httpx`), so this module imports without it.

>>> scenario = Scenario("GET", "/items/{item_id}", ("/items/1", "/items/2"), 3)
>>> scenario.label, scenario.requests()
('GET /items/{item_id}', ['/items/1', '/items/2', '/items/1'])
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import ModuleType
from typing import TYPE_CHECKING, Literal

from starlette.types import ASGIApp, Receive, Scope, Send

from tailguard.middleware.responses import REASON_HEADER

if TYPE_CHECKING:
    import httpx

__all__ = [
    "CLIENT_TIMEOUT",
    "CONCURRENCY",
    "DEMO_ID_HEADER",
    "Kind",
    "Outcome",
    "PacedSender",
    "Scenario",
    "Stopwatch",
    "import_httpx",
    "send",
    "send_burst",
]

Kind = Literal["2xx", "504", "aborted", "other"]
"""How one request ended, as the client saw it."""

CONCURRENCY = 16
"""Requests in flight at once: enough for a burst, few enough that the server's
event loop never gets so busy that queueing eats a fast route's budget."""

CLIENT_TIMEOUT = 30.0
"""The client's own timeout: far beyond any budget, so tailguard always acts first."""

DEMO_ID_HEADER = "x-tailguard-demo-id"
"""Numbers each request, so the :class:`Stopwatch` can time it."""

_REASON = REASON_HEADER.decode("latin-1")


def import_httpx() -> ModuleType:
    """httpx, the client that sends the load: an ``ImportError`` naming the extra if missing.

    >>> import_httpx().__name__
    'httpx'
    """
    try:
        import httpx
    except ImportError as exc:
        raise ImportError(
            f"sending load needs httpx: pip install 'tailguard[httpx]' ({exc})"
        ) from exc
    return httpx


@dataclass(frozen=True, slots=True)
class Scenario:
    """``count`` requests to one route, all sent the same way.

    >>> Scenario("GET", "/r", ("/r",), 1, (("x-request-timeout-ms", "50"),)).name
    'GET /r with x-request-timeout-ms: 50'
    """

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


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request: how it ended for the client, and how long it took.

    >>> Outcome("2xx", "0", client_seconds=0.5, server_seconds=0.01).seconds
    0.01
    """

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
    """ASGI wrapper that times each request carrying a ``x-tailguard-demo-id`` header.

    >>> from starlette.applications import Starlette
    >>> Stopwatch(Starlette()).seconds
    {}
    """

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


async def send(
    client: httpx.AsyncClient, scenario: Scenario, path: str, request_id: str
) -> Outcome:
    """Send one of ``scenario``'s requests to ``path``; how it ended. Never raises for HTTP.

    A 504 counts as ``"504"`` only with tailguard's ``x-tailguard-reason:
    deadline_exceeded``; a connection dropped mid-response is ``"aborted"``.
    """
    httpx = import_httpx()
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
    httpx = import_httpx()
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
            outcome = await send(client, scenarios[index], path, request_id)
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


class PacedSender:
    """Sends scenarios' requests on a fixed schedule (open loop), numbered for the stopwatch.

    Request ids are ``{prefix}-0``, ``{prefix}-1``, ... across every call.
    """

    def __init__(self, client: httpx.AsyncClient, prefix: str = "gameday") -> None:
        self.client = client
        self.prefix = prefix
        self._ids = itertools.count()

    async def paced(self, scenario: Scenario, rate: float) -> list[Outcome]:
        """Send ``scenario``'s requests ``1 / rate`` seconds apart; their outcomes, in order."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        async with asyncio.TaskGroup() as group:
            for n, path in enumerate(scenario.requests()):
                await asyncio.sleep(max(0.0, start + n / rate - loop.time()))
                request_id = f"{self.prefix}-{next(self._ids)}"
                tasks.append(group.create_task(send(self.client, scenario, path, request_id)))
        return [task.result() for task in tasks]
