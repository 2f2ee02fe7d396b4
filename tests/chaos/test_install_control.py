"""guard.install(control_token=...): the control API mounted in front of the app.

And the guard's engine records into that guard's own metrics.
"""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tailguard import Tailguard, chaos

pytestmark = pytest.mark.anyio

TOKEN = "install-token-0123456789abcdef"
AUTH = {"authorization": f"Bearer {TOKEN}"}


async def item(request: Request) -> Response:
    return PlainTextResponse("item")


def make_app() -> Starlette:
    return Starlette(routes=[Route("/items/{item_id}", item)])


def guarded(engine: chaos.Chaos) -> Tailguard:
    return Tailguard(registry=CollectorRegistry(), chaos=engine)


async def test_the_control_api_drives_the_guards_engine() -> None:
    engine = chaos.Chaos(enabled=True, seed=1)
    guard = guarded(engine)
    app = guard.install(make_app(), control_token=TOKEN, tracing=False)
    body = {
        "name": "item-503",
        "ttl": 60,
        "faults": [{"kind": "respond", "target": "GET /items/*", "status": 503, "rate": 1.0}],
    }
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        assert (await http.get("/_tailguard/status")).status_code == 401
        started = await http.post("/_tailguard/experiments", json=body, headers=AUTH)
        assert started.status_code in (200, 201), started.text
        assert [s.experiment.name for s in engine.experiments()] == ["item-503"]
        assert (await http.get("/items/1")).status_code == 503  # the route fault answers
        snapshot = await http.get("/_tailguard/snapshot", headers=AUTH)
        assert set(snapshot.json()) >= {"requests", "tasks", "limiters", "dependencies"}
        assert (await http.post("/_tailguard/halt", headers=AUTH)).status_code == 200
        assert (await http.get("/items/1")).status_code == 200
    assert engine.experiments() == []


def test_a_bad_token_or_path_changes_nothing() -> None:
    app = make_app()
    guard = guarded(chaos.Chaos(enabled=True))
    with pytest.raises(ValueError, match="token"):
        guard.install(app, control_token="short")
    with pytest.raises(ValueError, match="control_path"):
        guard.install(app, control_token=TOKEN, control_path="_tailguard")
    assert app.user_middleware == []
    assert guard.endpoints == ()


async def test_without_a_token_there_is_no_control_api() -> None:
    app = guarded(chaos.Chaos(enabled=True)).install(make_app(), tracing=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        assert (await http.get("/_tailguard/status", headers=AUTH)).status_code == 404


def test_each_guards_engine_records_into_that_guards_registry() -> None:
    """No "last guard wins": two guards in one process keep their chaos metrics apart."""
    first, second = CollectorRegistry(), CollectorRegistry()
    mine, theirs = chaos.Chaos(enabled=True, seed=1), chaos.Chaos(enabled=True, seed=1)
    Tailguard(registry=first, chaos=mine).dependency("db")
    Tailguard(registry=second, chaos=theirs).dependency("db")  # created last
    try:
        for engine, name in ((mine, "mine"), (theirs, "theirs")):
            engine.start(chaos.Experiment(name, faults=[chaos.Raise("db", exc=OSError)], ttl=60))
            injection = engine.plan("db")
            assert injection is not None
            injection.finish()
    finally:
        mine.halt()
        theirs.halt()

    def injected(registry: CollectorRegistry, experiment: str) -> float | None:
        labels = {"experiment": experiment, "target": "db", "fault": "raise"}
        return registry.get_sample_value("tailguard_chaos_injections_total", labels)

    assert (injected(first, "mine"), injected(first, "theirs")) == (1.0, None)
    assert (injected(second, "mine"), injected(second, "theirs")) == (None, 1.0)
