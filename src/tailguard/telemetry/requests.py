"""Per-request metrics, counted in plain Python and folded into Prometheus at scrape time.

prometheus_client takes a lock and updates a value object on every
``inc``/``observe``; a request touches four or five series, which cost more
than the rest of tailguard's per-request work. So each (route, method) keeps
plain counters and bucket counts, and :meth:`RequestRecorder.flush` folds them
into the catalog's metrics. The catalog flushes its recorders first on every
collection of its registry, so every exposition
(``/metrics``, ``generate_latest``, ``start_http_server``) sees exact values;
in multiprocess mode the telemetry monitor flushes periodically as well.

Recording happens on the event loop's thread. A collection from another thread
never touches counts that may still be written: it retires the current batch
and folds the one retired before it, so such scrapes lag by at most one scrape
and lose nothing.

>>> from prometheus_client import CollectorRegistry
>>> from tailguard.telemetry.catalog import TENANT_OUTCOMES, Catalog
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

import threading
from bisect import bisect_left
from collections.abc import Mapping
from typing import Any, Final

from tailguard.telemetry.catalog import TENANT_OUTCOMES, Catalog

__all__ = [
    "ADMITTED",
    "OUTCOMES",
    "SHED",
    "UNMATCHED",
    "RequestRecorder",
    "RouteMetrics",
    "status_class",
]

UNMATCHED: Final = "unmatched"
"""The route label of requests no route matched (404s): never the raw path."""

OUTCOMES: Final = TENANT_OUTCOMES

ADMITTED: Final = "admitted"
"""``admission`` label of the request duration: the request was let in (whatever became of it)."""
SHED: Final = "shed"
"""``admission`` label of the request duration: admission control answered 503."""

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


class _Histogram:
    """Observations of one histogram series not yet folded into it."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: list[float]) -> None:
        self.bounds = bounds  # the series' upper bounds, +Inf last
        self.counts = [0] * len(bounds)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # Same bucket as prometheus_client's ``value <= bound`` scan.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value


class _Batch:
    """Everything one (route, method) recorded since the last fold."""

    __slots__ = (
        "admitted_at_once",
        "dependency",
        "duration",
        "flight",
        "handler",
        "queue",
        "results",
        "shadowed",
        "shed",
        "whole",
    )

    def __init__(self, bounds: list[float]) -> None:
        self.flight = 0  # arrivals minus ends
        self.shadowed = 0  # requests handled in shadow mode
        self.results: dict[tuple[int, str], int] = {}
        # Most requests neither queue nor call a dependency: their handler time
        # is their duration, observed once here and folded into both series.
        self.whole = _Histogram(bounds)
        self.admitted_at_once = 0  # queue waits of exactly 0 (a limiter, no wait)
        self.duration = _Histogram(bounds)
        self.shed = _Histogram(bounds)  # durations of requests shed by admission control
        self.handler = _Histogram(bounds)
        self.queue = _Histogram(bounds)
        self.dependency: dict[str, _Histogram] = {}


