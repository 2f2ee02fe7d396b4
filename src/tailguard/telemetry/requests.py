"""Per-request metrics, recorded by the middleware through pre-bound series.

``labels(...)`` costs a lock and a dict lookup per call; a request touches
several series, so each (route, method) gets its bound children once and
keeps them. Routes are templates and methods outside the standard set are
``"other"``, so this cache is bounded by the application's routes.

>>> from prometheus_client import CollectorRegistry
>>> from tailguard.telemetry.catalog import Catalog
>>> recorder = RequestRecorder(Catalog(CollectorRegistry()))
>>> route = recorder.route("/items/{item_id}", "GET")
>>> route.begin()
>>> route.end(200, "ok", duration=0.012, queue_wait=None, dependencies=None)
>>> recorder.catalog.registry.get_sample_value(
...     "tailguard_requests_total",
...     {"route": "/items/{item_id}", "method": "GET", "status_class": "2xx", "outcome": "ok"},
... )
1.0
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from tailguard.telemetry.catalog import Catalog

__all__ = ["OUTCOMES", "UNMATCHED", "RequestRecorder", "RouteMetrics"]

UNMATCHED: Final = "unmatched"
"""The route label of requests no route matched (404s): never the raw path."""

OUTCOMES: Final = ("ok", "error", "deadline_exceeded", "shed", "disconnected")

_STANDARD_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
_STATUS_CLASSES: Final = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")


def status_class(status: int) -> str:
    """``"2xx"`` for 200..299 and so on; ``"none"`` when no response was sent.

    >>> status_class(204), status_class(0), status_class(999)
    ('2xx', 'none', 'none')
    """
    index = status // 100
    return _STATUS_CLASSES[index] if 0 < index < 6 else "none"


class RouteMetrics:
    """The bound series of one (route, method)."""

    __slots__ = (
        "_by_result",
        "_catalog",
        "_dependency",
        "_handler",
        "_method",
        "_queue",
        "_requests",
        "_route",
        "duration",
        "flight",
    )

    def __init__(self, catalog: Catalog, route: str, method: str) -> None:
        self._catalog = catalog
        self.flight: Final = catalog.requests_in_flight.labels(route)
        self.duration: Final = catalog.request_duration.labels(route, method)
        self._by_result: dict[tuple[int, str], Any] = {}
        self._handler = catalog.budget_spent.labels(route, "handler", "")
        self._queue = catalog.budget_spent.labels(route, "queue", "")
        self._dependency: dict[str, Any] = {}
        # Result series are bound on first use: a route produces only a few shapes.
        self._route = route
        self._method = method
        self._requests = catalog.requests

    def begin(self) -> None:
        """A request of this route arrived."""
        self.flight.inc()

    def end(
        self,
        status: int,
        outcome: str,
        *,
        duration: float,
        queue_wait: float | None,
        dependencies: Mapping[str, float] | None,
    ) -> None:
        """The request is over: count it and account for how its time was spent."""
        self.flight.dec()
        self.duration.observe(duration)
        key = (status // 100, outcome)
        counter = self._by_result.get(key)
        if counter is None:
            counter = self._by_result[key] = self._requests.labels(
                self._route, self._method, status_class(status), outcome
            )
        counter.inc()
        handler = duration
        if queue_wait is not None:
            self._queue.observe(queue_wait)
            handler -= queue_wait
        if dependencies:
            for name, spent in dependencies.items():
                series = self._dependency.get(name)
                if series is None:
                    series = self._dependency[name] = self._catalog.budget_spent.labels(
                        self._route, "dependency", name
                    )
                series.observe(spent)
                handler -= spent
        self._handler.observe(max(handler, 0.0))

    def shed(self, reason: str) -> None:
        """Admission control answered 503 with ``reason``."""
        self._catalog.requests_shed.labels(self._route, reason).inc()

    def deadline_exceeded(self, stage: str) -> None:
        """The deadline fired; ``stage`` is ``before_response`` (504) or ``during_response``."""
        self._catalog.deadline_exceeded.labels(self._route, stage).inc()


class RequestRecorder:
    """Hands out the :class:`RouteMetrics` of each (route template, method)."""

    __slots__ = ("_routes", "catalog")

    def __init__(self, catalog: Catalog) -> None:
        self.catalog: Final = catalog
        self._routes: dict[tuple[str | None, str], RouteMetrics] = {}

    def route(self, template: str | None, method: str) -> RouteMetrics:
        """The series for requests of ``method`` on ``template`` (``None``: unmatched)."""
        found = self._routes.get((template, method))
        if found is None:
            label = method if method in _STANDARD_METHODS else "other"
            found = RouteMetrics(self.catalog, template or UNMATCHED, label)
            if label == method:  # only standard methods are keys: clients pick methods
                self._routes[(template, method)] = found
        return found
