"""Every query of every generated panel, run by a real Prometheus against the example shop.

The test starts Debian's ``/usr/bin/prometheus`` on 127.0.0.1 (scraping every
second, evaluating the generated rules every second) and the example shop
(``examples.shop:app``) under uvicorn with chaos enabled, runs the
``slow-inventory`` experiment while a few seconds of mixed traffic go by,
stops it, and then sends each panel query and annotation of the three
dashboards, with the template variables replaced by the values Prometheus
found (as Grafana formats a multi-value selection) and ``$__rate_interval``
by a window that spans the test, to Prometheus's HTTP API. Each must succeed
and return data, except the panels in :data:`NO_DATA`, which say why.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tailguard.cli import main as tailguard_cli
from tailguard.telemetry.dashboards import VARIABLES, dashboards, render, write
from tests.processes import free_port, stop, wait_until_up

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = "/usr/bin/prometheus"
RATE_WINDOW = "1m"
"""Stands in for ``$__rate_interval``: longer than the whole test, so every rate sees it all."""
LOAD_SECONDS = 6.0
EXPERIMENT = {
    "name": "slow-inventory",
    "ttl": 120,
    "faults": [
        {
            "kind": "latency",
            "target": "inventory",
            "rate": 0.3,
            "delay": {"lognormal": {"p50": 0.05, "p99": 0.5}},
        }
    ],
    "routes": ["GET /stock/*"],
}

NO_DATA = {
    "Requests by tenant": "the shop resolves no tenants (no tenant_header= or tenant=), "
    "so tailguard_tenant_requests_total is never recorded",
    "Shed share by tenant": "the same: no tenants in the shop",
    "Attempts and cancelled losers by call site": "the shop calls no tail helper "
    "(hedge, race, quorum, fanout, fallback)",
    "Hedges by event": "the shop hedges nothing",
    "Hedge load and wins; slow fan-outs": "the shop neither hedges nor fans out",
    "Live orphaned tasks by route": "the shop's handlers leave no task running after "
    "their request (tailguard_tasks_live only has series for orphans)",
    "Tasks spawned / orphaned": "spawned has data (a streaming response "
    "spawns tasks), orphaned cannot: no task of the shop outlives its request",
    "Injections skipped or failed": "slow-inventory sets no max_injections, so no "
    "injection is ever skipped, and its faults always apply, so none fails",
    "Pool queue wait p99": "the shop's handlers are async and run no blocking work "
    "in a thread pool, so no job waits for a thread",
}
"""Panels that can only show data in a condition this test cannot cause, and why."""


@dataclass(frozen=True)
class Server:
    url: str
    port: int


@pytest.fixture(scope="module")
def token() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, token: str) -> Iterator[Server]:
    pytest.importorskip("uvicorn")
    log = tmp_path_factory.mktemp("shop") / "uvicorn.log"
    port = free_port()
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
        yield Server(url, port)
    finally:
        stop(process)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, shop: Server) -> Iterator[Server]:
    if not Path(PROMETHEUS).exists():
        if os.environ.get("TAILGUARD_REQUIRE_PROMTOOL") or os.environ.get("CI"):
            pytest.fail(f"{PROMETHEUS} is missing: apt-get install prometheus (make test does)")
        pytest.skip(f"{PROMETHEUS} is missing (apt-get install prometheus)")
    home = tmp_path_factory.mktemp("prometheus")
    rules = [path for path in write(home / "generated") if path.suffix == ".yaml"]
    config = home / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: [{', '.join(str(path) for path in rules)}]\n"
        "scrape_configs:\n  - job_name: shop\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{shop.port}']}}]\n",
        encoding="utf-8",
    )
    port = free_port()
    log = home / "prometheus.log"
    command = [
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={home / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=home, stdout=output, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(f"{url}/-/ready", process, log)
        yield Server(url, port)
    finally:
        stop(process)


async def load(base_url: str, seconds: float) -> int:
    """Mixed traffic from 24 clients for ``seconds``; returns the number of requests sent."""
    paths = [
        "/stock/1",
        "/stock/3",
        "/stock/1",
        "/items/1",
        "/search?q=a",
        "/feed",
        "/reports/daily?work_ms=5",
        "/quote/2",
    ]
    sent = 0
    end = asyncio.get_running_loop().time() + seconds

    async def client(number: int, http: httpx.AsyncClient) -> None:
        nonlocal sent
        index = number
        while asyncio.get_running_loop().time() < end:
            path = paths[index % len(paths)]
            index += 1
            sent += 1
            try:
                await http.get(path)
            except httpx.HTTPError:  # /feed is cut off mid-stream by its deadline
                pass

    limits = httpx.Limits(max_connections=24)
    async with httpx.AsyncClient(base_url=base_url, timeout=5, limits=limits) as http:
        await asyncio.gather(*(client(number, http) for number in range(24)))
    return sent


async def burst(base_url: str, token: str, requests: int = 60) -> int:
    """Far more lookups at once than the inventory bulkhead holds (4 slots, 8 waiting).

    The mixed load sheds only when the machine keeps up with it. Here every
    inventory call holds its slot for 0.2 s (a second experiment) while 60
    lookups arrive: at most 12 fit, so the shed panels have data on any machine.
    """
    headers = {"authorization": f"Bearer {token}"}
    hold = {
        "name": "hold-inventory",
        "ttl": 30,
        "faults": [{"kind": "latency", "target": "inventory", "rate": 1.0, "delay": 0.2}],
    }
    limits = httpx.Limits(max_connections=requests)
    async with httpx.AsyncClient(base_url=base_url, timeout=5, limits=limits) as http:
        started = await http.post("/_tailguard/experiments", json=hold, headers=headers)
        assert started.status_code == 201, started.text
        try:
            answers = await asyncio.gather(
                *(http.get("/stock/1") for _ in range(requests)), return_exceptions=True
            )
        finally:
            await http.delete("/_tailguard/experiments/hold-inventory", headers=headers)
    statuses = [answer.status_code for answer in answers if isinstance(answer, httpx.Response)]
    assert 503 in statuses, f"a burst of {requests} was not shed: {statuses}"
    return requests


async def shadow_burst(base_url: str, token: str, requests: int = 40) -> int:
    """The same kind of burst in shadow mode, so the rollout panels have their shadow half.

    Inventory and payments hold their slots for 1 s while lookups (over the
    inventory bulkhead: 4 slots, 8 waiting), one tenant's orders (twice what the
    route admits and queues: 16 + 32) and searches (past their 150 ms deadline)
    arrive: all are served, and what would have happened is counted. The hold is
    long on purpose: on a loaded machine the requests take a while to all arrive.
    """
    headers = {"authorization": f"Bearer {token}"}
    hold = {
        "name": "hold-in-shadow",
        "ttl": 30,
        "faults": [
            {"kind": "latency", "target": "inventory", "rate": 1.0, "delay": 1.0},
            {"kind": "latency", "target": "payments", "rate": 1.0, "delay": 1.0},
        ],
    }
    orders = 96
    limits = httpx.Limits(max_connections=2 * requests + orders)
    async with httpx.AsyncClient(base_url=base_url, timeout=20, limits=limits) as http:
        started = await http.post("/_tailguard/experiments", json=hold, headers=headers)
        assert started.status_code == 201, started.text
        try:
            answers = await asyncio.gather(
                *(http.get("/stock/1") for _ in range(requests)),
                *(
                    http.post("/orders", json={"item": 1}, headers={"x-tenant-id": "acme"})
                    for _ in range(orders)
                ),
                *(http.get("/search?q=a&work_ms=300") for _ in range(requests // 4)),
                return_exceptions=True,
            )
        finally:
            await http.delete("/_tailguard/experiments/hold-in-shadow", headers=headers)
    statuses = [answer.status_code for answer in answers if isinstance(answer, httpx.Response)]
    assert 503 not in statuses, f"shadow mode shed: {statuses}"
    return len(answers)


def query(prometheus: Server, expr: str, since: float | None = None) -> dict[str, Any]:
    """An instant query, or a range query from ``since`` to now (as a Grafana panel asks)."""
    if since is None:
        url, params = f"{prometheus.url}/api/v1/query", {"query": expr}
    else:
        url = f"{prometheus.url}/api/v1/query_range"
        params = {"query": expr, "start": f"{since:.3f}", "end": f"{time.time():.3f}", "step": "1"}
    answer = httpx.get(url, params=params, timeout=10)
    body: dict[str, Any] = answer.json()
    assert answer.status_code == 200, f"{expr}\n{body}"
    assert body["status"] == "success", f"{expr}\n{body}"
    return body


def wait_for_series(prometheus: Server, expr: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if query(prometheus, expr)["data"]["result"]:
            return
        time.sleep(0.25)
    pytest.fail(f"Prometheus never had data for {expr}")


def regex_escape(value: str) -> str:
    """Like Grafana's Prometheus data source, for a value in a multi-value ``=~`` selection."""
    return re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\\\1", value)


