"""The probes against a real service: plain values a tolerance can judge, clear failures."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import httpx
import pytest
from chaoslib.exceptions import ActivityFailed

from tailguard.chaostoolkit import _metrics, actions, probes
from tests.chaostoolkit.support import SECRETS, Service, closed_port, serve

pytestmark = pytest.mark.e2e

SLOW_INVENTORY = {
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


def during_the_window(
    monkeypatch: pytest.MonkeyPatch, traffic: Callable[[], object]
) -> list[float]:
    """Replace the window's wait with ``traffic``: it runs between the two scrapes."""
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        traffic()

    monkeypatch.setattr(_metrics, "time", SimpleNamespace(sleep=sleep))
    return waits


# -- values ----------------------------------------------------------------------------------


def test_route_latency_is_the_quantile_of_the_window(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    service.get("/slow", 3)  # before the window: left out
    waits = during_the_window(monkeypatch, lambda: (service.get("/ok/1", 99), service.get("/slow")))
    config = service.configuration
    p50 = probes.route_latency("/ok/{n}", quantile=0.5, window=5, configuration=config)
    p99 = probes.route_latency("GET /slow", quantile=0.99, window=5, configuration=config)
    assert waits == [5, 5]
    assert isinstance(p50, float)
    assert 0 < p50 < 0.25
    assert 0.25 < p99 <= 10  # the one 300 ms request of the window, in its bucket
    with pytest.raises(ActivityFailed, match="1 requests to route 'GET /slow' in the last 5 s"):
        probes.route_latency("GET /slow", window=5, min_requests=2, configuration=config)


def test_since_the_start_with_a_window_of_0(service: Service) -> None:
    service.get("/ok/1", 3)
    service.get("/boom")
    assert probes.route_latency("/ok/{n}", window=0, configuration=service.configuration) < 10
    ratio = probes.error_ratio(window=0, min_requests=4, configuration=service.configuration)
    assert ratio == 0.25
    assert probes.error_ratio("/boom", window=0, configuration=service.configuration) == 1.0
    with pytest.raises(ActivityFailed, match="no requests to route 'POST /boom'"):
        probes.error_ratio("POST /boom", window=0, configuration=service.configuration)


def test_error_ratio_counts_the_window_only(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    service.get("/boom", 5)
    during_the_window(monkeypatch, lambda: (service.get("/ok/1", 3), service.get("/boom")))
    config = service.configuration
    assert probes.error_ratio(window=1, configuration=config) == 0.25
    assert probes.error_ratio("/ok/{n}", window=1, configuration=config) == 0.0


def test_a_real_window_without_traffic_is_too_few_to_judge(service: Service) -> None:
    service.get("/ok/1")
    with pytest.raises(ActivityFailed) as failed:
        probes.error_ratio("/ok/{n}", window=0.05, configuration=service.configuration)
    assert str(failed.value) == (
        "error_ratio: 0 requests to route '/ok/{n}' in the last 0.05 s, fewer than "
        "min_requests=1: too few to judge (is traffic reaching it?)"
    )


def test_shed_ratio_counts_admission_sheds(service: Service) -> None:
    first = threading.Thread(target=service.get, args=("/busy",))
    first.start()
    try:
        assert service.entered.wait(30)
        assert service.get("/busy") == [503]  # one at a time, no queue
    finally:
        service.release.set()
        first.join(30)
    service.get("/ok/1", 2)
    config = service.configuration
    assert probes.shed_ratio("/busy", window=0, configuration=config) == 0.5
    assert probes.shed_ratio(window=0, configuration=config) == 0.25
    assert probes.error_ratio("/busy", window=0, configuration=config) == 0.5


def test_orphaned_tasks_counts_tasks_that_outlived_their_request(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    service.get("/orphan")
    service.get("/ok/1")
    assert probes.orphaned_tasks(window=0, configuration=service.configuration) == 1
    during_the_window(monkeypatch, lambda: service.get("/orphan", 2))
    found = probes.orphaned_tasks("GET /orphan", window=1, configuration=service.configuration)
    assert (type(found), found) == (int, 2)
    assert probes.orphaned_tasks("/ok/{n}", window=0, configuration=service.configuration) == 0


def test_status_and_experiment_running(service: Service) -> None:
    config = service.configuration
    state = probes.status(config, SECRETS)
    assert (state["enabled"], state["experiments"]) == (True, [])
    assert probes.experiment_running(configuration=config, secrets=SECRETS) is False
    actions.start_experiment(experiment=SLOW_INVENTORY, configuration=config, secrets=SECRETS)
    assert probes.experiment_running("slow-db", config, SECRETS) is True
    assert probes.experiment_running("other", config, SECRETS) is False
    assert probes.experiment_running(configuration=config, secrets=SECRETS) is True


def test_the_token_can_come_from_the_environment(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TAILGUARD_URL", service.url)
    monkeypatch.setenv("TAILGUARD_TOKEN", SECRETS["tailguard_token"])
    assert probes.status()["enabled"] is True
    service.get("/ok/1")
    assert probes.error_ratio(window=0) == 0.0


# -- failures --------------------------------------------------------------------------------


def test_a_wrong_token_fails_with_a_clear_message(service: Service) -> None:
    wrong = {"tailguard_token": "wrong-token-0123456789"}
    with pytest.raises(ActivityFailed) as failed:
        probes.status(service.configuration, wrong)
    assert str(failed.value) == (
        "status: 401 the bearer token is not valid (the control API refused the token: "
        "check the secret tailguard_token or TAILGUARD_TOKEN)"
    )
    with pytest.raises(ActivityFailed, match="no control token: put tailguard_token"):
        probes.experiment_running("x", service.configuration, None)


def test_a_wrong_service_fails_with_a_clear_message() -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    config = {"tailguard_url": dead}
    with pytest.raises(ActivityFailed) as failed:
        probes.error_ratio(window=0, configuration=config)
    assert str(failed.value).startswith(f"cannot reach {dead}/metrics: ")
    assert str(failed.value).endswith("(is configuration tailguard_url right?)")
    with pytest.raises(ActivityFailed) as failed:
        probes.status(config, SECRETS)
    assert str(failed.value).startswith(f"status: cannot reach {dead}/_tailguard/status: ")
    assert str(failed.value).endswith(f"(is configuration tailguard_url right? it is {dead})")


def test_a_service_without_tailguard_fails_with_a_clear_message(service: Service) -> None:
    wrong_path = {**service.configuration, "tailguard_metrics_path": "/nothing"}
    with pytest.raises(ActivityFailed) as failed:
        probes.route_latency("/ok/{n}", window=0, configuration=wrong_path)
    assert str(failed.value) == (
        f"{service.url}/nothing answered 404, not tailguard's metrics "
        "(check configuration tailguard_url and tailguard_metrics_path)"
    )
    no_api = {**service.configuration, "tailguard_prefix": "/elsewhere"}
    with pytest.raises(ActivityFailed, match=r"404 unexpected answer .*\(no tailguard control API"):
        probes.status(no_api, SECRETS)


def test_a_route_without_requests_names_the_routes_that_have_some(service: Service) -> None:
    service.get("/ok/1")
    with pytest.raises(ActivityFailed) as failed:
        probes.route_latency("/ok/{id}", window=0, configuration=service.configuration)
    assert str(failed.value) == (
        f"route_latency: {service.url}/metrics has no requests to route '/ok/{{id}}' since it "
        "started (routes with requests: '/ok/{n}')"
    )
    with pytest.raises(ActivityFailed, match="no requests to route '/nope'"):
        probes.error_ratio("/nope", window=0, configuration=service.configuration)
    with pytest.raises(ActivityFailed, match="no requests to route '/nope'"):
        probes.orphaned_tasks("/nope", window=0, configuration=service.configuration)


def test_a_fresh_service_has_nothing_to_judge(service: Service) -> None:
    with pytest.raises(ActivityFailed) as failed:
        probes.error_ratio(window=0, configuration=service.configuration)
    assert str(failed.value) == (
        "error_ratio: 0 requests to the service since the service started, fewer than "
        "min_requests=1: too few to judge (is traffic reaching it?)"
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: probes.route_latency(""), "route_latency: route must be a route template"),
        (lambda: probes.route_latency(7), "route_latency: route must be a route template"),  # type: ignore[arg-type]
        (lambda: probes.route_latency("GET /stock/*"), r"not a prefix key, got 'GET /stock/\*'"),
        (lambda: probes.route_latency("/a", quantile=0), r"quantile must be a number in \(0, 1\]"),
        (lambda: probes.route_latency("/a", quantile=True), "quantile must be"),
        (lambda: probes.route_latency("/a", quantile=1.5), "got 1.5"),
        (lambda: probes.error_ratio(window=-1), "window must be a number of seconds from 0"),
        (lambda: probes.error_ratio(window=math.inf), "window must be"),
        (lambda: probes.error_ratio(window="5"), "window must be"),  # type: ignore[arg-type]
        (lambda: probes.shed_ratio(min_requests=0), "min_requests must be a whole number"),
        (lambda: probes.shed_ratio(min_requests=2.5), "min_requests must be"),  # type: ignore[arg-type]
        (lambda: probes.experiment_running(3), "name must be a string, got 3"),  # type: ignore[arg-type]
    ],
)
def test_bad_arguments_are_named(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ActivityFailed, match=message):
        call()


@pytest.mark.parametrize(
    ("configuration", "message"),
    [
        ({"tailguard_url": "127.0.0.1:8000"}, "tailguard_url must be an http:// or https:// URL"),
        ({"tailguard_url": ""}, "configuration tailguard_url must be a non-empty string"),
        ({"tailguard_timeout": 0}, "tailguard_timeout must be a positive number of seconds"),
        ({"tailguard_timeout": "soon"}, "got 'soon'"),
        ({"tailguard_timeout": True}, "got True"),
        ({"tailguard_prefix": "ops/"}, "tailguard_prefix must start with '/'"),
        ({"tailguard_metrics_path": "/m/"}, "tailguard_metrics_path must start with '/'"),
    ],
)
def test_bad_configuration_is_named(configuration: dict[str, object], message: str) -> None:
    with pytest.raises(ActivityFailed, match=message):
        if "tailguard_metrics_path" in configuration:
            probes.error_ratio(window=0, configuration=configuration)
        else:
            probes.status(configuration, SECRETS)


def test_a_timeout_from_the_environment_is_a_string() -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    config = {"tailguard_url": dead, "tailguard_timeout": "2.5"}
    with pytest.raises(ActivityFailed, match="cannot reach"):
        probes.status(config, SECRETS)


@pytest.mark.parametrize(
    ("token", "message"),
    [("t\u00f6ken-0123456789abc", "printable ASCII"), ("", "non-empty string")],
)
def test_a_token_that_cannot_be_sent_is_refused(token: str, message: str) -> None:
    with pytest.raises(ActivityFailed, match=message):
        probes.status({}, {"tailguard_token": token})


def test_an_answer_that_is_not_metrics_is_named() -> None:
    with pytest.raises(ActivityFailed, match="did not answer in the Prometheus text format"):
        _metrics.parse("tailguard_x{oops 1\n", "http://svc/metrics")
    with pytest.raises(ActivityFailed, match="has no tailguard metrics yet"):
        _metrics.parse("# TYPE up gauge\nup 1\n", "http://svc/metrics")


def test_counters_going_down_mean_a_restart_or_another_worker() -> None:
    text = '# TYPE tailguard_requests_total counter\ntailguard_requests_total{outcome="ok"} {n}\n'
    before = _metrics.parse(text.replace("{n}", "10"), "http://svc/metrics")
    after = _metrics.parse(text.replace("{n}", "3"), "http://svc/metrics")
    with pytest.raises(ActivityFailed, match="went down between two scrapes of http://svc"):
        _metrics.windowed(before, after, "tailguard_requests_total", {}, by="outcome")
    assert _metrics.windowed(after, before, "tailguard_requests_total", {}, by=None) == {"": 7.0}


def test_the_metrics_answer_is_read_as_text(service: Service) -> None:
    """Asked for text, the endpoint never answers OpenMetrics, which the parser would misread."""
    answer = httpx.get(f"{service.url}/metrics", headers={"accept": "text/plain"})
    assert answer.headers["content-type"].startswith("text/plain")
