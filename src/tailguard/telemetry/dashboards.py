"""tailguard's Grafana dashboards, generated from the metric catalog.

Three dashboards, written to the repository's ``dashboards/`` folder by
``tailguard dashboards --out DIR``: *Service* (requests, latency, deadlines,
shedding, budget, SLO burn, tenants), *Dependencies and pools* (dependency
calls, bulkheads and limiters, thread pools, the event loop and tasks, tail
helpers) and *Game-day* (chaos injections over the SLO panels).

The panels are data (:class:`Panel`, :class:`Query`); each query names its
metrics through :func:`tailguard.telemetry.rules.metric`, which looks them up
in the catalog, so a renamed metric fails the generator instead of leaving a
dashboard with an empty panel. Grafana's own typed builder
(``grafana-foundation-sdk``, a development-time dependency:
``pip install 'tailguard[dashboards]'``) turns them into dashboard JSON;
users import the JSON and need nothing.

>>> service = dashboards()[0]
>>> service.uid, service.title
('tailguard-service', 'tailguard / Service')
>>> print(service.rows[0].panels[0].queries[0].expr)  # doctest: +NORMALIZE_WHITESPACE
sum by (route, outcome) (rate(tailguard_requests_total{job=~"$job", instance=~"$instance",
  route=~"$route"}[$__rate_interval]))
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from tailguard.telemetry.catalog import SPECS
from tailguard.telemetry.rules import Objectives, metric, ratio, render_rules

__all__ = [
    "RULES_FILE",
    "VARIABLES",
    "Dashboard",
    "Panel",
    "Query",
    "Row",
    "dashboards",
    "render",
    "write",
]

Unit = Literal["s", "reqps", "percentunit", "short"]

VARIABLES: Final = ("job", "instance", "route", "dependency")
"""The template variables every dashboard has besides ``datasource`` (multi-select, All)."""

RULES_FILE: Final = "rules/tailguard.rules.yaml"
"""Where :func:`write` puts the Prometheus rules, relative to its folder."""

RATE: Final = "$__rate_interval"


@dataclass(frozen=True, slots=True)
class Query:
    """One PromQL query of a panel and its legend.

    >>> Query("sum(tailguard_requests_in_flight)", "in flight").legend
    'in flight'
    """

    expr: str
    legend: str


@dataclass(frozen=True, slots=True)
class Panel:
    """A panel as data: what it shows, in which unit, and what an operator should look for.

    >>> Panel("In flight", "Requests being handled now.", "short", (Query("x", "y"),)).kind
    'timeseries'
    """

    title: str
    description: str
    unit: Unit
    queries: tuple[Query, ...]
    kind: Literal["timeseries", "stat"] = "timeseries"
    width: int = 12
    height: int = 8
    stacked: bool = False
    overlay: tuple[Query, ...] = ()
    """Queries drawn as bars on a right axis over the panel's own (chaos injections)."""


@dataclass(frozen=True, slots=True)
class Row:
    """A titled row of panels."""

    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True, slots=True)
class Annotation:
    """A Prometheus annotation query (a region while ``expr`` has a value)."""

    name: str
    expr: str
    title: str
    color: str


@dataclass(frozen=True, slots=True)
class Dashboard:
    """A dashboard as data: its stable uid, file name, rows and annotations."""

    uid: str
    title: str
    description: str
    rows: tuple[Row, ...]
    annotations: tuple[Annotation, ...] = field(default=())

    @property
    def file_name(self) -> str:
        """``tailguard-service.json`` and so on."""
        return f"{self.uid}.json"

    def panels(self) -> Iterator[Panel]:
        """Every panel, row by row."""
        for row in self.rows:
            yield from row.panels


def select(name: str, suffix: str = "", *matchers: str) -> str:
    """``name`` with the dashboard's variables (and ``matchers``) as its selector.

    ``job`` and ``instance`` always; ``route`` when the metric has that label.

    >>> select("tailguard_limiter_queued", "", 'kind="dependency"')
    'tailguard_limiter_queued{job=~"$job", instance=~"$instance", kind="dependency"}'
    """
    found = ['job=~"$job"', 'instance=~"$instance"']
    if "route" in SPECS[name].labels:
        found.append('route=~"$route"')
    found.extend(matchers)
    return f"{metric(name, suffix)}{{{', '.join(found)}}}"


