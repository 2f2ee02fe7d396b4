from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

import tailguard
from tailguard import DeadlineExceeded, RoutePolicy, Tailguard, TailguardMiddleware
from tests.asgi import Client, call, http_scope

pytestmark = pytest.mark.anyio

SHORT = 0.02  # a budget that always runs out before...
FOREVER = 30.0  # ...work that would take this long


class Probe:
    """Events a handler sets so tests can order themselves without sleeping."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.finished = asyncio.Event()
        self.seen_remaining: list[float] = []
        self.deadline: tailguard.Deadline | None = None


def make_app(probe: Probe, **guard_options: Any) -> Starlette:
    async def fast(request: Request) -> Response:
        probe.seen_remaining.append(tailguard.remaining())
        return PlainTextResponse("ok")

    async def slow(request: Request) -> Response:
        probe.started.set()
        try:
            await asyncio.sleep(FOREVER)
        except asyncio.CancelledError:
            probe.cancelled.set()
            raise
        return PlainTextResponse("late")  # pragma: no cover

    async def spawner(request: Request) -> Response:
        async def child() -> None:
            try:
                await asyncio.sleep(FOREVER)
            except asyncio.CancelledError:
                probe.cancelled.set()
                raise

        request.state.child = asyncio.create_task(child())
        await asyncio.sleep(FOREVER)
        return PlainTextResponse("late")  # pragma: no cover

    async def stream(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b"first chunk\n"
            probe.started.set()
            await asyncio.sleep(FOREVER)
            yield b"never"  # pragma: no cover

        return StreamingResponse(body())

    async def inner_scope(request: Request) -> Response:
        with tailguard.deadline(SHORT):
            await asyncio.sleep(FOREVER)
        return PlainTextResponse("late")  # pragma: no cover

    async def background(request: Request) -> Response:
        probe.deadline = tailguard.current_deadline()

        async def after() -> None:
            await probe.started.wait()
            probe.seen_remaining.append(tailguard.remaining())
            probe.finished.set()

        return PlainTextResponse("ok", background=BackgroundTask(after))

    async def swallow(request: Request) -> Response:
        try:
            await asyncio.sleep(FOREVER)
        except asyncio.CancelledError:
            pass
        return PlainTextResponse("swallowed")

    async def ws(websocket: WebSocket) -> None:  # pragma: no cover - never connected
        await websocket.accept()

    app = Starlette(
        routes=[
            Route("/fast", fast),
            Route("/slow", slow),
            Route("/spawner", spawner),
            Route("/stream", stream),
            Route("/inner", inner_scope),
            Route("/background", background),
            Route("/swallow", swallow),
            WebSocketRoute("/ws", ws),
        ]
    )
    guard_options.setdefault("default", RoutePolicy(deadline=FOREVER))
    guard_options.setdefault(
        "routes",
        {
            "/slow": RoutePolicy(deadline=SHORT),
            "/spawner": RoutePolicy(deadline=SHORT),
            "/stream": RoutePolicy(deadline=0.2),
            "/background": RoutePolicy(deadline=SHORT),
            "/swallow": RoutePolicy(deadline=SHORT),
        },
    )
    Tailguard(**guard_options).install(app)
    return app


async def get(app: Starlette, path: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get(path, **kwargs)


async def test_handler_sees_its_route_budget() -> None:
    probe = Probe()
    response = await get(make_app(probe), "/fast")
    assert response.status_code == 200
    assert 0 < probe.seen_remaining[0] <= FOREVER
    assert tailguard.remaining() == math.inf  # nothing leaks out of the request


async def test_no_budget_anywhere_means_infinite_remaining() -> None:
    probe = Probe()
    response = await get(make_app(probe, default=RoutePolicy(), routes={}), "/fast")
    assert response.status_code == 200
    assert probe.seen_remaining == [math.inf]


async def test_expiry_before_response_is_a_504_and_cancels_the_handler() -> None:
    probe = Probe()
    response = await get(make_app(probe), "/slow")
    assert response.status_code == 504
    assert response.headers["x-tailguard-reason"] == "deadline_exceeded"
    assert response.text == "deadline exceeded\n"
    assert probe.cancelled.is_set()


async def test_expiry_cancels_tasks_the_handler_spawned() -> None:
    probe = Probe()
    response = await get(make_app(probe), "/spawner")
    assert response.status_code == 504
    await asyncio.wait_for(probe.cancelled.wait(), FOREVER)


async def test_unmatched_paths_use_the_default_policy() -> None:
    probe = Probe()
    app = make_app(probe, default=RoutePolicy(deadline=SHORT))
    assert (await get(app, "/nowhere")).status_code == 404


async def test_inbound_header_shrinks_the_budget() -> None:
    probe = Probe()
    app = make_app(probe, routes={"/slow": RoutePolicy(deadline=FOREVER)})
    response = await get(app, "/slow", headers={"x-request-timeout-ms": "20"})
    assert response.status_code == 504


async def test_inbound_header_never_extends_the_budget() -> None:
    probe = Probe()
    app = make_app(probe, routes={"/fast": RoutePolicy(deadline=0.5)})
    await get(app, "/fast", headers={"x-request-timeout-ms": "60000", "grpc-timeout": "1H"})
    assert 0 < probe.seen_remaining[0] <= 0.5


async def test_inbound_header_sets_a_budget_where_the_route_has_none() -> None:
    probe = Probe()
    app = make_app(probe, default=RoutePolicy(), routes={})
    await get(app, "/fast", headers={"grpc-timeout": "3S"})
    assert 0 < probe.seen_remaining[0] <= 3


@pytest.mark.parametrize("value", ["abc", "-5", "0", "1e9", ""])
async def test_malformed_inbound_header_is_ignored(value: str) -> None:
    probe = Probe()
    app = make_app(probe, routes={"/fast": RoutePolicy(deadline=0.5)})
    response = await get(app, "/fast", headers={"x-request-timeout-ms": value})
    assert response.status_code == 200
    assert 0 < probe.seen_remaining[0] <= 0.5


async def test_inbound_deadlines_can_be_switched_off() -> None:
    probe = Probe()
    app = make_app(probe, routes={"/slow": RoutePolicy(deadline=FOREVER)}, inbound_deadlines=False)
    task = asyncio.create_task(get(app, "/slow", headers={"x-request-timeout-ms": "1"}))
    await probe.started.wait()
    assert not task.done()  # still running: the header was not honoured
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_custom_deadline_header() -> None:
    probe = Probe()
    app = make_app(
        probe, routes={"/slow": RoutePolicy(deadline=FOREVER)}, deadline_header="x-budget-ms"
    )
    assert (await get(app, "/slow", headers={"x-budget-ms": "10"})).status_code == 504


async def test_expiry_mid_stream_aborts_without_a_second_start() -> None:
    app = make_app(Probe())
    sent: list[dict[str, Any]] = []

    async def record(message: Any) -> None:
        sent.append(message)

    with pytest.raises(DeadlineExceeded, match="response aborted"):
        await app(http_scope("/stream"), Client().receive, record)
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert len(starts) == 1
    assert starts[0]["status"] == 200
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    assert bodies[0]["body"] == b"first chunk\n"
    assert all(m.get("more_body") for m in bodies)  # never completed


async def test_inner_scope_expiry_unhandled_becomes_504() -> None:
    probe = Probe()
    response = await get(make_app(probe), "/inner")
    assert response.status_code == 504
    assert response.headers["x-tailguard-reason"] == "deadline_exceeded"


async def test_background_work_after_the_response_is_not_cut_off() -> None:
    probe = Probe()
    app = make_app(probe)
    client = Client()
    request = asyncio.create_task(call(app, "/background", client=client))
    # Let the request's budget run out while the background task still waits.
    while probe.deadline is None or not probe.deadline.expired():
        await asyncio.sleep(SHORT / 4)
    probe.started.set()
    sent = await asyncio.wait_for(request, FOREVER)
    assert sent.status == 200
    assert probe.finished.is_set()
    assert probe.seen_remaining == [math.inf]  # the request budget no longer applies


async def test_handler_that_swallows_cancellation_keeps_its_own_response() -> None:
    probe = Probe()
    response = await get(make_app(probe), "/swallow")
    # The handler returned its own response after the deadline fired; the
    # middleware lets it through because the response is the handler's.
    assert response.status_code == 200
    assert response.text == "swallowed"


async def test_lifespan_passes_through_and_installs_the_task_factory() -> None:
    probe = Probe()
    app = make_app(probe)
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert [m["type"] for m in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]


async def test_websocket_scope_passes_through_untouched() -> None:
    seen: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    middleware = TailguardMiddleware(inner, default=RoutePolicy(deadline=SHORT))
    await middleware({"type": "websocket", "path": "/ws"}, Client().receive, Client().receive)
    assert seen == ["websocket"]


async def test_client_disconnect_cancels_handler_and_spawned_tasks() -> None:
    probe = Probe()
    app = make_app(probe, routes={})
    client = Client()
    request = asyncio.create_task(call(app, "/spawner", client=client))
    while client.reads < 1:
        await asyncio.sleep(0.005)
    client.gone.set()
    sent = await asyncio.wait_for(request, FOREVER)
    assert sent.messages == []  # nobody to answer
    await asyncio.wait_for(probe.cancelled.wait(), FOREVER)


async def test_external_cancellation_propagates() -> None:
    probe = Probe()
    app = make_app(probe, routes={})
    request = asyncio.create_task(call(app, "/slow"))
    await probe.started.wait()
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    assert probe.cancelled.is_set()


def test_middleware_constructor_forms() -> None:
    async def inner(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
        pass

    guard = Tailguard(default=RoutePolicy(deadline=1.0))
    assert TailguardMiddleware(inner, guard=guard).guard is guard
    built = TailguardMiddleware(inner, routes={"/x": RoutePolicy(deadline=0.5)})
    assert built.guard.routes.lookup("GET", "/x").policy.deadline == 0.5
    with pytest.raises(TypeError, match="either guard="):
        TailguardMiddleware(inner, guard=guard, default=RoutePolicy())


def test_add_middleware_by_hand() -> None:
    app = Starlette(routes=[Route("/x", lambda r: PlainTextResponse("ok"))])
    app.add_middleware(TailguardMiddleware, routes={"/x": RoutePolicy(deadline=1.0)})
    assert any(m.cls is TailguardMiddleware for m in app.user_middleware)


def test_install_needs_a_starlette_app() -> None:
    async def raw(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
        pass

    with pytest.raises(TypeError, match="TailguardMiddleware"):
        Tailguard().install(raw)
    with pytest.raises(TypeError, match="routes must be a mapping"):
        Tailguard(routes=[("/x", RoutePolicy())])  # type: ignore[arg-type]


def echo_app() -> tuple[Starlette, Probe]:
    probe = Probe()

    async def echo(request: Request) -> Response:
        body = await request.body()
        if request.url.path == "/echo-then-hang":
            probe.started.set()
            try:
                await asyncio.sleep(FOREVER)
            except asyncio.CancelledError:
                probe.cancelled.set()
                raise
        return PlainTextResponse(body)

    async def gone(request: Request) -> Response:
        message = await request.receive()
        return PlainTextResponse(message["type"])

    app = Starlette(
        routes=[
            Route("/echo", echo, methods=["POST"]),
            Route("/echo-then-hang", echo, methods=["POST"]),
            Route("/gone", gone),
        ]
    )
    Tailguard(default=RoutePolicy(deadline=FOREVER)).install(app)
    return app, probe


async def test_the_app_reads_its_body_through_tailguard() -> None:
    app, _ = echo_app()
    sent = await call(app, "/echo", method="POST", client=Client([b"ab", b"cd", b"ef"]))
    assert (sent.status, sent.body) == (200, b"abcdef")


async def test_a_disconnect_the_app_reads_itself_is_passed_on() -> None:
    app, _ = echo_app()
    client = Client([])
    client.gone.set()
    sent = await call(app, "/gone", client=client)
    assert sent.body == b"http.disconnect"


class SlowUpload(Client):
    """The first chunk arrives at once, the last one only when the test says so."""

    def __init__(self) -> None:
        super().__init__([])
        self.last_chunk = asyncio.Event()

    async def receive(self) -> Any:
        self.reads += 1
        if self.reads == 1:
            return {"type": "http.request", "body": b"first-", "more_body": True}
        if self.reads == 2:
            await self.last_chunk.wait()
            return {"type": "http.request", "body": b"last", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}


async def test_watching_starts_only_after_the_apps_own_read_returns() -> None:
    from tailguard.middleware.asgi import DISCONNECT_GRACE

    app, probe = echo_app()
    client = SlowUpload()
    request = asyncio.create_task(call(app, "/echo-then-hang", method="POST", client=client))
    async with asyncio.timeout(FOREVER):
        while client.reads < 2:
            await asyncio.sleep(0.001)
    await asyncio.sleep(DISCONNECT_GRACE * 3)  # promoted while the app is inside receive()
    assert client.reads == 2  # nobody else read meanwhile
    client.last_chunk.set()
    await probe.started.wait()
    async with asyncio.timeout(FOREVER):
        while client.reads < 3:  # the watcher took over and waits for the disconnect
            await asyncio.sleep(0.001)
    client.gone.set()
    sent = await asyncio.wait_for(request, FOREVER)
    assert sent.messages == []
    assert probe.cancelled.is_set()
