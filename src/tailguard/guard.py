"""The ``Tailguard`` object: one place that holds a service's policies and wiring."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from prometheus_client import CollectorRegistry
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Scope

from tailguard.admission import Limiter, UnlistedTenants
from tailguard.chaos.control import ControlAPI
from tailguard.chaos.engine import Chaos
from tailguard.deadlines import DEADLINE_HEADER
from tailguard.dependency import Dependency
from tailguard.enforcement import Enforcements, Mode, mode_label
from tailguard.fleet_modes import FleetModes
from tailguard.middleware.asgi import TailguardMiddleware
from tailguard.middleware.responses import Responses
from tailguard.middleware.runtime import Runtime
from tailguard.policy import RoutePolicy
from tailguard.routing.inbound import InboundDeadlines
from tailguard.routing.limits import build_limiters, tenant_resolver
from tailguard.routing.matching import RouteTable, route_templates
from tailguard.routing.report import app_routes, check_routes, shadowed_by
from tailguard.telemetry import otel
from tailguard.telemetry.catalog import BucketFamily, TenantLabels, catalog_for, check_buckets
from tailguard.telemetry.exposition import MetricsServer, metrics_app
from tailguard.telemetry.live import LiveRequests
from tailguard.telemetry.loop import LoopMonitor
from tailguard.telemetry.pools import Refresher
from tailguard.telemetry.requests import RequestRecorder
from tailguard.telemetry.snapshot import build_snapshot
from tailguard.telemetry.tracing import use_tracer_provider

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

__all__ = ["Tailguard"]

_App = TypeVar("_App")


class Tailguard:
    """Policies for a service, and the wiring that enforces them.

    >>> from starlette.applications import Starlette
    >>> from tailguard import RoutePolicy, Tailguard
    >>> guard = Tailguard(
    ...     default=RoutePolicy(deadline=1.0),
    ...     routes={"GET /items/{item_id}": RoutePolicy(deadline=0.1)},
    ... )
    >>> app = guard.install(Starlette())

    ``default`` applies to routes no key matches (and to 404s). Route keys are
    the framework's route templates, optionally prefixed by a method, optionally
    ending in ``*`` to cover a prefix; the most specific key wins.

    Inbound deadline headers (``deadline_header``, ``grpc-timeout`` and
    ``x-envoy-expected-rq-timeout-ms``) can only shrink a route's budget;
    set ``inbound_deadlines=False`` to ignore them, for example on a service
    exposed directly to untrusted clients.

    Policies with ``max_concurrency`` get a limiter (see :class:`RoutePolicy`).
    Tenants, for per-tenant caps and fair queueing, come from
    ``tenant_header`` or from ``tenant(scope) -> str | None``;
    ``tenant_weights`` lists tenants and their shares of the queue. Tenants it
    does not list share one lane and one ``tenant_concurrency`` cap, since a
    client can send any tenant id; ``unlisted_tenants="separate"`` gives each
    its own (up to 256 at once per limiter), for tenants clients cannot forge
    (see docs/admission.md).

    Metrics (see :mod:`tailguard.telemetry.catalog`) are recorded into
    ``registry`` (prometheus_client's default registry if omitted): the
    guard's requests, its dependencies, its chaos engine and the tail helpers
    called while it handles a request all record there, so two guards with
    two registries keep their metrics apart. ``metrics=False`` turns
    tailguard's metrics off. ``buckets`` sets a histogram bucket family's
    bounds (``{"latency": (0.01, 0.1, 1, 10, 30, 60)}`` for routes that take
    tens of seconds; families: ``latency``, ``wait``); ``created_series=True``
    publishes the ``_created`` series of counters and histograms (off by
    default, for this guard's registry only). A registry holds one set of
    tailguard metrics: guards sharing one must agree on both. Tasks a request spawned
    that are still running when it finishes are *orphans*: counted, logged
    once per coroutine, listed by :meth:`snapshot`, and cancelled with
    ``orphans="cancel"``.

    ``chaos`` is the :class:`~tailguard.chaos.Chaos` engine for fault
    injection, available as :attr:`chaos`; without one, a disabled engine
    (unless ``TAILGUARD_CHAOS=1`` enables it).

    Route keys are checked against the app's routes at startup (lifespan
    startup, or the first request of an app without one): a key that matches
    no route gets a warning on the ``tailguard.routing`` logger naming the
    closest route, and with ``strict=True`` startup fails instead
    (:class:`~tailguard.middleware.asgi.RouteKeyError`). :meth:`routes_report`
    lists the key each route resolved to.

    ``enforce`` is the default enforcement mode of every route policy and
    dependency that names none: ``"on"``, ``"shadow"`` (decide everything,
    act on nothing, count what would have happened) or the fraction of
    requests enforced (picked per request, reproducibly with
    ``enforce_seed``). ``TAILGUARD_ENFORCE`` replaces it when set. Modes
    switch at run time with :meth:`enforce`, the control API or
    ``tailguard enforce``; with a fleet store (the chaos engine's), a
    switch on any worker reaches every worker following it, and the store's
    modes win over ``TAILGUARD_ENFORCE`` at start (see docs/rollout.md).
    """

    def __init__(
        self,
        *,
        default: RoutePolicy | None = None,
        routes: Mapping[str, RoutePolicy] | None = None,
        deadline_header: str = DEADLINE_HEADER,
        inbound_deadlines: bool = True,
        tenant_header: str | None = None,
        tenant: Callable[[Scope], str | None] | None = None,
        tenant_weights: Mapping[str, float] | None = None,
        unlisted_tenants: UnlistedTenants = "shared",
        metrics: bool = True,
        registry: CollectorRegistry | None = None,
        orphans: Literal["leave", "cancel"] = "leave",
        chaos: Chaos | None = None,
        buckets: Mapping[BucketFamily, Sequence[float]] | None = None,
        created_series: bool = False,
        strict: bool = False,
        enforce: Mode = "on",
        enforce_seed: int | None = None,
    ) -> None:
        check_buckets(buckets)
        if enforce_seed is not None and (
            isinstance(enforce_seed, bool) or not isinstance(enforce_seed, int)
        ):
            raise TypeError(f"enforce_seed must be an int or None, got {enforce_seed!r}")
        self.enforcements = Enforcements(enforce, seed=enforce_seed)
        """The enforcement mode of the guard, each route key and each dependency (live)."""
        if not isinstance(strict, bool):
            raise TypeError(f"strict must be True or False, got {strict!r}")
        if chaos is not None and not isinstance(chaos, Chaos):
            raise TypeError(f"chaos must be a tailguard.chaos.Chaos or None, got {chaos!r}")
        if orphans not in ("leave", "cancel"):
            raise ValueError(f"orphans must be 'leave' or 'cancel', got {orphans!r}")
        if routes is not None and not isinstance(routes, Mapping):
            raise TypeError(f"routes must be a mapping of route key to RoutePolicy, got {routes!r}")
        default = default if default is not None else RoutePolicy()
        unlimited = RouteTable(routes or {}, default, enforcements=self.enforcements)
        self.tenant = tenant_resolver(tenant_header, tenant)
        self.limiters: dict[str, Limiter] = build_limiters(
            unlimited.policies(),
            tenant_weights,
            unlisted_tenants=unlisted_tenants,
            tenants=self.tenant is not None,
        )
        self.routes = RouteTable(routes or {}, default, self.limiters, self.enforcements)
        self.inbound = InboundDeadlines(deadline_header) if inbound_deadlines else None
        self.deadline_header = deadline_header
        self._dependencies: dict[str, Dependency] = {}
        self.chaos: Chaos = chaos if chaos is not None else Chaos()
        """Fault injection; every dependency made by :meth:`dependency` consults it."""
        self.cancel_orphans = orphans == "cancel"
        """Cancel tasks still pending when their request finishes (``orphans="cancel"``)."""
        self.live = LiveRequests()
        """Requests in flight (for :meth:`snapshot`)."""
        self.registry: CollectorRegistry | None = None
        """Where this guard's metrics go; ``None`` with ``metrics=False``."""
        self.recorder: RequestRecorder | None = None
        """Per-request metrics; ``None`` with ``metrics=False``."""
        self.refresher: Refresher | None = None
        """Copies limiter, dependency and thread-pool state into the gauges."""
        self.loop_monitor: LoopMonitor | None = None
        """Measures event-loop lag and refreshes the gauges periodically."""
        catalog = None
        if metrics:
            catalog = catalog_for(registry, buckets=buckets, created=created_series)
            self.registry = catalog.registry
            self.recorder = RequestRecorder(catalog)
            self.refresher = Refresher(catalog, lambda: self.limiters, lambda: self._dependencies)
            self.loop_monitor = LoopMonitor(refresh=self._refresh, catalog=catalog)
            changes = catalog.enforcement_changes
            self.enforcements.changes = lambda target, mode: changes.labels(
                target, mode_label(mode)
            ).inc()
        self.tenant_labels = TenantLabels(tenant_weights or {}, catalog=catalog)
        """Tenant label values for per-tenant metrics: weighted tenants and the heaviest
        others by name, the rest ``other``."""
        self.chaos.bind(catalog)
        # So that experiments naming a dependency or route the service lacks are refused.
        self._app_routes: object = None
        self.chaos.describe_service(dependencies=self._dependencies.keys, routes=self._templates)
        self.runtime: Runtime = Runtime(
            routes=self.routes,
            chaos=self.chaos,
            live=self.live,
            dependencies=self.dependencies,
            inbound=self.inbound,
            tenant=self.tenant,
            tenant_labels=self.tenant_labels,
            recorder=self.recorder,
            loop_monitor=self.loop_monitor,
            cancel_orphans=self.cancel_orphans,
            strict=strict,
        )
        """What the middleware and each request read: built here, once."""
        self._app: object = None  # the app install() added tailguard to
        self.fleet_modes: FleetModes | None = None
        """With a fleet store (the chaos engine's): keeps the modes in step with the fleet's."""
        if self.chaos.store is not None:
            self.fleet_modes = FleetModes(
                self.chaos.store, self.enforcements, worker=self.chaos.worker
            )
            self.fleet_modes.start()

    def dependency(
        self,
        name: str,
        *,
        max_concurrency: int | None = None,
        max_queue: int | None = None,
        queue_timeout: float | None = None,
        enforce: Mode | None = None,
    ) -> Dependency:
        """The bulkhead for the outbound dependency ``name``: one per name per guard.

        The first call creates it (``max_concurrency`` defaults to 8 and
        ``max_queue`` to 16); later calls with just the name return the same
        object, and calls that state different limits are an error.
        ``enforce``: the bulkhead's mode (``"on"``, ``"shadow"``, a fraction;
        ``None``: the guard's default), switchable at run time.

        >>> guard = Tailguard()
        >>> inventory = guard.dependency("inventory", max_concurrency=8, max_queue=16)
        >>> guard.dependency("inventory") is inventory
        True
        """
        existing = self._dependencies.get(name)
        if existing is None:
            created = Dependency(
                name,
                max_concurrency=8 if max_concurrency is None else max_concurrency,
                max_queue=16 if max_queue is None else max_queue,
                queue_timeout=queue_timeout,
                chaos=self.chaos,
                registry=self.registry,
                enforce=self.enforcements.dependency(name, enforce),
            )
            self._dependencies[name] = created
            return created
        asked = (max_concurrency, max_queue, queue_timeout)
        have = (existing.max_concurrency, existing.max_queue, existing.queue_timeout)
        if any(a is not None and a != h for a, h in zip(asked, have, strict=True)):
            raise ValueError(
                f"dependency {name!r} already exists with max_concurrency={have[0]}, "
                f"max_queue={have[1]}, queue_timeout={have[2]}"
            )
        return existing

    def enforce(
        self,
        mode: Mode,
        *,
        route: str | None = None,
        dependency: str | None = None,
        who: str = "code",
    ) -> list[dict[str, Any]]:
        """Switch enforcement at run time; the next request sees it. What changed.

        Without ``route`` or ``dependency``, the guard's default and every route
        and dependency switch (one call rolls everything back). Each change is
        logged on ``tailguard.enforce`` (``who``, from what, to what) and counted
        in ``tailguard_enforcement_changes_total``. See docs/rollout.md.

        >>> guard = Tailguard(routes={"GET /a": RoutePolicy(deadline=1)}, metrics=False)
        >>> [change["to"] for change in guard.enforce("shadow", route="GET /a")]
        ['shadow']
        >>> guard.snapshot()["enforcement"]["routes"]
        {'GET /a': 'shadow', 'default': 'on'}
        """
        return self.enforcements.switch(mode, route=route, dependency=dependency, who=who)

    def _templates(self) -> list[tuple[str, frozenset[str] | None]] | None:
        """The installed app's route templates (read when asked: routes added later count)."""
        return route_templates(self._app_routes) if self._app_routes is not None else None

    def _refresh(self) -> None:
        """Periodic: fold batched request counts (multiprocess files) and refresh the gauges."""
        if self.recorder is not None:
            self.recorder.flush()
        if self.refresher is not None:
            self.refresher()

    @property
    def tracing(self) -> bool:
        """Whether requests annotate the server span and trace spawned tasks (``install``)."""
        return self.runtime.tracing

    @property
    def endpoints(self) -> tuple[tuple[str, ASGIApp], ...]:
        """Paths tailguard answers itself (``/metrics``, the control API), by prefix."""
        return self.runtime.endpoints

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able "asyncio ps" of the service: requests, tasks and pools right now.

        >>> sorted(Tailguard(metrics=False).snapshot())  # doctest: +NORMALIZE_WHITESPACE
        ['dependencies', 'enforcement', 'limiters', 'pools', 'requests', 'routes', 'taken_at',
         'tasks']
        """
        snapshot = build_snapshot(self)
        snapshot["routes"] = self.routes_report()
        snapshot["enforcement"] = self.enforcements.describe()
        return snapshot

    def routes_report(self) -> dict[str, Any]:
        """Which route key each of the app's routes resolved to, and keys that match none.

        ``routes``: one entry per route and method, with the ``key`` whose
        policy applies (``None``: the default) and its ``limiter``;
        ``unmatched_keys``: configured keys no route matches, each with the
        closest route; ``shadowed``: app routes a tailguard endpoint answers
        in their place. Read from the startup check, or from the app given to
        :meth:`install` before it has started; empty when no app is known.

        >>> from starlette.applications import Starlette
        >>> from starlette.routing import Route
        >>> async def item(request): ...
        >>> guard = Tailguard(routes={"GET /items/{id}": RoutePolicy(deadline=0.1)}, metrics=False)
        >>> app = guard.install(Starlette(routes=[Route("/items/{item_id}", item)]), tracing=False)
        >>> guard.routes_report()["unmatched_keys"][0]["closest"]
        'GET /items/{item_id}'
        """
        report = self.runtime.route_report
        if report is None:
            routes = getattr(self._app, "routes", None)
            if routes is None:
                return {"routes": [], "unmatched_keys": [], "shadowed": []}
            endpoints = [path for path, _ in self.runtime.endpoints]
            report = check_routes(app_routes(routes), self.routes, endpoints)
        return report.as_dict()

    @property
    def dependencies(self) -> Mapping[str, Dependency]:
        """Every dependency declared so far, by name (for telemetry and snapshots)."""
        return MappingProxyType(self._dependencies)

    def install(
        self,
        app: _App,
        *,
        metrics_path: str | None = "/metrics",
        tracing: bool = True,
        server_spans: Literal["tailguard", "otel"] = "tailguard",
        instrument: bool = True,
        tracer_provider: TracerProvider | None = None,
        exclude_spans: Sequence[str] | None = ("receive", "send"),
        control_token: str | None = None,
        control_path: str = "/_tailguard",
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        responses_through: Sequence[type] = (CORSMiddleware,),
        trace_endpoints: bool = False,
    ) -> _App:
        """Add tailguard to a Starlette or FastAPI ``app`` and return it.

        * tailguard's middleware (deadlines, admission, metrics, task tracing),
          outside the middleware the app added so far, so their time counts
          against the deadline. Install once per app: a second call is an error;
        * tailguard's own 503 and 504 pass through the app's own middleware of
          the classes in ``responses_through`` (default: Starlette's
          ``CORSMiddleware``) that it registered before ``install()``, so a
          browser can read them (see docs/deadlines.md); ``()``: sent as they are;
        * ``/metrics`` for Prometheus (``metrics_path=None``: not served), from
          this guard's registry, or from every worker's files in multiprocess
          mode; an app route at that path is an error naming ``metrics_path=``.
          ``metrics_port=`` serves them on a port of their own instead, bound to
          ``metrics_host`` (``127.0.0.1`` by default), started and stopped with
          the app's lifespan; give ``metrics_path=None`` with it to take them
          off the app's port. See docs/metrics.md for what a scrape exposes;
        * with ``tracing``, a server span per request from ``tracer_provider``
          (default: the global one), annotated by tailguard; tailguard's own
          spans come from the same provider. ``server_spans="tailguard"`` (the
          default) makes the span in tailguard's middleware, with the name,
          kind, status and attributes OpenTelemetry's ASGI middleware gives it,
          for a fraction of the cost (docs/tracing.md); ``server_spans="otel"``
          adds OpenTelemetry's ASGI middleware outermost instead, for its hooks,
          its OTel HTTP metrics or websocket spans, and passes ``exclude_spans``
          on (by default its per-message ``receive``/``send`` spans are left
          out; the lean path never makes them). Either way an app that is
          instrumented already keeps its own server span, and scrapes and
          control-API requests make no span (``trace_endpoints=True`` traces
          them). ``instrument=False`` keeps tailguard's annotations and spans
          but makes no server span (for an app wrapped in OTel from outside);
          ``tracing=False`` turns tailguard's tracing off altogether;
        * with a ``control_token``, the chaos control API under ``control_path``
          (see docs/chaos-control.md); without one, no control API is mounted.

        For any other ASGI app, wrap it instead:
        ``app = TailguardMiddleware(app, guard=guard)``.
        """
        add_middleware = getattr(app, "add_middleware", None)
        if add_middleware is None:
            raise TypeError(
                f"install() needs a Starlette or FastAPI application, got {type(app).__name__}; "
                "for another ASGI app use TailguardMiddleware(app, guard=guard)"
            )
        # Everything is checked and built before the app is touched: a bad option
        # raises and changes nothing.
        registered = list(getattr(app, "user_middleware", ()))
        for entry in registered:
            cls = getattr(entry, "cls", None)
            if isinstance(cls, type) and issubclass(cls, TailguardMiddleware):
                whose = "this guard" if entry.kwargs.get("guard") is self else "another guard"
                raise RuntimeError(
                    f"tailguard is already installed on this app (by {whose}); a second "
                    "middleware would count and limit every request twice. Call install() "
                    "once per app; to change its options, build the app again"
                )
        if server_spans not in ("tailguard", "otel"):
            raise ValueError(f"server_spans must be 'tailguard' or 'otel', got {server_spans!r}")
        if tracing:
            excluded = otel.check_options(exclude_spans)
            lean_spans = set(otel.DEFAULT_EXCLUDE_SPANS)
            if server_spans == "tailguard" and set(excluded or ()) != lean_spans:
                raise ValueError(
                    f"exclude_spans={exclude_spans!r} keeps OpenTelemetry's per-message "
                    "receive/send spans, which only server_spans='otel' makes"
                )
        if not isinstance(trace_endpoints, bool):
            raise TypeError(f"trace_endpoints must be True or False, got {trace_endpoints!r}")
        through = _response_middleware(registered, responses_through)
        server = None
        if metrics_port is not None:
            server = MetricsServer(
                metrics_app(self.registry, before_scrape=self._refresh),
                host=metrics_host,
                port=metrics_port,
            )
        endpoints: list[tuple[str, str, ASGIApp]] = []
        if metrics_path is not None:
            endpoints.append(
                (
                    "metrics_path",
                    _checked_path("metrics_path", metrics_path),
                    metrics_app(self.registry, before_scrape=self._refresh),
                )
            )
        if control_token is not None:
            path = _checked_path("control_path", control_path)
            control = ControlAPI(
                self.chaos,
                token=control_token,
                snapshot=self.snapshot,
                prefix=path,
                enforcement=self.enforcements,
            )
            endpoints.append(("control_path", path, control))
        routes = app_routes(getattr(app, "routes", None))
        for option, path, _ in endpoints:
            hidden = shadowed_by(path, routes)
            if hidden:
                raise ValueError(
                    f"the app has its own route {hidden[0].path!r}, which tailguard's endpoint "
                    f"at {path!r} would answer in its place; choose another path with "
                    f"{option}= (or {option}=None to serve none)"
                )
        self.runtime.serve(tuple((path, endpoint) for _, path, endpoint in endpoints))
        self.runtime.responses = Responses(through)
        self.runtime.metrics_server = server
        lean = None
        if tracing and instrument and server_spans == "tailguard" and not otel.is_instrumented(app):
            from tailguard.telemetry.server_span import ServerSpans

            lean = ServerSpans(tracer_provider)
        self.runtime.tracing = tracing
        self.runtime.server_spans = lean
        self.runtime.trace_endpoints = trace_endpoints
        self._app = app
        add_middleware(TailguardMiddleware, guard=self)
        self._app_routes = getattr(app, "routes", None)
        if tracing and instrument and server_spans == "otel":
            # Added last, so outermost: the server span is current inside tailguard.
            options: dict[str, Any] = {}
            excluded_urls = _excluded_urls(
                path for _, path, _ in (endpoints if not trace_endpoints else ())
            )
            if excluded_urls:
                options["excluded_urls"] = excluded_urls
            otel.instrument(app, tracer_provider, exclude_spans=exclude_spans, **options)
        elif tracing:
            use_tracer_provider(tracer_provider)
            if lean is not None:
                # tailguard's middleware makes the server span: a later
                # FastAPIInstrumentor.instrument_app must not add a second one.
                otel.mark_instrumented(app)
        return app


def _response_middleware(
    registered: Sequence[Any], classes: Sequence[type]
) -> list[tuple[Any, Sequence[Any], dict[str, Any]]]:
    """The app's middleware to pass tailguard's responses through (inside it: added before)."""
    if isinstance(classes, type) or not all(isinstance(cls, type) for cls in classes):
        raise TypeError(
            f"responses_through must be a sequence of middleware classes, got {classes!r}"
        )
    wanted = tuple(classes)
    through: list[tuple[Any, Sequence[Any], dict[str, Any]]] = []
    for entry in registered:  # outermost first, as Starlette keeps them
        cls = getattr(entry, "cls", None)
        if wanted and isinstance(cls, type) and issubclass(cls, wanted):
            through.append((cls, tuple(entry.args), dict(entry.kwargs)))
    return through


def _excluded_urls(paths: Iterable[str]) -> str:
    """OpenTelemetry's ``excluded_urls`` for tailguard's endpoints (and the user's own, by env).

    The ASGI middleware matches these regular expressions against
    ``scheme://host/path``; each one here matches a path exactly or below it.
    """
    ours = [
        "^[a-z]+://[^/]*" + re.escape(path).replace(",", "\\x2c") + "(?:/.*)?$" for path in paths
    ]
    env = otel.excluded_urls_from_env()
    return ",".join([*ours, *(url.strip() for url in env.split(",") if url.strip())])


def _checked_path(field: str, path: str) -> str:
    if (
        not isinstance(path, str)
        or not path.startswith("/")
        or path != path.rstrip("/")
        or " " in path
    ):
        raise ValueError(f"{field} must be an absolute path like '/metrics', got {path!r}")
    return path