def rate(name: str, by: str, *matchers: str, suffix: str = "", func: str = "rate") -> str:
    """``sum by (by) (rate(name{...}[$__rate_interval]))``; ``by=""`` sums everything."""
    grouping = f"sum by ({by}) " if by else "sum "
    return f"{grouping}({func}({select(name, suffix, *matchers)}[{RATE}]))"


def share(bad: str, total: str) -> str:
    """``bad / total`` of two rate expressions."""
    return f"{bad}\n/\n{total}"


def quantile(q: float, name: str, by: str, *matchers: str) -> str:
    """The ``q`` quantile of histogram ``name`` per ``by`` over ``$__rate_interval``."""
    grouping = f"{by}, le" if by else "le"
    return f"histogram_quantile({q:g}, {rate(name, grouping, *matchers, suffix='_bucket')})"


def appeared_or_increased(name: str, by: str) -> str:
    """A counter's increase per ``by`` over ``$__rate_interval``, counting a new series as one.

    ``increase()`` misses a counter whose series appears already at 1 (the first end
    of an experiment of that name): the ``unless ... offset`` side catches it.
    """
    current = f"sum by ({by}) ({select(name)})"
    return (
        f"{rate(name, by, func='increase')}\nor\n"
        f"({current} unless sum by ({by}) ({select(name)} offset {RATE}))"
    )


def gauge(name: str, by: str, *matchers: str, how: str = "sum") -> str:
    """``how by (by) (name{...})``."""
    grouping = f" by ({by})" if by else ""
    return f"{how}{grouping} ({select(name, '', *matchers)})"


def _latency_quantiles(name: str, by: str, *matchers: str) -> tuple[Query, ...]:
    label = " ".join(f"{{{{{part.strip()}}}}}" for part in by.split(",")) if by else "all"
    return tuple(
        Query(quantile(q, name, by, *matchers), f"{label} p{q * 100:g}") for q in (0.5, 0.99, 0.999)
    )


def _burn(sli: Literal["unavailable", "late"], objectives: Objectives) -> tuple[Query, ...]:
    budget = objectives.budget(sli)
    return tuple(
        Query(
            f'{ratio(sli, window)}{{job=~"$job", route=~"$route"}} / {budget:g}',
            f"{{{{route}}}} over {window}",
        )
        for window in ("5m", "1h", "6h")
    )


def _injections() -> tuple[Query, ...]:
    return (Query(rate("tailguard_chaos_injections_total", ""), "chaos injections /s"),)


