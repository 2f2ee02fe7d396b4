"""The game-day file: its checks, its line numbers, its published schema, the bundled files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tailguard.gameday import demo
from tailguard.gameday.plan import PLAN_JSON_SCHEMA, PlanError, load_plan, plan_from_dict
from tailguard.gameday.report import format_comparison

ROOT = Path(__file__).resolve().parents[2]
FILES = [
    ROOT / "examples" / "gamedays" / "shop.yaml",
    ROOT / "examples" / "gamedays" / "slow-inventory.yaml",
    demo.DEMO_FILE,
]


def minimal(**changes: Any) -> dict[str, Any]:
    plan: dict[str, Any] = {
        "title": "t",
        "target": {"url": "http://127.0.0.1:8000"},
        "load": {"rate": 10, "requests": [{"path": "/items/1"}]},
        "phases": [{"name": "a", "duration": 1}],
    }
    plan.update(changes)
    return plan


def test_the_published_schema_is_the_one_in_the_code() -> None:
    published = json.loads((ROOT / "docs" / "gameday.schema.json").read_text())
    assert published == json.loads(json.dumps(PLAN_JSON_SCHEMA))
    jsonschema.Draft202012Validator.check_schema(PLAN_JSON_SCHEMA)


@pytest.mark.parametrize("file", FILES, ids=lambda f: f.name)
def test_the_bundled_files_load_and_fit_the_schema(file: Path) -> None:
    import yaml

    load_plan(file)
    jsonschema.validate(yaml.safe_load(file.read_text()), PLAN_JSON_SCHEMA)


def test_the_demo_and_the_example_game_day_are_the_same_but_for_the_app() -> None:
    bundled, example = load_plan(demo.DEMO_FILE), load_plan(FILES[0])
    assert (bundled.load, bundled.hypothesis, bundled.phases) == (
        example.load,
        example.hypothesis,
        example.phases,
    )
    assert bundled.target.app == "tailguard.gameday.shop:app"
    assert example.target.app == "examples.shop.app:app"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"target": {}}, "target"),
        ({"target": {"url": "http://x", "app": "a:b"}}, "target"),
        ({"target": {"app": "nocolon"}}, "target.app"),
        ({"target": {"url": "ftp://x"}}, "target.url"),
        ({"target": {"url": "http://x", "workers": 2}}, "target.workers"),
        ({"target": {"app": "a:b", "env": {"1X": "y"}}}, "target.env"),
        ({"target": {"app": "a:b", "env": {"X": [1]}}}, "target.env.X"),
        ({"load": {"rate": 0, "requests": [{"path": "/"}]}}, "load.rate"),
        ({"load": {"rate": 1, "requests": []}}, "load.requests"),
        ({"load": {"rate": 1, "arrivals": "burst", "requests": [{"path": "/"}]}}, "load.arrivals"),
        ({"load": {"rate": 1, "requests": [{"path": "items"}]}}, "load.requests[0].path"),
        (
            {"load": {"rate": 1, "requests": [{"path": "/", "method": "GO"}]}},
            "load.requests[0].method",
        ),
        (
            {"load": {"rate": 1, "requests": [{"path": "/", "headers": []}]}},
            "load.requests[0].headers",
        ),
        (
            {"load": {"rate": 1, "requests": [{"path": "/", "json": float("nan")}]}},
            "load.requests[0].json",
        ),
        ({"load": {"rate": 1, "timeout": 61, "requests": [{"path": "/"}]}}, "load.timeout"),
        ({"hypothesis": {}}, "hypothesis"),
        ({"hypothesis": [{"route": "*"}]}, "hypothesis[0]"),
        ({"hypothesis": [{"route": "items", "p99": 1}]}, "hypothesis[0].route"),
        ({"hypothesis": [{"route": "*", "p99": 1, "within": 1}]}, "hypothesis[0].within"),
        ({"hypothesis": [{"route": "*", "goodput": 2}]}, "hypothesis[0].goodput"),
        ({"phases": []}, "phases"),
        (
            {"phases": [{"name": "a", "duration": 1}, {"name": "a", "duration": 1}]},
            "phases[1].name",
        ),
        ({"phases": [{"name": "a", "duration": 1, "experiments": {}}]}, "phases[0].experiments"),
        (
            {"phases": [{"name": "a", "duration": 1, "experiments": [3]}]},
            "phases[0].experiments[0]",
        ),
        (
            {"phases": [{"name": "a", "duration": 1, "experiments": [{"name": "x", "ttl": 1}]}]},
            "phases[0].experiments[0].faults",
        ),
        ({"phases": [{"name": "a", "duration": 1, "hypothesis": 3}]}, "phases[0].hypothesis"),
    ],
)
def test_a_bad_document_names_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(PlanError) as info:
        plan_from_dict(minimal(**changes))
    assert info.value.field == field
    # The schema refuses it too, except what only the code checks: a NaN in JSON and
    # a phase name used twice.
    if "json" not in field and field != "phases[1].name":
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(json.loads(json.dumps(minimal(**changes))), PLAN_JSON_SCHEMA)


def test_json_files_have_lines_too(tmp_path: Path) -> None:
    file = tmp_path / "g.json"
    text = json.dumps(minimal(load={"rate": "x", "requests": [{"path": "/"}]}), indent=2)
    file.write_text(text)
    with pytest.raises(PlanError) as info:
        load_plan(file)
    line = next(n for n, row in enumerate(text.splitlines(), 1) if '"rate"' in row)
    assert (info.value.field, info.value.line) == ("load.rate", line)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("g.txt", "", "g.txt: expected a .json, .yaml or .yml file"),
        ("g.json", "{", "not valid JSON"),
        ("g.yaml", "a: [", "not valid YAML"),
    ],
)
def test_unreadable_files(tmp_path: Path, name: str, content: str, message: str) -> None:
    file = tmp_path / name
    file.write_text(content)
    with pytest.raises(PlanError) as info:
        load_plan(file)
    assert message in str(info.value)
    with pytest.raises(PlanError, match="cannot read"):
        load_plan(tmp_path / "missing.yaml")


def test_a_phase_may_replace_or_drop_the_hypothesis() -> None:
    plan = plan_from_dict(
        minimal(
            hypothesis=[{"route": "*", "p99": 1}],
            phases=[
                {"name": "a", "duration": 1},
                {"name": "b", "duration": 1, "hypothesis": False, "rate": 5},
                {"name": "c", "duration": 1, "hypothesis": [{"route": "/items/{id}", "max": 2}]},
            ],
        )
    )
    assert [len(phase.checks(plan)) for phase in plan.phases] == [1, 0, 1]
    assert plan.phases[1].rate == 5
    assert plan.duration == 3


def test_the_demo_runs_the_shop_with_enforcement_on_then_in_shadow_mode() -> None:
    on, off = (demo.demo_plan(mode) for mode, _ in demo.MODES)
    assert on.target.env["TAILGUARD_ENFORCE"] == "on"
    assert off.target.env["TAILGUARD_ENFORCE"] == "shadow"
    assert on.target.env["TAILGUARD_CHAOS"] == "1"
    assert on.phases == off.phases


def fake(verdicts: dict[str, bool]) -> dict[str, Any]:
    checks = [
        {
            "route": "GET /stock/{item_id}",
            "slo": slo,
            "target": 0.5,
            "observed": 0.3 if held else 2.0,
            "held": held,
            "by": -0.2 if held else 1.5,
        }
        for slo, held in verdicts.items()
    ]
    return {
        "verdict": "held" if all(verdicts.values()) else "broke",
        "unreliable": False,
        "reasons": [],
        "phases": [
            {
                "name": "slow",
                "checks": checks,
                "routes": {
                    "GET /stock/{item_id}": {
                        "checks": [{k: v for k, v in c.items() if k != "route"} for c in checks]
                    }
                },
            }
        ],
    }


def test_the_demo_says_what_held_only_with_protections() -> None:
    on, off = fake({"p99": True}), fake({"p99": False})
    lines = demo.summarize(on, off)
    assert lines[0].startswith("with tailguard enforcing: hypothesis held (0 SLO checks broke)")
    assert lines[1].startswith("in shadow mode:           hypothesis broke (1 SLO checks broke)")
    assert lines[2:] == ["held only with tailguard enforcing:", "  slow: GET /stock/{item_id} p99"]
    table = format_comparison(on, off)
    assert "held  300ms" in table
    assert "BROKE 2.00s" in table
    same = demo.summarize(on, fake({"p99": True}))
    assert "TAILGUARD_ENFORCE changes nothing" in same[2]
