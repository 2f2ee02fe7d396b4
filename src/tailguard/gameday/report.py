"""Tables and explanations of what a game-day's requests did, as plain text.

* a burst, closed loop, one :class:`Row` per scenario: :func:`format_table`,
  :func:`explain_table`, both printed by :func:`print_table`;
* an open-loop game-day, one :class:`Burst` per step and route: :func:`format_bursts`;
* what ``/metrics`` said: :func:`metric_changes` between two scrapes, :func:`format_changes`;
* helpers: :func:`format_ms`, :func:`paragraph`, :func:`logfmt`.

>>> format_ms(0.0042), format_ms(0.25), format_ms(0.0042, whole=True), format_ms(None)
('4.2 ms', '250 ms', '4 ms', 'none')
"""

from __future__ import annotations

import json
import statistics
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TextIO

from prometheus_client.parser import text_string_to_metric_families

from tailguard.gameday.load import Kind, Outcome, Scenario
from tailguard.gameday.target import Budget, budget_for, find_guard
from tailguard.guard import Tailguard
from tailguard.middleware.responses import REASON_HEADER

__all__ = [
    "WIDTH",
    "Burst",
    "Row",
    "Series",
    "explain_table",
    "format_bursts",
    "format_changes",
    "format_ms",
    "format_table",
    "logfmt",
    "median_ms",
    "metric_changes",
    "paragraph",
    "print_table",
    "slowest_ms",
]

WIDTH = 100
"""Column explanations are wrapped at."""

_REASON = REASON_HEADER.decode("latin-1")


def format_ms(seconds: float | None, *, whole: bool = False) -> str:
    """``seconds`` in milliseconds: one decimal below 10 ms unless ``whole``; ``none`` for None."""
    if seconds is None:
        return "none"
    millis = seconds * 1000
    return f"{millis:.1f} ms" if millis < 10 and not whole else f"{millis:.0f} ms"


def paragraph(text: str) -> str:
    """``text`` wrapped at :data:`WIDTH`, a number never split from its ``ms``.

    >>> paragraph("x" * 96 + " 250 ms").splitlines()[1]
    '250 ms'
    """
    # A no-break space keeps "250 ms" on one line; textwrap splits on ASCII spaces only.
    joined = text.replace(" ms", "\N{NO-BREAK SPACE}ms")
    wrapped = textwrap.fill(joined, width=WIDTH, break_on_hyphens=False)
    return wrapped.replace("\N{NO-BREAK SPACE}", " ")


