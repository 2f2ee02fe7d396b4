"""The ``Tailguard`` object: one place that holds a service's policies and wiring."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Scope

from tailguard.admission import Limiter
from tailguard.chaos.engine import Chaos
from tailguard.dependency import Dependency
from tailguard.middleware.admission import build_limiters, tenant_resolver
from tailguard.middleware.inbound import InboundDeadlines
from tailguard.middleware.routing import RouteTable
from tailguard.policy import RoutePolicy
from tailguard.telemetry.catalog import TenantLabels, activate, catalog_for
from tailguard.telemetry.live import LiveRequests
from tailguard.telemetry.loop import LoopMonitor
from tailguard.telemetry.pools import Refresher
from tailguard.telemetry.requests import RequestRecorder
from tailguard.telemetry.snapshot import build_snapshot

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
    ``registry`` (prometheus_client's default registry if omitted); the
    guard created last is the one tailguard's other features record into.
    ``metrics=False`` turns per-request metrics off. Tasks a request spawned
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
        deadline_header: str = "x-request-timeout-ms",
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
        self.tracing = True
        """Annotate the server span and trace spawned tasks (``install(tracing=False)``: off)."""
        self.live = LiveRequests()
        """Requests in flight (for :meth:`snapshot`)."""
        self.endpoints: tuple[tuple[str, ASGIApp], ...] = ()
        """Paths tailguard answers itself (``/metrics``, the control API), by prefix."""
        self.endpoint_pattern: re.Pattern[str] | None = None
        """Finds any of :attr:`endpoints`' paths in a raw path: one C call per request."""
        self.recorder: RequestRecorder | None = None
        """Per-request metrics; ``None`` with ``metrics=False``."""
        self.refresher: Refresher | None = None
        """Copies limiter, dependency and thread-pool state into the gauges."""
        self.loop_monitor: LoopMonitor | None = None
        """Measures event-loop lag and refreshes the gauges periodically."""
        if metrics:
            catalog = catalog_for(registry)
            activate(catalog)
            self.chaos.bind(catalog)
            self.recorder = RequestRecorder(catalog)
            self.refresher = Refresher(lambda: self.limiters, lambda: self._dependencies)
            self.loop_monitor = LoopMonitor(refresh=self._refresh)

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

    def _refresh(self) -> None:
        """Periodic: fold batched request counts (multiprocess files) and refresh the gauges."""
        if self.recorder is not None:
            self.recorder.flush()
        if self.refresher is not None:
            self.refresher()

    def endpoint_for(self, path: str) -> ASGIApp | None:
        """The endpoint of :attr:`endpoints` that serves ``path`` (a routed path), if any."""
        for prefix, endpoint in self.endpoints:
            if path == prefix or path.startswith(prefix + "/"):
                return endpoint
        return None

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
        from tailguard._install import install

        return install(
            self,
            app,
            metrics_path=metrics_path,
            tracing=tracing,
            instrument=instrument,
            tracer_provider=tracer_provider,
            exclude_spans=exclude_spans,
            control_token=control_token,
            control_path=control_path,
        )