def _service(objectives: Objectives) -> Dashboard:
    requests = "tailguard_requests_total"
    all_requests = rate(requests, "route")
    return Dashboard(
        uid="tailguard-service",
        title="tailguard / Service",
        description="Requests, latency, deadlines, shedding and SLO burn of a tailguard service.",
        rows=(
            Row(
                "Requests",
                (
                    Panel(
                        "Request rate by route and outcome",
                        "Requests per second by route and outcome. Anything but 'ok' is worth "
                        "a look: deadline_exceeded (504 or a cut stream), shed (503 from "
                        "admission control), error (the handler failed), disconnected (the "
                        "client left).",
                        "reqps",
                        (Query(rate(requests, "route, outcome"), "{{route}} {{outcome}}"),),
                        stacked=True,
                    ),
                    Panel(
                        "Errors by route and outcome",
                        "Requests per second that did not end 'ok'. A route that appears here "
                        "during quiet traffic has a bug; one that appears under load is "
                        "over capacity (shed) or too slow for its budget (deadline_exceeded).",
                        "reqps",
                        (
                            Query(
                                rate(requests, "route, outcome", 'outcome!="ok"'),
                                "{{route}} {{outcome}}",
                            ),
                        ),
                    ),
                    Panel(
                        "5xx share by route",
                        "Share of each route's requests answered 5xx (the availability SLI, "
                        "504s and 503s included). Compare it to the error budget: "
                        f"{objectives.budget('unavailable'):g} of requests.",
                        "percentunit",
                        (
                            Query(
                                share(rate(requests, "route", 'status_class="5xx"'), all_requests),
                                "{{route}}",
                            ),
                        ),
                    ),
                    Panel(
                        "In flight by route",
                        "Requests being handled now. A climb without more traffic means "
                        "requests got slower: look for the dependency or queue that holds them.",
                        "short",
                        (Query(gauge("tailguard_requests_in_flight", "route"), "{{route}}"),),
                    ),
                ),
            ),
            Row(
                "Latency and deadlines",
                (
                    Panel(
                        "Latency p50 / p99 / p99.9 by route",
                        "From the request's arrival to its last byte. A p99 near the route's "
                        "deadline means its slow tail is being cut off with 504s.",
                        "s",
                        _latency_quantiles("tailguard_request_duration_seconds", "route"),
                    ),
                    Panel(
                        "Answered within the deadline",
                        "Share of each route's requests whose deadline did not fire (the "
                        "latency SLI). Below the objective "
                        f"({objectives.latency:g}) the latency error budget burns.",
                        "percentunit",
                        (
                            Query(
                                "1 - "
                                + share(
                                    rate(requests, "route", 'outcome="deadline_exceeded"'),
                                    all_requests,
                                ),
                                "{{route}}",
                            ),
                        ),
                    ),
                    Panel(
                        "Deadlines fired by route and stage",
                        "Deadlines per second: before_response (the client got a 504) or "
                        "during_response (a streamed response was cut off).",
                        "reqps",
                        (
                            Query(
                                rate("tailguard_deadline_exceeded_total", "route, stage"),
                                "{{route}} {{stage}}",
                            ),
                        ),
                    ),
                    Panel(
                        "Where the budget went",
                        "Mean seconds per request spent queued for admission, in each "
                        "dependency and in the handler (stacked). The biggest band is where "
                        "to look when a route is slow; parallel calls can stack above the "
                        "request's own time.",
                        "s",
                        (
                            Query(
                                rate(
                                    "tailguard_budget_spent_seconds",
                                    "phase, dependency",
                                    suffix="_sum",
                                )
                                + "\n/ ignoring (phase, dependency) group_left\n"
                                + rate("tailguard_request_duration_seconds", "", suffix="_count"),
                                "{{phase}} {{dependency}}",
                            ),
                        ),
                        stacked=True,
                    ),
                ),
            ),
            Row(
                "Shedding and SLO",
                (
                    Panel(
                        "Shed rate by route and reason",
                        "Requests per second answered 503 by admission control. queue_full "
                        "and queue_timeout: over capacity; deadline: the queue wait would "
                        "not fit the budget; tenant_limit and priority: fairness at work.",
                        "reqps",
                        (
                            Query(
                                rate("tailguard_requests_shed_total", "route, reason"),
                                "{{route}} {{reason}}",
                            ),
                        ),
                    ),
                    Panel(
                        "Availability budget burn rate",
                        "How fast each route spends its availability error budget (1 = "
                        "exactly on budget), from the recording rules. Pages fire above "
                        "14.4 over 1h and 6 over 6h (with their short windows).",
                        "short",
                        _burn("unavailable", objectives),
                        width=6,
                    ),
                    Panel(
                        "Latency budget burn rate",
                        "How fast each route spends its latency error budget (requests not "
                        "answered within their deadline), from the recording rules; the "
                        "same thresholds as availability.",
                        "short",
                        _burn("late", objectives),
                        width=6,
                    ),
                ),
            ),
            Row(
                "Rollout: shadow next to enforced",
                (
                    Panel(
                        "Shadowed share by route",
                        "Share of each route's requests handled in shadow mode (decided, not "
                        "enforced): 1 in shadow, 0 when enforcing, the complement of the "
                        "enforced fraction in between. See docs/rollout.md.",
                        "percentunit",
                        (
                            Query(
                                share(
                                    rate("tailguard_requests_shadowed_total", "route"),
                                    rate(requests, "route"),
                                ),
                                "{{route}}",
                            ),
                        ),
                        width=6,
                    ),
                    Panel(
                        "Shed and would-have-shed by route and reason",
                        "503s admission control sent (enforced) beside those it would have "
                        "sent to shadowed requests, which were served. Enforce a limit once "
                        "its would-have-shed rate is one you accept.",
                        "reqps",
                        (
                            Query(
                                rate("tailguard_requests_shed_total", "route, reason"),
                                "{{route}} {{reason}} shed",
                            ),
                            Query(
                                rate("tailguard_requests_would_shed_total", "route, reason"),
                                "{{route}} {{reason}} would shed",
                            ),
                        ),
                        width=6,
                    ),
                    Panel(
                        "Deadlines fired and would have fired",
                        "Deadlines enforced (504 or aborted) beside shadowed requests that "
                        "outlived their deadline and ran to the end.",
                        "reqps",
                        (
                            Query(
                                rate("tailguard_deadline_exceeded_total", "route"),
                                "{{route}} fired",
                            ),
                            Query(
                                rate("tailguard_requests_would_exceed_deadline_total", "route"),
                                "{{route}} would fire",
                            ),
                        ),
                        width=6,
                    ),
                    Panel(
                        "Bulkhead rejections and would-have-rejections",
                        "Dependency calls a full bulkhead rejected beside shadowed calls it "
                        "would have rejected (they ran); bars: enforcement switches.",
                        "reqps",
                        (
                            Query(
                                rate(
                                    "tailguard_dependency_calls_total",
                                    "dependency",
                                    'outcome="rejected"',
                                ),
                                "{{dependency}} rejected",
                            ),
                            Query(
                                rate("tailguard_dependency_calls_would_shed_total", "dependency"),
                                "{{dependency}} would reject",
                            ),
                        ),
                        width=6,
                        overlay=(
                            Query(
                                rate(
                                    "tailguard_enforcement_changes_total",
                                    "target, mode",
                                    func="increase",
                                ),
                                "switched {{target}} to {{mode}}",
                            ),
                        ),
                    ),
                ),
            ),
            Row(
                "Tenants",
                (
                    Panel(
                        "Requests by tenant",
                        "Requests per second of the heaviest tenants by name and 'other' for "
                        "the rest ('none': no tenant). One tenant dwarfing the others is a "
                        "noisy neighbour.",
                        "reqps",
                        (Query(rate("tailguard_tenant_requests_total", "tenant"), "{{tenant}}"),),
                    ),
                    Panel(
                        "Shed share by tenant",
                        "Share of each tenant's requests that were shed: fair admission "
                        "sheds the heaviest tenant first, not everyone.",
                        "percentunit",
                        (
                            Query(
                                share(
                                    rate(
                                        "tailguard_tenant_requests_total",
                                        "tenant",
                                        'outcome="shed"',
                                    ),
                                    rate("tailguard_tenant_requests_total", "tenant"),
                                ),
                                "{{tenant}}",
                            ),
                        ),
                    ),
                ),
            ),
        ),
    )


