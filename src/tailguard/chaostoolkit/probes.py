"""Chaos Toolkit probes: chaos status from the control API, SLOs from the service's ``/metrics``.

Name this module in a probe's provider::

    {"type": "probe", "name": "stock-p99", "tolerance": [0, 0.5],
     "provider": {"type": "python", "module": "tailguard.chaostoolkit.probes",
                  "func": "route_latency",
                  "arguments": {"route": "GET /stock/{item_id}", "window": 10}}}

Every probe returns a plain value (a number, a bool or a mapping) that a
tolerance can judge: ``[low, high]`` for numbers, ``true``/``false`` for
bools, a ``jsonpath`` or ``probe`` tolerance for mappings. A probe raises
(and Chaos Toolkit records it as failed, with the message) when it cannot
give an answer: the service cannot be reached, the token is refused, the
route has no metrics, or too few requests passed in the window to judge.

The SLO probes read tailguard's counters twice, ``window`` seconds apart,
and judge what happened in between (``window=0``: since the service
started). They need no token; ``status`` and ``experiment_running`` do (see
``tailguard.chaostoolkit``). Without annotations postponed, the signatures'
types stay real objects, which ``chaos discover`` turns into type names.
"""

import math
from collections.abc import Mapping
from typing import Any

from tailguard.chaostoolkit._metrics import Scrape, observe, routes, windowed
from tailguard.chaostoolkit._metrics import quantile as histogram_quantile
from tailguard.chaostoolkit._service import ActivityFailed, Settings, control
from tailguard.telemetry.catalog import SPECS

__all__ = [
    "error_ratio",
    "experiment_running",
    "orphaned_tasks",
    "route_latency",
    "shed_ratio",
    "status",
]

_REQUESTS = SPECS["tailguard_requests_total"].name
_DURATION = SPECS["tailguard_request_duration_seconds"].name
_ORPHANED = SPECS["tailguard_tasks_orphaned_total"].name


def status(configuration: Settings = None, secrets: Settings = None) -> dict[str, Any]:
    """The chaos engine's state, as ``tailguard chaos status --json`` prints it.

    A mapping with ``enabled``, ``experiments`` (the running ones), ``stopped``
    (recent stops: who, why) and the injection counters; judge it with a
    ``jsonpath`` tolerance, e.g. ``$.enabled``.

    Example::

        {"type": "probe", "name": "chaos-is-enabled",
         "tolerance": {"type": "jsonpath", "path": "$.enabled", "expect": true},
         "provider": {"type": "python", "module": "tailguard.chaostoolkit.probes",
                      "func": "status", "secrets": ["tailguard"]}}
    """
    return control(configuration, secrets, "status", lambda client: client.status())


def experiment_running(
    name: str = "", configuration: Settings = None, secrets: Settings = None
) -> bool:
    """Whether the experiment ``name`` is running (any experiment, when ``name`` is empty).

    Example::

        {"type": "probe", "name": "slow-inventory-is-running", "tolerance": true,
         "provider": {"type": "python", "module": "tailguard.chaostoolkit.probes",
                      "func": "experiment_running", "arguments": {"name": "slow-inventory"},
                      "secrets": ["tailguard"]}}
    """
    if not isinstance(name, str):
        raise ActivityFailed(f"experiment_running: name must be a string, got {name!r}")
    state = control(configuration, secrets, "experiment_running", lambda client: client.status())
    running = [entry.get("experiment", {}).get("name") for entry in state.get("experiments", [])]
    return name in running if name else bool(running)


def route_latency(
    route: str,
    quantile: float = 0.99,
    window: float = 10.0,
    min_requests: int = 1,
    configuration: Settings = None,
) -> float:
    """The ``quantile`` of a route's latency in seconds, over the last ``window`` seconds.

    ``route`` is the route template as in the metrics (``/stock/{item_id}``),
    optionally after a method (``GET /stock/{item_id}``). Requests admission
    control shed (fast 503s) are left out, as in the dashboards; requests cut
    off by their deadline count with the time they took. Interpolated inside
    histogram buckets as ``histogram_quantile`` does, so the answer is as
    fine as the buckets (``docs/metrics.md``). Fails when fewer than
    ``min_requests`` requests ended in the window.

    Example::

        {"type": "probe", "name": "stock-p99-under-500ms", "tolerance": [0, 0.5],
         "provider": {"type": "python", "module": "tailguard.chaostoolkit.probes",
                      "func": "route_latency",
                      "arguments": {"route": "GET /stock/{item_id}", "quantile": 0.99,
                                    "window": 10, "min_requests": 20}}}
    """
    who = "route_latency"
    if isinstance(quantile, bool) or not isinstance(quantile, int | float) or not 0 < quantile <= 1:
        raise ActivityFailed(f"{who}: quantile must be a number in (0, 1], got {quantile!r}")
    labels = _route_labels(route, who, required=True)
    labels["admission"] = "admitted"
    _check_min(min_requests, who)
    before, after = observe(configuration, window, who)
    _known_route(after, _DURATION + "_count", labels, route, who)
    by_bound = windowed(before, after, _DURATION + "_bucket", labels, by="le")
    buckets = {float(bound): count for bound, count in by_bound.items()}
    _enough(buckets.get(math.inf, 0.0), min_requests, route, window, who)
    return histogram_quantile(quantile, buckets)


