"""The generated dashboards and rules: committed as generated, linted, tied to the catalog.

The real-Prometheus run of every panel query is in test_dashboards_prometheus.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tailguard.cli import main as tailguard_cli
from tailguard.telemetry.catalog import METRICS, SPECS
from tailguard.telemetry.dashboards import RULES_FILE, VARIABLES, dashboards, render, write
from tailguard.telemetry.rules import Objectives, render_rules, rule_groups
from tests.telemetry.test_promtool import promtool  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "dashboards"
UNITS = {"s", "reqps", "percentunit", "short"}
# A catalog metric in an expression: not a recorded name (job_route:tailguard_...:...).
METRIC = re.compile(r"(?<![\w:])(tailguard_\w+?)(?:_bucket|_sum|_count)?\b(?![\w:])")


@pytest.fixture(scope="module")
def built() -> list[dict[str, Any]]:
    return [render(dashboard) for dashboard in dashboards()]


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            yield panel


def exprs(dashboard: dict[str, Any]) -> Iterator[str]:
    for panel in panels(dashboard):
        for target in panel["targets"]:
            yield target["expr"]
    for annotation in dashboard["annotations"].get("list", []):
        yield annotation["expr"]


def catalog_metrics(expr: str) -> set[str]:
    found = set()
    for name in METRIC.findall(expr):
        for suffix in ("", "_bucket", "_sum", "_count"):
            if name.removesuffix(suffix) in SPECS:
                found.add(name.removesuffix(suffix))
                break
        else:
            found.add(name)  # not in the catalog: the test below reports it
    return found


def test_the_committed_files_are_what_the_generator_writes(tmp_path: Path) -> None:
    written = write(tmp_path)
    for path in written:
        committed = COMMITTED / path.relative_to(tmp_path)
        assert committed.exists(), (
            f"{committed} is missing: run tailguard dashboards --out dashboards"
        )
        assert committed.read_text(encoding="utf-8") == path.read_text(encoding="utf-8"), (
            f"{committed} differs from the generator: run tailguard dashboards --out dashboards"
        )
    stray = {path.name for path in COMMITTED.glob("*.json")} - {path.name for path in written}
    assert stray == set(), f"dashboards/ has JSON the generator does not write: {stray}"


def test_the_command_writes_them_and_refuses_a_bad_objective(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tailguard_cli(["dashboards", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.split()
    expected = [dashboard.file_name for dashboard in dashboards()] + [RULES_FILE]
    assert printed == [str(tmp_path / name) for name in expected]
    assert all((tmp_path / name).stat().st_size > 0 for name in expected)
    assert tailguard_cli(["dashboards", "--out", str(tmp_path), "--latency-objective", "1"]) == 2
    assert "latency must be between 0 and 1" in capsys.readouterr().err
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert tailguard_cli(["dashboards", "--out", str(blocker / "below")]) == 2
    assert "cannot write to" in capsys.readouterr().err


def test_the_command_says_which_extra_it_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "grafana_foundation_sdk.builders", None)
    assert tailguard_cli(["dashboards", "--out", str(tmp_path)]) == 2
    assert "pip install 'tailguard[dashboards]'" in capsys.readouterr().err


def test_every_catalog_metric_is_on_a_panel_and_every_panel_metric_is_in_the_catalog(
    built: list[dict[str, Any]],
) -> None:
    used: set[str] = set()
    for dashboard in built:
        for expr in exprs(dashboard):
            used |= catalog_metrics(expr)
    assert used - set(SPECS) == set(), "panels query metrics the catalog does not have"
    assert {spec.name for spec in METRICS} - used == set(), "catalog metrics on no panel"


def test_exactly_one_prometheus_datasource_variable_and_the_filter_variables(
    built: list[dict[str, Any]],
) -> None:
    for dashboard in built:
        variables = dashboard["templating"]["list"]
        sources = [variable for variable in variables if variable["type"] == "datasource"]
        assert [(source["name"], source["query"]) for source in sources] == [
            ("datasource", "prometheus")
        ]
        filters = {
            variable["name"]: variable for variable in variables if variable["type"] == "query"
        }
        assert tuple(filters) == VARIABLES
        for variable in filters.values():
            assert variable["multi"] is True
            assert variable["includeAll"] is True
            assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_no_datasource_is_hard_coded(built: list[dict[str, Any]]) -> None:
    def datasources(node: Any) -> Iterator[Any]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "datasource":
                    yield value
                else:
                    yield from datasources(value)
        elif isinstance(node, list):
            for item in node:
                yield from datasources(item)

    for dashboard in built:
        found = list(datasources(dashboard["panels"])) + list(datasources(dashboard["annotations"]))
        assert found
        assert all(value == {"type": "prometheus", "uid": "${datasource}"} for value in found)


def test_every_target_has_a_datasource_and_every_panel_a_unit_legend_and_description(
    built: list[dict[str, Any]],
) -> None:
    for dashboard in built:
        for panel in panels(dashboard):
            name = f"{dashboard['title']} / {panel['title']}"
            assert panel["targets"], name
            for target in panel["targets"]:
                assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
                assert target["legendFormat"], name
            assert panel["fieldConfig"]["defaults"]["unit"] in UNITS, name
            assert len(panel["description"]) > 40, name
            if panel["type"] == "timeseries":
                assert panel["options"]["legend"]["showLegend"] is True, name


def test_rates_use_the_rate_interval(built: list[dict[str, Any]]) -> None:
    for dashboard in built:
        for expr in exprs(dashboard):
            assert set(re.findall(r"\[([^\]]*)\]", expr)) <= {"$__rate_interval"}, expr


def test_panel_ids_are_unique_and_the_layout_has_no_overlap(built: list[dict[str, Any]]) -> None:
    for dashboard in built:
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), dashboard["title"]
        assert all(isinstance(number, int) and number > 0 for number in ids)
        cells: set[tuple[int, int]] = set()
        for panel in dashboard["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, panel["title"]
            taken = {
                (x, y)
                for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])
            }
            assert not taken & cells, f"{panel['title']} overlaps another panel"
            cells |= taken


def test_uids_are_stable_and_the_schema_is_grafanas_current(built: list[dict[str, Any]]) -> None:
    assert [dashboard["uid"] for dashboard in built] == [
        "tailguard-service",
        "tailguard-dependencies",
        "tailguard-gameday",
    ]
    assert {dashboard["schemaVersion"] for dashboard in built} == {42}


def test_the_rules_use_only_catalog_metrics_and_the_objective_is_a_parameter() -> None:
    for group in rule_groups():
        for rule in group["rules"]:
            assert catalog_metrics(rule["expr"]) <= set(SPECS), rule
    strict = render_rules(Objectives(availability=0.9999))
    assert "(14.4 * 0.0001)" in strict
    assert "(14.4 * 0.001)" in render_rules()
    with pytest.raises(ValueError, match="availability"):
        Objectives(availability=1.0)


def run(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:  # noqa: F811
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=120, check=False, cwd=ROOT
    )


def test_promtool_checks_the_rules(promtool: str) -> None:  # noqa: F811
    check = run(promtool, "check", "rules", str(COMMITTED / RULES_FILE))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 30 rules found" in check.stdout


def test_promtool_rule_unit_tests_pass(promtool: str) -> None:  # noqa: F811
    tested = run(
        promtool, "test", "rules", str(COMMITTED / "rules/tests/tailguard.rules.test.yaml")
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_rule_unit_tests_can_fail(promtool: str, tmp_path: Path) -> None:  # noqa: F811
    # With a 50% availability objective, 20% of 5xx burns no budget: the page the
    # unit tests expect does not fire, and promtool says so.
    (tmp_path / "tests").mkdir()
    (tmp_path / "tailguard.rules.yaml").write_text(
        render_rules(Objectives(availability=0.5)), encoding="utf-8"
    )
    shutil.copy(COMMITTED / "rules/tests/tailguard.rules.test.yaml", tmp_path / "tests")
    tested = run(promtool, "test", "rules", str(tmp_path / "tests/tailguard.rules.test.yaml"))
    assert tested.returncode != 0
    assert "TailguardAvailabilityBudgetBurn" in tested.stdout + tested.stderr


def test_the_provisioning_files_point_at_the_dashboards() -> None:
    provider = yaml.safe_load((COMMITTED / "provisioning/dashboards/tailguard.yaml").read_text())
    assert provider["apiVersion"] == 1
    [entry] = provider["providers"]
    assert entry["type"] == "file"
    assert entry["options"]["path"] == "/var/lib/grafana/dashboards/tailguard"
    sources = yaml.safe_load((COMMITTED / "provisioning/datasources/prometheus.yaml").read_text())
    [source] = sources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"


def test_the_compose_example_mounts_what_exists_and_its_prometheus_config_is_valid(
    promtool: str,  # noqa: F811
) -> None:
    folder = ROOT / "examples" / "observability"
    compose = yaml.safe_load((folder / "compose.yaml").read_text())
    assert set(compose["services"]) == {"shop", "load", "prometheus", "grafana"}
    assert "examples.shop:app" in compose["services"]["shop"]["command"]
    mounts = {}
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            assert (folder / source).resolve().exists(), f"{source} does not exist"
            mounts[target] = (folder / source).resolve()
    provider = yaml.safe_load((COMMITTED / "provisioning/dashboards/tailguard.yaml").read_text())
    dashboards_path = provider["providers"][0]["options"]["path"]
    assert mounts[dashboards_path] == COMMITTED
    assert sorted(mounts[dashboards_path].glob("*.json"))
    assert mounts["/etc/prometheus/rules"] == (COMMITTED / RULES_FILE).parent
    assert mounts["/etc/grafana/provisioning/datasources"] == COMMITTED / "provisioning/datasources"
    config = yaml.safe_load((folder / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yaml"]
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == ["shop:8000"]
    check = run(promtool, "check", "config", str(folder / "prometheus.yml"))
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_docs_list_every_panel(built: list[dict[str, Any]]) -> None:
    reference = (ROOT / "docs" / "dashboards.md").read_text(encoding="utf-8")
    missing = [
        panel["title"]
        for dashboard in built
        for panel in panels(dashboard)
        if f"**{panel['title']}**" not in reference
    ]
    assert missing == [], f"docs/dashboards.md does not describe {missing}"