def _table(lines: Sequence[Sequence[str]], left: Sequence[int]) -> str:
    """Aligned columns under a rule: ``left`` ones read left to right, the others align right."""
    widths = [max(len(line[n]) for line in lines) for n in range(len(lines[0]))]
    rendered = [
        "  ".join(
            cell.ljust(width) if n in left else cell.rjust(width)
            for n, (cell, width) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in lines
    ]
    return "\n".join([rendered[0], "-" * max(map(len, rendered)), *rendered[1:]])


# --- a burst: one row per scenario ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """A scenario, the budget it got, and how its requests ended."""

    scenario: Scenario
    budget: Budget | None
    outcomes: Sequence[Outcome]

    def count(self, kind: Kind) -> int:
        """How many requests ended as ``kind``."""
        return sum(1 for outcome in self.outcomes if outcome.kind == kind)

    def latencies(self) -> list[float]:
        """Seconds each request took, sorted."""
        return sorted(outcome.seconds for outcome in self.outcomes)

    def budget_text(self) -> str:
        """``150 ms``, with where it came from unless that is the row's own route key."""
        budget = self.budget
        if budget is None:
            return "?"
        if budget.source == self.scenario.label:
            return format_ms(budget.seconds)
        return f"{format_ms(budget.seconds)} ({budget.source})"


def format_table(rows: Sequence[Row]) -> str:
    """An aligned plain-text table, one line per row: counts, then p50 and max latency."""
    lines = [("route", "budget", "requests", "2xx", "504", "aborted", "other", "p50", "max")]
    for row in rows:
        latencies = row.latencies()
        lines.append(
            (
                row.scenario.label,
                row.budget_text(),
                str(len(row.outcomes)),
                str(row.count("2xx")),
                str(row.count("504")),
                str(row.count("aborted")),
                str(row.count("other")),
                format_ms(statistics.median(latencies)) if latencies else "-",
                format_ms(latencies[-1]) if latencies else "-",
            )
        )
    return _table(lines, left=(0, 1))


def _forwarded_ms(row: Row) -> list[int]:
    """The ``x-request-timeout-ms`` a route's 2xx bodies said they would send downstream."""
    found: list[int] = []
    for outcome in row.outcomes:
        try:
            found.append(int(json.loads(outcome.body)["forward_headers"]["x-request-timeout-ms"]))
        except (ValueError, TypeError, KeyError):
            continue
    return found


def _join(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def explain_table(rows: Sequence[Row]) -> str:
    """One paragraph, built from the outcomes, saying what tailguard did and why."""
    parts = [
        "Each request got the budget of the most specific route key (or the default), "
        "shrunk by any inbound deadline header."
    ]
    fine = [r.scenario.name for r in rows if r.outcomes and r.count("2xx") == len(r.outcomes)]
    if fine:
        parts.append(f"Every request to {_join(fine)} finished within budget.")
    for row in rows:
        budget, requests = row.budget, f"{len(row.outcomes)} requests to {row.scenario.name}"
        timed_out, aborted = row.count("504"), row.count("aborted")
        its = "" if budget is None else f" {format_ms(budget.seconds)}"
        if timed_out and budget is not None and budget.header is not None:
            parts.append(
                f"{timed_out} of {requests} got a 504: the {budget.header} header cut the "
                f"route's {format_ms(budget.route_seconds)} budget to {format_ms(budget.seconds)}, "
                "too little for work that fits the route. Inbound headers only ever shrink a "
                "budget."
            )
        elif timed_out:
            parts.append(
                f"{timed_out} of {requests} ran past the{its} budget: tailguard cancelled the "
                f"handlers and answered 504 with {_REASON}: deadline_exceeded instead of keeping "
                "the callers waiting."
            )
        if aborted:
            parts.append(
                f"{aborted} of {requests} had started their response when the{its} budget ran "
                "out, so a 504 was no longer possible: tailguard aborted them and the client saw "
                "a truncated body (httpx raises RemoteProtocolError), never a second status line."
            )
        forwarded = _forwarded_ms(row)
        if forwarded:
            parts.append(
                f"{row.scenario.name} read tailguard.remaining() after its own work and would "
                f"hand {min(forwarded)}-{max(forwarded)} ms of its{its} budget to a downstream "
                "call as x-request-timeout-ms."
            )
    return " ".join(parts)


def print_table(
    app: object, plan: Sequence[Scenario], outcomes: Sequence[Sequence[Outcome]], *, out: TextIO
) -> None:
    """Print the table and the explanation for ``plan``'s ``outcomes``.

    The budgets come from ``app``'s guard, as :func:`~tailguard.gameday.target.find_guard`
    finds it.
    """
    guard = find_guard(app)
    rows = [
        Row(scenario, budget_for(guard, scenario), found)
        for scenario, found in zip(plan, outcomes, strict=True)
    ]
    print(format_table(rows), file=out)
    print("latency: time in the app, from the request arriving to its response ending\n", file=out)
    print(paragraph(explain_table(rows)), file=out)


# --- open-loop steps: one burst per step and route --------------------------------------------


@dataclass(frozen=True, slots=True)
class Burst:
    """Requests to one route in one step of a game-day, and how they ended."""

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


def median_ms(seconds: Sequence[float]) -> str:
    """The median of ``seconds`` in whole ms, ``-`` when there are none."""
    return format_ms(statistics.median(seconds), whole=True) if seconds else "-"


def slowest_ms(seconds: Sequence[float]) -> str:
    """The last of sorted ``seconds`` in whole ms, ``-`` when there are none."""
    return format_ms(seconds[-1], whole=True) if seconds else "-"


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
                "?" if budget is None else format_ms(budget.seconds),
                *map(str, (total, ok, late, shed, total - ok - late - shed)),
                median_ms(seconds),
                slowest_ms(seconds),
            )
        )
    return _table(lines, left=(0, 1, 2))


# --- what /metrics said -----------------------------------------------------------------------


class Series(NamedTuple):
    """Samples a report follows: their name, labels they must have, labels it shows.

    Samples of one series that differ only in labels not shown are summed.
    """

    sample: str
    match: Mapping[str, str]
    shown: tuple[str, ...]


def _sums(exposition: str, followed: Sequence[Series]) -> dict[str, float]:
    found: dict[str, float] = {}
    samples = [s for family in text_string_to_metric_families(exposition) for s in family.samples]
    for name, match, shown in followed:
        for sample in samples:
            labels = sample.labels
            if sample.name == name and all(labels.get(k) == v for k, v in match.items()):
                kept = ",".join(f'{key}="{labels.get(key, "")}"' for key in shown)
                series = f"{name}{{{kept}}}"
                found[series] = found.get(series, 0.0) + sample.value
    return found


def metric_changes(before: str, after: str, followed: Sequence[Series]) -> list[tuple[str, float]]:
    """How the ``followed`` series changed between two ``/metrics`` scrapes.

    Samples are summed over the labels not shown (such as ``method`` and
    ``status_class``); series that did not change are left out.

    >>> after = 'tailguard_chaos_injections_total{experiment="x",target="db",fault="latency"} 3'
    >>> injections = Series("tailguard_chaos_injections_total", {}, ("target", "fault"))
    >>> metric_changes("", after, [injections])
    [('tailguard_chaos_injections_total{target="db",fault="latency"}', 3.0)]
    """
    old, new = _sums(before, followed), _sums(after, followed)
    return [(k, v - old.get(k, 0.0)) for k, v in new.items() if v != old.get(k, 0.0)]


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


def logfmt(message: str) -> str:
    """A log line that is a JSON object as ``key=value`` pairs, without the time and nulls.

    Any other line comes back as it was.

    >>> logfmt('{"event": "halt", "experiment": null, "at": "2026-01-01", "stopped": 1}')
    'event=halt stopped=1'
    """
    try:
        fields = json.loads(message)
    except ValueError:
        return message
    if not isinstance(fields, dict):
        return message
    return " ".join(f"{k}={v}" for k, v in fields.items() if v is not None and k != "at")
