"""``report.png``: the game-day in one picture, for a postmortem.

Three panels over the run's seconds, phases shaded and named, faults'
phases in red:

1. latency per route, p99 solid and p50 thin (log scale), each route's
   latency SLO as a dashed line in its colour;
2. requests per second: offered, answered 2xx (goodput), and the 503s
   (shed), 504s (deadline) and timeouts/errors stacked below;
3. faults the service injected per second, from its own ``/metrics``.

Needs matplotlib (``pip install 'tailguard[report]'``); drawn with the Agg
backend, so no display is needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["draw"]

_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(
            f"report.png needs matplotlib: pip install 'tailguard[report]' ({exc})"
        ) from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _phases(axes: Any, report: Mapping[str, Any], label: bool) -> None:
    start = 0.0
    for phase in report["phases"]:
        end = start + phase["duration"]
        faulty = bool(phase["experiments"])
        colour = "#d62728" if faulty else ("#2ca02c" if phase["held"] else "#7f7f7f")
        axes.axvspan(start, end, color=colour, alpha=0.10 if faulty else 0.04, lw=0)
        axes.axvline(start, color="#555555", lw=0.6, ls=":")
        if label:
            verdict = "held" if phase["held"] else "BROKE"
            text = f"{phase['name']}\n{', '.join(phase['experiments']) or 'no faults'} · {verdict}"
            axes.text(
                (start + end) / 2,
                1.02,
                text,
                transform=axes.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=8,
                color="#b22222" if not phase["held"] else "#333333",
            )
        start = end


def draw(report: Mapping[str, Any], path: str | Path) -> None:
    """Draw ``report`` (``report.json``'s data) into the PNG at ``path``."""
    plt = _matplotlib()
    timeline = report["timeline"]
    seconds = [entry["t"] + 0.5 for entry in timeline]
    routes = list(dict.fromkeys(label for entry in timeline for label in entry["routes"]))
    colours = {label: _COLOURS[n % len(_COLOURS)] for n, label in enumerate(routes)}
    figure, (latency, rates, faults) = plt.subplots(
        3, 1, figsize=(12, 8.5), sharex=True, gridspec_kw={"height_ratios": [3, 2, 1]}
    )
    verdict = report["verdict"].upper() + (" (UNRELIABLE RUN)" if report["unreliable"] else "")
    figure.suptitle(f"Game-day: {report['title']}  —  hypothesis {verdict}", fontsize=13, y=0.995)

    # 1. latency
    for label in routes:
        p99 = [entry["routes"][label]["p99"] for entry in timeline]
        p50 = [entry["routes"][label]["p50"] for entry in timeline]
        colour = colours[label]
        latency.plot(
            seconds,
            [v * 1000 if v else None for v in p99],
            color=colour,
            lw=1.8,
            label=f"{label} p99",
        )
        latency.plot(
            seconds, [v * 1000 if v else None for v in p50], color=colour, lw=0.8, alpha=0.7, ls="-"
        )
    for check in report.get("hypothesis", []):
        for slo in ("p99", "p50", "p999", "max"):
            if slo in check:
                route = check["route"]
                colour = colours.get(route, "#000000")
                latency.axhline(check[slo] * 1000, color=colour, ls="--", lw=1)
                latency.text(
                    0.3,
                    check[slo] * 1000,
                    f" SLO {route} {slo} ≤ {check[slo] * 1000:g} ms",
                    color=colour,
                    fontsize=7,
                    va="bottom",
                )
    latency.set_yscale("log")
    latency.set_ylabel("latency, ms (log)\np99 thick, p50 thin")
    latency.legend(loc="lower right", fontsize=7, ncol=2, framealpha=0.85)
    latency.grid(True, which="both", alpha=0.25)
    _phases(latency, report, label=True)

    # 2. rates
    offered = [sum(r["offered"] for r in entry["routes"].values()) for entry in timeline]

    def count(entry: Mapping[str, Any], keys: tuple[str, ...]) -> int:
        return sum(
            n
            for r in entry["routes"].values()
            for key, n in r["responses"].items()
            if (key in keys) or ("2xx" in keys and key.startswith("2"))
        )

    good = [count(entry, ("2xx",)) for entry in timeline]
    shed = [count(entry, ("503", "429")) for entry in timeline]
    late = [count(entry, ("504",)) for entry in timeline]
    failed = [count(entry, ("timeout", "error")) for entry in timeline]
    rates.plot(seconds, offered, color="#333333", lw=1.5, ls="--", label="offered", zorder=5)
    rates.plot(seconds, good, color="#2ca02c", lw=1.8, label="answered 2xx")
    rates.bar(seconds, shed, width=0.9, color="#ff7f0e", alpha=0.8, label="503 shed")
    rates.bar(
        seconds, late, width=0.9, bottom=shed, color="#d62728", alpha=0.8, label="504 deadline"
    )
    bottom = [a + b for a, b in zip(shed, late, strict=True)]
    rates.bar(
        seconds,
        failed,
        width=0.9,
        bottom=bottom,
        color="#7f0000",
        alpha=0.8,
        label="timeout / no answer",
    )
    rates.set_ylabel("requests per second")
    rates.legend(loc="upper left", fontsize=7, ncol=5, framealpha=0.85)
    rates.grid(True, alpha=0.25)
    _phases(rates, report, label=False)

    # 3. faults
    faults.bar(seconds, [entry["injections"] for entry in timeline], width=0.9, color="#d62728")
    faults.set_ylabel("faults injected\nper second")
    faults.set_xlabel("seconds since the start of the game-day")
    faults.grid(True, alpha=0.25)
    _phases(faults, report, label=False)

    load = report["load"]
    lag = load["send_lag"]["p99"]
    figure.text(
        0.01,
        0.005,
        f"open loop, {load['arrivals']} arrivals at {load['rate']:g}/s; offered {load['offered']}, "
        f"sent {load['sent']}, dropped {load['dropped']}; send lag p99 "
        f"{'-' if lag is None else f'{lag * 1000:.1f} ms'}; latency from the intended send time",
        fontsize=7,
        color="#555555",
    )
    figure.tight_layout(rect=(0, 0.02, 1, 0.97))
    figure.savefig(path, dpi=110)
    plt.close(figure)
