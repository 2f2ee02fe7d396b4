"""Prometheus recording and alerting rules for tailguard's metrics, generated from the catalog.

The recording rules compute the per-route ratios that the SLO alerts and the
dashboards share: the share of requests answered 5xx (availability), the
share whose deadline fired (latency: answered within the deadline) and the
share shed, each over the windows of the SRE workbook's multiwindow,
multi-burn-rate alerts. The alerts page at 14.4x the error budget's burn over
1h and 5m or 6x over 6h and 30m, and open a ticket at 3x over 1d and 2h or 1x
over 3d and 6h. The objectives are parameters (:class:`Objectives`); the
other alerts watch sustained shedding, saturated bulkheads, orphaned tasks,
event-loop lag and chaos experiments left running.

Every metric a rule reads is looked up in :data:`~tailguard.telemetry.catalog.SPECS`,
so a renamed metric fails here, not silently in Prometheus.

>>> groups = rule_groups(Objectives(availability=0.995))
>>> [group["name"] for group in groups]
['tailguard-slo-ratios', 'tailguard-slo-alerts', 'tailguard-alerts']
>>> ratio("unavailable", "1h")
'job_route:tailguard_requests_unavailable:ratio_rate1h'
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal

from tailguard.telemetry.catalog import SPECS

__all__ = [
    "SLI_WINDOWS",
    "Objectives",
    "metric",
    "ratio",
    "render_rules",
    "rule_groups",
]

Sli = Literal["unavailable", "late", "shed"]

SLI_WINDOWS: Final = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
"""The windows the SLO alerts read (the SRE workbook's long and short windows)."""

BAD_REQUESTS: Final[dict[Sli, str]] = {
    "unavailable": 'status_class="5xx"',
    "late": 'outcome="deadline_exceeded"',
    "shed": 'outcome="shed"',
}
"""The requests each ratio counts as bad, as a label matcher on ``tailguard_requests_total``."""

# (severity, budget burn factor, long window, short window): SRE workbook, chapter 5.
BURN_RATE_ALERTS: Final = (
    ("page", 14.4, "1h", "5m"),
    ("page", 6.0, "6h", "30m"),
    ("ticket", 3.0, "1d", "2h"),
    ("ticket", 1.0, "3d", "6h"),
)


@dataclass(frozen=True, slots=True)
class Objectives:
    """What the alerts hold the service to; the defaults are what ``dashboards/`` ships.

    >>> Objectives().availability, Objectives().latency
    (0.999, 0.99)
    """

    availability: float = 0.999
    """Share of requests that must not be answered 5xx."""
    latency: float = 0.99
    """Share of requests that must be answered within their deadline."""
    shed_ratio: float = 0.05
    """Share of a route's requests shed for 10 minutes: ``TailguardSustainedShedding``."""
    saturation: float = 0.9
    """Share of a bulkhead's slots in use for 10 minutes: ``TailguardBulkheadSaturated``."""
    live_orphans: int = 20
    """Orphaned tasks alive on a route of an instance for 15 minutes: ``TailguardOrphanedTasks``."""
    late_ticks: float = 0.01
    """Share of event-loop ticks more than 100 ms late: ``TailguardEventLoopLag``."""
    chaos_for: str = "1h"
    """How long a chaos experiment may run before ``TailguardChaosExperimentLeftRunning``."""

    def __post_init__(self) -> None:
        for name in ("availability", "latency", "shed_ratio", "saturation", "late_ticks"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise ValueError(f"{name} must be between 0 and 1 (exclusive), got {value!r}")

    def budget(self, sli: Sli) -> float:
        """The error budget of ``sli``: the share of requests allowed to be bad.

        >>> round(Objectives().budget("late"), 6)
        0.01
        """
        objective = self.availability if sli == "unavailable" else self.latency
        return round(1 - objective, 9)


def metric(name: str, suffix: str = "") -> str:
    """``name`` (plus a histogram's ``_bucket``/``_sum``/``_count``), if the catalog has it.

    >>> metric("tailguard_request_duration_seconds", "_bucket")
    'tailguard_request_duration_seconds_bucket'
    >>> metric("tailguard_requests")
    Traceback (most recent call last):
    ...
    KeyError: 'the metric catalog has no tailguard_requests'
    """
    spec = SPECS.get(name)
    if spec is None:
        raise KeyError(f"the metric catalog has no {name}")
    if suffix and spec.kind != "histogram":
        raise ValueError(f"{name} is a {spec.kind}: it has no {suffix} series")
    return name + suffix


def ratio(sli: Sli, window: str) -> str:
    """The recorded name of the share of bad requests per job and route over ``window``."""
    return f"job_route:tailguard_requests_{sli}:ratio_rate{window}"


def _recording_rules() -> list[dict[str, Any]]:
    requests = metric("tailguard_requests_total")
    rules = []
    for sli, bad in BAD_REQUESTS.items():
        for window in SLI_WINDOWS:
            total = f"sum by (job, route) (rate({requests}[{window}]))"
            # "or 0 * total": a route with no bad request yet records 0, not nothing.
            expr = (
                f"(\n  sum by (job, route) (rate({requests}{{{bad}}}[{window}]))\nor\n"
                f"  0 * {total}\n)\n/\n{total}"
            )
            rules.append({"record": ratio(sli, window), "expr": expr})
    return rules


def _burn_rate_alerts(objectives: Objectives) -> list[dict[str, Any]]:
    slis: tuple[tuple[Sli, str, str], ...] = (
        ("unavailable", "Availability", "answered 5xx"),
        ("late", "Latency", "not answered within their deadline"),
    )
    alerts = []
    for sli, title, meaning in slis:
        budget = objectives.budget(sli)
        objective = 1 - budget
        for severity in ("page", "ticket"):
            clauses = []
            for level, factor, long, short in BURN_RATE_ALERTS:
                if level != severity:
                    continue
                threshold = f"({factor:g} * {budget:g})"
                clauses.append(
                    f"(\n  {ratio(sli, long)} > {threshold}\nand\n"
                    f"  {ratio(sli, short)} > {threshold}\n)"
                )
            alerts.append(
                {
                    "alert": f"Tailguard{title}BudgetBurn",
                    "expr": "\nor\n".join(clauses),
                    "labels": {"severity": severity, "slo": sli},
                    "annotations": {
                        "summary": (
                            f"{{{{ $labels.job }}}} {{{{ $labels.route }}}} burns its "
                            f"{title.lower()} error budget too fast ({severity})"
                        ),
                        "description": (
                            f"More than the {objective:g} objective allows of "
                            f"{{{{ $labels.route }}}}'s requests are {meaning}: "
                            f"{{{{ $value | humanizePercentage }}}} over the long window."
                        ),
                    },
                }
            )
    return alerts


def _other_alerts(objectives: Objectives) -> list[dict[str, Any]]:
    in_use, limit = metric("tailguard_limiter_in_use"), metric("tailguard_limiter_limit")
    queued = metric("tailguard_limiter_queued")
    lag = metric("tailguard_event_loop_lag_seconds", "_bucket")
    lag_count = metric("tailguard_event_loop_lag_seconds", "_count")
    return [
        {
            "alert": "TailguardSustainedShedding",
            "expr": f"{ratio('shed', '5m')} > {objectives.shed_ratio:g}",
            "for": "10m",
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": "{{ $labels.job }} {{ $labels.route }} sheds requests",
                "description": (
                    "{{ $value | humanizePercentage }} of {{ $labels.route }}'s requests were "
                    "answered 503 by admission control for 10 minutes: the route is over "
                    "capacity. See the shed reasons on the Service dashboard."
                ),
            },
        },
        {
            "alert": "TailguardBulkheadSaturated",
            "expr": (
                f"sum by (job, instance, limiter, kind) ({in_use})\n/\n"
                f"sum by (job, instance, limiter, kind) ({limit}) > {objectives.saturation:g}\n"
                f"and\nsum by (job, instance, limiter, kind) ({queued}) > 0"
            ),
            "for": "10m",
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": "{{ $labels.kind }} limiter {{ $labels.limiter }} is saturated",
                "description": (
                    "{{ $labels.limiter }} on {{ $labels.instance }} has used "
                    "{{ $value | humanizePercentage }} of its slots with a queue for 10 "
                    "minutes: what it guards is slow or undersized."
                ),
            },
        },
        {
            "alert": "TailguardOrphanedTasks",
            "expr": (
                f"sum by (job, instance, route) ({metric('tailguard_tasks_live')})"
                f" > {objectives.live_orphans}"
            ),
            "for": "15m",
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": "{{ $labels.route }} leaves tasks running after its requests",
                "description": (
                    "{{ $value }} tasks spawned by {{ $labels.route }} on {{ $labels.instance }} "
                    "outlived their request and are still running: work nobody waits for."
                ),
            },
        },
        {
            "alert": "TailguardEventLoopLag",
            "expr": (
                f'1 - sum by (job, instance) (rate({lag}{{le="0.1"}}[5m]))\n/\n'
                f"sum by (job, instance) (rate({lag_count}[5m])) > {objectives.late_ticks:g}"
            ),
            "for": "10m",
            "labels": {"severity": "page"},
            "annotations": {
                "summary": "the event loop of {{ $labels.instance }} is blocked",
                "description": (
                    "{{ $value | humanizePercentage }} of loop ticks ran more than 100 ms "
                    "late: something blocks the loop (sync I/O, CPU work) and every request "
                    "on it waits."
                ),
            },
        },
        {
            "alert": "TailguardChaosExperimentLeftRunning",
            "expr": (
                f"max by (job, instance) ({metric('tailguard_chaos_experiments_active')}) > 0"
            ),
            "for": objectives.chaos_for,
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": "a chaos experiment has run on {{ $labels.instance }} for too long",
                "description": (
                    f"A chaos experiment has been running for over {objectives.chaos_for}: "
                    "stop it (tailguard chaos halt) unless the game-day is still on."
                ),
            },
        },
    ]


