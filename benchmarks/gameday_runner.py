"""The game-day runner's own ceiling and cost: how fast it sends, open loop, within its lag bound.

Serves a trivial Starlette app (no tailguard, one JSON route) with uvicorn in
its own process, as ``tailguard gameday`` does, and runs the runner against it
at increasing constant rates, 5 s each. For each rate: requests offered and
sent, the generator's send lag (p50/p99/max), the runner process's CPU time
per request sent, and whether the run counts as reliable (send lag p99 <= 5 ms
and sent >= 95 % of offered). The ceiling is the highest rate that is reliable.

    python benchmarks/gameday_runner.py [RATE ...]

On a 2-core machine the runner and the server share the cores: the numbers
are for that setting (the demo's), not for a runner on a machine of its own.
"""

from __future__ import annotations

import asyncio
import io
import resource
import sys
import tempfile
from pathlib import Path

from tailguard.gameday.plan import plan_from_dict
from tailguard.gameday.runner import run

APP = """
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

async def ok(request):
    return JSONResponse({"ok": True})

app = Starlette(routes=[Route("/ok", ok)])
"""
RATES = (100, 200, 400, 600, 800, 1000)
SECONDS = 5


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(rates: tuple[int, ...]) -> None:
    folder = Path(tempfile.mkdtemp(prefix="gameday-bench-"))
    (folder / "bench_app.py").write_text(APP)
    print("| rate /s | offered | sent | send lag p50 | p99 | max | CPU per request | reliable |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for rate in rates:
        plan = plan_from_dict(
            {
                "title": f"bench {rate}",
                "target": {"app": "bench_app:app", "app_dir": str(folder)},
                "load": {"rate": rate, "arrivals": "constant", "requests": [{"path": "/ok"}]},
                "hypothesis": [],
                "phases": [{"name": "steady", "duration": SECONDS}],
            }
        )
        before = cpu()
        report = asyncio.run(run(plan, folder / str(rate), out=io.StringIO(), picture=False))
        spent = cpu() - before
        load = report["load"]
        lag = load["send_lag"]
        print(
            f"| {rate} | {load['offered']} | {load['sent']} | {lag['p50'] * 1000:.2f} ms "
            f"| {lag['p99'] * 1000:.2f} ms | {lag['max'] * 1000:.1f} ms "
            f"| {spent / max(load['sent'], 1) * 1e6:.0f} µs "
            f"| {'yes' if not report['unreliable'] else 'no'} |",
            flush=True,
        )


if __name__ == "__main__":
    main(tuple(int(a) for a in sys.argv[1:]) or RATES)