def variable_values(prometheus: Server) -> dict[str, str]:
    """Every real value of each template variable, formatted as Grafana does: ``(a|b)``."""
    sources = {
        "job": "tailguard_requests_total",
        "instance": "tailguard_requests_total",
        "route": "tailguard_requests_total",
        "dependency": "tailguard_dependency_calls_total",
    }
    values = {}
    for name in VARIABLES:
        answer = httpx.get(
            f"{prometheus.url}/api/v1/label/{name}/values",
            params={"match[]": sources[name]},
            timeout=10,
        ).json()
        found = answer["data"]
        assert found, f"Prometheus has no value for ${name}"
        values[name] = "(" + "|".join(regex_escape(value) for value in found) + ")"
    return values


def substitute(expr: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        expr = expr.replace(f"${name}", value)
    return expr.replace("$__rate_interval", RATE_WINDOW)


@dataclass(frozen=True)
class GameDay:
    started: float
    """Unix time when the experiment started."""
    variables: dict[str, str]


@pytest.fixture(scope="module")
def game_day(
    prometheus: Server, shop: Server, token: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Run the game-day once for every test of this module; returns the variables' values."""
    experiments = tmp_path_factory.mktemp("experiment")
    # examples/chaos/slow-inventory.yaml without its safeguard, which this much shedding
    # would trip at once: the test stops the experiment itself.
    experiment = experiments / "slow-inventory.json"
    experiment.write_text(json.dumps(EXPERIMENT), encoding="utf-8")
    common = ["--url", shop.url, "--token", token]
    started = time.time()
    assert tailguard_cli(["chaos", "start", str(experiment), *common]) == 0
    try:
        sent = asyncio.run(load(shop.url, LOAD_SECONDS))
        sent += asyncio.run(burst(shop.url, token))
        assert tailguard_cli(["enforce", "shadow", *common]) == 0
        try:
            sent += asyncio.run(shadow_burst(shop.url, token))
        finally:
            assert tailguard_cli(["enforce", "on", *common]) == 0
        assert sent > 100
        wait_for_series(prometheus, "tailguard_chaos_injections_total")
        for name in (
            "tailguard_requests_would_shed_total",
            "tailguard_requests_would_exceed_deadline_total",
            "tailguard_dependency_calls_would_shed_total",
        ):
            wait_for_series(prometheus, name)
    finally:
        assert tailguard_cli(["chaos", "stop", "slow-inventory", *common]) == 0
    # After the stop has been scraped and the recording rules have run on it:
    wait_for_series(prometheus, "tailguard_chaos_experiments_ended_total")
    wait_for_series(prometheus, "job_route:tailguard_requests_late:ratio_rate5m")
    time.sleep(2.5)  # two more scrapes, so the gauge's drop to 0 is a second sample
    return GameDay(started, variable_values(prometheus))


def test_every_panel_query_returns_data_from_a_real_prometheus(
    prometheus: Server, game_day: GameDay
) -> None:
    empty: list[str] = []
    titles: set[str] = set()
    for dashboard in dashboards():
        built = render(dashboard)
        for panel in built["panels"]:
            if panel["type"] == "row":
                continue
            titles.add(panel["title"])
            for target in panel["targets"]:
                expr = substitute(target["expr"], game_day.variables)
                assert "$" not in expr, f"{panel['title']}: unsubstituted variable in {expr}"
                result = query(prometheus, expr, game_day.started)["data"]["result"]
                if not result and panel["title"] not in NO_DATA:
                    empty.append(f"{dashboard.title} / {panel['title']} / {target['refId']}")
        for annotation in built["annotations"].get("list", []):
            expr = substitute(annotation["expr"], game_day.variables)
            assert query(prometheus, expr, game_day.started)["data"]["result"], annotation["name"]
    assert empty == [], "panels without data:\n" + "\n".join(empty)
    assert set(NO_DATA) <= titles, "NO_DATA names a panel that no longer exists"


def test_the_generated_rules_load_and_evaluate(prometheus: Server, game_day: GameDay) -> None:
    answer = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()
    rules = [rule for group in answer["data"]["groups"] for rule in group["rules"]]
    assert len(rules) == 30
    assert all(rule["health"] == "ok" for rule in rules), [
        (rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"
    ]
    # Every /feed stream outlives its 300 ms budget and is cut off: late, as recorded.
    late = query(prometheus, 'job_route:tailguard_requests_late:ratio_rate5m{route="/feed"}')
    assert [float(found["value"][1]) for found in late["data"]["result"]] == [1.0]
    ok = query(
        prometheus, 'job_route:tailguard_requests_late:ratio_rate5m{route="/items/{item_id}"}'
    )
    assert [float(found["value"][1]) for found in ok["data"]["result"]] == [0.0]


def test_prometheus_is_really_there() -> None:
    # The end-to-end tests above skip only where the binary is missing outside CI.
    if shutil.which("prometheus") is None and not Path(PROMETHEUS).exists():
        pytest.skip("prometheus is not installed")
    version = subprocess.run(
        [PROMETHEUS, "--version"], capture_output=True, timeout=30, check=False
    )
    assert version.returncode == 0
    assert b"prometheus, version" in version.stdout + version.stderr
