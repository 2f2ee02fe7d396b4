"""``tailguard demo``'s first part: the burst (``gameday.load``), the budgets
(``gameday.target``), the table and the explanation (``gameday.report``).

The end-to-end tests serve the bundled shop (``tailguard.gameday.shop``) under real uvicorn. Their
outcomes are fixed by design, never by timing: each request's work either
fits its budget by a wide margin (a few ms of work against 100 ms, 300 ms
against 2 s) or overruns it by a wide margin (5 s against 150 ms, a 5 s
stream against 300 ms, 300 ms against a 50 ms inbound header).
"""

from __future__ import annotations

import io
import json
import re
import sys

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tailguard import RoutePolicy, Tailguard, TailguardMiddleware, cli
from tailguard.gameday import demo, load, report, target
from tailguard.gameday.load import Outcome, Scenario
from tailguard.gameday.report import Row
from tailguard.gameday.target import Budget

Table = dict[tuple[str, str], dict[str, str]]


def parse_table(out: str) -> Table:
    """The demo's table as ``{(route, budget): {column: cell}}``."""
    lines = out.splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith("route "))
    header = re.split(r" {2,}", lines[start].strip())
    assert set(lines[start + 1]) == {"-"}
    table: Table = {}
    for line in lines[start + 2 :]:
        if not line.strip() or line.startswith("latency:"):
            break
        cells = dict(zip(header, re.split(r" {2,}", line.strip()), strict=True))
        table[cells["route"], cells["budget"]] = cells
    return table


def counts(row: dict[str, str]) -> dict[str, int]:
    return {column: int(row[column]) for column in ("requests", "2xx", "504", "aborted", "other")}


def tally(
    requests: int, *, ok: int = 0, deadline: int = 0, aborted: int = 0, other: int = 0
) -> dict[str, int]:
    """What :func:`counts` returns for a row with these outcomes."""
    return {"requests": requests, "2xx": ok, "504": deadline, "aborted": aborted, "other": other}


# --- end to end, against the bundled shop --------------------------------------------------


@pytest.mark.e2e
def test_demo_against_the_shop_example(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))  # --app-dir goes first on it
    requests = 3
    # The game-day that follows by default has tests of its own (test_gameday.py).
    # The default app is the shop in the package: no checkout needed, as from a wheel.
    argv = ["demo", "--requests", str(requests), "--no-gameday"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "game-day" not in out
    table = parse_table(out)

    assert list(table) == [
        ("GET /items/{item_id}", "100 ms"),
        ("GET /search", "150 ms"),
        ("GET /reports/{name}", "2000 ms (/reports/*)"),
        ("GET /reports/{name}", "50 ms (x-request-timeout-ms)"),
        ("GET /feed", "300 ms"),
        ("GET /quote/{item_id}", "1000 ms (default)"),
    ]
    rows = {key: counts(row) for key, row in table.items()}
    n = requests
    # A few milliseconds of work against 100 ms: every lookup succeeds.
    assert rows["GET /items/{item_id}", "100 ms"] == tally(n, ok=n)
    # Searches alternate 10 ms and 5 s of work against 150 ms: every slow one is a 504.
    search = rows["GET /search", "150 ms"]
    assert search["requests"] == n
    assert search["504"] >= n // 2 >= 1
    assert search["2xx"] + search["504"] == n
    # 300 ms of work fits the 2 s /reports/* budget...
    assert rows["GET /reports/{name}", "2000 ms (/reports/*)"] == tally(n, ok=n)
    # ...but not the 50 ms the caller allowed in x-request-timeout-ms.
    assert rows["GET /reports/{name}", "50 ms (x-request-timeout-ms)"] == tally(1, deadline=1)
    # A 5 s stream against 300 ms: started, then cut off.
    assert rows["GET /feed", "300 ms"] == tally(n, aborted=n)
    # 20 ms of work against the 1 s default.
    assert rows["GET /quote/{item_id}", "1000 ms (default)"] == tally(n, ok=n)
    for row in table.values():
        assert row["p50"].endswith(" ms")
        assert row["max"].endswith(" ms")

    assert out.startswith(f"tailguard demo: {5 * n + 1} requests to http://127.0.0.1:")
    paragraph = " ".join(out.split("\n\n")[-1].split())
    assert "tailguard aborted them" in paragraph
    assert "the x-request-timeout-ms header cut the route's 2000 ms budget to 50 ms" in paragraph
    assert re.search(r"would hand \d+-\d+ ms of its 1000 ms budget", paragraph)


@pytest.mark.e2e
@pytest.mark.anyio
async def test_run_with_custom_scenarios_and_an_unguarded_app() -> None:
    # Called from inside a running event loop: the demo's client gets a loop of its own.
    async def hello(request: Request) -> Response:
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route("/hello", hello)])
    plan = [
        Scenario("GET", "/hello", ("/hello",), 2),
        Scenario("GET", "/missing", ("/missing",), 1),
    ]
    out = io.StringIO()
    assert demo.run(app, scenarios=plan, out=out) == 0
    text = out.getvalue()
    assert text.startswith("tailguard demo: 3 requests to ")
    table = parse_table(text)
    assert counts(table["GET /hello", "?"]) == tally(2, ok=2)
    assert counts(table["GET /missing", "?"]) == tally(1, other=1)  # a 404


