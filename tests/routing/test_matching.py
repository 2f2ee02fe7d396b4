from __future__ import annotations

from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Host, Mount, Route, Router

from tailguard import RoutePolicy
from tailguard.routing.matching import RouteMatcher, RouteTable, route_template
from tests.asgi import http_scope


async def _ok(request: Any) -> PlainTextResponse:  # pragma: no cover - never called
    return PlainTextResponse("ok")


async def _raw_asgi(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
    pass


def _starlette_app() -> Starlette:
    sub = Starlette(routes=[Route("/users/{user_id:int}", _ok)])
    return Starlette(
        routes=[
            Route("/items/{item_id}", _ok, methods=["GET"]),
            Route("/health", _ok),
            Mount(
                "/api",
                routes=[
                    Route("/orders/{order_id}", _ok, methods=["POST"]),
                    Mount("/v2", routes=[Route("/things/{thing}", _ok)]),
                ],
            ),
            Mount("/admin", app=sub),
            Mount("/static", app=_raw_asgi),
            Host("internal.example", app=Router(routes=[Route("/stats", _ok)])),
        ]
    )


@pytest.mark.parametrize(
    ("method", "path", "template"),
    [
        ("GET", "/items/42", "/items/{item_id}"),
        ("POST", "/items/42", "/items/{item_id}"),  # a 405 still has a template
        ("GET", "/health", "/health"),
        ("POST", "/api/orders/7", "/api/orders/{order_id}"),
        ("GET", "/api/v2/things/x", "/api/v2/things/{thing}"),
        ("GET", "/admin/users/3", "/admin/users/{user_id}"),
        ("GET", "/admin/nothing", "/admin/{path}"),
        ("GET", "/static/css/site.css", "/static/{path}"),
        ("GET", "/nope", None),
    ],
)
def test_starlette_templates(method: str, path: str, template: str | None) -> None:
    app = _starlette_app()
    scope = http_scope(path, method, app=app)
    assert route_template(scope) == template
    # Host routes cannot be compiled into one pattern: the matcher declines them.
    assert RouteMatcher.for_routes(app.routes, None) is None
    without_host = Starlette(routes=[r for r in app.routes if not isinstance(r, Host)])
    matcher = RouteMatcher.for_routes(without_host.routes, None)
    assert matcher is not None
    assert matcher.template(http_scope(path, method, app=without_host)) == template


def test_host_routes() -> None:
    app = _starlette_app()
    scope = http_scope("/stats", headers=[("host", "internal.example")], app=app)
    assert route_template(scope) == "/stats"


def _fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.get("/plain/{x}")
    async def plain(x: str) -> dict[str, str]:  # pragma: no cover
        return {}

    carts = APIRouter(prefix="/carts")
    lines = APIRouter(prefix="/{cart_id}/lines")

    @lines.get("/{line}")
    async def line(cart_id: int, line: int) -> dict[str, int]:  # pragma: no cover
        return {}

    @carts.post("/{cart_id}")
    async def update(cart_id: int) -> dict[str, int]:  # pragma: no cover
        return {}

    carts.include_router(lines)
    app.include_router(carts, prefix="/v1")
    app.mount("/legacy", Starlette(routes=[Route("/orders/{order_id}", _ok)]))
    return app


@pytest.mark.parametrize(
    ("method", "path", "template"),
    [
        ("GET", "/plain/abc", "/plain/{x}"),
        ("GET", "/v1/carts/9/lines/2", "/v1/carts/{cart_id}/lines/{line}"),
        ("POST", "/v1/carts/9", "/v1/carts/{cart_id}"),
        ("GET", "/v1/carts/9", "/v1/carts/{cart_id}"),  # 405, still the template
        ("GET", "/legacy/orders/5", "/legacy/orders/{order_id}"),
        ("GET", "/v1/nothing", None),
    ],
)
def test_fastapi_templates(method: str, path: str, template: str | None) -> None:
    app = _fastapi_app()
    scope = http_scope(path, method, app=app)
    assert route_template(scope) == template
    matcher = RouteMatcher.for_routes(app.routes, None)
    assert matcher is not None
    assert matcher.template(scope) == template


def test_matcher_prefers_a_later_route_that_allows_the_method() -> None:
    app = Starlette(
        routes=[
            Route("/things/{a}", _ok, methods=["GET"]),
            Route("/things/{b:int}", _ok, methods=["POST"]),
            Route("/floats/{x:float}", _ok),
            Route("/root", _ok),
        ]
    )
    matcher = RouteMatcher.for_routes(app.routes, None)
    assert matcher is not None
    for method, path in [("POST", "/things/1"), ("PUT", "/things/1"), ("GET", "/floats/1.5")]:
        scope = http_scope(path, method, app=app)
        assert matcher.template(scope) == route_template(scope)
    assert matcher.template(http_scope("/things/1", "POST")) == "/things/{b}"
    assert matcher.template(http_scope("/things/1", "PUT")) == "/things/{a}"  # 405


def test_matcher_respects_root_path_and_is_reused_until_routes_change() -> None:
    app = Starlette(routes=[Route("/items/{item_id}", _ok)])
    matcher = RouteMatcher.for_routes(app.routes, None)
    assert matcher is not None
    assert RouteMatcher.for_routes(app.routes, matcher) is matcher
    for path, root in [("/svc/items/1", "/svc"), ("/items/1", "/svc"), ("/svc", "/svc")]:
        scope = {**http_scope(path, app=app), "root_path": root}
        assert matcher.template(scope) == route_template(scope)
    app.add_route("/more", _ok)
    rebuilt = RouteMatcher.for_routes(app.routes, matcher)
    assert rebuilt is not matcher
    assert rebuilt is not None
    assert rebuilt.template(http_scope("/more", app=app)) == "/more"
    assert RouteMatcher.for_routes(None, matcher) is None
    empty = RouteMatcher.for_routes([], None)
    assert empty is not None
    assert empty.template(http_scope("/x")) is None


def test_matcher_declines_custom_route_classes() -> None:
    from starlette.routing import BaseRoute

    class Custom(BaseRoute):
        pass

    assert RouteMatcher.for_routes([Custom()], None) is None


def test_no_app_in_scope() -> None:
    assert route_template(http_scope("/items/1")) is None


def _table(**extra: RoutePolicy) -> RouteTable:
    routes = {
        "/items/*": RoutePolicy(deadline=1.0),
        "GET /items/*": RoutePolicy(deadline=2.0),
        "/items/{id}/reviews": RoutePolicy(deadline=3.0),
        "GET /items/{id}": RoutePolicy(deadline=4.0),
        "/items/{id}": RoutePolicy(deadline=5.0),
        "/*": RoutePolicy(deadline=6.0),
    }
    routes.update(extra)
    return RouteTable(routes, RoutePolicy(deadline=9.0))


@pytest.mark.parametrize(
    ("method", "template", "key"),
    [
        ("GET", "/items/{id}", "GET /items/{id}"),
        ("PUT", "/items/{id}", "/items/{id}"),
        ("GET", "/items/{id}/reviews", "/items/{id}/reviews"),
        ("GET", "/items/{id}/photos", "GET /items/*"),
        ("PUT", "/items/{id}/photos", "/items/*"),
        ("GET", "/health", "/*"),
        ("GET", None, None),
    ],
)
def test_most_specific_key_wins(method: str, template: str | None, key: str | None) -> None:
    resolved = _table().lookup(method, template)
    assert resolved.key == key
    assert resolved.template == template


def test_default_when_nothing_matches() -> None:
    table = RouteTable({"/items/{id}": RoutePolicy(deadline=1.0)}, RoutePolicy(deadline=9.0))
    assert table.lookup("GET", "/health").policy.deadline == 9.0
    assert table.lookup("GET", None).policy.deadline == 9.0


def test_cache_is_bounded_to_standard_methods() -> None:
    table = _table()
    first = table.lookup("GET", "/items/{id}")
    assert table.lookup("GET", "/items/{id}") is first
    for i in range(100):
        table.lookup(f"X{i}", "/items/{id}")
    assert len(table._cache) == 1


@pytest.mark.parametrize(
    "key", ["items", "GET", "get /items", "GET  ", "/items/*/x", "/a b", "*", "GET /*/x"]
)
def test_invalid_keys_named(key: str) -> None:
    with pytest.raises(ValueError, match="invalid route key"):
        RouteTable({key: RoutePolicy()}, RoutePolicy())


def test_non_string_key_and_non_policy_value() -> None:
    with pytest.raises(TypeError, match="route keys must be strings"):
        RouteTable({1: RoutePolicy()}, RoutePolicy())  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"routes\['/x'\] must be a RoutePolicy"):
        RouteTable({"/x": 1.0}, RoutePolicy())  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="default must be a RoutePolicy"):
        RouteTable({}, 1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(("a", "b"), [("/x", " /x"), ("/x*", "/x* "), ("GET /x", "GET  /x")])
def test_duplicate_keys_rejected(a: str, b: str) -> None:
    with pytest.raises(ValueError, match="duplicate route key"):
        RouteTable({a: RoutePolicy(), b: RoutePolicy()}, RoutePolicy())


def test_keys_lists_everything() -> None:
    assert sorted(_table().keys()) == sorted(
        ["/items/*", "GET /items/*", "/items/{id}/reviews", "GET /items/{id}", "/items/{id}", "/*"]
    )


def test_matcher_declines_a_mount_holding_host_routes() -> None:
    inner = Host("internal.example", app=Router(routes=[Route("/stats", _ok)]))
    app = Starlette(routes=[Mount("/admin", routes=[inner])])
    assert RouteMatcher.for_routes(app.routes, None) is None


def _policies(app_routes: dict[str, RoutePolicy]) -> RouteTable:
    return RouteTable(app_routes, RoutePolicy(deadline=9.0))


def test_resolve_gives_the_tables_answer_for_the_template() -> None:
    app = _starlette_app()
    del app.routes[-1]  # the Host route: compilable without it
    table = _policies({"GET /items/{item_id}": RoutePolicy(deadline=0.1), "/api/*": RoutePolicy()})
    matcher = RouteMatcher.for_routes(app.routes, None, app)
    assert matcher is not None
    assert matcher.app is app
    for method, path, root in [
        ("GET", "/items/1", ""),
        ("GET", "/items/2", ""),  # cached for the route and method: same answer
        ("POST", "/items/1", ""),
        ("POST", "/svc/api/orders/7", "/svc"),
        ("GET", "/nope", ""),
    ]:
        scope = {**http_scope(path, method, app=app), "root_path": root}
        assert matcher.resolve(scope, table) is table.lookup(method, route_template(scope))


def test_resolve_caches_only_answers_that_hold_for_every_path() -> None:
    app = Starlette(
        routes=[
            Route("/things/{a}", _ok, methods=["GET"]),
            Route("/things/{b:int}", _ok, methods=["POST"]),
            Route("/things/{c}", _ok, methods=["POST"]),
            Route("/pairs/{p}", _ok, methods=["GET"]),
            Route("/pairs/{q}", _ok, methods=["POST"]),  # FastAPI's @get + @post shape
        ]
    )
    table = _policies({})
    matcher = RouteMatcher.for_routes(app.routes, None, app)
    assert matcher is not None
    # "x" passes over {b:int} to reach {c}; "1" must still get {b}.
    for path, template in [("/things/x", "/things/{c}"), ("/things/1", "/things/{b}")] * 2:
        assert matcher.resolve(http_scope(path, "POST", app=app), table).template == template
    for path in ("/pairs/1", "/pairs/x"):
        assert matcher.resolve(http_scope(path, "POST", app=app), table).template == "/pairs/{q}"
    assert matcher.resolve(http_scope("/pairs/1", "PUT", app=app), table).template == "/pairs/{p}"


def test_resolve_notices_routes_appended_after_compiling() -> None:
    app = Starlette(routes=[Route("/items/{item_id}", _ok)])
    table = _policies({"/more": RoutePolicy(deadline=0.5)})
    matcher = RouteMatcher.for_routes(app.routes, None, app)
    assert matcher is not None
    assert matcher.resolve(http_scope("/more", app=app), table).template is None
    app.add_route("/more", _ok)
    assert matcher.resolve(http_scope("/more", app=app), table).key == "/more"
    app.routes.append(Host("internal.example", app=Router(routes=[Route("/stats", _ok)])))
    scope = {**http_scope("/stats", app=app), "headers": [(b"host", b"internal.example")]}
    # Now uncompilable: Starlette's own matching answers.
    assert matcher.resolve(scope, table).template == route_template(scope) == "/stats"
    assert matcher.resolve(http_scope("/items/1", app=app), table).template == "/items/{item_id}"
