"""Route keys are checked against the app's routes at startup; routes_report() lists them."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route

from tailguard import RoutePolicy, Tailguard
from tailguard.middleware.asgi import RouteKeyError
from tailguard.routing.matching import RouteTable
from tailguard.routing.report import AppRoute, app_routes, check_routes

pytestmark = pytest.mark.anyio

FAST = RoutePolicy(deadline=0.1)


def fastapi_app() -> FastAPI:
    app = FastAPI()
    items = APIRouter(prefix="/api")

    @items.get("/items/{item_id}")
    async def get_item(item_id: str) -> str:
        return item_id

    @items.post("/orders")
    async def post_order() -> str:
        return "ok"

    app.include_router(items)
    return app


async def run_lifespan(app: Any) -> list[dict[str, Any]]:
    """Drive the app's lifespan startup and shutdown; the messages it sent."""
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    return sent


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tailguard.routing"]


async def test_a_key_without_the_router_prefix_is_reported_at_startup(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard = Tailguard(
        routes={"GET /items/{item_id}": FAST, "GET /api/items/{item_id}": FAST},
        registry=CollectorRegistry(),
    )
    app = guard.install(fastapi_app(), tracing=False)
    with caplog.at_level(logging.WARNING, logger="tailguard.routing"):
        sent = await run_lifespan(app)
    assert sent[0]["type"] == "lifespan.startup.complete"
    warned = warnings_of(caplog)
    assert len(warned) == 1  # the prefixed key matches: no word about it
    assert "'GET /items/{item_id}' matches no route" in warned[0]
    assert "closest route: 'GET /api/items/{item_id}'" in warned[0]
    report = guard.routes_report()
    assert [u["key"] for u in report["unmatched_keys"]] == ["GET /items/{item_id}"]
    resolved = {(r["method"], r["route"]): r["key"] for r in report["routes"]}
    assert resolved[("GET", "/api/items/{item_id}")] == "GET /api/items/{item_id}"
    assert resolved[("POST", "/api/orders")] is None  # the default policy
    assert guard.snapshot()["routes"] == report


async def test_strict_fails_startup_naming_the_key() -> None:
    guard = Tailguard(routes={"GET /items/{item_id}": FAST}, strict=True, metrics=False)
    app = guard.install(fastapi_app(), tracing=False)
    sent = await run_lifespan(app)
    assert sent[0]["type"] == "lifespan.startup.failed"
    assert "'GET /items/{item_id}'" in sent[0]["message"]
    assert "'GET /api/items/{item_id}'" in sent[0]["message"]


async def test_strict_with_matching_keys_starts() -> None:
    guard = Tailguard(routes={"GET /api/items/{item_id}": FAST}, strict=True, metrics=False)
    sent = await run_lifespan(guard.install(fastapi_app(), tracing=False))
    assert sent[0]["type"] == "lifespan.startup.complete"


async def test_without_lifespan_the_first_request_checks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard = Tailguard(routes={"POST /api/items/{item_id}": FAST}, registry=CollectorRegistry())
    app = guard.install(fastapi_app(), tracing=False)
    transport = httpx.ASGITransport(app=app)  # runs no lifespan
    with caplog.at_level(logging.WARNING, logger="tailguard.routing"):
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/api/items/1")).status_code == 200
            assert (await client.get("/api/items/2")).status_code == 200
    warned = warnings_of(caplog)
    assert len(warned) == 1  # once, not per request
    assert "/api/items/{item_id} allows GET, not POST" in warned[0]


async def test_strict_without_lifespan_refuses_requests() -> None:
    guard = Tailguard(routes={"/nowhere": FAST}, strict=True, metrics=False)
    app = guard.install(Starlette(routes=[Route("/here", _ok)]), tracing=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with pytest.raises(RouteKeyError, match="'/nowhere'"):
            await client.get("/here")


async def _ok(request: Request) -> Response:
    return PlainTextResponse("ok")


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("GET /items/{id}", "no route has this template"),  # another parameter name
        ("GET /itmes/{item_id}", "no route has this template"),  # a typo
        (
            "DELETE /items/{item_id}",
            "/items/{item_id} allows GET, HEAD, not DELETE",
        ),  # a wrong method
        ("/admin/*", "no route has this template prefix"),
    ],
)
def test_each_kind_of_mismatch_is_found(key: str, reason: str) -> None:
    routes = app_routes(Starlette(routes=[Route("/items/{item_id}", _ok)]).routes)
    report = check_routes(routes, RouteTable({key: FAST}, RoutePolicy()))
    assert [(u.key, u.reason) for u in report.unmatched] == [(key, reason)]
    assert report.unmatched[0].closest is not None


@pytest.mark.parametrize(
    "key",
    ["GET /items/{item_id}", "/items/{item_id}", "/items/*", "HEAD /items/{item_id}", "/static/*"],
)
def test_keys_that_match_are_not_reported(key: str) -> None:
    app = Starlette(routes=[Route("/items/{item_id}", _ok), Mount("/static", app=_ok)])
    report = check_routes(app_routes(app.routes), RouteTable({key: FAST}, RoutePolicy()))
    assert report.unmatched == []


def test_mounts_and_routers_are_walked() -> None:
    inner = Starlette(routes=[Route("/users/{user_id:int}", _ok)])
    app = Starlette(
        routes=[
            Mount("/api", routes=[Mount("/v2", routes=[Route("/things", _ok, methods=["PUT"])])]),
            Mount("/admin", app=inner),
        ]
    )
    assert app_routes(app.routes) == [
        AppRoute("/api/v2/things", frozenset({"PUT"})),
        AppRoute("/api/v2/{path}", None, mount=True),
        AppRoute("/api/{path}", None, mount=True),
        AppRoute("/admin/users/{user_id}", frozenset({"GET", "HEAD"})),
        AppRoute("/admin/{path}", None, mount=True),
    ]
    assert app_routes(None) == []


async def test_an_app_route_added_after_install_under_metrics_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = Starlette()
    guard = Tailguard(registry=CollectorRegistry())
    guard.install(app, tracing=False)
    app.add_route("/metrics/extra", _ok)
    with caplog.at_level(logging.WARNING, logger="tailguard.routing"):
        await run_lifespan(app)
    assert any("'/metrics/extra' is never reached" in m for m in warnings_of(caplog))
    assert guard.routes_report()["shadowed"] == [
        {"endpoint": "/metrics", "route": "/metrics/extra"}
    ]


def test_no_app_no_report() -> None:
    assert Tailguard(metrics=False).routes_report() == {
        "routes": [],
        "unmatched_keys": [],
        "shadowed": [],
    }


def test_hosts_are_walked_and_pathless_routes_skipped() -> None:
    from starlette.routing import BaseRoute, Host, Router

    class Pathless(BaseRoute):  # a custom route class without a path
        pass

    app = Starlette(
        routes=[Host("api.example", app=Router(routes=[Route("/v1", _ok)])), Pathless()]
    )
    assert [r.template for r in app_routes(app.routes)] == ["/v1"]


def test_strict_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="strict"):
        Tailguard(strict="yes")  # type: ignore[arg-type]


async def test_an_app_without_routes_is_not_checked() -> None:
    from tailguard import TailguardMiddleware

    async def raw(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})

    middleware = TailguardMiddleware(raw, routes={"/nowhere": FAST}, strict=True, metrics=False)
    sent = await run_lifespan(middleware)  # no scope["app"]: nothing to check against
    assert sent[0]["type"] == "lifespan.startup.complete"
    assert middleware.check_routes(object()) is None  # an app without routes
