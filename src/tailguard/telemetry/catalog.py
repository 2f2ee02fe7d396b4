"""Every Prometheus metric tailguard publishes, declared once.

Names follow ``tailguard_<noun>_<unit>``: counters end in ``_total``,
durations are in seconds. Labels are bounded: route templates (never raw
paths), methods, status classes, small enums (outcome, reason, phase, fault),
and the names an operator configured (limiters, dependencies, pools, call
sites, experiments). Tenants appear only on the per-tenant counters, through
:class:`TenantLabels` (configured tenants, the rest ``"other"``).

A :class:`Catalog` registers the metrics on one registry. tailguard's code
reads the catalog in use with :func:`active`, which is ``None`` when metrics
are off, so every recording site costs one call and one ``is None`` check
then. Dashboards and tests import the same objects.

>>> from prometheus_client import CollectorRegistry
>>> catalog = Catalog(CollectorRegistry())
>>> catalog.chaos_injections.labels("slow-db", "db", "latency").inc()
>>> catalog.registry.get_sample_value(
...     "tailguard_chaos_injections_total",
...     {"experiment": "slow-db", "target": "db", "fault": "latency"},
... )
1.0
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping
from typing import Any, Final, Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.registry import Collector

__all__ = ["Catalog", "TenantLabels", "activate", "active", "catalog_for"]

LATENCY_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Request and dependency durations: 1 ms to 10 s, roughly 1-2.5-5 steps."""

