"""Which configured route key each of the app's routes resolves to, and which keys match none.

A route key is the route *template* the framework knows, with every router
prefix (``GET /api/items/{item_id}``). A key that matches no route is a policy
that never applies (a missing ``APIRouter`` prefix, another parameter name, a
wrong method, a typo); :func:`check_routes` finds such keys once, at startup,
with the closest route, and :class:`RouteReport` lists, for every route of the
app, the key that governs it (``None``: the default policy).

>>> from starlette.applications import Starlette
>>> from starlette.routing import Route
>>> from tailguard import RoutePolicy
>>> from tailguard.routing.matching import RouteTable
>>> async def item(request): ...
>>> app = Starlette(routes=[Route("/api/items/{item_id}", item)])
>>> table = RouteTable({"GET /items/{item_id}": RoutePolicy(deadline=0.1)}, RoutePolicy())
>>> report = check_routes(app_routes(app.routes), table)
>>> report.unmatched[0].key, report.unmatched[0].closest
('GET /items/{item_id}', 'GET /api/items/{item_id}')
>>> report.routes[0]["route"], report.routes[0]["key"]
('/api/items/{item_id}', None)
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.routing import BaseRoute, Host, Mount, compile_path

from tailguard.routing.matching import RouteTable, effective_routes, parse_key

__all__ = [
    "AppRoute",
    "RouteReport",
    "UnmatchedKey",
    "app_routes",
    "check_routes",
    "shadowed_by",
]

_MOUNT_TAIL = "/{path}"


@dataclass(frozen=True, slots=True)
class AppRoute:
    """One route of the app, flattened: its full template and the methods it allows.

    A ``Mount`` of an app tailguard cannot look into (a raw ASGI app, static
    files) is one route whose template ends in ``/{path}``, as requests under
    it are labelled.
    """

    template: str
    methods: frozenset[str] | None
    """``None``: any method."""
    mount: bool = False
    """A mount's catch-all (everything under :attr:`path`)."""

    @property
    def path(self) -> str:
        """The literal part a request path starts with: the mount's path for a mount."""
        return self.template[: -len(_MOUNT_TAIL)] if self.mount else self.template

    def allows(self, method: str | None) -> bool:
        return method is None or self.methods is None or method in self.methods

    def labels(self) -> list[str]:
        """``METHOD template`` per method (``HEAD`` of a ``GET`` route left out)."""
        if self.methods is None:
            return [self.template]
        methods = self.methods - {"HEAD"} if "GET" in self.methods else self.methods
        return [f"{method} {self.template}" for method in sorted(methods)]


def app_routes(routes: object) -> list[AppRoute]:
    """Every route of a Starlette/FastAPI route list, through mounts, hosts and included routers.

    >>> from starlette.routing import Mount, Route
    >>> async def ok(request): ...
    >>> [r.template for r in app_routes([Mount("/api", routes=[Route("/orders", ok)])])]
    ['/api/orders', '/api/{path}']
    """
    if not isinstance(routes, list | tuple):
        return []
    return list(_walk(routes, "", ""))


def _walk(routes: Iterable[BaseRoute], path: str, template: str) -> Iterator[AppRoute]:
    for route in effective_routes(routes):
        if isinstance(route, Mount):
            mount_template = template + compile_path(route.path)[1]
            inner = getattr(route, "routes", None) or []
            yield from _walk(inner, path + route.path, mount_template)
            yield AppRoute(mount_template + _MOUNT_TAIL, None, mount=True)
        elif isinstance(route, Host):
            yield from _walk(getattr(route, "routes", None) or [], path, template)
        else:
            route_path = getattr(route, "path", None)
            if not isinstance(route_path, str):
                continue  # a custom route without a path: nothing to name
            methods = getattr(route, "methods", None)
            path_format = str(getattr(route, "path_format", route_path))
            yield AppRoute(template + path_format, frozenset(methods) if methods else None)


