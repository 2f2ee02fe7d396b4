"""Route resolution: from a request scope to its route template and policy.

The middleware runs before the framework's router, so it asks the same routes
the router will ask (``route.matches(scope)``), walking into ``Mount`` and
``Host`` sub-routers, and returns the *template* (``/items/{item_id}``), never
the raw path. Templates are bounded by the application's code, which is what
keeps policies cached and metric labels bounded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from starlette.routing import BaseRoute, Host, Match, Mount, compile_path
from starlette.types import Scope

from tailguard._scope import route_path
from tailguard.enforcement import Enforcement, Enforcements
from tailguard.policy import RoutePolicy
from tailguard.routing.service_time import ServiceTime

if TYPE_CHECKING:
    from tailguard.admission import Limiter

__all__ = [
    "ResolvedRoute",
    "RouteKey",
    "RouteMatcher",
    "RouteTable",
    "effective_routes",
    "parse_key",
    "route_template",
    "route_templates",
]

STANDARD_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
_KEY = re.compile(r"^(?:(?P<method>[A-Z]+) +)?(?P<path>/[^\s*]*)(?P<star>\*)?$")


@dataclass(frozen=True, slots=True)
class ResolvedRoute:
    """The outcome of resolving one request: its template and the policy that applies."""

    template: str | None
    """Route template such as ``/items/{item_id}``; ``None`` when no route matched."""
    key: str | None
    """The configured route key that supplied the policy; ``None`` for the default."""
    policy: RoutePolicy
    limiter: Limiter | None = None
    """The limiter that admits this route's requests, if the policy asks for one."""
    service_time: ServiceTime = field(default_factory=ServiceTime)
    """How long this method and template usually take, learned as requests complete."""
    enforcement: Enforcement = field(default_factory=Enforcement)
    """The route key's enforcement mode (shared by every route the key covers; live)."""


def route_template(scope: Scope) -> str | None:
    """The template of the route that will handle ``scope``, or ``None`` (a 404).

    Works on any Starlette or FastAPI application, including ``APIRouter``
    prefixes and mounted sub-applications, whose templates are joined to the
    mount's path. This is the reference implementation: it asks every route's
    own ``matches``. :class:`RouteMatcher` gives the same answers faster.
    """
    routes = getattr(scope.get("app"), "routes", None)
    if routes is None:
        return None
    return _match(routes, scope, "")


class _Leaf(NamedTuple):
    regex: re.Pattern[str]
    template: str
    methods: frozenset[str] | None


_NAMED_GROUP = re.compile(r"\(\?P<[^>]+>")


