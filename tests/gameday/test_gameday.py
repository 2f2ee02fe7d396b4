"""The mini game-day that follows ``tailguard demo``'s table (``tailguard.gameday.demo``).

The end-to-end test runs ``tailguard demo`` as ``make demo`` does, against
the bundled shop (``tailguard.gameday.shop``) under real uvicorn, and checks
only what does not depend on timing: the experiment was started and halted through the control API,
faults were injected, and the client's counts agree with the server's
``/metrics``. How many requests were slow, shed or late is for the report to
say, not for the test to guess.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from tailguard import RoutePolicy, Tailguard, cli
from tailguard.chaos import Chaos
from tailguard.gameday import control, demo, report
from tailguard.gameday.demo import GameDay
from tailguard.gameday.load import Kind, Outcome, Scenario
from tailguard.gameday.report import Burst

TOKEN = "a-control-token-for-tests-only"
STOCK = demo.stock_scenario(1)
ITEMS = demo.items_scenario(1)


def rows(text: str, first_heading: str) -> list[list[str]]:
    """The cells of the aligned table whose header line starts with ``first_heading``."""
    lines = text.splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith(first_heading + " "))
    assert set(lines[start + 1]) == {"-"}
    found = [re.split(r" {2,}", lines[start].strip())]
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        found.append(re.split(r" {2,}", line.strip()))
    return found


# --- end to end: `tailguard demo` against the bundled shop ---------------------------------


@pytest.mark.e2e
def test_demo_plays_the_gameday_against_the_shop(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="tailguard.chaos")  # whatever a test before set
    monkeypatch.setattr(sys, "path", list(sys.path))  # --app-dir goes first on it
    # The shop reads TAILGUARD_CHAOS and TAILGUARD_TOKEN when it is created: import it afresh.
    monkeypatch.delitem(sys.modules, "tailguard.gameday.shop", raising=False)
    monkeypatch.delenv("TAILGUARD_CHAOS", raising=False)
    monkeypatch.delenv("TAILGUARD_TOKEN", raising=False)
    assert cli.main(["demo", "--requests", "1"]) == 0
    out = capsys.readouterr().out
    assert "TAILGUARD_CHAOS" not in os.environ  # set for the import only
    assert "TAILGUARD_TOKEN" not in os.environ

    table, gameday = out.split("\ngame-day: ")
    assert table.startswith("tailguard demo: 6 requests to http://127.0.0.1:")  # first phase
    lines = gameday.splitlines()
    assert lines[0] == "slow-inventory, started and halted through the control API at /_tailguard"
    assert lines[1] == (
        "  fault: latency inventory rate=0.5 delay=lognormal(p50=0.1, p99=1.0), ttl 30 s"
    )
    assert lines[2] == "  POST /_tailguard/experiments -> 201"
    assert lines[3] == '  POST /_tailguard/halt -> 200 {"halted": 1}'
    assert "  logged: event=halt actor=api:127.0.0.1 stopped=1" in lines[4:6]

    header, *bursts = rows(gameday, "step")
    assert header == [
        "step", "route", "budget", "requests", "2xx", "504", "503", "other", "p50", "max"
    ]  # fmt: skip
    assert [(b[0], b[1], b[2], b[3]) for b in bursts] == [
        ("baseline", "GET /stock/{item_id}", "250 ms", "20"),
        ("slow-inventory running", "GET /stock/{item_id}", "250 ms", "80"),
        ("slow-inventory running", "GET /items/{item_id}", "100 ms", "20"),
        ("after halt", "GET /stock/{item_id}", "250 ms", "20"),
    ]
    for burst in bursts:
        assert sum(map(int, burst[4:8])) == int(burst[3])
        assert burst[8].endswith(" ms")
        assert burst[9].endswith(" ms")

    _, *changed = rows(gameday, "change")
    changes = {series: float(change) for change, series in changed}
    injected = changes['tailguard_chaos_injections_total{target="inventory",fault="latency"}']
    assert injected > 0
    ended = 'tailguard_chaos_experiments_ended_total{experiment="slow-inventory",reason="halt"}'
    assert changes[ended] == 1
    # What the client saw is what the server counted.
    stock = [burst for burst in bursts if burst[1] == "GET /stock/{item_id}"]
    for outcome, column in (("ok", 4), ("deadline_exceeded", 5), ("shed", 6)):
        series = f'tailguard_requests_total{{route="/stock/{{item_id}}",outcome="{outcome}"}}'
        assert changes.get(series, 0) == sum(int(burst[column]) for burst in stock)

    paragraph = " ".join(gameday.split("\n\n")[-1].split())
    assert paragraph.startswith(f"Chaos delayed {injected:.0f} inventory calls. ")
    assert "The bulkhead capped inventory at 4 calls at once" in paragraph
    assert "After the halt, " in paragraph


@pytest.mark.e2e
def test_the_command_sets_the_environment_only_for_the_import(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv("TAILGUARD_CHAOS", raising=False)
    monkeypatch.setenv("TAILGUARD_TOKEN", "the-operator-s-own-token")

    def probe(*options: str) -> tuple[str | None, str | None]:
        name = f"gameday_probe_{uuid.uuid4().hex}"
        (tmp_path / f"{name}.py").write_text(
            "import os\nfrom starlette.applications import Starlette\n"
            'SEEN = os.environ.get("TAILGUARD_CHAOS"), os.environ.get("TAILGUARD_TOKEN")\n'
            "app = Starlette()\n"
        )
        monkeypatch.delitem(sys.modules, name, raising=False)  # forgotten afterwards
        argv = ["demo", "--app", f"{name}:app", "--app-dir", str(tmp_path), "--requests", "1"]
        assert cli.main([*argv, *options]) == 0
        seen: tuple[str | None, str | None] = sys.modules[name].SEEN
        return seen

    chaos, token = probe()
    assert chaos == "1"
    assert token is not None
    assert token != "the-operator-s-own-token"
    assert capsys.readouterr().out.endswith("\ngame-day skipped: the app has no tailguard guard\n")
    assert probe("--no-gameday") == (None, "the-operator-s-own-token")
    assert "game-day" not in capsys.readouterr().out
    assert "TAILGUARD_CHAOS" not in os.environ
    assert os.environ["TAILGUARD_TOKEN"] == "the-operator-s-own-token"


# --- apps that cannot play it -------------------------------------------------------------


def guarded(chaos: bool, **install: object) -> Callable[[], Starlette]:
    """Builds, when called, an app guarded with chaos on or off, installed with ``install``."""

    inventory = install.pop("inventory", True)

    def build() -> Starlette:
        guard = Tailguard(metrics=False, chaos=Chaos(enabled=chaos))
        if inventory:
            guard.dependency("inventory", max_concurrency=4, max_queue=8)
        return guard.install(Starlette(), tracing=False, **install)  # type: ignore[arg-type]

    return build


@pytest.mark.parametrize(
    ("app", "reason"),
    [
        (Starlette, "the app has no tailguard guard"),
        (
            guarded(False, control_token=TOKEN),
            "chaos is off in this app (TAILGUARD_CHAOS was not set when it was created)",
        ),
        (
            guarded(True),
            "the app has no control API (TAILGUARD_TOKEN was not set when it was created)",
        ),
        (guarded(True, control_token=TOKEN, metrics_path=None), "the app does not serve /metrics"),
        (
            guarded(True, control_token=TOKEN, inventory=False),
            "the app has no 'inventory' dependency",
        ),
    ],
)
def test_an_app_that_cannot_play_gets_a_note(app: Callable[[], Starlette], reason: str) -> None:
    out = io.StringIO()
    demo.run_gameday(app(), control_token=TOKEN, out=out)
    assert out.getvalue() == f"\ngame-day skipped: {reason}\n"


def test_chaos_environment_restores_what_was_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILGUARD_CHAOS", "0")
    monkeypatch.delenv("TAILGUARD_TOKEN", raising=False)
    with demo.chaos_environment() as token:
        assert os.environ["TAILGUARD_CHAOS"] == "1"
        assert os.environ["TAILGUARD_TOKEN"] == token
        assert len(token) >= 32
    assert os.environ["TAILGUARD_CHAOS"] == "0"
    assert "TAILGUARD_TOKEN" not in os.environ


# --- the control API client and the bulkhead watcher, against a mock transport -------------


@pytest.mark.anyio
async def test_control_reports_what_the_api_answered() -> None:
    answers = {
        "/_tailguard/experiments": httpx.Response(201, json={"experiment": {"name": "x" * 40}}),
        "/_tailguard/halt": httpx.Response(200, json={"halted": 1}),
        "/_tailguard/refused": httpx.Response(401, json={"detail": "no token", "field": None}),
        "/_tailguard/odd": httpx.Response(500, json=["not", "an", "object"]),
        "/_tailguard/html": httpx.Response(200, text="<html>"),
    }

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path not in answers:
            raise httpx.ConnectError("refused", request=request)
        return answers[request.url.path]

    transport = httpx.MockTransport(handler)
    async with httpx.AsyncClient(base_url="http://demo.invalid", transport=transport) as client:
        answered = [
            await control.post(client, "/_tailguard" + path, {"name": "x"})
            for path in ("/experiments", "/halt", "/refused", "/odd", "/html", "/down")
        ]
    results = [ok for ok, _ in answered]
    lines = [line for _, line in answered]
    assert results == [True, True, False, False, False, False]
    assert lines[:4] == [
        "POST /_tailguard/experiments -> 201",  # a long answer is left out
        'POST /_tailguard/halt -> 200 {"halted": 1}',
        "POST /_tailguard/refused -> 401: no token",
        "POST /_tailguard/odd -> 500: ['not', 'an', 'object']",
    ]
    assert lines[4].startswith("POST /_tailguard/html -> failed: JSONDecodeError: ")
    assert lines[5] == "POST /_tailguard/down -> failed: ConnectError: refused"


def snapshot(in_use: int, queued: int) -> httpx.Response:
    limiter = {"in_use": in_use, "queued": queued, "max_concurrency": 4, "max_queue": 8}
    return httpx.Response(200, json={"dependencies": {"inventory": {"limiter": limiter}}})


@pytest.mark.anyio
async def test_watch_keeps_the_peaks_until_stopped() -> None:
    stop = asyncio.Event()
    last = snapshot(2, 5)
    answers = iter([snapshot(3, 1), last])

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/_tailguard/snapshot"
        answer = next(answers)
        if answer is last:
            stop.set()  # the burst is over while this snapshot is taken
        return answer

    peak: dict[str, int] = {}
    transport = httpx.MockTransport(handler)
    async with httpx.AsyncClient(base_url="http://demo.invalid", transport=transport) as client:
        await control.watch_limiter(client, "/_tailguard", "inventory", peak, stop)
    assert peak == {"in_use": 3, "queued": 5, "max_concurrency": 4, "max_queue": 8}


@pytest.mark.anyio
async def test_watch_gives_up_when_there_is_no_snapshot() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(404, json={"detail": "no"}))
    peak: dict[str, int] = {}
    async with httpx.AsyncClient(base_url="http://demo.invalid", transport=transport) as client:
        # returns although never stopped
        await control.watch_limiter(client, "/_tailguard", "inventory", peak, asyncio.Event())
    assert peak == {}


# --- the report ---------------------------------------------------------------------------


def ended(status: int, seconds: float) -> Outcome:
    kind: Kind = "2xx" if status < 300 else "504" if status == 504 else "other"
    return Outcome(kind, "0", client_seconds=seconds, status=status)


def burst(step: str, scenario: Scenario, *endings: tuple[int, float]) -> Burst:
    return Burst(step, scenario, [ended(status, seconds) for status, seconds in endings])


def test_metric_changes_sum_hidden_labels_and_skip_what_did_not_change() -> None:
    before = """