def error_ratio(
    route: str = "", window: float = 10.0, min_requests: int = 1, configuration: Settings = None
) -> float:
    """The share of a route's requests in the last ``window`` seconds that did not end ``ok``.

    Errors, deadlines exceeded, sheds and client disconnects all count
    against it, as in ``docs/metrics.md``'s SLO query. ``route`` as for
    :func:`route_latency`; empty for every route.

    Example::

        {"type": "probe", "name": "stock-errors-under-5-percent", "tolerance": [0, 0.05],
         "provider": {"type": "python", "module": "tailguard.chaostoolkit.probes",
                      "func": "error_ratio",
                      "arguments": {"route": "GET /stock/{item_id}", "window": 10}}}
    """
    return _outcome_ratio(route, window, min_requests, configuration, "error_ratio", shed=False)


def shed_ratio(
    route: str = "", window: float = 10.0, min_requests: int = 1, configuration: Settings = None
) -> float:
    """The share of a route's requests in the last ``window`` seconds shed by admission control.

    The 503s with ``Retry-After`` of queue limits, queue timeouts, tenant
    limits and inbound budgets (``tailguard_requests_total{outcome="shed"}``).

    Example::

        {"type": "probe", "name": "sheds-under-1-percent", "tolerance": [0, 0.01],
         "provider": {"type": "python", "module": "tailguard.chaostoolkit.probes",
                      "func": "shed_ratio", "arguments": {"window": 10}}}
    """
    return _outcome_ratio(route, window, min_requests, configuration, "shed_ratio", shed=True)


def orphaned_tasks(route: str = "", window: float = 10.0, configuration: Settings = None) -> int:
    """How many tasks outlived the request that spawned them in the last ``window`` seconds.

    Left running or cancelled by policy (``tailguard_tasks_orphaned_total``);
    ``route`` as for :func:`route_latency`, empty for every route. A count
    of 0 is the usual tolerance.

    Example::

        {"type": "probe", "name": "no-orphans", "tolerance": 0,
         "provider": {"type": "python", "module": "tailguard.chaostoolkit.probes",
                      "func": "orphaned_tasks", "arguments": {"window": 10}}}
    """
    who = "orphaned_tasks"
    labels = _route_labels(route, who, required=False)
    labels.pop("method", None)  # tasks are counted per route only
    before, after = observe(configuration, window, who)
    if route:
        _known_route(after, _REQUESTS, {"route": labels["route"]}, route, who)
    found = windowed(before, after, _ORPHANED, labels, by=None)
    return round(found.get("", 0.0))


def _outcome_ratio(
    route: str,
    window: float,
    min_requests: int,
    configuration: Settings,
    who: str,
    *,
    shed: bool,
) -> float:
    labels = _route_labels(route, who, required=False)
    _check_min(min_requests, who)
    before, after = observe(configuration, window, who)
    if route:
        _known_route(after, _REQUESTS, labels, route, who)
    outcomes = windowed(before, after, _REQUESTS, labels, by="outcome")
    total = sum(outcomes.values())
    _enough(total, min_requests, route, window, who)
    bad = outcomes.get("shed", 0.0) if shed else total - outcomes.get("ok", 0.0)
    return bad / total


def _route_labels(route: str, who: str, *, required: bool) -> dict[str, str]:
    if not isinstance(route, str) or (required and not route.strip()):
        raise ActivityFailed(
            f"{who}: route must be a route template such as '/stock/{{item_id}}' "
            f"or 'GET /stock/{{item_id}}', got {route!r}"
        )
    method, _, template = route.strip().rpartition(" ")
    if template.endswith("*"):
        raise ActivityFailed(
            f"{who}: route must be a route template as the metrics label it "
            f"('/stock/{{item_id}}'), not a prefix key, got {route!r}"
        )
    labels = {"route": template} if template else {}
    if method:
        labels["method"] = method.strip().upper()
    return labels


def _check_min(min_requests: int, who: str) -> None:
    if isinstance(min_requests, bool) or not isinstance(min_requests, int) or min_requests < 1:
        raise ActivityFailed(
            f"{who}: min_requests must be a whole number of at least 1, got {min_requests!r}"
        )


def _known_route(
    scrape: Scrape, name: str, labels: Mapping[str, str], route: str, who: str
) -> None:
    if not any(
        all(found.get(key) == value for key, value in labels.items())
        for found, _ in scrape.samples.get(name, ())
    ):
        seen = ", ".join(repr(known) for known in routes(scrape, name)) or "none"
        raise ActivityFailed(
            f"{who}: {scrape.url} has no requests to route {route!r} since it started "
            f"(routes with requests: {seen})"
        )


def _enough(count: float, min_requests: int, route: str, window: float, who: str) -> None:
    if count < min_requests:
        span = f"in the last {window:g} s" if window else "since the service started"
        target = f"route {route!r}" if route else "the service"
        raise ActivityFailed(
            f"{who}: {round(count)} requests to {target} {span}, fewer than "
            f"min_requests={min_requests}: too few to judge (is traffic reaching it?)"
        )