class RouteMatcher:
    """Resolves templates for one app with a single compiled regular expression.

    Starlette's own ``route.matches`` builds a child scope per route tried,
    which costs more than the rest of tailguard's per-request work together.
    This flattens the app's routes (through mounts and FastAPI's included
    routers) into leaves in the router's order, and matches the path against
    one alternation of their patterns; the router's first-match semantics,
    including 405s, are kept. Apps whose routes cannot be flattened (``Host``
    routes, custom route classes) fall back to :func:`route_template`.

    The matcher notices routes appended to the app's top level (when a path
    no compiled route matches arrives); routes added inside an already-mounted
    router after the first request are not seen.
    """

    __slots__ = ("_by_group", "_combined", "_count", "_leaves", "_resolved", "_routes", "app")

    def __init__(self, routes: list[BaseRoute], app: object = None) -> None:
        self.app = app
        """The application whose routes these are (``scope["app"]``)."""
        self._routes = routes
        self._compile()

    def _compile(self) -> None:
        routes = self._routes
        self._count = len(routes)
        leaves = _flatten(routes, "", "")
        self._leaves = leaves
        self._combined: re.Pattern[str] | None = None
        self._by_group: dict[int, int] = {}
        # Per leaf: method -> resolved route, for answers that do not depend on the path.
        self._resolved: list[dict[str, ResolvedRoute]] = [{} for _ in leaves or ()]
        if leaves:
            alternatives = "|".join(
                f"(?P<r{i}>{_NAMED_GROUP.sub('(?:', leaf.regex.pattern[1:-1])})"
                for i, leaf in enumerate(leaves)
            )
            self._combined = combined = re.compile(f"^(?:{alternatives})$")
            # A leaf's own group encloses its converters' groups, so it closes
            # last and is what ``Match.lastindex`` reports.
            self._by_group = {combined.groupindex[f"r{i}"]: i for i in range(len(leaves))}

    @classmethod
    def for_routes(
        cls, routes: object, current: RouteMatcher | None, app: object = None
    ) -> RouteMatcher | None:
        """A matcher for ``routes``, reusing ``current`` while the routes are unchanged."""
        if not isinstance(routes, list):
            return None
        if (
            current is not None
            and current.app is app
            and current._routes is routes
            and not current.stale()
        ):
            return current
        matcher = cls(routes, app)
        return matcher if matcher._leaves is not None else None

    def stale(self) -> bool:
        """Whether routes were added or removed at the top level since compiling."""
        return len(self._routes) != self._count

    def template(self, scope: Scope) -> str | None:
        """The template for ``scope``; same answer as :func:`route_template`."""
        path = route_path(scope)
        combined = self._combined
        found = combined.match(path) if combined is not None else None
        if found is None:
            return None
        return self._leaf_template(self._by_group[found.lastindex or 0], scope["method"], path)[0]

    def resolve(self, scope: Scope, table: RouteTable) -> ResolvedRoute:
        """``table.lookup(method, self.template(scope))``, in one step for repeat visitors.

        The answer for a route and method is cached when it does not depend
        on the path (almost always); only standard methods are cached. The
        cache belongs to one table: pass the same ``table`` every time (the
        middleware passes its guard's, fixed for the guard's life).
        """
        path = scope["path"]
        if scope.get("root_path"):
            path = route_path(scope)
        combined = self._combined
        found = combined.match(path) if combined is not None else None
        method = scope["method"]
        if found is None:
            if self.stale():  # routes appended since compiling: only paths no route matched notice
                self._compile()
                if self._leaves is not None:
                    return self.resolve(scope, table)
            if self._leaves is None:  # now uncompilable (a Host route added at run time)
                return table.lookup(method, route_template(scope))
            return table.lookup(method, None)
        index = self._by_group[found.lastindex or 0]
        by_method = self._resolved[index]
        resolved = by_method.get(method)
        if resolved is None:
            template, path_independent = self._leaf_template(index, method, path)
            resolved = table.lookup(method, template)
            if path_independent and method in STANDARD_METHODS:
                by_method[method] = resolved
        return resolved

    def _leaf_template(self, index: int, method: str, path: str) -> tuple[str, bool]:
        """The template for a path that matched leaf ``index``, and whether any such path gets it.

        Keeps the router's first-match semantics: a leaf that does not allow
        the method (a 405 there) may be followed by one that does.
        """
        leaves = self._leaves
        assert leaves is not None
        leaf = leaves[index]
        if leaf.methods is None or method in leaf.methods:
            return leaf.template, True
        passed_over = False  # a leaf allowing the method that this path did not match
        for later in leaves[index + 1 :]:  # a 405 here may be a 200 further down
            if later.methods is None or method in later.methods:
                if later.regex.match(path):
                    # The same pattern with nothing in between (FastAPI's @get and
                    # @post on one path) gives this answer for every such path.
                    same = later.regex.pattern == leaf.regex.pattern
                    return later.template, same and not passed_over
                passed_over = True
        return leaf.template, False


def route_templates(routes: object) -> list[tuple[str, frozenset[str] | None]] | None:
    """The templates of an app's ``routes`` and the methods each allows (``None``: any).

    In the router's order, through mounts and FastAPI's included routers; a
    mount adds a catch-all ``{mount}/{path}``. ``None`` when the routes
    cannot be flattened (``Host`` routes, custom route classes).

    >>> from starlette.routing import Route
    >>> [(template, sorted(methods or ())) for template, methods in route_templates(
    ...     [Route("/items/{item_id}", lambda request: None, methods=["GET"])])]
    [('/items/{item_id}', ['GET', 'HEAD'])]
    """
    if not isinstance(routes, list):
        return None
    leaves = _flatten(routes, "", "")
    return None if leaves is None else [(leaf.template, leaf.methods) for leaf in leaves]


