"""The game-day's records and its report: the bursts, what ``/metrics`` says, a summary.

Used by :mod:`tailguard.demo_gameday`, which plays the game-day; kept apart so
that each module reads in one sitting.
"""

from __future__ import annotations

import json
import statistics
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from prometheus_client.parser import text_string_to_metric_families

from tailguard._demo_report import _ms as _budget_text
from tailguard.chaos._client import describe_fault
from tailguard.demo import WIDTH, Outcome, Scenario, budget_for
from tailguard.guard import Tailguard

__all__ = [
    "DEPENDENCY",
    "EXPERIMENT",
    "METRICS_PATH",
    "Burst",
    "GameDay",
    "explain",
    "format_bursts",
    "format_changes",
    "metric_changes",
    "report",
]

DEPENDENCY = "inventory"
METRICS_PATH = "/metrics"

EXPERIMENT: Mapping[str, Any] = {
    "name": "slow-inventory",
    "ttl": 30,  # should the demo die before its halt, the experiment still ends
    "faults": [
        {
            "kind": "latency",
            "target": DEPENDENCY,
            "delay": {"lognormal": {"p50": 0.1, "p99": 1.0}},
            "rate": 0.5,
        }
    ],
}
"""The experiment the game-day starts: the body of ``POST {prefix}/experiments``."""

_BULKHEAD = {"limiter": DEPENDENCY, "kind": "dependency"}
_WATCHED: tuple[tuple[str, Mapping[str, str], tuple[str, ...]], ...] = (
    ("tailguard_chaos_injections_total", {}, ("target", "fault")),
    ("tailguard_chaos_experiments_ended_total", {}, ("experiment", "reason")),
    ("tailguard_requests_total", {"route": "/stock/{item_id}"}, ("route", "outcome")),
    ("tailguard_requests_total", {"route": "/items/{item_id}"}, ("route", "outcome")),
    ("tailguard_dependency_calls_total", {"dependency": DEPENDENCY}, ("dependency", "outcome")),
    ("tailguard_limiter_rejections_total", _BULKHEAD, ("limiter", "reason")),
    ("tailguard_queue_wait_seconds_count", _BULKHEAD, ("limiter", "kind")),
    ("tailguard_queue_wait_seconds_sum", _BULKHEAD, ("limiter", "kind")),
)
"""``(sample, labels it must have, labels shown)``: the series the report follows."""


@dataclass(frozen=True, slots=True)
class Burst:
    """Requests to one route in one step of the game-day, and how they ended."""

    step: str
    scenario: Scenario
    outcomes: Sequence[Outcome]

    def seconds(self, status: int | None = None) -> list[float]:
        """Sorted seconds the requests took (only those answered ``status``, if given)."""
        return sorted(o.seconds for o in self.outcomes if status is None or o.status == status)

    def ok(self) -> int:
        """Requests answered 2xx."""
        return sum(1 for outcome in self.outcomes if outcome.kind == "2xx")

    def __len__(self) -> int:
        return len(self.outcomes)


@dataclass(slots=True)
class GameDay:
    """What the game-day did and saw."""

    control: str
    """Where the control API answers, such as ``/_tailguard``."""
    bursts: list[Burst] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    """Each control request and its answer, one line each."""
    started: bool = False
    halted: bool = False
    peak: dict[str, int] = field(default_factory=dict)
    """The bulkhead's highest ``in_use`` and ``queued`` in the snapshots, and its limits."""
    changes: list[tuple[str, float]] = field(default_factory=list)
    """``(series, change)`` from :func:`metric_changes`."""
    logs: list[str] = field(default_factory=list)
    """What the ``tailguard.chaos`` logger said meanwhile."""


def _sums(exposition: str) -> dict[str, float]:
    found: dict[str, float] = {}
    samples = [s for family in text_string_to_metric_families(exposition) for s in family.samples]
    for name, match, shown in _WATCHED:
        for sample in samples:
            labels = sample.labels
            if sample.name == name and all(labels.get(k) == v for k, v in match.items()):
                kept = ",".join(f'{key}="{labels.get(key, "")}"' for key in shown)
                series = f"{name}{{{kept}}}"
                found[series] = found.get(series, 0.0) + sample.value
    return found


def metric_changes(before: str, after: str) -> list[tuple[str, float]]:
    """How the series the game-day follows changed between two ``/metrics`` scrapes.

    Samples are summed over the labels not shown (such as ``method`` and
    ``status_class``); series that did not change are left out.

    >>> after = 'tailguard_chaos_injections_total{experiment="x",target="db",fault="latency"} 3'
    >>> metric_changes("", after)
    [('tailguard_chaos_injections_total{target="db",fault="latency"}', 3.0)]
    """
    old, new = _sums(before), _sums(after)
    return [(k, v - old.get(k, 0.0)) for k, v in new.items() if v != old.get(k, 0.0)]


def _ms(seconds: Sequence[float], *, last: bool = False) -> str:
    """The median (or with ``last``, the last) of sorted ``seconds``, in ms."""
    if not seconds:
        return "-"
    return f"{(seconds[-1] if last else statistics.median(seconds)) * 1000:.0f} ms"


