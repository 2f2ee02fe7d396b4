"""``tailguard gameday FILE`` end to end: real uvicorn on 127.0.0.1, short phases, all stopped.

The served test app (:data:`APP`) is written into a temporary folder and
served by the runner itself (``target.app``), or by the test (``target.url``)
when the test needs to look at the service after the runner is gone. Phases
last 1 to 3 seconds; what is asserted is what the runner decided (exit
status, the check it named, the rollback), with margins that do not depend
on the machine's speed. The generator's send-lag bound is loosened
(``send_lag_p99``) because these tests are not about the generator, and a
loaded CI machine would otherwise make every run "unreliable".
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tailguard import cli

pytestmark = pytest.mark.e2e

SRC = str(Path(__file__).resolve().parents[2] / "src")
TOKEN = "a-control-token-for-tests-only"

APP = """
import asyncio, os, time
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from tailguard import RoutePolicy, Tailguard
from tailguard.chaos import Chaos

guard = Tailguard(routes={"GET /items/{item_id}": RoutePolicy(deadline=1.0)}, chaos=Chaos())
db = guard.dependency("db", max_concurrency=64, max_queue=64)
armed = []

async def item(request):
    async with db:
        await asyncio.sleep(0.002)
    return JSONResponse({"id": request.path_params["item_id"]})

async def slow(request):
    await asyncio.sleep(0.05)
    return JSONResponse({})

def arm(action):
    if not armed:
        armed.append(True)
        asyncio.get_running_loop().call_later(float(os.environ["AFTER"]), action)

async def tick(request):  # the first one blocks the event loop for 1 s, AFTER s later
    arm(lambda: time.sleep(1.0))
    return JSONResponse({})

async def doomed(request):  # the first one makes the process die, AFTER s later
    arm(lambda: os._exit(3))
    return JSONResponse({})