def rule_groups(objectives: Objectives | None = None) -> list[dict[str, Any]]:
    """The rule groups of a Prometheus rule file, as data."""
    objectives = objectives or Objectives()
    return [
        {"name": "tailguard-slo-ratios", "rules": _recording_rules()},
        {"name": "tailguard-slo-alerts", "rules": _burn_rate_alerts(objectives)},
        {"name": "tailguard-alerts", "rules": _other_alerts(objectives)},
    ]


def render_rules(objectives: Objectives | None = None) -> str:
    """The rule file as YAML text.

    >>> print(render_rules().splitlines()[3])
    - name: tailguard-slo-ratios
    """
    lines = [
        "# Generated by `tailguard dashboards` from tailguard.telemetry.rules: do not edit.",
        f"# Objectives: {objectives or Objectives()}",
        "groups:",
    ]
    for group in rule_groups(objectives):
        lines.append(f"- name: {group['name']}")
        lines.append("  rules:")
        for rule in group["rules"]:
            lines.extend(_yaml_mapping(rule, "  - ", "    "))
    return "\n".join(lines) + "\n"


def _yaml_mapping(mapping: dict[str, Any], first: str, indent: str) -> Iterator[str]:
    """A mapping of strings (and mappings of strings) as YAML lines; no PyYAML needed."""
    prefix = first
    for key, value in mapping.items():
        if isinstance(value, dict):
            yield f"{prefix}{key}:"
            yield from _yaml_mapping(value, indent + "  ", indent + "  ")
        elif "\n" in value:
            yield f"{prefix}{key}: |-"
            yield from (f"{indent}  {line}" for line in value.splitlines())
        else:
            # A JSON string is a valid YAML double-quoted scalar.
            yield f"{prefix}{key}: {json.dumps(value, ensure_ascii=False)}"
        prefix = indent
