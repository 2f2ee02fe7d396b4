"""The live switch against a real uvicorn server: the control API and ``tailguard enforce``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tailguard import RoutePolicy, Tailguard, cli
from tailguard.server import serve_in_thread

TOKEN = "enforce-token-0123456789abcdef"
AUTH = {"authorization": f"Bearer {TOKEN}"}
LATE = 0.2  # the handler sleeps at least this long, past its 0.05 s deadline


@pytest.fixture(autouse=True)
def no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cli.TOKEN_ENV, raising=False)
    monkeypatch.delenv(cli.URL_ENV, raising=False)


@pytest.fixture
def served() -> Iterator[tuple[str, Tailguard]]:
    async def slow(request: Request) -> Response:
        await asyncio.sleep(LATE)
        return PlainTextResponse("done")

    app = Starlette(routes=[Route("/slow", slow), Route("/other", slow)])
    guard = Tailguard(
        routes={"GET /slow": RoutePolicy(deadline=0.05), "GET /other": RoutePolicy(deadline=0.05)},
        registry=CollectorRegistry(),
    )
    guard.dependency("inventory")
    guard.install(app, control_token=TOKEN, tracing=False)
    with serve_in_thread(app) as url:
        yield url, guard


def modes(url: str) -> object:
    return httpx.get(f"{url}/_tailguard/enforcement", headers=AUTH).json()


@pytest.mark.e2e
def test_the_cli_switches_for_the_next_request_and_rolls_back_in_one_command(
    served: tuple[str, Tailguard],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, guard = served
    assert httpx.get(f"{url}/slow").status_code == 504
    with caplog.at_level(logging.WARNING, logger="tailguard.enforce"):
        status = cli.main(
            ["enforce", "shadow", "--route", "GET /slow", "--url", url, "--token", TOKEN]
        )
    out, _ = capsys.readouterr()
    assert status == 0
    assert out == "route GET /slow: on -> shadow\n"
    assert httpx.get(f"{url}/slow").status_code == 200  # the very next request
    assert httpx.get(f"{url}/other").status_code == 504  # only that route
    assert "changed from on to shadow by" in caplog.text
    assert "api:127.0.0.1" in caplog.text
    assert (
        cli.main(["enforce", "0.25", "--dependency", "inventory", "--url", url, "--token", TOKEN])
        == 0
    )
    capsys.readouterr()
    assert modes(url) == {
        "default": "on",
        "routes": {"GET /slow": "shadow", "GET /other": "on", "default": "on"},
        "dependencies": {"inventory": 0.25},
    }
    # Rolling back: one command, everything.
    assert cli.main(["enforce", "on", "--url", url, "--token", TOKEN]) == 0
    printed = capsys.readouterr().out
    assert "route GET /slow: shadow -> on\n" in printed
    assert "route GET /other: on -> on (unchanged)" in printed
    assert httpx.get(f"{url}/slow").status_code == 504
    assert guard.registry is not None
    changes = guard.registry.get_sample_value(
        "tailguard_enforcement_changes_total", {"target": "route", "mode": "on"}
    )
    assert changes == 1.0  # /slow only: /other and the default were "on" already


@pytest.mark.e2e
def test_the_cli_names_what_the_service_lacks(
    served: tuple[str, Tailguard], capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = served
    status = cli.main(["enforce", "shadow", "--route", "GET /nope", "--url", url, "--token", TOKEN])
    _, err = capsys.readouterr()
    assert status == 1
    assert "422 route: no route key 'GET /nope'" in err
    assert cli.main(["enforce", "sometimes", "--url", url, "--token", TOKEN]) == 2
    assert "MODE must be" in capsys.readouterr().err


@pytest.mark.e2e
@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Bearer wrong-token-0123456789abcdef"}, {"authorization": TOKEN}],
)
def test_the_api_refuses_a_missing_or_wrong_token_and_changes_nothing(
    served: tuple[str, Tailguard], headers: dict[str, str]
) -> None:
    url, guard = served
    before = guard.enforcements.describe()
    response = httpx.post(f"{url}/_tailguard/enforcement", json={"mode": "shadow"}, headers=headers)
    assert response.status_code == 401
    assert guard.enforcements.describe() == before
    assert httpx.get(f"{url}/slow").status_code == 504
    assert httpx.get(f"{url}/_tailguard/enforcement", headers=headers).status_code == 401


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"mode": "off"}, "mode"),
        ({"mode": 2}, "mode"),
        ({}, "mode"),
        ({"mode": "on", "rout": "GET /slow"}, "rout"),
        ({"mode": "on", "route": 7}, "route"),
        ({"mode": "on", "dependency": "nope"}, "dependency"),
        (["on"], ""),
    ],
)
def test_the_api_names_the_field_of_a_bad_body_and_changes_nothing(
    served: tuple[str, Tailguard], body: object, field: str
) -> None:
    url, guard = served
    before = guard.enforcements.describe()
    response = httpx.post(f"{url}/_tailguard/enforcement", json=body, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["field"] == field
    assert guard.enforcements.describe() == before


@pytest.mark.e2e
def test_the_api_takes_a_fraction_as_a_string_and_says_what_changed(
    served: tuple[str, Tailguard],
) -> None:
    url, _ = served
    response = httpx.post(
        f"{url}/_tailguard/enforcement",
        json={"mode": "0.5", "route": "default", "by": "carol"},
        headers=AUTH,
    )
    assert response.status_code == 200
    assert response.json()["changed"] == [{"target": "route default", "from": "on", "to": 0.5}]