class RouteMetrics:
    """The counts of one (route, method), and the series they are folded into."""

    __slots__ = ("_batch", "_bounds", "_catalog", "_method", "_retired", "_route", "owner")

    def __init__(self, catalog: Catalog, route: str, method: str) -> None:
        self._catalog = catalog
        self._route = route
        self._method = method
        # Duration and budget histograms share buckets (the latency family).
        self._bounds: list[float] = list(
            catalog.request_duration.labels(route, method, ADMITTED)._upper_bounds
        )
        self._batch = _Batch(self._bounds)
        self._retired: _Batch | None = None
        self.owner = threading.get_ident()
        """The thread that records (the event loop's)."""

    def begin(self) -> None:
        """A request of this route arrived."""
        self._batch.flight += 1

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
        batch = self._batch
        batch.flight -= 1
        key = (status // 100, outcome)
        results = batch.results
        results[key] = results.get(key, 0) + 1
        # Shed requests get a duration series of their own (admission="shed"):
        # their fast 503s would hide the tail of the requests that were served.
        shed = outcome == "shed"
        if not queue_wait and not dependencies:  # the handler had all of it
            if shed:
                batch.shed.observe(duration)
                batch.handler.observe(duration)
            else:
                batch.whole.observe(duration)
                if queue_wait is not None:
                    batch.admitted_at_once += 1
            return
        (batch.shed if shed else batch.duration).observe(duration)
        handler = duration
        if queue_wait is not None:
            batch.queue.observe(queue_wait)
            handler -= queue_wait
        if dependencies:
            for name, spent in dependencies.items():
                series = batch.dependency.get(name)
                if series is None:
                    series = batch.dependency[name] = _Histogram(self._bounds)
                series.observe(spent)
                handler -= spent
        batch.handler.observe(max(handler, 0.0))

    def tenant(self, tenant: str, outcome: str) -> None:
        """Count the request for its (bounded) ``tenant`` label."""
        self._catalog.tenant_requests.labels(tenant, outcome).inc()

    def shed(self, reason: str) -> None:
        """Admission control answered 503 with ``reason`` (rare: counted directly)."""
        self._catalog.requests_shed.labels(self._route, reason).inc()

    def deadline_exceeded(self, stage: str) -> None:
        """The deadline fired; ``stage`` is ``before_response`` (504) or ``during_response``."""
        self._catalog.deadline_exceeded.labels(self._route, stage).inc()

    def shadowed(self, would_shed: str | None, would_exceed_deadline: bool) -> None:
        """A request handled in shadow mode ended: count it and what would have happened.

        ``would_shed``: the reason admission control would have shed it, if it would.
        """
        self._batch.shadowed += 1
        if would_shed is not None:
            self._catalog.requests_would_shed.labels(self._route, would_shed).inc()
        if would_exceed_deadline:
            self._catalog.requests_would_exceed_deadline.labels(self._route).inc()

    def flush(self) -> None:
        """Fold what was recorded into the catalog's metrics."""
        if threading.get_ident() == self.owner:
            retired, self._retired = self._retired, None
            if retired is not None:
                self._fold(retired)
            batch = self._batch
            if batch.flight or batch.results:  # else nothing arrived or ended since
                self._fold(batch)
                self._batch = _Batch(self._bounds)
        else:
            # The recording thread may still hold the current batch: fold the
            # one retired by the previous foreign collection instead.
            retired, self._retired = self._retired, self._batch
            self._batch = _Batch(self._bounds)
            if retired is not None:
                self._fold(retired)

    def _fold(self, batch: _Batch) -> None:
        catalog, route, method = self._catalog, self._route, self._method
        if batch.flight:
            catalog.requests_in_flight.labels(route).inc(batch.flight)
        if batch.shadowed:
            catalog.requests_shadowed.labels(route).inc(batch.shadowed)
        for (hundreds, outcome), count in batch.results.items():
            labels = (route, method, status_class(hundreds * 100), outcome)
            catalog.requests.labels(*labels).inc(count)
        duration = catalog.request_duration.labels(route, method, ADMITTED)
        _fold_histogram(batch.whole, duration)
        _fold_histogram(batch.duration, duration)
        if any(batch.shed.counts):  # routes that never shed get no "shed" series
            _fold_histogram(batch.shed, catalog.request_duration.labels(route, method, SHED))
        budget = catalog.budget_spent
        handler = budget.labels(route, "handler", "")
        _fold_histogram(batch.whole, handler)
        _fold_histogram(batch.handler, handler)
        queue = budget.labels(route, "queue", "")
        if batch.admitted_at_once:
            queue._buckets[0].inc(batch.admitted_at_once)  # a zero wait: first bucket, sum +0
        _fold_histogram(batch.queue, queue)
        for name, series in batch.dependency.items():
            _fold_histogram(series, budget.labels(route, "dependency", name))


def _fold_histogram(pending: _Histogram, child: Any) -> None:
    if not any(pending.counts):
        return
    # prometheus_client keeps per-bucket (not cumulative) counts and a sum;
    # adding to them is what ``observe`` does, once per observation.
    for index, count in enumerate(pending.counts):
        if count:
            child._buckets[index].inc(count)
    child._sum.inc(pending.total)


class RequestRecorder:
    """Hands out the :class:`RouteMetrics` of each (route template, method)."""

    __slots__ = ("__weakref__", "_flushing", "_routes", "catalog")

    def __init__(self, catalog: Catalog) -> None:
        self.catalog: Final = catalog
        self._routes: dict[tuple[str | None, str], RouteMetrics] = {}
        # One flush at a time: the loop's (before a scrape, by the loop monitor)
        # and a collection in another thread (the exposition thread) would
        # otherwise both take the same retired batch and fold it twice.
        self._flushing = threading.Lock()
        catalog.before_collect.add(self)

    def route(self, template: str | None, method: str) -> RouteMetrics:
        """The series for requests of ``method`` on ``template`` (``None``: unmatched)."""
        found = self._routes.get((template, method))
        if found is None:
            label = method if method in _STANDARD_METHODS else "other"
            key = (template, label)
            found = self._routes.get(key)
            if found is None:
                found = self._routes[key] = RouteMetrics(self.catalog, template or UNMATCHED, label)
        return found

    def flush(self) -> None:
        """Fold every route's counts into the catalog (done by every registry collection)."""
        with self._flushing:
            for route in list(self._routes.values()):
                route.flush()