# --- finding the guard and the budget -----------------------------------------------------


def guarded_app(**middleware_options: object) -> Starlette:
    app = Starlette()
    app.add_middleware(TailguardMiddleware, **middleware_options)  # type: ignore[arg-type]
    return app


def test_find_guard() -> None:
    guard = Tailguard(default=RoutePolicy(deadline=1.0))
    assert target.find_guard(guard.install(Starlette())) is guard
    assert target.find_guard(TailguardMiddleware(Starlette(), guard=guard)) is guard
    built = target.find_guard(guarded_app(routes={"/a": RoutePolicy(deadline=0.5)}))
    assert built is not None
    assert built.routes.lookup("GET", "/a").policy.deadline == 0.5
    assert target.find_guard(Starlette()) is None
    gzipped = Starlette()
    gzipped.add_middleware(GZipMiddleware)
    assert target.find_guard(guard.install(gzipped)) is guard
    gzipped.add_middleware(GZipMiddleware)
    assert target.find_guard(gzipped) is guard
    assert target.find_guard(object()) is None


def test_budget_for() -> None:
    guard = Tailguard(
        default=RoutePolicy(),
        routes={"GET /fast": RoutePolicy(deadline=0.1), "/slow/*": RoutePolicy(deadline=2.0)},
    )
    tight = (("X-Request-Timeout-Ms", "50"),)
    loose = (("x-request-timeout-ms", "5000"),)

    def budget(template: str, headers: tuple[tuple[str, str], ...] = ()) -> Budget | None:
        return target.budget_for(guard, Scenario("GET", template, (template,), 1, headers))

    assert budget("/fast") == Budget(0.1, "GET /fast", 0.1)
    assert budget("/slow/{name}") == Budget(2.0, "/slow/*", 2.0)
    assert budget("/slow/{name}", tight) == Budget(
        0.05, "x-request-timeout-ms", 2.0, header="x-request-timeout-ms"
    )
    assert budget("/slow/{name}", loose) == Budget(2.0, "/slow/*", 2.0)  # never extended
    assert budget("/other") == Budget(None, "default", None)
    assert budget("/other", tight) == Budget(
        0.05, "x-request-timeout-ms", None, header="x-request-timeout-ms"
    )
    ignoring = Tailguard(routes={"GET /fast": RoutePolicy(deadline=0.1)}, inbound_deadlines=False)
    scenario = Scenario("GET", "/fast", ("/fast",), 1, tight)
    assert target.budget_for(ignoring, scenario) == Budget(0.1, "GET /fast", 0.1)
    assert target.budget_for(None, scenario) is None


def test_scenario_names_and_paths() -> None:
    scenario = Scenario("GET", "/items/{id}", ("/items/1", "/items/2"), 3, (("a", "1"), ("b", "2")))
    assert scenario.label == "GET /items/{id}"
    assert scenario.name == "GET /items/{id} with a: 1, b: 2"
    assert scenario.requests() == ["/items/1", "/items/2", "/items/1"]
    assert Scenario("GET", "/", ("/",), 0).requests() == []


# --- the burst, against a mock transport ---------------------------------------------------


def mock_transport() -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers[load.DEMO_ID_HEADER].isdigit()
        match request.url.path:
            case "/ok":
                return httpx.Response(200, json={"ok": True})
            case "/deadline":
                return httpx.Response(504, headers={"x-tailguard-reason": "deadline_exceeded"})
            case "/gateway":
                return httpx.Response(504)  # a 504 that is not tailguard's
            case "/boom":
                return httpx.Response(500)
            case "/cut":
                raise httpx.RemoteProtocolError("peer closed connection", request=request)
            case "/reset":
                raise httpx.ReadError("connection reset", request=request)
            case _:
                raise httpx.ConnectError("refused", request=request)

    return httpx.MockTransport(handler)


@pytest.mark.anyio
async def test_send_burst_classifies_every_ending() -> None:
    paths = ["/ok", "/deadline", "/gateway", "/boom", "/cut", "/reset", "/down"]
    plan = [Scenario("GET", path, (path,), 2) for path in paths]
    results = await load.send_burst(
        "http://demo.invalid", plan, concurrency=3, transport=mock_transport()
    )
    kinds = {path: [o.kind for o in found] for path, found in zip(paths, results, strict=True)}
    assert kinds == {
        "/ok": ["2xx", "2xx"],
        "/deadline": ["504", "504"],
        "/gateway": ["other", "other"],
        "/boom": ["other", "other"],
        "/cut": ["aborted", "aborted"],
        "/reset": ["aborted", "aborted"],
        "/down": ["other", "other"],
    }
    ok = results[0][0]
    assert ok.status == 200
    assert json.loads(ok.body) == {"ok": True}
    assert ok.server_seconds is None
    assert ok.seconds == ok.client_seconds  # no server timing: the client's
    ids = sorted(int(o.request_id) for found in results for o in found)
    assert ids == list(range(2 * len(paths)))


