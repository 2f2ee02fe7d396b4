"""End to end: a Dependency's httpx transport calling a real uvicorn server on 127.0.0.1.

The server counts the requests it is handling at once; each handler waits for
the test to open a gate, so concurrency is observed while it lasts rather than
inferred from timings.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from typing import cast

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

import tailguard
from tailguard import DeadlineExceeded
from tailguard.admission import Rejected
from tailguard.dependency import Dependency
from tailguard.server import serve_in_thread

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

SHORT = 0.05
WAIT = 20.0
"""A generous bound for cross-thread signals on a loaded machine."""


class Downstream:
    """The server's side: how many requests it is handling, and a gate that holds them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0
        self.total = 0
        self.gate = threading.Event()
        self.budgets: list[str] = []

    async def held(self, request: Request) -> Response:
        with self.lock:
            self.active += 1
            self.total += 1
            self.peak = max(self.peak, self.active)
            self.budgets.append(request.headers.get("x-request-timeout-ms", "-"))
        try:
            await self.wait_for_gate()
        finally:
            with self.lock:
                self.active -= 1
        return PlainTextResponse("done")

    async def stream(self, request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b"first"
            await self.wait_for_gate()
            yield b"rest"

        return StreamingResponse(body(), media_type="text/plain")

    async def wait_for_gate(self) -> None:
        give_up = time.monotonic() + WAIT
        while not self.gate.is_set() and time.monotonic() < give_up:
            await asyncio.sleep(0.002)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/held", self.held), Route("/stream", self.stream)])


@pytest.fixture
def downstream() -> Iterator[tuple[Downstream, str]]:
    server = Downstream()
    with serve_in_thread(server.app(), log_level="critical") as url:
        try:
            yield server, url
        finally:
            server.gate.set()


async def wait_until(condition: Callable[[], bool]) -> None:
    give_up = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < give_up, "condition never became true"
        await asyncio.sleep(0.002)


def client(dep: Dependency, url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, transport=dep.transport(), timeout=WAIT)


async def test_bulkhead_limits_concurrency_seen_by_the_server(
    downstream: tuple[Downstream, str],
) -> None:
    server, url = downstream
    dep = Dependency("downstream", max_concurrency=2, max_queue=8)
    async with client(dep, url) as http:
        calls = [asyncio.create_task(http.get("/held")) for _ in range(6)]
        await wait_until(lambda: server.active == 2 and dep.limiter.queued == 4)
        server.gate.set()
        responses = await asyncio.gather(*calls)
    assert [r.status_code for r in responses] == [200] * 6
    assert (server.total, server.peak) == (6, 2)
    assert (dep.limiter.in_use, dep.limiter.queued) == (0, 0)


async def test_full_bulkhead_rejects_without_calling(downstream: tuple[Downstream, str]) -> None:
    server, url = downstream
    dep = Dependency("downstream", max_concurrency=1)
    async with client(dep, url) as http:
        first = asyncio.create_task(http.get("/held"))
        await wait_until(lambda: server.active == 1)
        with pytest.raises(Rejected) as caught:
            await http.get("/held")
        assert caught.value.reason == "queue_full"
        server.gate.set()
        assert (await first).status_code == 200
    assert server.total == 1


async def test_wait_for_a_slot_ends_at_the_deadline(downstream: tuple[Downstream, str]) -> None:
    server, url = downstream
    dep = Dependency("downstream", max_concurrency=1, max_queue=4)
    async with client(dep, url) as http:
        first = asyncio.create_task(http.get("/held"))
        await wait_until(lambda: server.active == 1)
        with pytest.raises(DeadlineExceeded), tailguard.deadline(SHORT):
            await http.get("/held")  # would wait until the gate opens, 20 s
        assert dep.limiter.queued == 0
        server.gate.set()
        await first
    assert server.total == 1


async def test_remaining_budget_reaches_the_server(downstream: tuple[Downstream, str]) -> None:
    server, url = downstream
    server.gate.set()
    dep = Dependency("downstream", max_concurrency=1)
    async with client(dep, url) as http:
        await http.get("/held")
        with tailguard.deadline(WAIT):
            await http.get("/held")
    untimed, timed = server.budgets
    assert untimed == "-"
    assert 0 < int(timed) <= WAIT * 1000


async def test_streamed_response_holds_the_slot_until_closed(
    downstream: tuple[Downstream, str],
) -> None:
    server, url = downstream
    dep = Dependency("downstream", max_concurrency=1)
    async with client(dep, url) as http:
        async with http.stream("GET", "/stream") as response:
            chunks = cast(AsyncGenerator[bytes, None], response.aiter_raw())
            assert await chunks.__anext__() == b"first"
            assert dep.limiter.in_use == 1
            await chunks.aclose()
        assert dep.limiter.in_use == 0
        server.gate.set()
        assert (await http.get("/stream")).text == "firstrest"
    assert dep.limiter.in_use == 0
