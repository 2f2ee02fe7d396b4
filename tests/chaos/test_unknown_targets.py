"""Experiments naming a dependency or route the service lacks are refused (issue 13, item 12).

Such an experiment used to start and "prove" resilience with zero
injections. The engine now learns what exists from its guard (dependencies
declared so far, the installed app's route templates, read when asked), and
``start`` refuses what matches nothing unless ``allow_unknown`` (a field of
the experiment, a keyword of ``start``, a flag of the control API and the
CLI). ``tailguard chaos validate FILE --url`` checks a file against a running
service without starting it. The app is FastAPI with an ``APIRouter``
prefix: the mistake the issue found is a key without the prefix.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry

from tailguard import Tailguard, cli
from tailguard.chaos import (
    Chaos,
    Experiment,
    ExperimentError,
    Latency,
    Raise,
    UnknownTargets,
    experiment_from_dict,
    experiment_to_dict,
)
from tailguard.server import serve_in_thread

TOKEN = "unknown-targets-0123456789"


def service(engine: Chaos) -> tuple[Tailguard, FastAPI]:
    guard = Tailguard(chaos=engine, registry=CollectorRegistry())
    inventory = guard.dependency("inventory")
    router = APIRouter(prefix="/api")

    @router.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        async with inventory:
            return {"item": item_id}

    app = FastAPI()
    app.include_router(router)
    guard.install(app, metrics_path=None, tracing=False, control_token=TOKEN)
    return guard, app


@pytest.fixture
def shop() -> Iterator[tuple[Tailguard, FastAPI, Chaos]]:
    engine = Chaos(enabled=True, seed=2)
    guard, app = service(engine)
    yield guard, app, engine
    engine.halt()


@pytest.mark.parametrize(
    ("experiment", "field", "words"),
    [
        (
            Experiment("typo", faults=[Raise("invntory", exc=OSError)], ttl=60),
            "faults[0].target",
            "no dependency matches 'invntory' (declared: inventory)",
        ),
        (
            Experiment("no-prefix", faults=[Latency("GET /items/*", delay=0.1)], ttl=60),
            "faults[0].target",
            "no route of the app matches 'GET /items/*'",
        ),
        (
            Experiment(
                "wrong-method", faults=[Latency("POST /api/items/{item_id}", delay=0.1)], ttl=60
            ),
            "faults[0].target",
            "no route of the app matches 'POST /api/items/{item_id}'",
        ),
        (
            Experiment(
                "wrong-param",
                faults=[Raise("inventory", exc=OSError)],
                routes=["/api/items/{id}"],
                ttl=60,
            ),
            "routes[0]",
            "no route of the app matches '/api/items/{id}'",
        ),
    ],
)
def test_start_refuses_what_the_service_does_not_have(
    shop: tuple[Tailguard, FastAPI, Chaos], experiment: Experiment, field: str, words: str
) -> None:
    _, _, engine = shop
    with pytest.raises(UnknownTargets) as refused:
        engine.start(experiment)
    assert refused.value.field == field
    assert words in str(refused.value)
    assert "allow_unknown" in str(refused.value)
    assert not engine.armed
    engine.start(experiment, allow_unknown=True)
    assert engine.armed


def test_what_exists_starts(shop: tuple[Tailguard, FastAPI, Chaos]) -> None:
    _, _, engine = shop
    engine.start(
        Experiment(
            "fine",
            faults=[Raise("inv*", exc=OSError), Latency("GET /api/items/*", delay=0.0)],
            routes=["GET /api/items/{item_id}"],
            ttl=60,
        )
    )
    assert engine.armed


def test_a_dependency_declared_later_leaves_the_unknown_list(
    shop: tuple[Tailguard, FastAPI, Chaos],
) -> None:
    guard, _, engine = shop
    lazy = Experiment("lazy", faults=[Raise("payments", exc=OSError)], ttl=60, allow_unknown=True)
    engine.start(lazy)  # the experiment's own allow_unknown
    [running] = engine.status()["experiments"]
    assert running["unknown"] == [
        {
            "field": "faults[0].target",
            "detail": "no dependency matches 'payments' (declared: inventory)",
        }
    ]
    guard.dependency("payments")  # declared after the start: hit from now on
    assert engine.status()["experiments"][0]["unknown"] == []


def test_an_engine_told_nothing_checks_nothing() -> None:
    engine = Chaos(enabled=True)
    engine.start(Experiment("free", faults=[Raise("anything", exc=OSError)], ttl=60))
    engine.halt()
    guard = Tailguard(chaos=Chaos(enabled=True), registry=CollectorRegistry())
    guard.dependency("db")
    # Not installed: routes are unknown, so route keys are not checked yet.
    guard.chaos.start(Experiment("routes", faults=[Latency("/x", delay=0.0)], ttl=60))
    guard.chaos.halt()


def test_allow_unknown_is_part_of_the_document() -> None:
    document = {
        "name": "x",
        "ttl": 60,
        "faults": [{"kind": "hang", "target": "db"}],
        "allow_unknown": True,
    }
    experiment = experiment_from_dict(document)
    assert experiment.allow_unknown
    assert experiment_to_dict(experiment)["allow_unknown"] is True
    assert "allow_unknown" not in experiment_to_dict(
        experiment_from_dict({**document, "allow_unknown": False})
    )
    with pytest.raises(ExperimentError) as refused:
        experiment_from_dict({**document, "allow_unknown": "yes"})
    assert refused.value.field == "allow_unknown"
    with pytest.raises(ValueError, match="allow_unknown must be True or False"):
        Experiment("x", faults=[Raise("db", exc=OSError)], ttl=1, allow_unknown=1)  # type: ignore[arg-type]


# -- the control API ---------------------------------------------------------------------------

TYPO = {"name": "typo", "ttl": 60, "faults": [{"kind": "hang", "target": "invntory"}]}
GOOD = {"name": "good", "ttl": 60, "faults": [{"kind": "hang", "target": "inventory"}]}


@pytest.mark.anyio
async def test_the_control_api_refuses_and_validates(
    shop: tuple[Tailguard, FastAPI, Chaos],
) -> None:
    _, app, engine = shop
    transport = httpx.ASGITransport(app=app)
    headers = {"authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://shop/_tailguard", headers=headers
    ) as client:
        refused = await client.post("/experiments", json=TYPO)
        assert refused.status_code == 422
        assert refused.json()["field"] == "faults[0].target"
        assert "no dependency matches 'invntory'" in refused.json()["detail"]
        assert not engine.armed

        checked = await client.post("/validate", json=TYPO)
        assert checked.status_code == 200
        assert checked.json()["unknown"][0]["field"] == "faults[0].target"
        assert checked.json()["would_start"] is False
        assert not engine.armed  # validating starts nothing
        lenient = await client.post("/validate", params={"allow_unknown": "true"}, json=TYPO)
        assert lenient.json()["would_start"] is True
        assert (await client.post("/validate", json=GOOD)).json() == {
            "experiment": GOOD | {"faults": [GOOD["faults"][0] | {"rate": 1.0}], "ttl": 60.0},
            "unknown": [],
            "enabled": True,
            "running": False,
            "would_start": True,
        }
        off = await client.post("/experiments", params={"allow_unknown": "false"}, json=TYPO)
        assert off.status_code == 422
        bad_flag = await client.post("/experiments", params={"allow_unknown": "maybe"}, json=TYPO)
        assert (bad_flag.status_code, bad_flag.json()["field"]) == (400, "allow_unknown")
        invalid = await client.post("/validate", json={**GOOD, "ttl": -1})
        assert (invalid.status_code, invalid.json()["field"]) == (422, "ttl")

        started = await client.post("/experiments", params={"allow_unknown": "1"}, json=TYPO)
        assert started.status_code == 201
        assert started.json()["unknown"][0]["field"] == "faults[0].target"  # still said
        assert engine.armed
        assert (await client.post("/validate", json=TYPO)).json()["running"] is True
        assert (
            await client.post("/validate", json=GOOD, headers={"authorization": "x"})
        ).status_code == 401


def test_the_openapi_document_has_the_validate_endpoint_and_the_flag() -> None:
    from tailguard.chaos import ControlAPI

    document = ControlAPI(Chaos(enabled=True), token=TOKEN).openapi()
    assert "post" in document["paths"]["/_tailguard/validate"]
    start = document["paths"]["/_tailguard/experiments"]["post"]
    assert [p["name"] for p in start["parameters"]] == ["allow_unknown"]
    assert "allow_unknown" in document["components"]["schemas"]["Experiment"]["properties"]


# -- the command line, against a real server ---------------------------------------------------


@pytest.fixture
def served(shop: tuple[Tailguard, FastAPI, Chaos]) -> Iterator[tuple[str, Chaos]]:
    _, app, engine = shop
    with serve_in_thread(app, log_level="critical") as url:
        yield url, engine


@pytest.mark.e2e
def test_validate_and_start_from_the_command_line(
    served: tuple[str, Chaos],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, engine = served
    monkeypatch.setenv(cli.TOKEN_ENV, TOKEN)
    typo, good = tmp_path / "typo.json", tmp_path / "good.json"
    typo.write_text(json.dumps(TYPO))
    good.write_text(json.dumps(GOOD))

    assert cli.main(["chaos", "validate", str(typo), "--url", url]) == 1
    out, _ = capsys.readouterr()
    assert out == (
        f"{typo}: typo is valid (1 fault) for {url}\n"
        "  hang invntory rate=1.0\n"
        "names what the service does not have:\n"
        "  faults[0].target: no dependency matches 'invntory' (declared: inventory)\n"
        "it would not start: fix the names, or start it with --allow-unknown\n"
    )
    assert not engine.armed

    assert cli.main(["chaos", "validate", str(good), "--url", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["would_start"] is True

    assert cli.main(["chaos", "start", str(typo), "--url", url]) == 1
    _, err = capsys.readouterr()
    assert err.startswith("tailguard chaos start: error: 422 faults[0].target: experiment 'typo'")
    assert not engine.armed

    assert cli.main(["chaos", "start", str(typo), "--url", url, "--allow-unknown"]) == 0
    assert capsys.readouterr().out.startswith("started typo")
    assert engine.armed


def test_the_validation_says_why_it_would_not_start() -> None:
    from tailguard.chaos._client import render_validation

    answer = {"experiment": {"name": "x", "faults": []}, "unknown": []}
    disabled = render_validation({**answer, "enabled": False}, file="f", url="u")
    assert disabled.endswith("it would not start: chaos is disabled in this service")
    running = render_validation({**answer, "enabled": True, "running": True}, file="f", url="u")
    assert running.endswith("it would not start: an experiment of that name is running")
