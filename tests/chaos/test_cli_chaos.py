"""``tailguard chaos``: argument handling, output, and a real server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tailguard import cli
from tailguard.chaos import Chaos, ControlAPI, ControlMiddleware
from tailguard.chaos._client import (
    ControlClient,
    ControlError,
    describe_fault,
    duration,
    render_status,
)
from tailguard.server import serve_in_thread

TOKEN = "cli-token-0123456789abcdef"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "chaos"


@pytest.fixture(autouse=True)
def no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cli.TOKEN_ENV, raising=False)
    monkeypatch.delenv(cli.URL_ENV, raising=False)


def run(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = cli.main(["chaos", *argv])
    out, err = capsys.readouterr()
    return status, out, err


# -- arguments -----------------------------------------------------------------------------


def test_help_lists_the_actions(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run("--help", capsys=capsys)
    assert status == 0
    for action in ("start", "stop", "halt", "status", cli.TOKEN_ENV):
        assert action in out
    status, out, _ = run("start", "--help", capsys=capsys)
    assert status == 0
    for option in ("--url", "--token", "--prefix", "--timeout", "--json", "FILE"):
        assert option in out


def test_an_action_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys=capsys)
    assert status == 2
    assert "ACTION" in err


def test_without_a_token_it_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run("status", capsys=capsys)
    assert (status, out) == (2, "")
    assert (
        err
        == f"tailguard chaos status: error: no control token: pass --token or set {cli.TOKEN_ENV}\n"
    )


@pytest.mark.parametrize("token", ["t\u00f6ken-0123456789abc", "with space 0123456789"])
def test_a_token_that_cannot_be_sent_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], token: str
) -> None:
    status, _, err = run("halt", "--token", token, capsys=capsys)
    assert status == 2
    assert "printable ASCII without spaces" in err


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf", "soon"])
def test_the_timeout_must_be_a_positive_number(
    capsys: pytest.CaptureFixture[str], timeout: str
) -> None:
    status, _, err = run("halt", "--token", "t" * 20, "--timeout", timeout, capsys=capsys)
    assert status == 2
    assert "--timeout" in err


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("missing.json", None, "No such file"),
        ("exp.txt", "x", "expected a .json, .yaml or .yml file"),
        ("exp.json", "{oops", "not valid JSON"),
    ],
)
def test_a_file_that_cannot_be_read_is_a_usage_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    content: str | None,
    words: str,
) -> None:
    file = tmp_path / name
    if content is not None:
        file.write_text(content)
    # The URL is never contacted: the file is read first.
    status, _, err = run(
        "start", str(file), "--token", TOKEN, "--url", "http://0.0.0.0:9", capsys=capsys
    )
    assert status == 2
    assert err.startswith(f"tailguard chaos start: error: {file}: ")
    assert words in err


# -- output --------------------------------------------------------------------------------


def test_durations_read_like_people_write_them() -> None:
    assert [duration(s) for s in (-3, 0, 59.4, 60, 299.6, 3600, 7380)] == [
        "0s",
        "0s",
        "59s",
        "1m 0s",
        "5m 0s",
        "1h 0m",
        "2h 3m",
    ]


@pytest.mark.parametrize(
    ("fault", "line"),
    [
        ({"kind": "hang", "target": "db", "rate": 1.0}, "hang db rate=1.0"),
        (
            {"kind": "latency", "target": "db", "rate": 1, "delay": 0.2},
            "latency db rate=1 delay=0.2s",
        ),
        (
            {"kind": "latency", "target": "db", "rate": 1, "delay": {"fixed": 0.2}},
            "latency db rate=1 delay=fixed(0.2)",
        ),
        (
            {"kind": "latency", "target": "db", "rate": 1, "delay": {"empirical": [1, 2]}},
            "latency db rate=1 delay=empirical(2 samples)",
        ),
        (
            {"kind": "raise", "target": "p*", "rate": 0.1, "exc": "builtins.OSError"},
            "raise p* rate=0.1 exc=builtins.OSError",
        ),
        (
            {"kind": "respond", "target": "db", "rate": 1, "status": 503},
            "respond db rate=1 status=503",
        ),
    ],
)
def test_faults_are_described_on_one_line(fault: dict[str, Any], line: str) -> None:
    assert describe_fault(fault) == line


def test_status_is_rendered_for_people() -> None:
    status = {
        "enabled": True,
        "seed": 7,
        "experiments": [
            {
                "experiment": {
                    "name": "slow-inventory",
                    "ttl": 300.0,
                    "faults": [{"kind": "hang", "target": "db", "rate": 0.5}],
                    "routes": ["GET /items/*"],
                    "tenants": ["acme", "globex"],
                    "header": "x-chaos",
                    "secret": "<redacted>",
                },
                "started_at": 1000.0,
                "expires_at": 1300.0,
                "injections": 12,
                "skipped": 0,
            },
            {
                "experiment": {
                    "name": "everywhere",
                    "ttl": 60.0,
                    "faults": [{"kind": "reset", "target": "payments*", "rate": 0.1}],
                },
                "started_at": 990.0,
                "expires_at": 1050.0,
                "injections": 0,
                "skipped": 0,
            },
        ],
        "stopped": [
            {
                "experiment": "old",
                "reason": "safeguard",
                "actor": "safeguard",
                "at": 880.0,
                "detail": "p99 0.9 s > 0.8 s",
                "injections": 40,
            },
            {
                "experiment": "older",
                "reason": "expired",
                "actor": "ttl",
                "at": 500.0,
                "detail": None,
            },
        ],
        "injections_in_flight": 2,
        "injections_skipped": 1,
        "max_injections": 100,
    }
    assert render_status(status, url="http://svc", now=1000.0).splitlines() == [
        "chaos enabled at http://svc (seed 7; injections in flight 2/100, skipped 1)",
        "running: 2",
        "  slow-inventory  expires in 5m 0s  injections 12",
        "    hang db rate=0.5",
        "    only: routes GET /items/*; tenants acme, globex; header x-chaos",
        "  everywhere  expires in 50s  injections 0",
        "    reset payments* rate=0.1",
        "recently stopped:",
        "  old  safeguard by safeguard 2m 0s ago: p99 0.9 s > 0.8 s",
        "  older  expired by ttl 8m 20s ago",
    ]
    quiet = {"enabled": False, "seed": None, "experiments": [], "stopped": []}
    assert render_status(quiet, url="http://svc", now=0).splitlines() == [
        "chaos disabled at http://svc (seed random; injections in flight 0/?, skipped 0)",
        "running: none",
    ]


# -- the client against odd answers --------------------------------------------------------


def _client(handler: Any) -> ControlClient:
    return ControlClient("http://svc/", TOKEN, transport=httpx.MockTransport(handler))


def test_the_client_sends_the_token_and_quotes_names() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"stopped": "a/b"})

    with _client(handler) as client:
        assert client.stop("a/b") == {"stopped": "a/b"}
    assert seen[0].headers["authorization"] == f"Bearer {TOKEN}"
    assert seen[0].url.raw_path == b"/_tailguard/experiments/a%2Fb"


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(502, text="<html>bad gateway</html>"), "502 unexpected answer from "),
        (
            httpx.Response(502),
            "502 unexpected answer from http://svc/_tailguard/status: Bad Gateway",
        ),
        (httpx.Response(500, json={"error": "x"}), "500 unexpected answer"),
        (httpx.Response(200, text="not json"), "200 unexpected answer"),
        (httpx.Response(422, json={"detail": "must be 1", "field": "ttl"}), "422 ttl: must be 1"),
        (httpx.Response(409, json={"detail": "disabled", "field": None}), "409 disabled"),
    ],
)
def test_the_client_reports_refusals_and_odd_answers(
    response: httpx.Response, message: str
) -> None:
    with _client(lambda request: response) as client, pytest.raises(ControlError) as caught:
        client.status()
    assert str(caught.value).startswith(message)
    assert caught.value.status == response.status_code


def test_the_client_reports_an_unreachable_service() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with _client(handler) as client, pytest.raises(ControlError) as caught:
        client.halt()
    assert caught.value.status is None
    assert str(caught.value) == "cannot reach http://svc/_tailguard/halt: connection refused"


# -- end to end ----------------------------------------------------------------------------


@pytest.fixture
def served() -> Iterator[tuple[str, Chaos]]:
    chaos = Chaos(enabled=True, seed=3)

    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route("/hello", hello)])
    app.add_middleware(ControlMiddleware, control=ControlAPI(chaos, token=TOKEN))
    with serve_in_thread(app) as url:
        yield url, chaos
    chaos.halt(actor="test")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.e2e
def test_a_game_day_from_the_command_line(
    served: tuple[str, Chaos],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, chaos = served
    monkeypatch.setenv(cli.TOKEN_ENV, TOKEN)
    monkeypatch.setenv(cli.URL_ENV, url)
    example = str(EXAMPLES / "slow-inventory.yaml")

    status, out, err = run("start", example, capsys=capsys)
    assert (status, err) == (0, "")
    assert out == "started slow-inventory: 2 faults, stops by itself in 5m 0s\n"
    assert [s.experiment.name for s in chaos.experiments()] == ["slow-inventory"]

    status, out, _ = run("start", str(EXAMPLES / "payments-resets.json"), "--json", capsys=capsys)
    assert status == 0
    assert json.loads(out)["experiment"]["name"] == "payments-resets"

    status, out, _ = run("status", capsys=capsys)
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == f"chaos enabled at {url} (seed 3; injections in flight 0/100, skipped 0)"
    assert lines[1] == "running: 2"
    assert "latency inventory rate=0.3 delay=lognormal(p50=0.05, p99=0.5)" in out
    assert "only: routes GET /stock/*" in out

    status, out, err = run("start", example, capsys=capsys)
    assert (status, out) == (1, "")
    assert err == (
        "tailguard chaos start: error: 409 name: experiment 'slow-inventory' is already "
        "running; stop it first\n"
    )

    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {"name": "bad", "ttl": 60, "faults": [{"kind": "hang", "target": "db", "rate": 2}]}
        )
    )
    status, _, err = run("start", str(bad), capsys=capsys)
    assert status == 1
    assert (
        err == "tailguard chaos start: error: 422 faults[0].rate: must be between 0 and 1, got 2\n"
    )

    status, out, _ = run("stop", "slow-inventory", capsys=capsys)
    assert (status, out) == (0, "stopped slow-inventory\n")
    status, _, err = run("stop", "slow-inventory", capsys=capsys)
    assert status == 1
    assert "404 no running experiment named 'slow-inventory'" in err

    status, out, _ = run("halt", capsys=capsys)
    assert (status, out) == (0, "halted: 1 experiment stopped\n")
    assert chaos.experiments() == []
    status, out, _ = run("halt", "--json", capsys=capsys)
    assert (status, json.loads(out)) == (0, {"halted": 0})

    status, out, _ = run("status", "--json", capsys=capsys)
    assert status == 0
    reasons = [(r["experiment"], r["reason"]) for r in json.loads(out)["stopped"]]
    assert reasons == [("payments-resets", "halt"), ("slow-inventory", "stopped")]


@pytest.mark.e2e
def test_refusals_from_a_real_server_exit_1(
    served: tuple[str, Chaos], capsys: pytest.CaptureFixture[str]
) -> None:
    url, chaos = served
    status, _, err = run(
        "halt", "--url", url, "--token", "wrong-token-0123456789", "--timeout", "5", capsys=capsys
    )
    assert status == 1
    assert err == "tailguard chaos halt: error: 401 the bearer token is not valid\n"

    status, _, err = run(
        "status", "--url", url, "--token", TOKEN, "--prefix", "/elsewhere", capsys=capsys
    )
    assert status == 1
    assert err.startswith("tailguard chaos status: error: 404 unexpected answer from ")

    dead = f"http://127.0.0.1:{_closed_port()}"
    status, _, err = run("status", "--url", dead, "--token", TOKEN, capsys=capsys)
    assert status == 1
    assert err.startswith(f"tailguard chaos status: error: cannot reach {dead}/_tailguard/status")
    assert chaos.experiments() == []


# -- hostile files and closed pipes (issue 13, item 7) ---------------------------------------


def alias_bomb(levels: int) -> str:
    """A YAML "billion laughs": ``levels`` lists of nine aliases of the one before (9**levels)."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [7, 9])