def _flatten(routes: Iterable[BaseRoute], path: str, template: str) -> list[_Leaf] | None:
    leaves: list[_Leaf] = []
    for route in effective_routes(routes):
        if isinstance(route, Mount):
            mount_path = path + route.path
            mount_template = template + compile_path(route.path)[1]
            inner = _flatten(route.routes, mount_path, mount_template) if route.routes else []
            if inner is None:
                return None
            leaves.extend(inner)
            # Starlette hands everything under a mount to the mount, so its
            # catch-all comes right after its own routes.
            leaves.append(_leaf(mount_path + "/{path:path}", mount_template + "/{path}", None))
            continue
        route_path = getattr(route, "path", None)
        if isinstance(route, Host) or not isinstance(route_path, str):
            return None
        methods = _methods(getattr(route, "methods", None))
        path_format = str(getattr(route, "path_format", route_path))
        regex = getattr(route, "path_regex", None)
        if path or regex is None:
            regex = compile_path(path + route_path)[0]
        leaves.append(_Leaf(regex, template + path_format, methods))
    return leaves


def _leaf(path: str, template: str, methods: frozenset[str] | None) -> _Leaf:
    return _Leaf(compile_path(path)[0], template, methods)


def _methods(methods: object) -> frozenset[str] | None:
    return frozenset(methods) if methods else None  # type: ignore[call-overload]


