"""The real ``chaos run`` on examples/chaostoolkit/ against the example shop under uvicorn.

The shop (``examples.shop:app``) runs in its own process with chaos enabled
and a control token, as the examples expect; a few threads keep requests
going to its stock pages while Chaos Toolkit's own command (installed by
the ``chaostoolkit`` extra, from this interpreter's ``bin``) runs each
experiment and writes its journal.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tailguard.chaos._client import ControlClient
from tests.chaostoolkit.support import closed_port
from tests.processes import stop, wait_until_up

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "chaostoolkit"
CHAOS = Path(sys.executable).parent / "chaos"
TRAFFIC_THREADS = 4


def chaos_command() -> Path:
    if not CHAOS.exists():
        pytest.fail(f"{CHAOS} is missing: pip install 'tailguard[chaostoolkit]' (make test does)")
    return CHAOS


@pytest.fixture(scope="module")
def token() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, token: str) -> Iterator[str]:
    pytest.importorskip("uvicorn")
    log = tmp_path_factory.mktemp("shop") / "uvicorn.log"
    port = closed_port()
    env = {
        **os.environ,
        "TAILGUARD_CHAOS": "1",
        "TAILGUARD_TOKEN": token,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    }
    command = [sys.executable, "-m", "uvicorn", "examples.shop:app"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(f"{url}/metrics", process, log)
        yield url
    finally:
        stop(process)


@pytest.fixture(scope="module")
def traffic(shop: str) -> Iterator[list[int]]:
    """Stock lookups from a few threads for as long as the module's tests run."""
    done = threading.Event()
    statuses: list[int] = []

    def lookups(item: int) -> None:
        with httpx.Client(base_url=shop, timeout=10) as client:
            while not done.is_set():
                try:
                    statuses.append(client.get(f"/stock/{item}").status_code)
                except httpx.HTTPError:
                    statuses.append(0)
                done.wait(0.01)

    threads = [
        threading.Thread(target=lookups, args=(1 + n % 3,), daemon=True)
        for n in range(TRAFFIC_THREADS)
    ]
    for thread in threads:
        thread.start()
    try:
        yield statuses
    finally:
        done.set()
        for thread in threads:
            thread.join(30)


def chaos_run(
    experiment: Path, tmp_path: Path, url: str, token: str
) -> tuple[int, dict[str, Any], str]:
    """``chaos run`` in the checkout (the examples' paths are relative to it).

    Returns its exit status, its journal and what it printed.
    """
    journal = tmp_path / "journal.json"
    env = {
        **os.environ,
        "TAILGUARD_URL": url,
        "TAILGUARD_TOKEN": token,
        "PYTHONPATH": str(ROOT / "src"),
    }
    command = [str(chaos_command()), "--no-version-check", "--log-file", str(tmp_path / "ct.log")]
    command += ["--settings", str(tmp_path / "settings.yaml")]  # never the user's settings
    command += ["run", "--journal-path", str(journal), str(experiment)]
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False
    )
    output = done.stdout + done.stderr
    assert journal.exists(), output
    return done.returncode, json.loads(journal.read_text()), output


def outputs(state: dict[str, Any]) -> dict[str, tuple[str, Any, bool]]:
    return {
        run["activity"]["name"]: (run["status"], run.get("output"), run["tolerance_met"])
        for run in state["probes"]
    }


def test_the_example_runs_starts_the_experiment_and_the_rollback_halts_it(
    shop: str, token: str, traffic: list[int], tmp_path: Path
) -> None:
    code, journal, output = chaos_run(EXAMPLES / "slow-inventory.json", tmp_path, shop, token)
    assert (code, journal["status"], journal["deviated"]) == (0, "completed", False), output
    assert "Experiment ended with status: completed" in output

    # The hypothesis read real values, before and after the method.
    for when in ("before", "after"):
        probes = outputs(journal["steady_states"][when])
        assert set(probes) == {"stock-p99-under-500ms", "stock-errors-under-10-percent"}
        for status, value, met in probes.values():
            assert (status, met) == ("succeeded", True)
            assert isinstance(value, float)
            assert 0 <= value <= 0.5
        assert probes["stock-p99-under-500ms"][1] > 0

    # The method ran: the tailguard experiment started, and was running after the pause.
    start, running = journal["run"]
    assert (start["activity"]["name"], start["status"]) == ("start-slow-inventory", "succeeded")
    assert start["output"]["experiment"]["name"] == "slow-inventory"
    assert start["output"]["experiment"]["routes"] == ["GET /stock/*"]
    assert (running["activity"]["name"], running["output"]) == ("slow-inventory-is-running", True)

    # The rollback halted it: one experiment was running, and the service says who stopped it.
    (rollback,) = journal["rollbacks"]
    assert (rollback["activity"]["name"], rollback["status"]) == ("halt-chaos", "succeeded")
    assert rollback["output"] == 1
    assert rollback["start"] >= journal["steady_states"]["after"]["probes"][-1]["end"]
    with ControlClient(shop, token) as client:
        status = client.status()
    assert status["experiments"] == []
    last = status["stopped"][0]
    assert (last["experiment"], last["reason"], last["actor"]) == (
        "slow-inventory",
        "halt",
        "api:127.0.0.1",
    )
    assert last["injections"] > 0  # the fault was really injected while the method ran