@pytest.mark.anyio
async def test_stopwatch_times_requests_that_carry_a_demo_id() -> None:
    async def hello(request: Request) -> Response:
        return PlainTextResponse("hello")

    stopwatch = load.Stopwatch(Starlette(routes=[Route("/hello", hello)]))
    transport = httpx.ASGITransport(app=stopwatch)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        await client.get("/hello", headers={load.DEMO_ID_HEADER: "7"})
        await client.get("/hello")
    assert list(stopwatch.seconds) == ["7"]
    timed, untimed = stopwatch.attach(
        [Outcome("2xx", "7", client_seconds=99.0), Outcome("2xx", "8", client_seconds=99.0)]
    )
    assert timed.seconds == stopwatch.seconds["7"] < 99.0
    assert untimed.server_seconds is None
    assert untimed.seconds == 99.0


# --- the table and the explanation --------------------------------------------------------


def outcome(kind: load.Kind, seconds: float, body: bytes = b"") -> Outcome:
    return Outcome(kind, "0", client_seconds=seconds, body=body)


def test_format_table_aligns_columns() -> None:
    rows = [
        Row(
            Scenario("GET", "/items/{id}", ("/items/1",), 3),
            Budget(0.1, "GET /items/{id}", 0.1),
            [outcome("2xx", 0.004), outcome("2xx", 0.002), outcome("504", 0.1004)],
        ),
        Row(Scenario("GET", "/x", ("/x",), 0), Budget(None, "default", None), []),
        Row(Scenario("POST", "/orders", ("/orders",), 1), None, [outcome("aborted", 0.3)]),
    ]
    lines = report.format_table(rows).splitlines()
    assert [re.split(r" {2,}", line) for line in lines[2:]] == [
        ["GET /items/{id}", "100 ms", "3", "2", "1", "0", "0", "4.0 ms", "100 ms"],
        ["GET /x", "none (default)", "0", "0", "0", "0", "0", "-", "-"],
        ["POST /orders", "?", "1", "0", "0", "1", "0", "300 ms", "300 ms"],
    ]
    assert set(lines[1]) == {"-"}
    assert len(lines[1]) == max(len(line) for line in lines)
    # Numbers are right-aligned under their headings.
    assert lines[0].index("requests") + len("requests") == lines[2].index("3") + 1


def test_explain_reports_each_kind_of_outcome() -> None:
    quote = json.dumps({"forward_headers": {"x-request-timeout-ms": "975"}}).encode()
    rows = [
        Row(Scenario("GET", "/a", ("/a",), 1), Budget(0.1, "GET /a", 0.1), [outcome("2xx", 0)]),
        Row(Scenario("GET", "/b", ("/b",), 1), Budget(0.1, "GET /b", 0.1), [outcome("2xx", 0)]),
        Row(
            Scenario("GET", "/s", ("/s",), 2),
            Budget(0.15, "GET /s", 0.15),
            [outcome("2xx", 0), outcome("504", 0.15)],
        ),
        Row(Scenario("GET", "/u", ("/u",), 1), None, [outcome("504", 1)]),
        Row(
            Scenario("GET", "/r", ("/r",), 1, (("x-request-timeout-ms", "50"),)),
            Budget(0.05, "x-request-timeout-ms", 2.0, header="x-request-timeout-ms"),
            [outcome("504", 0.05)],
        ),
        Row(Scenario("GET", "/f", ("/f",), 1), Budget(0.3, "GET /f", 0.3), [outcome("aborted", 0)]),
        Row(
            Scenario("GET", "/q", ("/q",), 4),
            Budget(1.0, "default", 1.0),
            [
                outcome("2xx", 0, quote),
                outcome("2xx", 0, b"not json"),
                outcome("2xx", 0, b"[1, 2]"),
                outcome("2xx", 0, b'{"other": 1}'),
            ],
        ),
        Row(Scenario("GET", "/empty", ("/empty",), 0), None, []),
    ]
    text = report.explain_table(rows)
    assert "Every request to GET /a, GET /b and GET /q finished within budget." in text
    assert "1 of 2 requests to GET /s ran past the 150 ms budget" in text
    assert "1 of 1 requests to GET /u ran past the budget" in text
    assert (
        "1 of 1 requests to GET /r with x-request-timeout-ms: 50 got a 504: "
        "the x-request-timeout-ms header cut the route's 2000 ms budget to 50 ms"
    ) in text
    assert "1 of 1 requests to GET /f had started their response when the 300 ms budget" in text
    assert "would hand 975-975 ms of its 1000 ms budget" in text
    assert "/empty" not in text


def test_explain_with_nothing_fine() -> None:
    row = Row(Scenario("GET", "/s", ("/s",), 1), None, [outcome("504", 0.2)])
    assert "finished within budget" not in report.explain_table([row])
