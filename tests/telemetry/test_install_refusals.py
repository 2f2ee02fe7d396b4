"""install() refuses what would go wrong silently: a second install, an endpoint over a route."""

from __future__ import annotations

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry, make_asgi_app
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route

from tailguard import RoutePolicy, Tailguard, TailguardMiddleware


async def item(request: Request) -> Response:
    return PlainTextResponse("item")


async def own_metrics(request: Request) -> Response:  # pragma: no cover - never reached
    return PlainTextResponse("the app's own metrics")


def make_guard() -> Tailguard:
    return Tailguard(default=RoutePolicy(deadline=1.0), registry=CollectorRegistry())


def test_a_second_install_is_refused_and_requests_are_counted_once() -> None:
    guard = make_guard()
    app = guard.install(Starlette(routes=[Route("/items", item)]), tracing=False)
    before = list(app.user_middleware)
    with pytest.raises(RuntimeError, match=r"already installed on this app \(by this guard\)"):
        guard.install(app, tracing=False)
    assert app.user_middleware == before  # nothing added


def test_a_second_guard_on_the_same_app_is_refused() -> None:
    app = make_guard().install(Starlette(routes=[Route("/items", item)]), tracing=False)
    with pytest.raises(RuntimeError, match=r"by another guard.*Call install\(\) once per app"):
        make_guard().install(app, tracing=False)


def test_install_after_a_hand_wired_middleware_is_refused() -> None:
    app = Starlette(routes=[Route("/items", item)])
    app.add_middleware(TailguardMiddleware, default=RoutePolicy(deadline=1.0), metrics=False)
    with pytest.raises(RuntimeError, match="already installed"):
        make_guard().install(app, tracing=False)


@pytest.mark.anyio
async def test_one_install_counts_each_request_once() -> None:
    guard = make_guard()
    app = guard.install(Starlette(routes=[Route("/items", item)]), tracing=False)
    with pytest.raises(RuntimeError):
        guard.install(app, tracing=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        await c.get("/items")
        scrape = await c.get("/metrics")
    counts = [
        sample.value
        for family in text_string_to_metric_families(scrape.text)
        for sample in family.samples
        if sample.name == "tailguard_requests_total"
    ]
    assert counts == [1.0]


def _fastapi_with_router(path: str) -> FastAPI:
    app = FastAPI()
    ops = APIRouter(prefix="/ops")

    @ops.get(path)
    async def metrics() -> str:  # pragma: no cover - never called
        return "the app's own"

    app.include_router(ops)
    return app


@pytest.mark.parametrize(
    ("app", "metrics_path", "route"),
    [
        (Starlette(routes=[Route("/metrics", own_metrics)]), "/metrics", "/metrics"),
        (Starlette(routes=[Mount("/metrics", app=make_asgi_app())]), "/metrics", "/metrics"),
        (Starlette(routes=[Route("/metrics/cpu", own_metrics)]), "/metrics", "/metrics/cpu"),
        (
            Starlette(routes=[Mount("/api", routes=[Route("/metrics", own_metrics)])]),
            "/api/metrics",
            "/api/metrics",
        ),
        (_fastapi_with_router("/metrics"), "/ops/metrics", "/ops/metrics"),
    ],
)
def test_an_app_route_under_the_metrics_path_is_refused_naming_the_option(
    app: Starlette, metrics_path: str, route: str
) -> None:
    before = list(app.user_middleware)
    with pytest.raises(ValueError, match="metrics_path=") as refused:
        make_guard().install(app, metrics_path=metrics_path, tracing=False)
    assert repr(route) in str(refused.value)
    assert app.user_middleware == before  # refused before anything changed


def test_the_control_path_is_checked_too() -> None:
    app = Starlette(routes=[Route("/_tailguard/status", own_metrics)])
    with pytest.raises(ValueError, match="control_path="):
        make_guard().install(app, control_token="a-long-enough-control-token", tracing=False)


@pytest.mark.parametrize(
    "routes",
    [
        [Route("/{page}", own_metrics)],  # a catch-all serves many paths, not just /metrics
        [Route("/metricsx", own_metrics)],
        [Mount("/static", app=make_asgi_app())],
    ],
)
def test_routes_that_only_could_serve_the_path_are_not_a_collision(routes: list[Route]) -> None:
    make_guard().install(Starlette(routes=routes), tracing=False)


def test_another_metrics_path_resolves_the_collision() -> None:
    app = Starlette(routes=[Route("/metrics", own_metrics)])
    make_guard().install(app, metrics_path="/_tailguard_metrics", tracing=False)
    make_guard().install(Starlette(routes=[Route("/metrics", own_metrics)]), metrics_path=None)
