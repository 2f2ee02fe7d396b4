"""discover(): every action and probe, with its arguments, as Chaos Toolkit describes them."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tailguard import __version__
from tailguard.chaostoolkit import MODULES, actions, discover, probes

ROOT = Path(__file__).resolve().parents[2]

EXPECTED = {
    ("action", "start_experiment"): ["path", "experiment", "configuration", "secrets"],
    ("action", "stop_experiment"): ["name", "configuration", "secrets"],
    ("action", "halt"): ["configuration", "secrets"],
    ("action", "set_enforcement"): ["mode", "route", "dependency", "configuration", "secrets"],
    ("probe", "status"): ["configuration", "secrets"],
    ("probe", "experiment_running"): ["name", "configuration", "secrets"],
    ("probe", "route_latency"): ["route", "quantile", "window", "min_requests", "configuration"],
    ("probe", "error_ratio"): ["route", "window", "min_requests", "configuration"],
    ("probe", "shed_ratio"): ["route", "window", "min_requests", "configuration"],
    ("probe", "orphaned_tasks"): ["route", "window", "configuration"],
}


def test_every_activity_is_listed_with_its_arguments() -> None:
    found = discover()
    assert found["extension"] == {"name": "tailguard", "version": __version__}
    listed = {(a["type"], a["name"]): a for a in found["activities"]}
    assert {key: [arg["name"] for arg in a["arguments"]] for key, a in listed.items()} == EXPECTED
    modules = {"action": actions, "probe": probes}
    for (kind, name), activity in listed.items():
        assert activity["mod"] == MODULES[kind] == modules[kind].__name__
        function = getattr(modules[kind], name)
        assert activity["doc"] == inspect.getdoc(function)
        assert "Example::" in activity["doc"]  # each shows how to name it in an experiment
        for argument in activity["arguments"]:
            parameter = inspect.signature(function).parameters[argument["name"]]
            if parameter.default is inspect.Parameter.empty:
                assert "default" not in argument
            else:
                assert argument["default"] == parameter.default


def test_every_exported_function_is_an_activity_and_nothing_else_is() -> None:
    listed = {a["name"] for a in discover()["activities"]}
    exported = set(actions.__all__) | set(probes.__all__)
    assert listed == exported
    assert len(listed) == len(actions.__all__) + len(probes.__all__)  # no name in both


def test_types_are_real_so_chaos_toolkit_can_name_them() -> None:
    listed = {a["name"]: a for a in discover()["activities"]}
    types = {arg["name"]: arg["type"] for arg in listed["route_latency"]["arguments"]}
    assert types == {
        "route": "string",
        "quantile": "number",
        "window": "number",
        "min_requests": "integer",
        "configuration": "object",
    }
    assert listed["route_latency"]["return_type"] == "number"
    assert listed["experiment_running"]["return_type"] == "boolean"
    assert listed["halt"]["return_type"] == "integer"
    assert listed["orphaned_tasks"]["return_type"] == "integer"


def test_python_dash_m_prints_the_discovery_as_json() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "tailguard.chaostoolkit"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    printed = json.loads(done.stdout)
    assert printed["target"] == "tailguard"
    assert sorted(a["name"] for a in printed["activities"]) == sorted(name for _, name in EXPECTED)


def test_main_writes_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    from tailguard.chaostoolkit.__main__ import main

    assert main() == 0
    assert len(json.loads(capsys.readouterr().out)["activities"]) == len(EXPECTED)