def _dependencies() -> Dashboard:
    dependency = 'dependency=~"$dependency"'
    return Dashboard(
        uid="tailguard-dependencies",
        title="tailguard / Dependencies and pools",
        description="Dependency calls, bulkheads and limiters, thread pools, event loop, "
        "tasks and tail helpers of a tailguard service.",
        rows=(
            Row(
                "Dependencies",
                (
                    Panel(
                        "Calls by dependency and outcome",
                        "Calls per second. rejected: shed by the bulkhead; deadline_exceeded: "
                        "the caller's budget ran out during the call; cancelled: the caller "
                        "no longer needed it.",
                        "reqps",
                        (
                            Query(
                                rate(
                                    "tailguard_dependency_calls_total",
                                    "dependency, outcome",
                                    dependency,
                                ),
                                "{{dependency}} {{outcome}}",
                            ),
                        ),
                        width=8,
                    ),
                    Panel(
                        "Failed share by dependency",
                        "Share of each dependency's calls that did not end 'ok'. The "
                        "dependency that rises first is usually the cause; the others follow.",
                        "percentunit",
                        (
                            Query(
                                share(
                                    rate(
                                        "tailguard_dependency_calls_total",
                                        "dependency",
                                        dependency,
                                        'outcome!="ok"',
                                    ),
                                    rate(
                                        "tailguard_dependency_calls_total", "dependency", dependency
                                    ),
                                ),
                                "{{dependency}}",
                            ),
                        ),
                        width=8,
                    ),
                    Panel(
                        "Dependency latency p50 / p99 / p99.9",
                        "Time a call held its dependency's slot. A p99 that grows while "
                        "the p50 holds is a tail problem: hedging may help.",
                        "s",
                        _latency_quantiles(
                            "tailguard_dependency_duration_seconds", "dependency", dependency
                        ),
                        width=8,
                    ),
                ),
            ),
            Row(
                "Bulkheads and limiters",
                (
                    Panel(
                        "Saturation (in use / limit)",
                        "Share of each limiter's slots held. Near 1 with a queue: the "
                        "bulkhead is doing its job, and what it guards is slow or undersized.",
                        "percentunit",
                        (
                            Query(
                                share(
                                    gauge("tailguard_limiter_in_use", "limiter, kind"),
                                    gauge("tailguard_limiter_limit", "limiter, kind"),
                                ),
                                "{{kind}} {{limiter}}",
                            ),
                        ),
                        width=6,
                    ),
                    Panel(
                        "Queue depth",
                        "Requests or calls waiting for a slot now. A queue that never drains "
                        "means arrivals outpace the limit.",
                        "short",
                        (
                            Query(
                                gauge("tailguard_limiter_queued", "limiter, kind"),
                                "{{kind}} {{limiter}}",
                            ),
                        ),
                        width=6,
                    ),
                    Panel(
                        "Queue wait p99",
                        "p99 wait for a slot of those that had to wait. Compare it with "
                        "the routes' deadlines: a wait near the budget leaves no time for "
                        "the work.",
                        "s",
                        (
                            Query(
                                quantile(0.99, "tailguard_queue_wait_seconds", "limiter, kind"),
                                "{{kind}} {{limiter}}",
                            ),
                        ),
                        width=6,
                    ),
                    Panel(
                        "Rejections by reason",
                        "Requests or calls each limiter shed per second, by reason.",
                        "reqps",
                        (
                            Query(
                                rate("tailguard_limiter_rejections_total", "limiter, kind, reason"),
                                "{{kind}} {{limiter}} {{reason}}",
                            ),
                        ),
                        width=6,
                    ),
                ),
            ),
            Row(
                "Thread pools",
                (
                    Panel(
                        "Pool threads in use / max",
                        "Share of each pool's threads running a job (asyncio's default "
                        "executor, anyio's workers behind sync endpoints, each dependency's "
                        "own pool). At 1, blocking work queues for a thread.",
                        "percentunit",
                        (
                            Query(
                                share(
                                    gauge("tailguard_pool_threads_in_use", "pool"),
                                    gauge("tailguard_pool_threads_max", "pool"),
                                ),
                                "{{pool}}",
                            ),
                        ),
                        width=8,
                    ),
                    Panel(
                        "Jobs queued for a thread",
                        "Jobs waiting for a thread of their pool now.",
                        "short",
                        (Query(gauge("tailguard_pool_jobs_queued", "pool"), "{{pool}}"),),
                        width=8,
                    ),
                    Panel(
                        "Pool queue wait p99",
                        "p99 time a job waited for a thread. Time sync endpoints lose "
                        "before they even start.",
                        "s",
                        (
                            Query(
                                quantile(0.99, "tailguard_pool_queue_wait_seconds", "pool"),
                                "{{pool}}",
                            ),
                        ),
                        width=8,
                    ),
                ),
            ),
            Row(
                "Event loop and tasks",
                (
                    Panel(
                        "Event-loop lag p99 / p99.9",
                        "How late the loop ran timers. Lag is time every request on the "
                        "loop waits: above a few ms, something blocks it.",
                        "s",
                        tuple(
                            Query(
                                quantile(q, "tailguard_event_loop_lag_seconds", "instance"),
                                f"{{{{instance}}}} p{q * 100:g}",
                            )
                            for q in (0.99, 0.999)
                        ),
                        width=6,
                    ),
                    Panel(
                        "Ticks more than 100 ms late",
                        "Share of loop ticks more than 100 ms late; alerted above 1%.",
                        "percentunit",
                        (
                            Query(
                                "1 - "
                                + share(
                                    rate(
                                        "tailguard_event_loop_lag_seconds",
                                        "instance",
                                        'le="0.1"',
                                        suffix="_bucket",
                                    ),
                                    rate(
                                        "tailguard_event_loop_lag_seconds",
                                        "instance",
                                        suffix="_count",
                                    ),
                                ),
                                "{{instance}}",
                            ),
                        ),
                        width=6,
                    ),
                    Panel(
                        "Tasks spawned / orphaned",
                        "asyncio tasks spawned while handling requests, and those still "
                        "pending when their request finished (left running or cancelled).",
                        "short",
                        (
                            Query(
                                rate("tailguard_tasks_spawned_total", "route"),
                                "{{route}} spawned",
                            ),
                            Query(
                                rate("tailguard_tasks_orphaned_total", "route, action"),
                                "{{route}} orphaned ({{action}})",
                            ),
                        ),
                        width=6,
                    ),
                    Panel(
                        "Live orphaned tasks by route",
                        "Tasks that outlived their request and still run. A line that only "
                        "climbs is a leak.",
                        "short",
                        (Query(gauge("tailguard_tasks_live", "route"), "{{route}}"),),
                        width=6,
                    ),
                ),
            ),
            Row(
                "Tail helpers",
                (
                    Panel(
                        "Attempts and cancelled losers by call site",
                        "Attempts per second started by hedge, race, quorum, fanout and "
                        "fallback, and the losers cancelled once an answer was in.",
                        "short",
                        (
                            Query(
                                rate("tailguard_tail_attempts_total", "site, helper"),
                                "{{site}} {{helper}} attempts",
                            ),
                            Query(
                                rate("tailguard_tail_attempts_cancelled_total", "site, helper"),
                                "{{site}} {{helper}} cancelled",
                            ),
                        ),
                        width=8,
                    ),
                    Panel(
                        "Hedges by event",
                        "Hedges sent and won per second, and hedges due but not sent "
                        "(budget_exhausted: the extra-load budget is spent; deadline: too "
                        "little time left).",
                        "short",
                        (
                            Query(
                                rate("tailguard_hedges_total", "site, event"), "{{site}} {{event}}"
                            ),
                        ),
                        width=8,
                    ),
                    Panel(
                        "Hedge load and wins; slow fan-outs",
                        "Extra load: hedges sent per hedged call (keep it within the site's "
                        "budget). Win share: hedges that answered first (low: the hedge "
                        "delay is too short). Slow-paced: fan-outs whose slowest leg was in "
                        "its tail; compare with tailguard.amplification(p, n).",
                        "percentunit",
                        (
                            Query(
                                share(
                                    rate("tailguard_hedges_total", "site", 'event="sent"'),
                                    rate("tailguard_tail_attempts_total", "site", 'helper="hedge"'),
                                ),
                                "{{site}} extra load",
                            ),
                            Query(
                                share(
                                    rate("tailguard_hedges_total", "site", 'event="won"'),
                                    rate("tailguard_hedges_total", "site", 'event="sent"'),
                                ),
                                "{{site}} hedges won",
                            ),
                            Query(
                                share(
                                    rate("tailguard_fanout_slow_paced_total", "site"),
                                    rate("tailguard_fanout_calls_total", "site"),
                                ),
                                "{{site}} slow-paced fan-outs",
                            ),
                        ),
                        width=8,
                    ),
                ),
            ),
        ),
    )