def effective_routes(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """Flatten FastAPI's lazily included routers into matchable routes.

    FastAPI >= 0.116 keeps ``include_router`` results as an internal route
    that does not expose its children through ``matches``; it does expose
    ``effective_route_contexts()``, whose items carry the fully prefixed path.
    """
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is None:
            yield route
            continue
        for context in contexts():
            yield getattr(context, "starlette_route", None) or context


def _match(routes: Iterable[BaseRoute], scope: Scope, prefix: str) -> str | None:
    partial: str | None = None
    for route in effective_routes(routes):
        match, child = route.matches(scope)
        if match is Match.NONE:
            continue
        if isinstance(route, Mount | Host):
            mount_prefix = prefix + route.path if isinstance(route, Mount) else prefix
            inner = _match(route.routes, {**scope, **child}, mount_prefix)
            template = inner if inner is not None else mount_prefix + "/{path}"
        else:
            template = prefix + str(getattr(route, "path_format", getattr(route, "path", "")))
        if match is Match.FULL:
            return template
        if partial is None:
            partial = template
    return partial


@dataclass(frozen=True, slots=True)
class RouteKey:
    """A parsed route key: ``[METHOD ]/path`` optionally ending in ``*`` (a prefix).

    >>> parse_key("GET /items/*")
    RouteKey(text='GET /items/*', method='GET', path='/items/', prefix=True)
    """

    text: str
    method: str | None
    path: str
    prefix: bool


def parse_key(text: object) -> RouteKey:
    """Parse a route key; a clear error for anything that is not one."""
    if not isinstance(text, str):
        raise TypeError(f"route keys must be strings, got {type(text).__name__}: {text!r}")
    found = _KEY.match(text.strip())
    if found is None:
        raise ValueError(
            f"invalid route key {text!r}: expected '[METHOD ]/path/{{param}}' "
            "optionally ending in '*' for a prefix, e.g. 'GET /items/{item_id}' or '/admin/*'"
        )
    return RouteKey(text, found["method"], found["path"], found["star"] is not None)


def limiter_name(key: str | None, policy: RoutePolicy) -> str:
    """The name of the limiter a policy uses: its ``limiter=``, else its route key."""
    return policy.limiter or key or "default"


class RouteTable:
    """Maps ``(method, template)`` to the most specific configured :class:`RoutePolicy`.

    Specificity, from most to least: exact template with method, exact template,
    the longest matching prefix (with a method before without), the default.

    >>> table = RouteTable({"/items/*": RoutePolicy(deadline=1.0),
    ...                     "GET /items/{id}": RoutePolicy(deadline=0.1)}, RoutePolicy())
    >>> table.lookup("GET", "/items/{id}").key
    'GET /items/{id}'
    >>> table.lookup("PUT", "/items/{id}").key
    '/items/*'
    """

    def __init__(
        self,
        routes: Mapping[str, RoutePolicy],
        default: RoutePolicy,
        limiters: Mapping[str, Limiter] | None = None,
        enforcements: Enforcements | None = None,
    ) -> None:
        if not isinstance(default, RoutePolicy):
            raise TypeError(f"default must be a RoutePolicy, got {type(default).__name__}")
        self.default = default
        self._limiters = limiters or {}
        self.enforcements = enforcements if enforcements is not None else Enforcements(env={})
        """The mode of each key (made here for every key and the default)."""
        self._exact: dict[tuple[str | None, str], tuple[str, RoutePolicy]] = {}
        prefixes: list[tuple[RouteKey, RoutePolicy]] = []
        for text, policy in routes.items():
            key = parse_key(text)
            if not isinstance(policy, RoutePolicy):
                raise TypeError(
                    f"routes[{text!r}] must be a RoutePolicy, got {type(policy).__name__}"
                )
            slot = (key.method, key.path)
            if key.prefix:
                if any((k.method, k.path) == slot for k, _ in prefixes):
                    raise ValueError(f"duplicate route key {text!r}")
                prefixes.append((key, policy))
            else:
                if slot in self._exact:
                    raise ValueError(f"duplicate route key {text!r}")
                self._exact[slot] = (text, policy)
        # Longest prefix first; at equal length a method-qualified key wins.
        prefixes.sort(key=lambda kp: (-len(kp[0].path), kp[0].method is None))
        self._prefixes: Sequence[tuple[RouteKey, RoutePolicy]] = prefixes
        self._cache: dict[tuple[str, str | None], ResolvedRoute] = {}
        for configured, policy in self.policies():
            self.enforcements.route(configured, policy.enforce)

    def lookup(self, method: str, template: str | None) -> ResolvedRoute:
        """The policy for a request with ``method`` whose route template is ``template``."""
        cache_key = (method, template)
        cached = self._cache.get(cache_key)
        if cached is not None:
            return cached
        resolved = self._resolve(method, template)
        # Templates are bounded by the app; methods come from clients, so only
        # standard ones are cached to keep this dict bounded.
        if method in STANDARD_METHODS:
            self._cache[cache_key] = resolved
        return resolved

    def _resolve(self, method: str, template: str | None) -> ResolvedRoute:
        if template is not None:
            for slot in ((method, template), (None, template)):
                exact = self._exact.get(slot)
                if exact is not None:
                    return self._resolved(template, exact[0], exact[1])
            for key, policy in self._prefixes:
                if (key.method is None or key.method == method) and template.startswith(key.path):
                    return self._resolved(template, key.text, policy)
        return self._resolved(template, None, self.default)

    def _resolved(
        self, template: str | None, key: str | None, policy: RoutePolicy
    ) -> ResolvedRoute:
        limiter = self._limiters.get(limiter_name(key, policy)) if policy.admission else None
        enforcement = self.enforcements.route(key, policy.enforce)
        return ResolvedRoute(template, key, policy, limiter, enforcement=enforcement)

    def policies(self) -> list[tuple[str | None, RoutePolicy]]:
        """Every configured ``(key, policy)``, the default last with key ``None``."""
        configured: list[tuple[str | None, RoutePolicy]] = [
            (text, policy) for text, policy in self._exact.values()
        ]
        configured += [(key.text, policy) for key, policy in self._prefixes]
        return [*configured, (None, self.default)]

    def keys(self) -> list[str]:
        """Every configured route key, for diagnostics."""
        return [text for text, _ in self._exact.values()] + [k.text for k, _ in self._prefixes]
