"""What the request path reads: the per-app state a guard builds for its middleware.

:class:`~tailguard.Tailguard` is configuration; :class:`Runtime` is what that
configuration compiles to, handed to :class:`~tailguard.TailguardMiddleware`
and to each request's :class:`~tailguard.middleware.exchange.Exchange`. Every
field the hot path reads lives here, in one place, so renaming a guard field
cannot silently change what a request does, and the middleware never imports
the guard.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from starlette.types import ASGIApp, Scope

from tailguard.middleware.responses import Responses

if TYPE_CHECKING:
    from tailguard.chaos.engine import Chaos
    from tailguard.dependency import Dependency
    from tailguard.routing.inbound import InboundDeadlines
    from tailguard.routing.matching import RouteTable
    from tailguard.routing.report import RouteReport
    from tailguard.telemetry.catalog import Catalog, TenantLabels
    from tailguard.telemetry.exposition import MetricsServer
    from tailguard.telemetry.live import LiveRequests
    from tailguard.telemetry.loop import LoopMonitor
    from tailguard.telemetry.requests import RequestRecorder
    from tailguard.telemetry.server_span import ServerSpans

__all__ = ["Runtime", "RuntimeOwner"]


@dataclass(eq=False, slots=True)
class Runtime:
    """The per-app state of one guard: routes, limits, telemetry, chaos, served endpoints.

    Built by :class:`~tailguard.Tailguard` (``guard.runtime``); the middleware
    and each request read it, and :meth:`Tailguard.install` fills in
    :attr:`tracing` and the :attr:`endpoints` before the first request.

    >>> from tailguard import Tailguard
    >>> runtime = Tailguard(metrics=False).runtime
    >>> runtime.endpoint_for("/metrics") is None, runtime.catalog is None
    (True, True)
    """

    routes: RouteTable
    """Route keys to policies and limiters; resolves a request's template."""
    chaos: Chaos
    """Fault injection: route faults before admission, dependency faults in the seams."""
    live: LiveRequests
    """Requests in flight (for snapshots)."""
    dependencies: Mapping[str, Dependency]
    """The guard's dependencies, closed when the app's lifespan ends."""
    inbound: InboundDeadlines | None = None
    """Reads the budgets callers send in headers; ``None``: ignore them."""
    tenant: Callable[[Scope], str | None] | None = None
    """Finds a request's tenant; ``None``: no tenants."""
    tenant_labels: TenantLabels | None = None
    """Bounds the tenant label of per-tenant metrics."""
    recorder: RequestRecorder | None = None
    """Per-request metrics; ``None`` when the guard's metrics are off."""
    loop_monitor: LoopMonitor | None = None
    """Loop lag and periodic gauge refresh; ``None`` when metrics are off."""
    cancel_orphans: bool = False
    """Cancel tasks still pending when their request finishes."""
    tracing: bool = True
    """Annotate the server span and trace spawned tasks."""
    server_spans: ServerSpans | None = None
    """Makes each request's server span (``install(server_spans="tailguard")``); ``None``:
    tailguard makes none (OpenTelemetry's middleware does, or tracing is off)."""
    trace_endpoints: bool = False
    """:attr:`server_spans` also traces requests to :attr:`endpoints` (scrapes, control API)."""
    endpoints: tuple[tuple[str, ASGIApp], ...] = ()
    """Paths tailguard answers itself (``/metrics``, the control API), by prefix."""
    endpoint_pattern: re.Pattern[str] | None = field(default=None, init=False)
    """Finds any of :attr:`endpoints`' paths in a raw path: one C call per request."""
    responses: Responses = field(default_factory=Responses)
    """Sends tailguard's own 503/504, through the app's CORS middleware after ``install()``."""
    strict: bool = False
    """Route keys that match no route of the app fail startup instead of a warning."""
    route_report: RouteReport | None = None
    """What the startup check found: the key of every route, keys matching none."""
    metrics_server: MetricsServer | None = None
    """``install(metrics_port=...)``: serves the metrics on their own port, with the lifespan."""

    @property
    def catalog(self) -> Catalog | None:
        """The metrics requests record into; ``None`` when the guard's metrics are off."""
        recorder = self.recorder
        return recorder.catalog if recorder is not None else None

    def serve(self, endpoints: tuple[tuple[str, ASGIApp], ...]) -> None:
        """Answer ``endpoints`` (path prefix, ASGI app) ahead of the application."""
        self.endpoints = endpoints
        if endpoints:
            alternatives = "|".join(re.escape(path) for path, _ in endpoints)
            self.endpoint_pattern = re.compile(f"(?:{alternatives})(?:/|$)")
        else:
            self.endpoint_pattern = None

    def endpoint_for(self, path: str) -> ASGIApp | None:
        """The endpoint of :attr:`endpoints` that serves ``path`` (a routed path), if any."""
        for prefix, endpoint in self.endpoints:
            if path == prefix or path.startswith(prefix + "/"):
                return endpoint
        return None


class RuntimeOwner(Protocol):
    """What :class:`~tailguard.TailguardMiddleware` needs of its ``guard=``: its runtime."""

    @property
    def runtime(self) -> Runtime: ...