def _gameday(objectives: Objectives) -> Dashboard:
    requests = "tailguard_requests_total"
    running = gauge("tailguard_chaos_experiments_active", "", how="max")
    ended = appeared_or_increased("tailguard_chaos_experiments_ended_total", "experiment, reason")
    return Dashboard(
        uid="tailguard-gameday",
        title="tailguard / Game-day",
        description="Chaos experiments and what they do to the SLOs, for game-days.",
        annotations=(
            Annotation(
                "Chaos experiment running", f"{running} > 0", "chaos experiment running", "red"
            ),
            Annotation(
                "Chaos experiment ended",
                f"{ended} > 0",
                "{{experiment}} ended: {{reason}}",
                "orange",
            ),
        ),
        rows=(
            Row(
                "Chaos",
                (
                    Panel(
                        "Experiments active",
                        "Chaos experiments running now. Nonzero outside a game-day: halt it "
                        "(tailguard chaos halt). With a fleet store (Chaos(store=...)), "
                        "'store followed' is 0 when some worker could not read the store "
                        "for a lease and stopped injecting (docs/chaos-fleet.md).",
                        "short",
                        (
                            Query(running, "experiments active"),
                            Query(
                                gauge("tailguard_chaos_store_following", "", how="min"),
                                "store followed",
                            ),
                        ),
                        kind="stat",
                        width=4,
                    ),
                    Panel(
                        "Injections by experiment, target and fault",
                        "Faults injected per second. No injections while an experiment "
                        "runs: its targets or routes match nothing that is called.",
                        "short",
                        (
                            Query(
                                rate(
                                    "tailguard_chaos_injections_total",
                                    "experiment, target, fault",
                                ),
                                "{{experiment}} {{target}} {{fault}}",
                            ),
                        ),
                        width=8,
                    ),
                    Panel(
                        "Injections skipped or failed",
                        "Faults not injected per second: skipped because max_injections calls "
                        "were already under injection (the cap is protecting the service), or "
                        "failed because the fault could not be planned or applied (a "
                        "distribution that cannot sample, say; the call went on without it). "
                        "Failures mean the experiment tests less than it claims.",
                        "short",
                        (
                            Query(
                                rate(
                                    "tailguard_chaos_injections_skipped_total", "experiment, fault"
                                ),
                                "skipped {{experiment}} {{fault}}",
                            ),
                            Query(
                                rate("tailguard_chaos_injection_errors_total", "experiment, fault"),
                                "failed {{experiment}} {{fault}}",
                            ),
                        ),
                        width=6,
                    ),
                    Panel(
                        "Experiments ended by reason",
                        "Experiments that ended in each interval: stopped, halt (kill switch), "
                        "safeguard (an abort condition tripped: the SLO did not hold) or "
                        "expired (TTL).",
                        "short",
                        (Query(ended, "{{experiment}} {{reason}}"),),
                        width=6,
                    ),
                ),
            ),
            Row(
                "SLOs during the experiment",
                (
                    Panel(
                        "Deadline and shed outcomes, with injections",
                        "Requests per second that hit their deadline or were shed, with "
                        "the injection rate as bars on the right axis. They should rise "
                        "with the injections and fall back when the experiment ends.",
                        "reqps",
                        (
                            Query(
                                rate(
                                    requests, "route, outcome", 'outcome=~"deadline_exceeded|shed"'
                                ),
                                "{{route}} {{outcome}}",
                            ),
                        ),
                        overlay=_injections(),
                    ),
                    Panel(
                        "p99 latency by route, with injections",
                        "p99 request latency with the injection rate as bars: the "
                        "deadline caps it if tailguard works.",
                        "s",
                        (
                            Query(
                                quantile(0.99, "tailguard_request_duration_seconds", "route"),
                                "{{route}} p99",
                            ),
                        ),
                        overlay=_injections(),
                    ),
                    Panel(
                        "Availability budget burn, with injections",
                        "The Service dashboard's availability burn rate during the "
                        "experiment, injections as bars. Above 14.4 the game-day would page.",
                        "short",
                        _burn("unavailable", objectives),
                        overlay=_injections(),
                    ),
                    Panel(
                        "Latency budget burn, with injections",
                        "The latency burn rate (requests not answered within their "
                        "deadline) during the experiment, injections as bars.",
                        "short",
                        _burn("late", objectives),
                        overlay=_injections(),
                    ),
                ),
            ),
        ),
    )


