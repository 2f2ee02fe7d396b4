"""The ``Tailguard`` object: one place that holds a service's policies and wiring."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Scope

from tailguard.admission import Limiter
from tailguard.chaos.control import ControlAPI
from tailguard.chaos.engine import Chaos
from tailguard.deadlines import DEADLINE_HEADER
from tailguard.dependency import Dependency
from tailguard.middleware.asgi import TailguardMiddleware
from tailguard.middleware.runtime import Runtime
from tailguard.policy import RoutePolicy
from tailguard.routing.inbound import InboundDeadlines
from tailguard.routing.limits import build_limiters, tenant_resolver
from tailguard.routing.matching import RouteTable, route_templates
from tailguard.telemetry import otel
from tailguard.telemetry.catalog import TenantLabels, catalog_for
from tailguard.telemetry.exposition import metrics_app
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
    ``tenant_weights`` gives some tenants a larger share of the queue.

    Metrics (see :mod:`tailguard.telemetry.catalog`) are recorded into
    ``registry`` (prometheus_client's default registry if omitted): the
    guard's requests, its dependencies, its chaos engine and the tail helpers
    called while it handles a request all record there, so two guards with
    two registries keep their metrics apart. ``metrics=False`` turns
    tailguard's metrics off. Tasks a request spawned
    that are still running when it finishes are *orphans*: counted, logged
    once per coroutine, listed by :meth:`snapshot`, and cancelled with
    ``orphans="cancel"``.

    ``chaos`` is the :class:`~tailguard.chaos.Chaos` engine for fault
    injection, available as :attr:`chaos`; without one, a disabled engine
    (unless ``TAILGUARD_CHAOS=1`` enables it).
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
        metrics: bool = True,
        registry: CollectorRegistry | None = None,
        orphans: Literal["leave", "cancel"] = "leave",
        chaos: Chaos | None = None,
    ) -> None:
        if chaos is not None and not isinstance(chaos, Chaos):
            raise TypeError(f"chaos must be a tailguard.chaos.Chaos or None, got {chaos!r}")
        if orphans not in ("leave", "cancel"):
            raise ValueError(f"orphans must be 'leave' or 'cancel', got {orphans!r}")
        if routes is not None and not isinstance(routes, Mapping):
            raise TypeError(f"routes must be a mapping of route key to RoutePolicy, got {routes!r}")
        default = default if default is not None else RoutePolicy()
        unlimited = RouteTable(routes or {}, default)
        self.limiters: dict[str, Limiter] = build_limiters(unlimited.policies(), tenant_weights)
        self.routes = RouteTable(routes or {}, default, self.limiters)
        self.inbound = InboundDeadlines(deadline_header) if inbound_deadlines else None
        self.deadline_header = deadline_header
        self.tenant = tenant_resolver(tenant_header, tenant)
        self.tenant_labels = TenantLabels(tenant_weights or {})
        """Tenant label values for per-tenant metrics: weighted tenants, the rest ``other``."""
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
            catalog = catalog_for(registry)
            self.registry = catalog.registry
            self.recorder = RequestRecorder(catalog)
            self.refresher = Refresher(catalog, lambda: self.limiters, lambda: self._dependencies)
            self.loop_monitor = LoopMonitor(refresh=self._refresh, catalog=catalog)
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
        )
        """What the middleware and each request read: built here, once."""

    def dependency(
        self,
        name: str,
        *,
        max_concurrency: int | None = None,
        max_queue: int | None = None,
        queue_timeout: float | None = None,
    ) -> Dependency:
        """The bulkhead for the outbound dependency ``name``: one per name per guard.

        The first call creates it (``max_concurrency`` defaults to 8 and
        ``max_queue`` to 16); later calls with just the name return the same
        object, and calls that state different limits are an error.

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

        >>> sorted(Tailguard(metrics=False).snapshot())
        ['dependencies', 'limiters', 'pools', 'requests', 'taken_at', 'tasks']
        """
        return build_snapshot(self)

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
        instrument: bool = True,
        tracer_provider: TracerProvider | None = None,
        exclude_spans: Sequence[str] | None = ("receive", "send"),
        control_token: str | None = None,
        control_path: str = "/_tailguard",
    ) -> _App:
        """Add tailguard to a Starlette or FastAPI ``app`` and return it.

        * tailguard's middleware (deadlines, admission, metrics, task tracing);
        * ``/metrics`` for Prometheus (``metrics_path=None``: not served), from
          this guard's registry, or from every worker's files in multiprocess mode;
        * with ``tracing``, OpenTelemetry's ASGI middleware outermost (unless the
          app is instrumented already) with ``tracer_provider`` (default: the
          global one), whose server span tailguard annotates; tailguard's own
          spans come from the same provider. ``exclude_spans`` is passed on:
          by default the per-message ``receive``/``send`` spans are left out.
          ``instrument=False`` keeps tailguard's annotations and spans but adds
          no middleware (for an app wrapped in OTel from outside);
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
        if tracing:
            otel.check_options(exclude_spans)
        endpoints: list[tuple[str, ASGIApp]] = []
        if metrics_path is not None:
            endpoints.append(
                (
                    _checked_path("metrics_path", metrics_path),
                    metrics_app(self.registry, before_scrape=self.refresher),
                )
            )
        if control_token is not None:
            path = _checked_path("control_path", control_path)
            control = ControlAPI(
                self.chaos, token=control_token, snapshot=self.snapshot, prefix=path
            )
            endpoints.append((path, control))
        self.runtime.serve(tuple(endpoints))
        self.runtime.tracing = tracing
        add_middleware(TailguardMiddleware, guard=self)
        self._app_routes = getattr(app, "routes", None)
        if tracing and instrument:
            # Added last, so outermost: the server span is current inside tailguard.
            otel.instrument(app, tracer_provider, exclude_spans=exclude_spans)
        elif tracing:
            use_tracer_provider(tracer_provider)
        return app


def _checked_path(field: str, path: str) -> str:
    if (
        not isinstance(path, str)
        or not path.startswith("/")
        or path != path.rstrip("/")
        or " " in path
    ):
        raise ValueError(f"{field} must be an absolute path like '/metrics', got {path!r}")
    return path
