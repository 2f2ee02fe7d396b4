"""End to end: the middleware under a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

import tailguard
from tailguard import RoutePolicy, Tailguard
from tailguard.server import serve_in_thread

pytestmark = pytest.mark.e2e

SHORT = 0.05
FOREVER = 30.0
WAIT = 20.0  # generous upper bound for cross-thread signals on a loaded machine


class Signals:
    def __init__(self) -> None:
        self.handler_cancelled = threading.Event()
        self.child_cancelled = threading.Event()
        self.stream_started = threading.Event()
        self.remaining: list[float] = []


def build(signals: Signals) -> Starlette:
    async def ok(request: Request) -> Response:
        signals.remaining.append(tailguard.remaining())
        return PlainTextResponse("ok")

    async def hang(request: Request) -> Response:
        async def child() -> None:
            try:
                await asyncio.sleep(FOREVER)
            except asyncio.CancelledError:
                signals.child_cancelled.set()
                raise

        request.state.child = asyncio.create_task(child())
        try:
            await asyncio.sleep(FOREVER)
        except asyncio.CancelledError:
            signals.handler_cancelled.set()
            raise
        return PlainTextResponse("late")  # pragma: no cover

    async def stream(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b"x" * 1024
            signals.stream_started.set()
            try:
                await asyncio.sleep(FOREVER)
            except asyncio.CancelledError:
                signals.handler_cancelled.set()
                raise
            yield b"never"  # pragma: no cover

        return StreamingResponse(body(), media_type="text/plain")

    app = Starlette(routes=[Route("/ok", ok), Route("/hang", hang), Route("/stream", stream)])
    Tailguard(
        default=RoutePolicy(deadline=FOREVER),
        routes={"/hang": RoutePolicy(deadline=SHORT), "/stream": RoutePolicy(deadline=0.3)},
    ).install(app)
    return app


@pytest.fixture
def signals() -> Signals:
    return Signals()


@pytest.fixture
def server(signals: Signals) -> Iterator[str]:
    # log_level critical: uvicorn reports the deliberately aborted stream as an error
    with serve_in_thread(build(signals), log_level="critical") as url:
        yield url


def test_504_then_server_stays_healthy(server: str, signals: Signals) -> None:
    with httpx.Client(base_url=server, timeout=WAIT) as client:
        late = client.get("/hang")
        assert late.status_code == 504
        assert late.headers["x-tailguard-reason"] == "deadline_exceeded"
        assert signals.handler_cancelled.wait(WAIT)
        assert signals.child_cancelled.wait(WAIT)
        for _ in range(3):
            assert client.get("/ok").status_code == 200


def test_streaming_expiry_aborts_the_connection(server: str, signals: Signals) -> None:
    with httpx.Client(base_url=server, timeout=WAIT) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            with client.stream("GET", "/stream") as response:
                assert response.status_code == 200  # the start went out before expiry
                for _ in response.iter_bytes():
                    pass
        assert signals.handler_cancelled.wait(WAIT)
        assert client.get("/ok").status_code == 200


def test_client_disconnect_cancels_handler_and_children(signals: Signals) -> None:
    app = build(signals)
    app.user_middleware.clear()  # no deadline: only the disconnect can stop /hang
    Tailguard().install(app)
    with serve_in_thread(app, log_level="critical") as url:
        with httpx.Client(base_url=url, timeout=0.5) as client:
            with pytest.raises(httpx.ReadTimeout):
                client.get("/hang")  # gives up and closes the connection
        assert signals.handler_cancelled.wait(WAIT)
        assert signals.child_cancelled.wait(WAIT)


def test_inbound_header_over_http(server: str, signals: Signals) -> None:
    with httpx.Client(base_url=server, timeout=WAIT) as client:
        assert client.get("/ok", headers={"grpc-timeout": "2S"}).status_code == 200
        assert client.get("/ok", headers={"x-request-timeout-ms": "bogus"}).status_code == 200
    assert 0 < signals.remaining[0] <= 2
    assert 2 < signals.remaining[1] <= FOREVER


def test_serve_in_thread_reports_a_server_that_cannot_start(server: str) -> None:
    port = int(server.rsplit(":", 1)[1])
    with pytest.raises(RuntimeError, match="did not start"):
        with serve_in_thread(Starlette(), port=port, log_level="critical"):
            pass  # pragma: no cover