def shadowed_by(endpoint: str, routes: Sequence[AppRoute]) -> list[AppRoute]:
    """The routes a tailguard endpoint at ``endpoint`` would answer in the app's place.

    tailguard answers ``endpoint`` and every path under it before the app; a
    route whose literal template is one of those, or a mount at or under it,
    would never be reached. Templates with parameters (``/{page}``) are not
    counted: they also serve many other paths.

    >>> shadowed_by("/metrics", [AppRoute("/metrics", None), AppRoute("/items", None)])
    [AppRoute(template='/metrics', methods=None, mount=False)]
    """
    hits = []
    for route in routes:
        literal = route.path
        if "{" in literal or not literal:
            continue
        if literal == endpoint or literal.startswith(endpoint + "/"):
            hits.append(route)
    return hits


@dataclass(frozen=True, slots=True)
class UnmatchedKey:
    """A configured route key that no route of the app matches."""

    key: str
    closest: str | None
    """The app's route most like the key (method and template), if the app has any."""
    reason: str
    """Why, in a few words: no such template, or the method is not allowed."""

    def message(self) -> str:
        hint = f"; closest route: {self.closest!r}" if self.closest else ""
        return (
            f"route key {self.key!r} matches no route of the app ({self.reason}){hint}. "
            "Keys are the templates the framework knows, with every router prefix and "
            "the route's own parameter names, e.g. 'GET /api/items/{item_id}'"
        )


@dataclass(frozen=True, slots=True)
class RouteReport:
    """What :func:`check_routes` found: per route the key that governs it, and the orphan keys."""

    routes: list[dict[str, Any]] = field(default_factory=list)
    """One entry per (route, method): ``route``, ``method``, ``key`` (``None``: the
    default policy) and ``limiter``."""
    unmatched: list[UnmatchedKey] = field(default_factory=list)
    shadowed: list[tuple[str, str]] = field(default_factory=list)
    """``(endpoint, route)``: routes a tailguard endpoint answers in the app's place."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-able, for :meth:`Tailguard.routes_report` and the snapshot."""
        return {
            "routes": [dict(entry) for entry in self.routes],
            "unmatched_keys": [
                {"key": u.key, "closest": u.closest, "reason": u.reason} for u in self.unmatched
            ],
            "shadowed": [{"endpoint": e, "route": r} for e, r in self.shadowed],
        }


def check_routes(
    routes: Sequence[AppRoute], table: RouteTable, endpoints: Iterable[str] = ()
) -> RouteReport:
    """Resolve every route of the app through ``table``; find keys no route matches.

    ``endpoints`` are the paths tailguard answers itself (``/metrics``, the
    control API): routes they shadow are reported too.
    """
    report = RouteReport()
    for route in routes:
        methods = sorted(route.methods) if route.methods is not None else [None]
        for method in methods:
            resolved = table.lookup(method or "GET", route.template)
            report.routes.append(
                {
                    "route": route.template,
                    "method": method or "*",
                    "key": resolved.key,
                    "limiter": resolved.limiter.name if resolved.limiter is not None else None,
                }
            )
    with_methods = [label for route in routes for label in route.labels()]
    templates = list(dict.fromkeys(route.template for route in routes))
    configured = table.keys()
    for text in configured:
        key = parse_key(text)
        if key.prefix:
            paths = [r for r in routes if r.template.startswith(key.path)]
        else:
            paths = [r for r in routes if r.template == key.path]
        if any(r.allows(key.method) for r in paths):
            continue
        if paths:
            allowed = sorted({m for r in paths for m in (r.methods or ())})
            reason = f"{key.path} allows {', '.join(allowed)}, not {key.method}"
        else:
            reason = "no route has this template" + (" prefix" if key.prefix else "")
        if key.method:
            close = difflib.get_close_matches(f"{key.method} {key.path}", with_methods, 1, 0.0)
        else:
            close = difflib.get_close_matches(key.path, templates, 1, 0.0)
        report.unmatched.append(UnmatchedKey(text, close[0] if close else None, reason))
    for endpoint in endpoints:
        for route in shadowed_by(endpoint, routes):
            report.shadowed.append((endpoint, route.template))
    return report