def test_a_yaml_alias_bomb_is_refused_before_it_expands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], levels: int
) -> None:
    file = tmp_path / "bomb.yaml"
    file.write_text(alias_bomb(levels))
    assert file.stat().st_size < 1000
    url = f"http://127.0.0.1:{_closed_port()}"
    status, out, err = run("start", str(file), "--token", TOKEN, "--url", url, capsys=capsys)
    assert (status, out) == (2, "")
    assert err.startswith(f"tailguard chaos start: error: {file}: not valid YAML: its aliases ")
    assert "more than 100000 values" in err


def test_an_empty_yaml_file_is_no_document() -> None:
    from tailguard.chaos._yaml import parse_yaml

    assert parse_yaml(b"") is None


def test_aliases_that_stay_small_are_fine(tmp_path: Path) -> None:
    from tailguard.chaos.schema import load_experiment

    file = tmp_path / "reuse.yaml"
    file.write_text(
        "name: reuse\nttl: 60\nfaults:\n"
        "  - {kind: latency, target: db, delay: &slow {lognormal: {p50: 0.05, p99: 0.5}}}\n"
        "  - {kind: latency, target: cache, delay: *slow}\n"
    )
    experiment = load_experiment(file)
    assert [fault.target for fault in experiment.faults] == ["db", "cache"]