def test_a_tolerance_the_fault_breaks_ends_deviated(
    shop: str, token: str, traffic: list[int], tmp_path: Path
) -> None:
    code, journal, output = chaos_run(EXAMPLES / "inventory-outage.json", tmp_path, shop, token)
    # Chaos Toolkit's "deviated": the hypothesis after the method is not met although
    # every probe succeeded; the status stays "completed" and `chaos run` exits 1.
    assert (code, journal["status"], journal["deviated"]) == (1, "completed", True), output
    assert "Experiment ended with status: deviated" in output
    ((status, before, met_before),) = outputs(journal["steady_states"]["before"]).values()
    assert (status, met_before) == ("succeeded", True)
    assert before <= 0.05
    ((status, after, met_after),) = outputs(journal["steady_states"]["after"]).values()
    assert (status, met_after) == ("succeeded", False)
    assert after > 0.5  # every lookup hung until its deadline: 504s
    (start,) = journal["run"]
    assert start["output"]["experiment"]["faults"][0]["kind"] == "hang"
    (rollback,) = journal["rollbacks"]
    assert (rollback["status"], rollback["output"]) == ("succeeded", 1)
    with ControlClient(shop, token) as client:
        assert client.status()["experiments"] == []


CHECK = {
    "version": "1.0.0",
    "title": "tailguard is reachable",
    "description": "One probe of each kind, for the failure messages.",
    "configuration": {"tailguard_url": {"type": "env", "key": "TAILGUARD_URL"}},
    "secrets": {"tailguard": {"tailguard_token": {"type": "env", "key": "TAILGUARD_TOKEN"}}},
    "steady-state-hypothesis": {
        "title": "Nothing runs, the stock pages answer",
        "probes": [
            {
                "type": "probe",
                "name": "no-experiment-running",
                "tolerance": False,
                "provider": {
                    "type": "python",
                    "module": "tailguard.chaostoolkit.probes",
                    "func": "experiment_running",
                    "secrets": ["tailguard"],
                },
            }
        ],
    },
    "method": [
        {
            "type": "action",
            "name": "halt-chaos",
            "provider": {
                "type": "python",
                "module": "tailguard.chaostoolkit.actions",
                "func": "halt",
                "secrets": ["tailguard"],
            },
        }
    ],
}


@pytest.mark.parametrize("wrong", ["token", "service"])
def test_a_wrong_token_or_service_fails_the_probe_with_a_clear_message(
    shop: str, token: str, tmp_path: Path, wrong: str
) -> None:
    experiment = tmp_path / "check.json"
    experiment.write_text(json.dumps(CHECK))
    url, secret = shop, token
    if wrong == "token":
        secret = "wrong-token-0123456789"
        expected = (
            "experiment_running: 401 the bearer token is not valid (the control API refused "
            "the token: check the secret tailguard_token or TAILGUARD_TOKEN)"
        )
    else:
        url = f"http://127.0.0.1:{closed_port()}"
        expected = f"experiment_running: cannot reach {url}/_tailguard/status: "
    code, journal, output = chaos_run(experiment, tmp_path, url, secret)
    assert (code, journal["status"]) == (1, "failed"), output
    (probe,) = journal["steady_states"]["before"]["probes"]
    assert probe["status"] == "failed"
    assert expected in probe["exception"][-1]
    assert journal["run"] == []  # the method never ran
