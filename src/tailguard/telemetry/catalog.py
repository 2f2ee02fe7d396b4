"""Every Prometheus metric tailguard publishes, declared once, as data.

Names follow ``tailguard_<noun>_<unit>``: counters end in ``_total``,
durations are in seconds. Labels are bounded: route templates (never raw
paths), methods, status classes, small enums (outcome, reason, phase, fault),
and the names an operator configured (limiters, dependencies, pools, call
sites, experiments). Tenants appear only on the per-tenant counters, through
:class:`TenantLabels` (configured tenants and the heaviest others, bounded;
the rest ``"other"``).

:data:`METRICS` is the table of :class:`MetricSpec`: name, kind, help, labels,
bucket family and multiprocess mode of each metric. A :class:`Catalog`
registers one metric per spec on one registry, as the attribute the spec
names; the dashboard generator and the tests iterate the same table, so a
renamed metric cannot leave a dashboard behind.

>>> from prometheus_client import CollectorRegistry
>>> catalog = Catalog(CollectorRegistry())
>>> catalog.chaos_injections.labels("slow-db", "db", "latency").inc()
>>> catalog.registry.get_sample_value(
...     "tailguard_chaos_injections_total",
...     {"experiment": "slow-db", "target": "db", "fault": "latency"},
... )
1.0
>>> spec = SPECS["tailguard_request_duration_seconds"]
>>> spec.kind, spec.labels, spec.unit
('histogram', ('route', 'method', 'admission'), 'seconds')
"""

from __future__ import annotations

import itertools
import math
import os
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = [
    "BUCKETS",
    "METRICS",
    "SPECS",
    "TENANT_OUTCOMES",
    "Catalog",
    "MetricSpec",
    "TenantLabels",
    "catalog_for",
    "check_buckets",
]

Kind = Literal["counter", "gauge", "histogram"]
BucketFamily = Literal["latency", "wait"]