def test_a_self_referencing_alias_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "loop.yaml"
    file.write_text("name: &n [*n]\n")
    status, _, err = run("start", str(file), "--token", TOKEN, capsys=capsys)
    assert status == 2
    assert "an alias refers to a node that contains it" in err


def test_a_yaml_integer_longer_than_python_reads_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "long.yaml"
    file.write_text("name: long\nttl: " + "1" * 5000 + "\nfaults: []\n")
    status, out, err = run("start", str(file), "--token", TOKEN, capsys=capsys)
    assert (status, out) == (2, "")
    assert err == (
        f"tailguard chaos start: error: {file}: not valid YAML: "
        "an integer has more than 4300 digits\n"
    )


@pytest.mark.e2e
@pytest.mark.parametrize("action", [["status", "--json"], ["status"], ["halt", "--json"]])
def test_a_reader_that_goes_away_gets_no_traceback(
    served: tuple[str, Chaos], action: list[str]
) -> None:
    """``tailguard chaos status --json | head -c1``, with a real pipe whose reader is gone."""
    url, _ = served
    environment = {**os.environ, cli.TOKEN_ENV: TOKEN, "PYTHONPATH": os.pathsep.join(sys.path)}
    with subprocess.Popen(
        [sys.executable, "-m", "tailguard", "chaos", *action, "--url", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environment,
    ) as command:
        assert command.stdout is not None
        assert command.stderr is not None
        command.stdout.close()  # the reader is gone before anything is written
        errors = command.stderr.read()
        status = command.wait(timeout=60)
    assert errors == b""
    assert status == cli.BROKEN_PIPE