def _table(lines: Sequence[Sequence[str]], left: Sequence[int]) -> str:
    """Aligned columns: those in ``left`` read left to right, the others align right."""
    widths = [max(len(line[n]) for line in lines) for n in range(len(lines[0]))]
    rendered = [
        "  ".join(
            cell.ljust(width) if n in left else cell.rjust(width)
            for n, (cell, width) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in lines
    ]
    return "\n".join([rendered[0], "-" * max(map(len, rendered)), *rendered[1:]])


def format_bursts(bursts: Sequence[Burst], guard: Tailguard | None) -> str:
    """One line per burst: step, route, budget, requests by ending, p50 and max."""
    lines: list[Sequence[str]] = [
        ("step", "route", "budget", "requests", "2xx", "504", "503", "other", "p50", "max")
    ]
    for burst in bursts:
        budget = budget_for(guard, burst.scenario)
        total, ok = len(burst), burst.ok()
        late, shed = len(burst.seconds(504)), len(burst.seconds(503))
        seconds = burst.seconds()
        lines.append(
            (
                burst.step,
                burst.scenario.label,
                "?" if budget is None else _budget_text(budget.seconds),
                *map(str, (total, ok, late, shed, total - ok - late - shed)),
                _ms(seconds),
                _ms(seconds, last=True),
            )
        )
    return _table(lines, left=(0, 1, 2))


def format_changes(changes: Sequence[tuple[str, float]]) -> str:
    """``change  series`` lines for what :func:`metric_changes` found.

    >>> print(format_changes([('a_total{x="1"}', 3.0), ("b_seconds_sum{}", 0.25)]))
    change  series
    -----------------------
        +3  a_total{x="1"}
    +0.250  b_seconds_sum{}
    """
    lines: list[Sequence[str]] = [("change", "series")]
    for series, change in changes:
        sums = series.split("{")[0].endswith("_sum")
        lines.append((f"{change:+.3f}" if sums else f"{change:+.0f}", series))
    return _table(lines, left=(1,))


def explain(game: GameDay, guard: Tailguard | None = None) -> str:
    """A short paragraph, built from what the game-day saw; ``guard`` gives the budgets."""

    def budget(burst: Burst) -> str:
        found = budget_for(guard, burst.scenario)
        return "the" if found is None else f"the {_budget_text(found.seconds)}"

    def find(step: str, template: str) -> Burst | None:
        found = (
            b for b in game.bursts if b.step.endswith(step) and b.scenario.template == template
        )
        return next(found, None)

    stock, items = find("running", "/stock/{item_id}"), find("running", "/items/{item_id}")
    after = find("after halt", "/stock/{item_id}")
    if game.started:
        injected = sum(v for k, v in game.changes if k.startswith("tailguard_chaos_injections"))
        parts = [f"Chaos delayed {injected:.0f} inventory calls."]
    else:
        parts = ["The experiment did not start (see the control API's answer above)."]
    if stock is not None:
        late, shed, peak = stock.seconds(504), stock.seconds(503), game.peak
        if late:
            parts.append(
                f"Deadlines held: {len(late)} stock requests slowed by the delays got a 504 when "
                f"{budget(stock)} budget ran out (slowest {_ms(late, last=True)}) instead of "
                "hanging."
            )
        else:
            parts.append("No stock request ran out of its budget this time.")
        capped = (
            f"The bulkhead capped inventory at {peak.get('max_concurrency', '?')} calls at once "
            f"(snapshots: up to {peak.get('in_use', '?')} in use, {peak.get('queued', '?')} queued)"
        )
        parts.append(
            f"{capped} and shed {len(shed)} requests fast with 503 (median {_ms(shed)})."
            if shed
            else f"{capped}; it shed none."
        )
    if items is not None:
        unaffected = "The rest of the shop was unaffected: " if items.ok() == len(items) else ""
        parts.append(
            f"{unaffected}GET /items/{{item_id}}, which does not use inventory, answered "
            f"{items.ok()} of {len(items)} within {budget(items)} budget "
            f"(max {_ms(items.seconds(), last=True)})."
        )
    if game.halted and after is not None:
        parts.append(
            f"After the halt, {after.ok()} of {len(after)} stock requests succeeded "
            f"(max {_ms(after.seconds(), last=True)})."
        )
    return " ".join(parts)


def _logfmt(message: str) -> str:
    """A chaos log line (a JSON object) as ``key=value`` pairs, without the time and nulls.

    >>> _logfmt('{"event": "halt", "experiment": null, "at": "2026-01-01", "stopped": 1}')
    'event=halt stopped=1'
    """
    try:
        fields = json.loads(message)
    except ValueError:
        return message
    if not isinstance(fields, dict):
        return message
    return " ".join(f"{k}={v}" for k, v in fields.items() if v is not None and k != "at")


def report(game: GameDay, guard: Tailguard | None, *, out: TextIO) -> None:
    """Print the game-day: what was done, the bursts, the metrics that changed, a summary."""
    print(
        f"\ngame-day: {EXPERIMENT['name']}, started and halted through the control API "
        f"at {game.control}",
        file=out,
    )
    for fault in EXPERIMENT["faults"]:
        print(f"  fault: {describe_fault(fault)}, ttl {EXPERIMENT['ttl']} s", file=out)
    for line in [*game.actions, *(f"logged: {_logfmt(m)}" for m in game.logs)]:
        print(f"  {line}", file=out)
    print(f"\n{format_bursts(game.bursts, guard)}", file=out)
    print(f"\nfrom {METRICS_PATH}, change over the game-day:", file=out)
    print(format_changes(game.changes), file=out)
    # A no-break space keeps "250 ms" on one line; textwrap splits on ASCII spaces only.
    text = explain(game, guard).replace(" ms", "\N{NO-BREAK SPACE}ms")
    wrapped = textwrap.fill(text, width=WIDTH, break_on_hyphens=False)
    print("\n" + wrapped.replace("\N{NO-BREAK SPACE}", " "), file=out)