BUCKETS: Final[Mapping[BucketFamily, tuple[float, ...]]] = {
    # Request and dependency durations: 1 ms to 10 s, roughly 1-2.5-5 steps.
    "latency": (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    # Queue waits and loop lag: most are far below a millisecond, the interesting ones are not.
    "wait": (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
}
"""The default upper bounds of each histogram bucket family."""


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric as data: what :class:`Catalog` registers and dashboards query.

    >>> SPECS["tailguard_requests_total"].attr
    'requests'
    """

    attr: str
    """The :class:`Catalog` attribute that holds the metric."""
    kind: Kind
    name: str
    """The exposed name (counters with their ``_total``)."""
    help: str
    labels: tuple[str, ...] = ()
    buckets: BucketFamily | None = None
    """Histograms: the bucket family (:data:`BUCKETS`), which a guard may override."""
    multiprocess_mode: str | None = None
    """Gauges: how ``PROMETHEUS_MULTIPROC_DIR`` mode combines the workers' values."""

    @property
    def unit(self) -> str:
        """``"seconds"`` for durations, else ``""`` (counts of requests, calls, slots, tasks)."""
        return "seconds" if self.name.removesuffix("_total").endswith("_seconds") else ""

    def build(
        self,
        registry: CollectorRegistry | None,
        buckets: Mapping[BucketFamily, Sequence[float]] | None = None,
        *,
        created: bool = True,
    ) -> Counter | Gauge | Histogram:
        """The prometheus_client metric for this spec, registered on ``registry``.

        ``created=False``: the metric leaves out its ``_created`` series.
        """
        if self.kind == "counter":
            counter = Counter if created else _CounterWithoutCreated
            return counter(self.name, self.help, self.labels, registry=registry)
        if self.kind == "gauge":
            mode: Any = self.multiprocess_mode or "all"
            return Gauge(
                self.name, self.help, self.labels, multiprocess_mode=mode, registry=registry
            )
        assert self.buckets is not None, f"{self.name}: a histogram needs a bucket family"
        bounds = (buckets or {}).get(self.buckets, BUCKETS[self.buckets])
        histogram = Histogram if created else _HistogramWithoutCreated
        return histogram(self.name, self.help, self.labels, buckets=bounds, registry=registry)


def _without_created(metrics: Iterable[Metric]) -> list[Metric]:
    """``metrics`` with their ``_created`` samples left out (one pass, at collection time)."""
    collected = list(metrics)
    for metric in collected:
        created = metric.name + "_created"
        metric.samples = [sample for sample in metric.samples if sample.name != created]
    return collected


class _CounterWithoutCreated(Counter):
    """A counter whose collection has no ``_created`` series (this registry's choice only).

    prometheus_client's ``disable_created_metrics()`` is process-wide: it would
    change every other registry in the process too.
    """

    def collect(self) -> Iterable[Metric]:
        return _without_created(super().collect())


class _HistogramWithoutCreated(Histogram):
    """A histogram whose collection has no ``_created`` series (see the counter's)."""

    def collect(self) -> Iterable[Metric]:
        return _without_created(super().collect())


def check_buckets(
    buckets: Mapping[BucketFamily, Sequence[float]] | Mapping[str, Sequence[float]] | None,
) -> dict[BucketFamily, tuple[float, ...]] | None:
    """Validate bucket overrides: a family name to increasing, finite, positive bounds.

    >>> check_buckets({"latency": [0.1, 1, 30]})
    {'latency': (0.1, 1.0, 30.0)}
    >>> check_buckets({"latency": [1, 0.5]})
    Traceback (most recent call last):
    ...
    ValueError: buckets['latency'] must be increasing, finite, positive numbers, got [1, 0.5]
    """
    if buckets is None:
        return None
    if not isinstance(buckets, Mapping):
        raise TypeError(
            f"buckets must map a bucket family ({', '.join(BUCKETS)}) to bounds, got {buckets!r}"
        )
    checked: dict[BucketFamily, tuple[float, ...]] = {}
    for family, bounds in buckets.items():
        if family not in BUCKETS:
            raise ValueError(
                f"buckets: unknown bucket family {family!r}; use {', '.join(map(repr, BUCKETS))}"
            )
        try:
            values = tuple(float(bound) for bound in bounds)
        except (TypeError, ValueError):
            values = ()
        good = (
            bool(values)
            and all(0 < value < math.inf for value in values)
            and all(a < b for a, b in itertools.pairwise(values))
            and not isinstance(bounds, str | bytes)
        )
        if not good:
            raise ValueError(
                f"buckets[{family!r}] must be increasing, finite, positive numbers, got {bounds!r}"
            )
        checked[family] = values  # type: ignore[index]
    return checked


METRICS: Final[tuple[MetricSpec, ...]] = (
    # -- requests (the middleware)
    MetricSpec(
        "requests",
        "counter",
        "tailguard_requests_total",
        "HTTP requests handled, by route template, method, status class and outcome "
        "(ok, error, deadline_exceeded, shed, disconnected).",
        labels=("route", "method", "status_class", "outcome"),
    ),
    MetricSpec(
        "request_duration",
        "histogram",
        "tailguard_request_duration_seconds",
        "Time from the request's arrival to its last response byte (or its end); "
        "admission is 'admitted' for requests let in (served, failed, cut off) and "
        "'shed' for the 503s of admission control, whose fast times would hide the "
        "served requests' tail.",
        labels=("route", "method", "admission"),
        buckets="latency",
    ),
    MetricSpec(
        "requests_in_flight",
        "gauge",
        "tailguard_requests_in_flight",
        "Requests being handled now, by route template.",
        labels=("route",),
        multiprocess_mode="livesum",
    ),
    MetricSpec(
        "requests_shed",
        "counter",
        "tailguard_requests_shed_total",
        "Requests answered 503 by admission control, by route template and reason.",
        labels=("route", "reason"),
    ),
    MetricSpec(
        "deadline_exceeded",
        "counter",
        "tailguard_deadline_exceeded_total",
        "Requests whose deadline fired: before the response started (504) or while it "
        "streamed (aborted).",
        labels=("route", "stage"),
    ),
    # -- shadow mode and gradual enforcement (docs/rollout.md)
    MetricSpec(
        "requests_shadowed",
        "counter",
        "tailguard_requests_shadowed_total",
        "Requests handled in shadow mode (decided, not enforced), by route template: the "
        "enforced share is 1 - this / tailguard_requests_total.",
        labels=("route",),
    ),
    MetricSpec(
        "requests_would_shed",
        "counter",
        "tailguard_requests_would_shed_total",
        "Shadow-mode requests admission control would have answered 503, by route template "
        "and reason; they were served.",
        labels=("route", "reason"),
    ),
    MetricSpec(
        "requests_would_exceed_deadline",
        "counter",
        "tailguard_requests_would_exceed_deadline_total",
        "Shadow-mode requests that outlived their deadline, by route template: enforced, "
        "they would have been cut off (504 or aborted); they ran to the end.",
        labels=("route",),
    ),
    MetricSpec(
        "dependency_would_shed",
        "counter",
        "tailguard_dependency_calls_would_shed_total",
        "Shadow-mode dependency calls a full bulkhead would have rejected, by dependency and "
        "reason; they ran.",
        labels=("dependency", "reason"),
    ),
    MetricSpec(
        "enforcement_changes",
        "counter",
        "tailguard_enforcement_changes_total",
        "Enforcement mode switches at run time, by target (guard, route, dependency) and the "
        "mode switched to (on, shadow, fraction).",
        labels=("target", "mode"),
    ),
    MetricSpec(
        "budget_spent",
        "histogram",
        "tailguard_budget_spent_seconds",
        "How each request's time was spent: queued for admission, in each dependency, "
        "and the rest in the handler.",
        labels=("route", "phase", "dependency"),
        buckets="latency",
    ),
    MetricSpec(
        "tenant_requests",
        "counter",
        "tailguard_tenant_requests_total",
        "Requests by tenant (configured tenants; the rest are 'other') and outcome.",
        labels=("tenant", "outcome"),
    ),
    # -- limiters and pools (refreshed from their state, not per request)
    MetricSpec(
        "queue_wait",
        "histogram",
        "tailguard_queue_wait_seconds",
        "Time spent waiting for a limiter slot by requests and calls that had to wait "
        "(granted or shed); immediate admissions are not observed (the queue phase of "
        "tailguard_budget_spent_seconds counts them as 0).",
        labels=("limiter", "kind"),
        buckets="wait",
    ),
    MetricSpec(
        "limiter_in_use",
        "gauge",
        "tailguard_limiter_in_use",
        "Slots held now; kind is 'route' or 'dependency'.",
        labels=("limiter", "kind"),
        multiprocess_mode="livesum",
    ),
    MetricSpec(
        "limiter_queued",
        "gauge",
        "tailguard_limiter_queued",
        "Requests or calls waiting for a slot now.",
        labels=("limiter", "kind"),
        multiprocess_mode="livesum",
    ),
    MetricSpec(
        "limiter_limit",
        "gauge",
        "tailguard_limiter_limit",
        "The effective concurrency limit (the adaptive one, if any).",
        labels=("limiter", "kind"),
        multiprocess_mode="livesum",
    ),
    MetricSpec(
        "limiter_rejections",
        "counter",
        "tailguard_limiter_rejections_total",
        "Requests or calls a limiter shed, by reason.",
        labels=("limiter", "kind", "reason"),
    ),
    MetricSpec(
        "pool_threads_in_use",
        "gauge",
        "tailguard_pool_threads_in_use",
        "Threads of a pool running a job now (asyncio's default executor, anyio's "
        "worker threads, each dependency's own pool).",
        labels=("pool",),
        multiprocess_mode="livesum",
    ),
    MetricSpec(
        "pool_threads_max",
        "gauge",
        "tailguard_pool_threads_max",
        "Threads a pool may run at once.",
        labels=("pool",),
        multiprocess_mode="livesum",
    ),
    MetricSpec(
        "pool_jobs_queued",
        "gauge",
        "tailguard_pool_jobs_queued",
        "Jobs waiting for a thread of their pool now.",
        labels=("pool",),
        multiprocess_mode="livesum",
    ),
    MetricSpec(
        "pool_queue_wait",
        "histogram",
        "tailguard_pool_queue_wait_seconds",
        "Time a job waited for a thread of its pool.",
        labels=("pool",),
        buckets="wait",
    ),
    # -- dependencies
    MetricSpec(
        "dependency_calls",
        "counter",
        "tailguard_dependency_calls_total",
        "Calls to a dependency by outcome (ok, error, rejected, deadline_exceeded, cancelled) "
        "and status class (2xx..5xx for calls through its httpx transport, none otherwise); "
        "a 5xx or 429 answer is an error.",
        labels=("dependency", "outcome", "status_class"),
    ),
    MetricSpec(
        "dependency_duration",
        "histogram",
        "tailguard_dependency_duration_seconds",
        "Time a call held its dependency's slot.",
        labels=("dependency",),
        buckets="latency",
    ),
    # -- tasks and the event loop
    MetricSpec(
        "tasks_spawned",
        "counter",
        "tailguard_tasks_spawned_total",
        "asyncio tasks spawned while handling a request, by route template.",
        labels=("route",),
    ),
    MetricSpec(
        "tasks_live",
        "gauge",
        "tailguard_tasks_live",
        "Tasks that outlived the request that spawned them and are still running "
        "(orphans), by route template; tasks of requests in flight are in the "
        "snapshot.",
        labels=("route",),
        multiprocess_mode="livesum",
    ),
    MetricSpec(
        "tasks_orphaned",
        "counter",
        "tailguard_tasks_orphaned_total",
        "Tasks still pending when their request finished; action is 'left' or 'cancelled'.",
        labels=("route", "action"),
    ),
    MetricSpec(
        "event_loop_lag",
        "histogram",
        "tailguard_event_loop_lag_seconds",
        "How late the event loop ran a callback scheduled for a known time.",
        buckets="wait",
    ),
    # -- tail-tolerance helpers
    MetricSpec(
        "tail_attempts",
        "counter",
        "tailguard_tail_attempts_total",
        "Attempts started by hedge, race, quorum, fanout and fallback, by call site.",
        labels=("site", "helper"),
    ),
    MetricSpec(
        "tail_attempts_cancelled",
        "counter",
        "tailguard_tail_attempts_cancelled_total",
        "Attempts cancelled because they were no longer needed (losers), by call site.",
        labels=("site", "helper"),
    ),
    MetricSpec(
        "hedges",
        "counter",
        "tailguard_hedges_total",
        "Hedges by call site and event: sent, won (a hedge answered first), and "
        "hedges due but not sent: budget_exhausted (max_extra spent) or deadline (the "
        "remaining budget could not fit a typical call).",
        labels=("site", "event"),
    ),
    MetricSpec(
        "fanout_calls",
        "counter",
        "tailguard_fanout_calls_total",
        "Fan-out calls judged for pace, by call site: named fan-outs whose required "
        "legs all succeeded once the site knew its legs' p99 (the slow_paced "
        "denominator).",
        labels=("site",),
    ),
    MetricSpec(
        "fanout_slow_paced",
        "counter",
        "tailguard_fanout_slow_paced_total",
        "Fan-out calls whose slowest leg was in its tail (slower than its p99 "
        "estimate): compare the ratio to tailguard.amplification(p, n).",
        labels=("site",),
    ),
    # -- chaos
    MetricSpec(
        "chaos_injections",
        "counter",
        "tailguard_chaos_injections_total",
        "Faults injected, by experiment, target and fault kind.",
        labels=("experiment", "target", "fault"),
    ),
    MetricSpec(
        "chaos_experiments_active",
        "gauge",
        "tailguard_chaos_experiments_active",
        "Chaos experiments running now (for dashboard annotations).",
        multiprocess_mode="livemax",
    ),
    MetricSpec(
        "chaos_experiments_ended",
        "counter",
        "tailguard_chaos_experiments_ended_total",
        "Chaos experiments that ended, by reason: stopped, halt, safeguard (an "
        "AbortWhen tripped) or expired (the TTL ran out).",
        labels=("experiment", "reason"),
    ),
    MetricSpec(
        "chaos_skipped",
        "counter",
        "tailguard_chaos_injections_skipped_total",
        "Faults not injected because max_injections calls were already under injection.",
        labels=("experiment", "fault"),
    ),
    MetricSpec(
        "chaos_store_following",
        "gauge",
        "tailguard_chaos_store_following",
        "1 while this worker follows its chaos store (Chaos(store=...)); 0 once it could not "
        "read it for a lease and stopped injecting. Absent without a store.",
        multiprocess_mode="livemin",
    ),
    MetricSpec(
        "chaos_injection_errors",
        "counter",
        "tailguard_chaos_injection_errors_total",
        "Faults that failed to be planned or applied (a delay that could not be drawn, a "
        "Raise factory that failed): the call went on without chaos.",
        labels=("experiment", "target", "fault"),
    ),
)
"""Every metric tailguard publishes, in the order of ``/metrics``."""

SPECS: Final[Mapping[str, MetricSpec]] = {spec.name: spec for spec in METRICS}
""":data:`METRICS` by exposed name."""


class Catalog:
    """tailguard's metrics, registered on ``registry`` (the default registry if omitted).

    One attribute per :data:`METRICS` entry, named by its spec's ``attr``.
    Gauges carry the ``multiprocess_mode`` that sums or maxes them correctly
    across workers when ``PROMETHEUS_MULTIPROC_DIR`` is set. ``buckets``
    overrides a family's bounds, e.g. ``{"latency": (0.01, 0.1, 1, 10, 30, 60)}``.
    Counters and histograms publish no ``_created`` series unless ``created``
    (the choice is this catalog's, not the process's).
    """

    requests: Counter
    request_duration: Histogram
    requests_in_flight: Gauge
    requests_shed: Counter
    deadline_exceeded: Counter
    requests_shadowed: Counter
    requests_would_shed: Counter
    requests_would_exceed_deadline: Counter
    dependency_would_shed: Counter
    enforcement_changes: Counter
    budget_spent: Histogram
    tenant_requests: Counter
    queue_wait: Histogram
    limiter_in_use: Gauge
    limiter_queued: Gauge
    limiter_limit: Gauge
    limiter_rejections: Counter
    pool_threads_in_use: Gauge
    pool_threads_max: Gauge
    pool_jobs_queued: Gauge
    pool_queue_wait: Histogram
    dependency_calls: Counter
    dependency_duration: Histogram
    tasks_spawned: Counter
    tasks_live: Gauge
    tasks_orphaned: Counter
    event_loop_lag: Histogram
    tail_attempts: Counter
    tail_attempts_cancelled: Counter
    hedges: Counter
    fanout_calls: Counter
    fanout_slow_paced: Counter
    chaos_injections: Counter
    chaos_experiments_active: Gauge
    chaos_experiments_ended: Counter
    chaos_skipped: Counter
    chaos_injection_errors: Counter
    chaos_store_following: Gauge

    def __init__(
        self,
        registry: CollectorRegistry | None = REGISTRY,
        *,
        buckets: Mapping[BucketFamily, Sequence[float]] | None = None,
        created: bool = False,
    ) -> None:
        checked = check_buckets(buckets) or {}
        self.registry: Final = registry
        self.buckets: Final[Mapping[BucketFamily, tuple[float, ...]]] = {**BUCKETS, **checked}
        """The bounds of each bucket family, overrides applied."""
        self.created: Final = created
        """Whether counters and histograms publish their ``_created`` series."""
        self.before_collect: Final[weakref.WeakSet[_Flushable]] = weakref.WeakSet()
        """Objects whose ``flush()`` folds pending counts in; run first by every collection."""
        if registry is not None:
            # Registered before the metrics, so collections flush, then read.
            registry.register(_FlushFirst(self.before_collect))
        for spec in METRICS:
            setattr(self, spec.attr, spec.build(registry, checked, created=created))


class _Flushable(Protocol):
    def flush(self) -> None: ...


class _FlushFirst(Collector):
    """Yields no metrics: collecting it flushes whatever batches counts for the catalog."""

    def __init__(self, flushables: weakref.WeakSet[_Flushable]) -> None:
        self._flushables = flushables

    def collect(self) -> Iterable[Any]:
        for flushable in list(self._flushables):
            flushable.flush()
        return ()


TENANT_OUTCOMES: Final = ("ok", "error", "deadline_exceeded", "shed", "disconnected")
"""The ``outcome`` values of per-request series (``tailguard_tenant_requests_total``'s too)."""


class TenantLabels:
    """Bounded tenant label values: named tenants, the heaviest others, ``"other"`` for the rest.

    Given weights (``tenant_weights``), the ``cap`` heaviest weighted tenants
    get their own label. So do up to ``top`` more: the heaviest of the other
    tenants, found by a space-saving summary of ``4 * top`` counters (memory
    and labels stay bounded however many tenants there are). A tenant is
    named once at least ``min_requests`` of its requests are certain (the
    summary's count minus its possible overestimate), so tenant ids that
    rotate per request never are; when all ``top`` places are taken, a heavier
    newcomer takes the place of the lightest, whose series is removed from
    ``catalog`` (not in multiprocess mode, where series cannot be removed:
    there the first ``top`` keep their places). Names longer than 64
    characters are never labels. ``"none"`` marks requests without a tenant.

    >>> labels = TenantLabels({"acme": 4.0, "globex": 1.0, "initech": 2.0}, cap=2, top=0)
    >>> labels("acme"), labels("initech"), labels("globex"), labels(None)
    ('acme', 'initech', 'other', 'none')
    >>> heavy = TenantLabels({}, top=1, min_requests=3)
    >>> [heavy("bigco") for _ in range(4)], heavy("smallco")
    (['other', 'other', 'bigco', 'bigco'], 'other')
    """

    __slots__ = (
        "_catalog",
        "_counts",
        "_errors",
        "_known",
        "_promoted",
        "capacity",
        "min_requests",
        "top",
    )

    RESERVED = frozenset({"other", "none"})
    MAX_NAME = 64

    def __init__(
        self,
        known: Mapping[str, float] | Iterable[str],
        cap: int = 20,
        *,
        top: int = 10,
        min_requests: int = 20,
        catalog: Catalog | None = None,
    ) -> None:
        for field, value in (("cap", cap), ("top", top), ("min_requests", min_requests)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{field} must be an int >= 0, got {value!r}")
        if isinstance(known, Mapping):
            ranked = sorted(known, key=lambda tenant: (-known[tenant], tenant))
        else:
            ranked = sorted(known)
        clash = self.RESERVED.intersection(ranked)
        if clash:
            raise ValueError(
                f"tenant names {sorted(clash)} are reserved as metric label values; rename them"
            )
        self._known = frozenset(ranked[:cap])
        self.top = top
        self.min_requests = max(1, min_requests)
        self.capacity = 4 * top
        self._counts: dict[str, int] = {}
        self._errors: dict[str, int] = {}
        self._promoted: dict[str, None] = {}
        self._catalog = catalog

    @property
    def heaviest(self) -> list[str]:
        """The tenants (outside ``tenant_weights``) that have their own label now."""
        return list(self._promoted)

    def __call__(self, tenant: str | None) -> str:
        if tenant is None:
            return "none"
        if tenant in self._known:
            return tenant
        if self.top and self._count(tenant):
            return tenant
        return "other"

    def _count(self, tenant: str) -> bool:
        """Count one request of ``tenant`` (not a weighted one); whether it has a label."""
        counts = self._counts
        count = counts.get(tenant)
        if count is not None:
            count = counts[tenant] = count + 1
        elif len(counts) < self.capacity:
            count = counts[tenant] = 1
            self._errors[tenant] = 0
        else:
            # Space-saving: the newcomer takes the smallest counter, and may be
            # overestimated by as much as that counter held.
            victim = min(counts, key=counts.__getitem__)
            floor = counts.pop(victim)
            del self._errors[victim]
            count = counts[tenant] = floor + 1
            self._errors[tenant] = floor
        promoted = self._promoted
        if tenant in promoted:
            return True
        certain = count - self._errors[tenant]
        if certain < self.min_requests or len(tenant) > self.MAX_NAME or tenant in self.RESERVED:
            return False
        if len(promoted) < self.top:
            promoted[tenant] = None
            return True
        if _multiprocess():
            return False
        lightest = min(promoted, key=lambda name: counts.get(name, 0) - self._errors.get(name, 0))
        if counts.get(lightest, 0) - self._errors.get(lightest, 0) >= certain:
            return False
        del promoted[lightest]
        promoted[tenant] = None
        catalog = self._catalog
        if catalog is not None:
            for outcome in TENANT_OUTCOMES:
                catalog.tenant_requests.remove(lightest, outcome)
        return True


_MULTIPROC_VARIABLES: Final = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")


def _multiprocess() -> bool:
    """Whether prometheus_client is in multiprocess mode (its own test, by which it refuses
    to remove series)."""
    return any(name in os.environ for name in _MULTIPROC_VARIABLES)


_catalogs: weakref.WeakKeyDictionary[CollectorRegistry, Catalog] = weakref.WeakKeyDictionary()


def catalog_for(
    registry: CollectorRegistry | None = None,
    *,
    buckets: Mapping[BucketFamily, Sequence[float]] | None = None,
    created: bool | None = None,
) -> Catalog:
    """The one catalog of ``registry`` (default: prometheus_client's), created on first use.

    Metrics can be registered once per registry, so every guard that shares a
    registry shares its catalog. ``buckets`` and ``created`` (see
    :class:`Catalog`; ``None``: the defaults, or whatever the registry's
    catalog has) must agree with a catalog that exists already.

    >>> from prometheus_client import CollectorRegistry
    >>> registry = CollectorRegistry()
    >>> catalog_for(registry, buckets={"latency": [1, 30]}) is catalog_for(registry)
    True
    >>> catalog_for(registry, buckets={"latency": [1, 60]})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: buckets: this registry's tailguard metrics already have other buckets; ...
    """
    registry = REGISTRY if registry is None else registry
    catalog = _catalogs.get(registry)
    if catalog is None:
        catalog = _catalogs[registry] = Catalog(registry, buckets=buckets, created=bool(created))
        return catalog
    checked = check_buckets(buckets)
    if checked is not None and any(catalog.buckets[f] != b for f, b in checked.items()):
        raise ValueError(
            "buckets: this registry's tailguard metrics already have other buckets; "
            "give this guard a registry of its own"
        )
    if created is not None and created != catalog.created:
        raise ValueError(
            f"created_series: this registry's tailguard metrics were made with "
            f"created_series={catalog.created}; give this guard a registry of its own"
        )
    return catalog
