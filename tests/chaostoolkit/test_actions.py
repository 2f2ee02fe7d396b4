"""The actions against a real service: what they start, stop and halt, and how they refuse."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chaoslib.exceptions import ActivityFailed

from tailguard.chaostoolkit import actions
from tests.chaostoolkit.support import SECRETS, Service, serve

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = {
    "name": "slow-db",
    "ttl": 60,
    "faults": [{"kind": "latency", "target": "db", "delay": 0.01}],
}


@pytest.fixture(autouse=True)
def no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TAILGUARD_URL", raising=False)
    monkeypatch.delenv("TAILGUARD_TOKEN", raising=False)


@pytest.fixture
def service() -> Iterator[Service]:
    with serve() as running:
        yield running


def running(service: Service) -> list[str]:
    assert service.guard.chaos is not None
    return [status.experiment.name for status in service.guard.chaos.experiments()]


def test_start_inline_then_stop(service: Service) -> None:
    config = service.configuration
    answer = actions.start_experiment(experiment=EXPERIMENT, configuration=config, secrets=SECRETS)
    assert answer["experiment"]["name"] == "slow-db"
    assert answer["expires_at"] - answer["started_at"] == pytest.approx(60)
    assert running(service) == ["slow-db"]
    assert actions.stop_experiment("slow-db", config, SECRETS) == {"stopped": "slow-db"}
    assert running(service) == []
    with pytest.raises(ActivityFailed) as failed:
        actions.stop_experiment("slow-db", config, SECRETS)
    assert str(failed.value) == "stop_experiment: 404 no running experiment named 'slow-db'"


@pytest.mark.parametrize("name", ["slow-db.json", "slow-db.yaml"])
def test_start_from_a_file(service: Service, tmp_path: Path, name: str) -> None:
    file = tmp_path / name
    file.write_text(json.dumps(EXPERIMENT))  # JSON is YAML too
    actions.start_experiment(str(file), configuration=service.configuration, secrets=SECRETS)
    assert running(service) == ["slow-db"]


def test_the_examples_tailguard_experiment_starts(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path in examples/chaostoolkit/slow-inventory.json, relative to the checkout."""
    monkeypatch.chdir(ROOT)
    path = "examples/chaostoolkit/tailguard/slow-inventory.json"
    answer = actions.start_experiment(path, configuration=service.configuration, secrets=SECRETS)
    assert answer["experiment"]["routes"] == ["GET /stock/*"]


def test_halt_stops_everything_and_says_how_many(service: Service) -> None:
    config = service.configuration
    actions.start_experiment(experiment=EXPERIMENT, configuration=config, secrets=SECRETS)
    other = {**EXPERIMENT, "name": "other"}
    actions.start_experiment(experiment=other, configuration=config, secrets=SECRETS)
    assert actions.halt(config, SECRETS) == 2
    assert running(service) == []
    assert actions.halt(config, SECRETS) == 0


def test_halt_works_while_chaos_is_disabled_and_start_says_why_not() -> None:
    with serve(chaos_enabled=False) as service:
        config = service.configuration
        assert actions.halt(config, SECRETS) == 0
        with pytest.raises(ActivityFailed, match=r"^start_experiment: 409 .*disabled"):
            actions.start_experiment(experiment=EXPERIMENT, configuration=config, secrets=SECRETS)


def test_the_service_names_the_field_of_an_invalid_experiment(service: Service) -> None:
    bad = {**EXPERIMENT, "faults": [{"kind": "hang", "target": "db", "rate": 2}]}
    with pytest.raises(ActivityFailed) as failed:
        actions.start_experiment(
            experiment=bad, configuration=service.configuration, secrets=SECRETS
        )
    assert str(failed.value) == (
        "start_experiment: 422 faults[0].rate: must be between 0 and 1, got 2"
    )
    assert running(service) == []


def test_a_name_already_running_is_refused(service: Service) -> None:
    config = service.configuration
    actions.start_experiment(experiment=EXPERIMENT, configuration=config, secrets=SECRETS)
    with pytest.raises(ActivityFailed, match=r"start_experiment: 409 name: .*slow-db"):
        actions.start_experiment(experiment=EXPERIMENT, configuration=config, secrets=SECRETS)


def test_a_wrong_token_changes_nothing(service: Service) -> None:
    wrong = {"tailguard_token": "wrong-token-0123456789"}
    with pytest.raises(ActivityFailed, match="refused the token"):
        actions.start_experiment(
            experiment=EXPERIMENT, configuration=service.configuration, secrets=wrong
        )
    with pytest.raises(ActivityFailed, match="refused the token"):
        actions.halt(service.configuration, wrong)
    assert running(service) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "give exactly one of path"),
        ({"path": "x.json", "experiment": EXPERIMENT}, "give exactly one of path"),
        ({"path": 3}, "path must be a string, got 3"),
        ({"experiment": ["not", "a", "mapping"]}, "experiment must be a mapping"),
        ({"path": "missing.json"}, r"path 'missing.json' \(/.*missing.json\): .*No such file"),
        ({"path": "experiment.txt"}, "expected a .json, .yaml or .yml file"),
    ],
)
def test_bad_arguments_are_named_before_the_service_is_asked(
    kwargs: dict[str, object], message: str
) -> None:
    # No service runs: the URL is never contacted.
    config = {"tailguard_url": "http://127.0.0.1:9"}
    with pytest.raises(ActivityFailed, match=message):
        actions.start_experiment(**kwargs, configuration=config, secrets=SECRETS)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", None])
def test_stop_needs_a_name(name: str) -> None:
    with pytest.raises(ActivityFailed, match="name must be a non-empty string"):
        actions.stop_experiment(name, {}, SECRETS)


def test_set_enforcement_switches_the_service_and_rolls_back() -> None:
    with serve() as service:
        config = service.configuration
        changed = actions.set_enforcement("shadow", configuration=config, secrets=SECRETS)
        assert changed
        modes = service.guard.snapshot()["enforcement"]
        assert "shadow" in json.dumps(modes)
        actions.set_enforcement("on", route="GET /busy", configuration=config, secrets=SECRETS)
        assert "on" in json.dumps(service.guard.snapshot()["enforcement"])
        actions.set_enforcement("on", configuration=config, secrets=SECRETS)
        assert "shadow" not in json.dumps(service.guard.snapshot()["enforcement"])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"mode": True}, r"^set_enforcement: mode must be"),
        ({"mode": "shadow", "route": ""}, r"^set_enforcement: route must be"),
        ({"mode": "sometimes"}, r"^set_enforcement: 422 "),
        ({"mode": "shadow", "dependency": "nope"}, r"^set_enforcement: 4\d\d "),
    ],
)
def test_set_enforcement_refusals_name_the_problem(
    service: Service, arguments: dict[str, Any], message: str
) -> None:
    before = service.guard.snapshot()["enforcement"]
    with pytest.raises(ActivityFailed, match=message):
        actions.set_enforcement(**arguments, configuration=service.configuration, secrets=SECRETS)
    assert service.guard.snapshot()["enforcement"] == before