tailguard_requests_total{route="/stock/{item_id}",method="GET",status_class="2xx",outcome="ok"} 5
tailguard_requests_total{route="/other",method="GET",status_class="2xx",outcome="ok"} 1
tailguard_chaos_experiments_ended_total{experiment="old",reason="halt"} 1
"""
    after = """
tailguard_requests_total{route="/stock/{item_id}",method="GET",status_class="2xx",outcome="ok"} 7
tailguard_requests_total{route="/stock/{item_id}",method="HEAD",status_class="2xx",outcome="ok"} 1
tailguard_requests_total{route="/other",method="GET",status_class="2xx",outcome="ok"} 9
tailguard_chaos_experiments_ended_total{experiment="old",reason="halt"} 1
tailguard_queue_wait_seconds_sum{limiter="inventory",kind="dependency"} 0.5
tailguard_queue_wait_seconds_sum{limiter="inventory",kind="route"} 2.0
"""
    changes = report.metric_changes(before, after, demo.FOLLOWED)
    assert changes == [
        ('tailguard_requests_total{route="/stock/{item_id}",outcome="ok"}', 3.0),
        ('tailguard_queue_wait_seconds_sum{limiter="inventory",kind="dependency"}', 0.5),
    ]
    assert report.format_changes(changes).splitlines()[2:] == [
        '    +3  tailguard_requests_total{route="/stock/{item_id}",outcome="ok"}',
        '+0.500  tailguard_queue_wait_seconds_sum{limiter="inventory",kind="dependency"}',
    ]


def test_format_bursts() -> None:
    guard = Tailguard(metrics=False, routes={"GET /stock/{item_id}": RoutePolicy(deadline=0.25)})
    bursts = [
        burst("baseline", STOCK, (200, 0.004), (200, 0.006), (504, 0.251), (503, 0.001)),
        burst("empty", ITEMS),
        Burst("lost", ITEMS, [Outcome("aborted", "1", client_seconds=0.3)]),
    ]
    lines = report.format_bursts(bursts, guard).splitlines()
    assert [re.split(r" {2,}", line) for line in lines[2:]] == [
        ["baseline", "GET /stock/{item_id}", "250 ms", "4", "2", "1", "1", "0", "5 ms", "251 ms"],
        ["empty", "GET /items/{item_id}", "none", "0", "0", "0", "0", "0", "-", "-"],
        ["lost", "GET /items/{item_id}", "none", "1", "0", "0", "0", "1", "300 ms",
         "300 ms"],
    ]  # fmt: skip
    assert report.format_bursts(bursts[:1], None).splitlines()[2].split()[3] == "?"


def test_explain_when_everything_went_as_planned() -> None:
    guard = Tailguard(
        metrics=False,
        routes={
            "GET /stock/{item_id}": RoutePolicy(deadline=0.25),
            "GET /items/{item_id}": RoutePolicy(deadline=0.1),
        },
    )
    game = GameDay(
        "/_tailguard",
        bursts=[
            burst("baseline", STOCK, (200, 0.005)),
            burst("x running", STOCK, (200, 0.01), (504, 0.251), (504, 0.252), (503, 0.001)),
            burst("x running", ITEMS, (200, 0.002), (200, 0.003)),
            burst("after halt", STOCK, (200, 0.009)),
        ],
        started=True,
        halted=True,
        peak={"in_use": 4, "queued": 8, "max_concurrency": 4, "max_queue": 8},
        changes=[('tailguard_chaos_injections_total{target="inventory",fault="latency"}', 7.0)],
    )
    assert demo.explain_gameday(game, guard) == (
        "Chaos delayed 7 inventory calls. Deadlines held: 2 stock requests slowed by the delays "
        "got a 504 when the 250 ms budget ran out (slowest 252 ms) instead of hanging. The "
        "bulkhead capped inventory at 4 calls at once (snapshots: up to 4 in use, 8 queued) and "
        "shed 1 requests fast with 503 (median 1 ms). The rest of the shop was unaffected: "
        "GET /items/{item_id}, which does not use inventory, answered 2 of 2 within the 100 ms "
        "budget (max 3 ms). After the halt, 1 of 1 stock requests succeeded (max 9 ms)."
    )
    out = io.StringIO()
    game.logs = ['{"event": "halt", "at": "now", "stopped": 1}']
    demo.print_gameday(game, guard, out=out)
    text = out.getvalue()
    assert "  logged: event=halt stopped=1\n" in text
    assert all(len(line) <= 100 for line in text.split("\n\n")[-1].splitlines())
    assert not re.search(r"\d\nms", text)  # a number and its unit stay on one line


def test_explain_when_things_went_otherwise() -> None:
    game = GameDay(
        "/_tailguard",
        bursts=[
            burst("no experiment", STOCK, (200, 0.01)),
            burst("no experiment", ITEMS, (200, 0.002)),
        ],
    )
    assert demo.explain_gameday(game) == (
        "The experiment did not start (see the control API's answer above)."
    )
    game = GameDay(
        "/_tailguard",
        bursts=[
            burst("x running", STOCK, (200, 0.01)),
            burst("x running", ITEMS, (200, 0.002), (504, 0.1)),
            burst("after halt", STOCK, (200, 0.009)),
        ],
        started=True,
        halted=False,
    )
    assert demo.explain_gameday(game) == (
        "Chaos delayed 0 inventory calls. No stock request ran out of its budget this time. "
        "The bulkhead capped inventory at ? calls at once (snapshots: up to ? in use, ? queued); "
        "it shed none. GET /items/{item_id}, which does not use inventory, answered 1 of 2 "
        "within the budget (max 100 ms)."
    )


def test_logfmt_leaves_other_lines_alone() -> None:
    assert report.logfmt("not json") == "not json"
    assert report.logfmt("[1, 2]") == "[1, 2]"
    assert report.logfmt('{"event": "start", "experiment": "x", "ttl": 30.0}') == (
        "event=start experiment=x ttl=30.0"
    )