def dashboards(objectives: Objectives | None = None) -> tuple[Dashboard, ...]:
    """Service, Dependencies and pools, Game-day: as data, before rendering."""
    objectives = objectives or Objectives()
    return (_service(objectives), _dependencies(), _gameday(objectives))


def _variable_query(name: str) -> str:
    """The label_values() query listing the values of variable ``name``."""
    requests = metric("tailguard_requests_total")
    if name == "job":
        return f"label_values({requests}, job)"
    if name == "instance":
        return f'label_values({requests}{{job=~"$job"}}, instance)'
    scoped = '{job=~"$job", instance=~"$instance"}'
    if name == "route":
        return f"label_values({requests}{scoped}, route)"
    return f"label_values({metric('tailguard_dependency_calls_total')}{scoped}, dependency)"


def render(dashboard: Dashboard) -> dict[str, Any]:
    """``dashboard`` as Grafana dashboard JSON (a dict), built with grafana-foundation-sdk."""
    with warnings.catch_warnings():
        # The SDK steers to its schema-v2 dashboards, which only Grafana 12's experimental
        # API imports; file provisioning and "Import dashboard" take these (schemaVersion 42).
        warnings.filterwarnings("ignore", "Prefer using dashboardv2", DeprecationWarning)
        from grafana_foundation_sdk.builders import common as common_builders
        from grafana_foundation_sdk.builders import dashboard as builders
        from grafana_foundation_sdk.builders import prometheus, stat, timeseries
        from grafana_foundation_sdk.cog.encoder import JSONEncoder
        from grafana_foundation_sdk.models import common
        from grafana_foundation_sdk.models import dashboard as models

    source = common.DataSourceRef(type_val="prometheus", uid="${datasource}")
    built = (
        builders.Dashboard(dashboard.title)
        .uid(dashboard.uid)
        .description(dashboard.description)
        .tags(["tailguard"])
        .editable()
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .tooltip(models.DashboardCursorSync.CROSSHAIR)
        .with_variable(
            builders.DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
    )
    for name in VARIABLES:
        built = built.with_variable(
            builders.QueryVariable(name)
            .label(name.capitalize())
            .datasource(source)
            .query(_variable_query(name))
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(models.VariableSort.ALPHABETICAL_ASC)
        )
    for annotation in dashboard.annotations:
        built = built.annotation(
            builders.AnnotationQuery()
            .name(annotation.name)
            .datasource(source)
            .enable(True)
            .icon_color(annotation.color)
            .expr(annotation.expr)
            .title_format(annotation.title)
            .step("15s")
        )

    def _panel(panel: Panel, number: int, grid: models.GridPos) -> Any:
        targets = []
        for index, query in enumerate(panel.queries + panel.overlay):
            targets.append(
                prometheus.Dataquery()
                .datasource(source)
                .expr(query.expr)
                .legend_format(query.legend)
                .ref_id(chr(ord("A") + index))
                .range()
            )
        legend = (
            common_builders.VizLegendOptions()
            .show_legend(True)
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .calcs(["mean", "max", "lastNotNull"])
        )
        common_options: Any
        if panel.kind == "stat":
            common_options = stat.Panel().color_mode(common.BigValueColorMode.VALUE)
        else:
            common_options = (
                timeseries.Panel()
                .legend(legend)
                .tooltip(
                    common_builders.VizTooltipOptions()
                    .mode(common.TooltipDisplayMode.MULTI)
                    .sort(common.SortOrder.DESCENDING)
                )
                .fill_opacity(25 if panel.stacked else 10)
                .line_width(1)
                .show_points(common.VisibilityMode.NEVER)
            )
            if panel.stacked:
                common_options = common_options.stacking(
                    common_builders.StackingConfig().mode(common.StackingMode.NORMAL)
                )
            first_overlay = len(panel.queries)
            for index in range(first_overlay, first_overlay + len(panel.overlay)):
                common_options = common_options.override_by_query(
                    chr(ord("A") + index),
                    [
                        models.DynamicConfigValue(id_val="custom.drawStyle", value="bars"),
                        models.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
                        models.DynamicConfigValue(id_val="custom.fillOpacity", value=40),
                        models.DynamicConfigValue(id_val="unit", value="short"),
                        models.DynamicConfigValue(
                            id_val="color", value={"mode": "fixed", "fixedColor": "red"}
                        ),
                    ],
                )
        for target in targets:
            common_options = common_options.with_target(target)
        return (
            common_options.id(number)
            .title(panel.title)
            .description(panel.description)
            .datasource(source)
            .unit(panel.unit)
            .grid_pos(grid)
        )

    panel_id = 0
    y = 0
    for row in dashboard.rows:
        panel_id += 1
        built = built.with_row(
            builders.Row(row.title).id(panel_id).grid_pos(models.GridPos(h=1, w=24, x=0, y=y))
        )
        y += 1
        x = 0
        height = 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y, height = 0, y + height, 0
            panel_id += 1
            built = built.with_panel(
                _panel(panel, panel_id, models.GridPos(h=panel.height, w=panel.width, x=x, y=y))
            )
            x += panel.width
            height = max(height, panel.height)
        y += height

    encoded: dict[str, Any] = json.loads(json.dumps(built.build(), cls=JSONEncoder))
    return encoded


def write(out: Path | str, objectives: Objectives | None = None) -> list[Path]:
    """Write every dashboard's JSON and the rule file under ``out``; return the paths written."""
    out = Path(out)
    written = []
    for dashboard in dashboards(objectives):
        path = out / dashboard.file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(render(dashboard), indent=2, sort_keys=True, ensure_ascii=False)
        path.write_text(text + "\n", encoding="utf-8")
        written.append(path)
    rules = out / RULES_FILE
    rules.parent.mkdir(parents=True, exist_ok=True)
    rules.write_text(render_rules(objectives), encoding="utf-8")
    written.append(rules)
    return written