WAIT_BUCKETS: Final = (
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
"""Queue waits and loop lag: most are far below a millisecond, the interesting ones are not."""


class Catalog:
    """tailguard's metrics, registered on ``registry`` (the default registry if omitted).

    Gauges carry the ``multiprocess_mode`` that sums or maxes them correctly
    across workers when ``PROMETHEUS_MULTIPROC_DIR`` is set.
    """

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self.registry: Final = registry
        self.before_collect: Final[weakref.WeakSet[_Flushable]] = weakref.WeakSet()
        """Objects whose ``flush()`` folds pending counts in; run first by every collection."""
        if registry is not None:
            # Registered before the metrics, so collections flush, then read.
            registry.register(_FlushFirst(self.before_collect))
        r = registry

        # -- requests (the middleware) ---------------------------------------------------
        self.requests: Final = Counter(
            "tailguard_requests_total",
            "HTTP requests handled, by route template, method, status class and outcome "
            "(ok, error, deadline_exceeded, shed, disconnected).",
            ["route", "method", "status_class", "outcome"],
            registry=r,
        )
        self.request_duration: Final = Histogram(
            "tailguard_request_duration_seconds",
            "Time from the request's arrival to its last response byte (or its end).",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests_in_flight: Final = Gauge(
            "tailguard_requests_in_flight",
            "Requests being handled now, by route template.",
            ["route"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.requests_shed: Final = Counter(
            "tailguard_requests_shed_total",
            "Requests answered 503 by admission control, by route template and reason.",
            ["route", "reason"],
            registry=r,
        )
        self.deadline_exceeded: Final = Counter(
            "tailguard_deadline_exceeded_total",
            "Requests whose deadline fired: before the response started (504) "
            "or while it streamed (aborted).",
            ["route", "stage"],
            registry=r,
        )
        self.budget_spent: Final = Histogram(
            "tailguard_budget_spent_seconds",
            "How each request's time was spent: queued for admission, in each dependency, "
            "and the rest in the handler.",
            ["route", "phase", "dependency"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tenant_requests: Final = Counter(
            "tailguard_tenant_requests_total",
            "Requests by tenant (configured tenants; the rest are 'other') and outcome.",
            ["tenant", "outcome"],
            registry=r,
        )

        # -- limiters and pools (refreshed from their state, not per request) ------------
        self.queue_wait: Final = Histogram(
            "tailguard_queue_wait_seconds",
            "Time spent waiting for a limiter slot by requests and calls that had to wait "
            "(granted or shed); immediate admissions are not observed (the queue phase of "
            "tailguard_budget_spent_seconds counts them as 0).",
            ["limiter", "kind"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.limiter_in_use: Final = Gauge(
            "tailguard_limiter_in_use",
            "Slots held now; kind is 'route' or 'dependency'.",
            ["limiter", "kind"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.limiter_queued: Final = Gauge(
            "tailguard_limiter_queued",
            "Requests or calls waiting for a slot now.",
            ["limiter", "kind"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.limiter_limit: Final = Gauge(
            "tailguard_limiter_limit",
            "The effective concurrency limit (the adaptive one, if any).",
            ["limiter", "kind"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.limiter_rejections: Final = Counter(
            "tailguard_limiter_rejections_total",
            "Requests or calls a limiter shed, by reason.",
            ["limiter", "kind", "reason"],
            registry=r,
        )
        self.pool_threads_in_use: Final = Gauge(
            "tailguard_pool_threads_in_use",
            "Threads of a pool running a job now (asyncio's default executor, anyio's "
            "worker threads, each dependency's own pool).",
            ["pool"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.pool_threads_max: Final = Gauge(
            "tailguard_pool_threads_max",
            "Threads a pool may run at once.",
            ["pool"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.pool_jobs_queued: Final = Gauge(
            "tailguard_pool_jobs_queued",
            "Jobs waiting for a thread of their pool now.",
            ["pool"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.pool_queue_wait: Final = Histogram(
            "tailguard_pool_queue_wait_seconds",
            "Time a job waited for a thread of its pool.",
            ["pool"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )

        # -- dependencies ------------------------------------------------------------------
        self.dependency_calls: Final = Counter(
            "tailguard_dependency_calls_total",
            "Calls to a dependency by outcome (ok, error, rejected, deadline_exceeded, cancelled).",
            ["dependency", "outcome"],
            registry=r,
        )
        self.dependency_duration: Final = Histogram(
            "tailguard_dependency_duration_seconds",
            "Time a call held its dependency's slot.",
            ["dependency"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

        # -- tasks and the event loop ------------------------------------------------------
        self.tasks_spawned: Final = Counter(
            "tailguard_tasks_spawned_total",
            "asyncio tasks spawned while handling a request, by route template.",
            ["route"],
            registry=r,
        )
        self.tasks_live: Final = Gauge(
            "tailguard_tasks_live",
            "Tasks that outlived the request that spawned them and are still running "
            "(orphans), by route template; tasks of requests in flight are in the snapshot.",
            ["route"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.tasks_orphaned: Final = Counter(
            "tailguard_tasks_orphaned_total",
            "Tasks still pending when their request finished; action is 'left' or 'cancelled'.",
            ["route", "action"],
            registry=r,
        )
        self.event_loop_lag: Final = Histogram(
            "tailguard_event_loop_lag_seconds",
            "How late the event loop ran a callback scheduled for a known time.",
            buckets=WAIT_BUCKETS,
            registry=r,
        )

        # -- tail-tolerance helpers ------------------------------------------------------
        self.tail_attempts: Final = Counter(
            "tailguard_tail_attempts_total",
            "Attempts started by hedge, race, quorum, fanout and fallback, by call site.",
            ["site", "helper"],
            registry=r,
        )
        self.tail_attempts_cancelled: Final = Counter(
            "tailguard_tail_attempts_cancelled_total",
            "Attempts cancelled because they were no longer needed (losers), by call site.",
            ["site", "helper"],
            registry=r,
        )
        self.hedges: Final = Counter(
            "tailguard_hedges_total",
            "Hedges by call site and event: sent, won (a hedge answered first), and hedges "
            "due but not sent: budget_exhausted (max_extra spent) or deadline (the remaining "
            "budget could not fit a typical call).",
            ["site", "event"],
            registry=r,
        )
        self.fanout_calls: Final = Counter(
            "tailguard_fanout_calls_total",
            "Fan-out calls judged for pace, by call site: named fan-outs whose required legs "
            "all succeeded once the site knew its legs' p99 (the slow_paced denominator).",
            ["site"],
            registry=r,
        )
        self.fanout_slow_paced: Final = Counter(
            "tailguard_fanout_slow_paced_total",
            "Fan-out calls whose slowest leg was in its tail (slower than its p99 estimate): "
            "compare the ratio to tailguard.amplification(p, n).",
            ["site"],
            registry=r,
        )

        # -- chaos -----------------------------------------------------------------------
        self.chaos_injections: Final = Counter(
            "tailguard_chaos_injections_total",
            "Faults injected, by experiment, target and fault kind.",
            ["experiment", "target", "fault"],
            registry=r,
        )
        self.chaos_experiments_active: Final = Gauge(
            "tailguard_chaos_experiments_active",
            "Chaos experiments running now (for dashboard annotations).",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.chaos_experiments_ended: Final = Counter(
            "tailguard_chaos_experiments_ended_total",
            "Chaos experiments that ended, by reason: stopped, halt, safeguard (an AbortWhen "
            "tripped) or expired (the TTL ran out).",
            ["experiment", "reason"],
            registry=r,
        )
        self.chaos_skipped: Final = Counter(
            "tailguard_chaos_injections_skipped_total",
            "Faults not injected because max_injections calls were already under injection.",
            ["experiment", "fault"],
            registry=r,
        )


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


class TenantLabels:
    """Bounded tenant label values: up to ``cap`` named tenants, ``"other"`` for the rest.

    Given weights (``tenant_weights``), the heaviest tenants get their own
    label; ``"none"`` marks requests without a tenant.

    >>> labels = TenantLabels({"acme": 4.0, "globex": 1.0, "initech": 2.0}, cap=2)
    >>> labels("acme"), labels("initech"), labels("globex"), labels(None)
    ('acme', 'initech', 'other', 'none')
    """

    __slots__ = ("_known",)

    RESERVED = frozenset({"other", "none"})

    def __init__(self, known: Mapping[str, float] | Iterable[str], cap: int = 20) -> None:
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
            raise ValueError(f"cap must be an int >= 0, got {cap!r}")
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

    def __call__(self, tenant: str | None) -> str:
        if tenant is None:
            return "none"
        return tenant if tenant in self._known else "other"


_catalogs: weakref.WeakKeyDictionary[CollectorRegistry, Catalog] = weakref.WeakKeyDictionary()
_active: Catalog | None = None


def catalog_for(registry: CollectorRegistry | None = None) -> Catalog:
    """The one catalog of ``registry`` (default: prometheus_client's), created on first use.

    Metrics can be registered once per registry, so every guard that shares a
    registry shares its catalog.
    """
    registry = REGISTRY if registry is None else registry
    catalog = _catalogs.get(registry)
    if catalog is None:
        catalog = _catalogs[registry] = Catalog(registry)
    return catalog


def activate(catalog: Catalog | None) -> None:
    """Make ``catalog`` the one tailguard records into (``None``: record nothing)."""
    global _active
    _active = catalog


def active() -> Catalog | None:
    """The catalog tailguard records into, or ``None`` when metrics are off."""
    return _active
