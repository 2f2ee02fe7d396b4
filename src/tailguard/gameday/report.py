"""A game-day's report as data (``report.json``) and as text: the terminal table and ``report.md``.

:func:`route_entry` turns one route's :class:`~tailguard.gameday.load.Stats`
into its ``report.json`` form; :func:`format_table` and :func:`format_markdown`
render a whole report, :func:`format_comparison` two of them side by side.

>>> format_ms(0.0042), format_ms(0.25), format_ms(1.5), format_ms(None)
('4.2ms', '250ms', '1.50s', '-')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tailguard.gameday.hypothesis import Verdict
from tailguard.gameday.load import Stats

__all__ = [
    "check_entry",
    "describe_check",
    "format_comparison",
    "format_markdown",
    "format_ms",
    "format_table",
    "route_entry",
    "summary_line",
]

SHED_STATUSES = ("503", "429")
"""Answers that mean "shed": refused fast, on purpose."""


def format_ms(seconds: float | None) -> str:
    """A latency for a table: ms below a second, seconds above; ``-`` for none."""
    if seconds is None:
        return "-"
    if seconds >= 1:
        return f"{seconds:.2f}s"
    millis = seconds * 1000
    return f"{millis:.1f}ms" if millis < 10 else f"{millis:.0f}ms"


def _value(slo: str, value: float | None) -> str:
    if value is None:
        return "no data"
    if slo in ("goodput", "error_rate"):
        return f"{value:.1%}"
    return format_ms(value)


def check_entry(verdict: Verdict) -> dict[str, Any]:
    """A verdict as ``report.json`` has it."""
    return {
        "slo": verdict.slo,
        "target": verdict.target,
        "observed": verdict.observed,
        "held": verdict.held,
        "by": verdict.by,
    }


def describe_check(check: Mapping[str, Any]) -> str:
    """``p99 <= 100ms: held (42ms)`` or ``goodput >= 90.0%: broke by 12.0% (78.0%)``."""
    slo = check["slo"]
    sign = ">=" if slo == "goodput" else "<="
    head = f"{slo} {sign} {_value(slo, check['target'])}"
    if check["observed"] is None:
        return f"{head}: broke (no requests)"
    seen = _value(slo, check["observed"])
    if check["held"]:
        return f"{head}: held ({seen})"
    return f"{head}: broke by {_value(slo, check['by'])} ({seen})"


def route_entry(stats: Stats, verdicts: Sequence[Verdict], *, within: float) -> dict[str, Any]:
    """One route of one phase, as ``report.json`` has it."""
    latency = stats.latency
    answered = latency.count > 0
    return {
        "offered": stats.offered,
        "sent": stats.sent,
        "dropped": stats.dropped,
        "responses": dict(sorted(stats.responses.items())),
        "latency": {
            "p50": latency.percentile(50) if answered else None,
            "p99": latency.percentile(99) if answered else None,
            "p999": latency.percentile(99.9) if answered else None,
            "max": latency.max if answered else None,
        },
        "goodput": stats.ok.count_within(within) / stats.offered if stats.offered else None,
        "shed": sum(stats.responses.get(code, 0) for code in SHED_STATUSES),
        "checks": [check_entry(verdict) for verdict in verdicts],
    }


def _statuses(responses: Mapping[str, int]) -> str:
    shown = []
    classes: dict[str, int] = {}
    for key, count in responses.items():
        if key in ("503", "504", "429", "timeout", "error"):
            shown.append(f"{key}:{count}")
        else:
            group = f"{key[0]}xx" if key.isdigit() else key
            classes[group] = classes.get(group, 0) + count
    return " ".join([*(f"{k}:{v}" for k, v in sorted(classes.items())), *shown]) or "-"


def _grid(rows: Sequence[Sequence[str]], right: Sequence[int]) -> list[str]:
    widths = [max(len(row[n]) for row in rows) for n in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        cells = [
            cell.rjust(width) if n in right else cell.ljust(width)
            for n, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return lines


_HEAD = ("route", "sent", "statuses", "p50", "p99", "p99.9", "max", "goodput", "shed", "SLOs")


def _phase_rows(phase: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for label, entry in phase["routes"].items():
        latency = entry["latency"]
        checks = entry["checks"]
        broke = [c for c in checks if not c["held"]]
        verdict = "-" if not checks else ("held" if not broke else "BROKE")
        goodput = entry["goodput"]
        rows.append(
            [
                "all routes" if label == "*" else label,
                str(entry["sent"]),
                _statuses(entry["responses"]),
                format_ms(latency["p50"]),
                format_ms(latency["p99"]),
                format_ms(latency["p999"]),
                format_ms(latency["max"]),
                "-" if goodput is None else f"{goodput:.1%}",
                str(entry["shed"]),
                verdict,
            ]
        )
    return rows


def format_table(report: Mapping[str, Any]) -> str:
    """The terminal table: per phase and route, then each SLO held or broke and by how much."""
    out = []
    for phase in report["phases"]:
        experiments = ", ".join(phase["experiments"]) or "no experiments"
        held = "held" if phase["held"] else "BROKE"
        out.append(f"phase {phase['name']} ({phase['duration']:.0f}s, {experiments}): {held}")
        out += ["  " + line for line in _grid([_HEAD, *_phase_rows(phase)], (1, 3, 4, 5, 6, 7, 8))]
        for label, entry in phase["routes"].items():
            for check in entry["checks"]:
                mark = "ok   " if check["held"] else "BROKE"
                out.append(f"  {mark} {label}: {describe_check(check)}")
        service = phase.get("service") or {}
        if service:
            said = ", ".join(f"{k.replace('_', ' ')} {v:.0f}" for k, v in service.items())
            out.append(f"  service /metrics: {said}")
        out.append("")
    out.append(summary_line(report))
    return "\n".join(out)


def summary_line(report: Mapping[str, Any]) -> str:
    """One line: the verdict, and why the run is not to be trusted if it is not."""
    load = report["load"]
    lag = load["send_lag"]
    text = (
        f"verdict: {report['verdict'].upper()}  (offered {load['offered']}, sent {load['sent']}, "
        f"dropped {load['dropped']}, send lag p99 {format_ms(lag['p99'])})"
    )
    if report.get("error"):
        text += f"\nthe run failed: {report['error']}"
    if report.get("interrupted"):
        text += f"\ninterrupted by {report['interrupted']}"
    if report["unreliable"]:
        text += "\nUNRELIABLE: " + "; ".join(report["reasons"])
    rollback = report.get("rollback") or {}
    if rollback.get("left_running"):
        text += f"\nSTILL RUNNING after the halt: {', '.join(rollback['left_running'])}"
    return text


def format_markdown(report: Mapping[str, Any], picture: str | None) -> str:
    """``report.md``: the verdict, the table per phase, each SLO, and the picture."""
    lines = [f"# Game-day: {report['title']}", ""]
    lines.append(
        f"**Verdict: {report['verdict']}**" + (" (unreliable run)" if report["unreliable"] else "")
    )
    lines.append("")
    for reason in report["reasons"]:
        lines.append(f"- unreliable: {reason}")
    if picture is not None:
        lines += ["", f"![latency, goodput and faults over the game-day]({picture})", ""]
    for phase in report["phases"]:
        experiments = ", ".join(phase["experiments"]) or "none"
        lines += [
            f"## {phase['name']}: {'held' if phase['held'] else 'broke'}",
            "",
            f"{phase['duration']:.0f} s, experiments: {experiments}",
            "",
            "| " + " | ".join(_HEAD) + " |",
            "|" + "---|" * len(_HEAD),
        ]
        lines += ["| " + " | ".join(row) + " |" for row in _phase_rows(phase)]
        lines.append("")
        for label, entry in phase["routes"].items():
            for check in entry["checks"]:
                lines.append(f"- `{label}` {describe_check(check)}")
        lines.append("")
    lines.append(summary_line(report).replace("\n", "  \n"))
    return "\n".join(lines) + "\n"


def format_comparison(with_: Mapping[str, Any], without: Mapping[str, Any]) -> str:
    """Each SLO of each phase with tailguard enforcing and without, side by side."""
    rows = [["phase", "route", "SLO", "protections on", "protections off"]]

    def checks(report: Mapping[str, Any]) -> dict[tuple[str, str, str], Mapping[str, Any]]:
        return {
            (phase["name"], label, check["slo"]): check
            for phase in report["phases"]
            for label, entry in phase["routes"].items()
            for check in entry["checks"]
        }

    on, off = checks(with_), checks(without)
    for key in [*on, *(k for k in off if k not in on)]:
        phase, label, slo = key
        cells = []
        for found in (on.get(key), off.get(key)):
            if found is None:
                cells.append("-")
            else:
                seen = _value(slo, found["observed"])
                cells.append(f"{'held ' if found['held'] else 'BROKE'} {seen}")
        sign = ">=" if slo == "goodput" else "<="
        target = _value(slo, (on.get(key) or off[key])["target"])
        rows.append(
            [phase, "all routes" if label == "*" else label, f"{slo} {sign} {target}", *cells]
        )
    return "\n".join(_grid(rows, ()))