app = Starlette(routes=[
    Route("/items/{item_id:int}", item),
    Route("/slow", slow),
    Route("/tick", tick),
    Route("/doomed", doomed),
])
guard.install(app, control_token=os.environ.get("TAILGUARD_TOKEN"), tracing=False)
"""

SLOW_DB = {
    "name": "slow-db",
    "ttl": 60,
    "faults": [{"kind": "latency", "target": "db", "delay": 0.01}],
}


def write_plan(folder: Path, **changes: Any) -> Path:
    """A game-day file for the test app in ``folder``; ``changes`` replace top-level keys."""
    (folder / "gameday_app.py").write_text(textwrap.dedent(APP))
    plan: dict[str, Any] = {
        "title": "test",
        "target": {
            "app": "gameday_app:app",
            "app_dir": str(folder),
            "env": {"TAILGUARD_CHAOS": "1", "AFTER": "1"},
        },
        "load": {
            "rate": 50,
            "timeout": 2.0,
            "send_lag_p99": 0.5,
            "requests": [{"path": "/items/1"}, {"path": "/items/2"}],
        },
        "hypothesis": [{"route": "GET /items/{item_id}", "p99": 0.5, "error_rate": 0.05}],
        "phases": [
            {"name": "baseline", "duration": 1},
            {"name": "slow-db", "duration": 2, "experiments": [SLOW_DB]},
            {"name": "recovery", "duration": 1},
        ],
    }
    plan.update(changes)
    file = folder / "gameday.yaml"
    file.write_text(yaml.safe_dump(plan, sort_keys=False))
    return file


def run_cli(file: Path, out: Path) -> int:
    return cli.main(["gameday", str(file), "--out", str(out), "--plain"])


def report(out: Path) -> dict[str, Any]:
    found: dict[str, Any] = json.loads((out / "report.json").read_text())
    return found


def test_a_run_that_holds_exits_0_and_writes_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert run_cli(write_plan(tmp_path), out) == 0
    printed = capsys.readouterr().out
    assert "verdict: HELD" in printed
    found = report(out)
    assert found["verdict"] == "held"
    assert found["unreliable"] is False
    assert [phase["name"] for phase in found["phases"]] == ["baseline", "slow-db", "recovery"]
    inject = found["phases"][1]
    route = inject["routes"]["GET /items/{item_id}"]  # /items/1 and /items/2 count together
    assert set(route) >= {"offered", "sent", "responses", "latency", "checks"}
    assert set(route["latency"]) == {"p50", "p99", "p999", "max"}
    assert route["sent"] == route["offered"] > 0
    assert sum(route["responses"].values()) == route["sent"]
    assert {check["slo"] for check in route["checks"]} == {"p99", "error_rate"}
    assert all(check["held"] for check in route["checks"])
    assert inject["experiments"] == ["slow-db"]
    assert inject["service"]["injections"] > 0  # from the service's own /metrics
    assert found["phases"][0]["service"]["injections"] == 0
    assert found["rollback"]["left_running"] == []
    assert found["rollback"]["target_exit_status"] is not None  # the server was stopped
    assert len(found["timeline"]) == 4
    assert sum(second["injections"] for second in found["timeline"]) > 0
    assert (out / "report.png").stat().st_size > 10_000
    assert "![latency" in (out / "report.md").read_text()


def test_a_broken_slo_exits_1_and_names_the_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = write_plan(
        tmp_path,
        load={
            "rate": 30,
            "arrivals": "constant",
            "send_lag_p99": 0.5,
            "requests": [{"path": "/slow"}, {"path": "/items/1"}],
        },
        hypothesis=[{"route": "GET /slow", "p99": 0.01}, {"route": "*", "goodput": 0.5}],
        phases=[{"name": "only", "duration": 1}],
    )
    out = tmp_path / "run"
    assert run_cli(file, out) == 1
    printed = capsys.readouterr().out
    assert "BROKE GET /slow: p99 <= 10ms: broke by" in printed
    (check,) = report(out)["phases"][0]["routes"]["GET /slow"]["checks"]
    assert check["held"] is False
    assert check["observed"] >= 0.05  # the handler sleeps 50 ms
    assert check["by"] == pytest.approx(check["observed"] - 0.01)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "title: x\ntarget: {url: 'http://127.0.0.1:1'}\nload:\n  rate: fast\n"
            "  requests: [{path: /}]\nphases: [{name: a, duration: 1}]\n",
            "load.rate (line 4): must be a number, got a string",
        ),
        (
            "title: x\ntarget: {url: 'http://127.0.0.1:1'}\nload:\n  rate: 5\n"
            "  requests: [{path: /}]\nphases:\n  - {name: a, duration: 1}\n"
            "  - {name: b, duraton: 1}\n",
            "phases[1].duraton (line 8): unknown field; did you mean 'duration'?",
        ),
        (
            "title: x\ntarget: {url: 'http://127.0.0.1:1'}\n"
            "load: {rate: 5, requests: [{path: /a}]}\n"
            "hypothesis:\n  - {route: 'GET /b/{id}', p99: 1}\n"
            "phases: [{name: a, duration: 1}]\n",
            "hypothesis[0].route (line 5): 'GET /b/{id}' matches no request of load.requests",
        ),
    ],
)
def test_an_unusable_file_exits_2_naming_the_field_and_line(
    tmp_path: Path, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(text)
    assert run_cli(file, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tailguard gameday: error: {file}: ")
    assert message in err
    assert not (tmp_path / "run").exists()  # nothing started


def test_a_missing_experiment_file_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = write_plan(tmp_path, phases=[{"name": "a", "duration": 1, "experiments": ["no.yaml"]}])
    assert run_cli(file, tmp_path / "run") == 2
    assert "phases[0].experiments[0] (line" in capsys.readouterr().err


def test_a_crash_of_the_target_is_rolled_back_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = write_plan(
        tmp_path,
        load={"rate": 30, "send_lag_p99": 0.5, "requests": [{"path": "/doomed"}]},
        hypothesis=[],
        phases=[{"name": "doomed", "duration": 30, "experiments": [SLOW_DB]}],
    )
    out = tmp_path / "run"
    started = time.monotonic()
    assert run_cli(file, out) == 2
    assert time.monotonic() - started < 25  # it did not play the 30 s phase out
    printed = capsys.readouterr().out
    assert "the run failed: the target exited with status 3 during the run" in printed
    found = report(out)
    assert found["rollback"]["target_exit_status"] == 3  # reaped: no process left behind
    assert found["rollback"]["errors"] == ["the target is gone: nothing left to halt"]


def test_the_blocked_second_shows_in_p99_and_sent_stays_offered(tmp_path: Path) -> None:
    # A closed-loop client would send ~one request during the stall and record one slow
    # answer; at a constant 100/s the stalled second's ~100 requests are all late.
    file = write_plan(
        tmp_path,
        load={
            "rate": 100,
            "arrivals": "constant",
            "timeout": 5,
            "send_lag_p99": 0.5,
            "requests": [{"path": "/tick"}],
        },
        hypothesis=[{"route": "GET /tick", "p99": 0.2}],
        phases=[{"name": "stall", "duration": 3}],
    )
    out = tmp_path / "run"
    assert run_cli(file, out) == 1
    route = report(out)["phases"][0]["routes"]["GET /tick"]
    assert route["latency"]["p99"] >= 0.5
    assert route["latency"]["max"] >= 0.8
    assert route["offered"] == 300
    assert route["sent"] >= 0.95 * route["offered"]
    assert route["responses"].get("200", 0) >= 0.95 * route["sent"]
    slow = sum(1 for s in report(out)["timeline"] if (s["routes"]["GET /tick"]["p99"] or 0) > 0.3)
    assert slow >= 1


# --- a service the test runs itself, to look at it after the runner is gone ----------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def service(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "gameday_app.py").write_text(textwrap.dedent(APP))
    port = free_port()
    env = {**os.environ, "TAILGUARD_CHAOS": "1", "TAILGUARD_TOKEN": TOKEN, "AFTER": "1"}
    env["PYTHONPATH"] = os.pathsep.join([SRC, env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "uvicorn", "gameday_app:app", "--app-dir", str(tmp_path)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(command, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/items/1", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the test service did not start"
                assert process.poll() is None, "the test service exited"
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def running(url: str) -> list[str]:
    answer = httpx.get(
        url + "/_tailguard/status", headers={"authorization": f"Bearer {TOKEN}"}, timeout=5
    )
    return [item["experiment"]["name"] for item in answer.json()["experiments"]]


def test_ctrl_c_halts_the_experiments_of_a_running_service(tmp_path: Path, service: str) -> None:
    file = write_plan(
        tmp_path,
        target={"url": service},
        phases=[{"name": "long", "duration": 60, "experiments": [SLOW_DB]}],
    )
    out = tmp_path / "run"
    env = {**os.environ, "TAILGUARD_TOKEN": TOKEN}
    env["PYTHONPATH"] = os.pathsep.join([SRC, env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "tailguard", "gameday", str(file), "--out", str(out)]
    runner = subprocess.Popen([*command, "--plain"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while running(service) != ["slow-db"]:
            assert time.monotonic() < deadline, "the experiment never started"
            assert runner.poll() is None, "the runner exited early"
            time.sleep(0.1)
        runner.send_signal(signal.SIGINT)
        stdout, _ = runner.communicate(timeout=30)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    assert runner.returncode == 130, stdout
    assert running(service) == []  # the service itself says nothing is left running
    found = report(out)
    assert found["interrupted"] == "SIGINT"
    assert found["rollback"]["halted"] == 1
    assert found["rollback"]["left_running"] == []
    assert "interrupted by SIGINT" in stdout


def test_a_refused_experiment_rolls_back_the_ones_started(
    tmp_path: Path,
    service: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TAILGUARD_TOKEN", TOKEN)
    # The exception class is resolved by the service (among the modules it imported), so
    # the file check lets it through and the service refuses it: after slow-db started.
    refused = {
        "name": "refused",
        "ttl": 60,
        "faults": [{"kind": "raise", "target": "db", "exc": "no_such_module.Error"}],
    }
    file = write_plan(
        tmp_path,
        target={"url": service},
        phases=[{"name": "both", "duration": 30, "experiments": [SLOW_DB, refused]}],
    )
    out = tmp_path / "run"
    assert run_cli(file, out) == 2
    printed = capsys.readouterr().out
    assert "the run failed: POST" in printed
    assert "-> 422: faults[0].exc" in printed
    assert running(service) == []
    assert report(out)["rollback"]["halted"] == 1  # slow-db, started before the refusal


def test_the_demo_plays_both_runs_and_compares_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tailguard.gameday import demo

    # The bundled game-day, with 1 s phases and a low rate: the demo's flow, not its story.
    plan = yaml.safe_load(demo.DEMO_FILE.read_text())
    plan["load"].update(rate=20, send_lag_p99=0.5)
    for phase in plan["phases"]:
        phase["duration"] = 1
    short = tmp_path / "demo.yaml"
    short.write_text(yaml.safe_dump(plan))
    monkeypatch.setattr(demo, "DEMO_FILE", short)
    assert demo.run(out_dir=str(tmp_path / "runs"), live=False) == 0
    printed = capsys.readouterr().out
    assert "=== run 1 of 2: protections on (TAILGUARD_ENFORCE=on) ===" in printed
    assert "=== run 2 of 2: protections off (shadow mode) (TAILGUARD_ENFORCE=shadow) ===" in printed
    assert "protections on  protections off" in printed
    assert "with tailguard enforcing: hypothesis" in printed
    for mode in ("on", "shadow"):
        found = report(tmp_path / "runs" / mode)
        assert found["error"] is None
        assert [phase["name"] for phase in found["phases"]] == [
            "baseline",
            "slow-dependencies",
            "recovery",
        ]
        assert (tmp_path / "runs" / mode / "report.png").exists()
