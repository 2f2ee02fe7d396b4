"""A ``Respond`` fault with a status that has no body takes no body (issue 13, item 8).

A 204, 205 or 304 with a body made uvicorn drop the connection ("Response
content longer than Content-Length"); such a fault is refused when built,
naming ``body``, by the Python API, the document validator and the JSON
Schema alike. 1xx statuses are refused outright. Without a body, the fault
answers on a real server and the connection stays usable.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from jsonschema import Draft202012Validator
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tailguard import Tailguard
from tailguard.chaos import (
    EXPERIMENT_JSON_SCHEMA,
    Chaos,
    Experiment,
    ExperimentError,
    Respond,
    experiment_from_dict,
)
from tailguard.server import serve_in_thread


@pytest.mark.parametrize("status", [204, 205, 304])
def test_a_no_body_status_with_a_body_is_refused_naming_body(status: int) -> None:
    with pytest.raises(ValueError, match=f"^Respond: body must be empty with status {status}"):
        Respond("db", status=status, body="x")
    assert Respond("db", status=status).body == ""  # without one it is fine
    assert Respond("db", status=200, body="x").body == "x"


@pytest.mark.parametrize("status", [100, 101, 103, 199])
def test_informational_statuses_are_refused(status: int) -> None:
    with pytest.raises(ValueError, match="status must be an int from 200 to 599"):
        Respond("db", status=status)


def document(status: int, body: str | None) -> dict[str, object]:
    fault: dict[str, object] = {"kind": "respond", "target": "GET /items/*", "status": status}
    if body is not None:
        fault["body"] = body
    return {"name": "no-body", "ttl": 60, "faults": [fault]}


@pytest.mark.parametrize("status", [204, 205, 304])
def test_documents_and_the_json_schema_refuse_it_too(status: int) -> None:
    with pytest.raises(ExperimentError) as refused:
        experiment_from_dict(document(status, "gone"))
    assert refused.value.field == "faults[0].body"
    assert "has no body" in refused.value.message
    validator = Draft202012Validator(EXPERIMENT_JSON_SCHEMA)
    assert not validator.is_valid(document(status, "gone"))
    for body in (None, ""):
        assert validator.is_valid(document(status, body))
        experiment_from_dict(document(status, body))
    assert validator.is_valid(document(200, "gone"))


@pytest.fixture
def served() -> Iterator[tuple[Chaos, str]]:
    engine = Chaos(enabled=True, seed=1)
    guard = Tailguard(chaos=engine, registry=CollectorRegistry())

    async def item(request: Request) -> PlainTextResponse:
        return PlainTextResponse("from the app")

    app = guard.install(
        Starlette(routes=[Route("/items/{item_id}", item)]), metrics_path=None, tracing=False
    )
    try:
        with serve_in_thread(app, log_level="critical") as url:
            yield engine, url
    finally:
        engine.halt()


@pytest.mark.e2e
@pytest.mark.parametrize("status", [204, 304])
def test_a_no_body_response_keeps_the_connection_usable(
    served: tuple[Chaos, str], status: int
) -> None:
    engine, url = served
    engine.start(Experiment("empty", faults=[Respond("GET /items/*", status=status)], ttl=60))
    with httpx.Client(base_url=url, timeout=10.0) as client:
        for _ in range(3):  # one keep-alive connection: a framing error would break it
            answer = client.get("/items/1")
            assert answer.status_code == status
            assert answer.content == b""
            assert answer.headers["x-tailguard-chaos"] == "empty"
        engine.halt()
        assert client.get("/items/1").text == "from the app"
