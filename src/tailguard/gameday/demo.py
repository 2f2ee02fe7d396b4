"""``tailguard demo``: the bundled game-day on the bundled shop, with tailguard and without.

:func:`run` plays :data:`DEMO_FILE` (a slow inventory and a slow recommender
against :mod:`tailguard.gameday.shop`) twice with the game-day runner: once
with ``TAILGUARD_ENFORCE=on`` and once with ``TAILGUARD_ENFORCE=shadow``
(tailguard decides everything and acts on nothing; chaos still injects).
Then it prints, SLO by SLO, what held and broke in each run, computed from
the two reports, and where the reports and pictures are.

>>> [mode for mode, _ in MODES]
['on', 'shadow']
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Final, TextIO

from tailguard.gameday.plan import Plan, load_plan
from tailguard.gameday.report import format_comparison
from tailguard.gameday.runner import EXIT_INTERRUPTED, EXIT_UNUSABLE, run_folder, run_plan

__all__ = ["DEMO_FILE", "ENFORCE_ENV", "MODES", "demo_plan", "run", "summarize"]

DEMO_FILE: Final = Path(__file__).with_name("demo.yaml")
"""The bundled game-day (also, pointed at ``examples.shop:app``, examples/gamedays/shop.yaml)."""
ENFORCE_ENV: Final = "TAILGUARD_ENFORCE"
"""Read by the guard when it is created: ``on``, ``shadow`` or a fraction (shadow mode)."""
MODES: Final = (("on", "protections on"), ("shadow", "protections off (shadow mode)"))


def demo_plan(mode: str, *, app: str | None = None, app_dir: str = ".") -> Plan:
    """The bundled game-day, its served app run with ``TAILGUARD_ENFORCE=mode``."""
    plan = load_plan(DEMO_FILE)
    target = plan.target
    target = dataclasses.replace(
        target,
        app=app or target.app,
        app_dir=app_dir,
        env={**target.env, ENFORCE_ENV: mode},
    )
    return dataclasses.replace(plan, target=target, title=f"{plan.title} ({mode})")


def summarize(on: dict[str, Any], off: dict[str, Any]) -> list[str]:
    """What the two runs say, in sentences, computed from their reports."""

    def broke(report: dict[str, Any]) -> set[tuple[str, str, str]]:
        return {
            (phase["name"], check["route"], check["slo"])
            for phase in report["phases"]
            for check in phase["checks"]
            if not check["held"]
        }

    with_, without = broke(on), broke(off)
    lines = [
        f"with tailguard enforcing: hypothesis {on['verdict']} ({len(with_)} SLO checks broke)",
        f"in shadow mode:           hypothesis {off['verdict']} ({len(without)} SLO checks broke)",
    ]
    saved = sorted(without - with_)
    if saved:
        lines.append("held only with tailguard enforcing:")
        lines += [f"  {phase}: {route} {slo}" for phase, route, slo in saved]
    elif on["verdict"] == off["verdict"] and with_ == without:
        lines.append(
            "the two runs broke the same SLOs: if shadow mode is not in this tailguard "
            f"yet, {ENFORCE_ENV} changes nothing and both runs enforce"
        )
    worse = sorted(with_ - without)
    if worse:
        lines.append("broke only with tailguard enforcing (sheds count against goodput):")
        lines += [f"  {phase}: {route} {slo}" for phase, route, slo in worse]
    for report, name in ((on, "on"), (off, "shadow")):
        if report["unreliable"]:
            lines.append(f"note: the {name} run was unreliable: {'; '.join(report['reasons'])}")
    return lines


def run(
    *,
    app: str | None = None,
    app_dir: str = ".",
    out_dir: str | None = None,
    out: TextIO | None = None,
    live: bool | None = None,
) -> int:
    """Play the demo; 0 when both runs completed, 2 when one could not run, 130 interrupted."""
    stream = out if out is not None else sys.stdout
    root = run_folder(out_dir, "demo")
    reports: list[dict[str, Any]] = []
    for mode, what in MODES:
        plan = demo_plan(mode, app=app, app_dir=app_dir)
        print(f"\n=== run {len(reports) + 1} of 2: {what} ({ENFORCE_ENV}={mode}) ===", file=stream)
        status = run_plan(plan, root / mode, out=stream, live=live)
        report = json.loads((root / mode / "report.json").read_text(encoding="utf-8"))
        if status == EXIT_INTERRUPTED:
            return status
        if report["error"]:
            return EXIT_UNUSABLE
        reports.append(report)
    on, off = reports
    print("\n=== the same game-day, with and without tailguard's protections ===", file=stream)
    print(format_comparison(on, off), file=stream)
    print("", file=stream)
    for line in summarize(on, off):
        print(line, file=stream)
    print("\nreports and pictures:", file=stream)
    for mode, what in MODES:
        print(f"  {what}: {root / mode / 'report.md'}  {root / mode / 'report.png'}", file=stream)
    return 0
