"""The control API: auth, routing, body validation, and that refusals change nothing."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from tailguard.chaos import Chaos, ControlAPI, ControlMiddleware
from tailguard.chaos.control import MAX_BODY_SIZE, MIN_TOKEN_LENGTH
from tailguard.chaos.schema import EXPERIMENT_JSON_SCHEMA
from tests.asgi import Sent, http_scope

pytestmark = pytest.mark.anyio

TOKEN = "test-token-0123456789abcdef"
AUTH = {"authorization": f"Bearer {TOKEN}"}
SECRET = "a-header-secret-0123"
BASE = "http://testserver"


def experiment(name: str = "slow-db", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "ttl": 600,
        "faults": [{"kind": "latency", "target": "db", "delay": 0.01, "rate": 0.5}],
    } | extra


def state(chaos: Chaos) -> tuple[object, ...]:
    """Everything a control action could change."""
    status = chaos.status()
    return (
        [(s.experiment, s.started_at) for s in chaos.experiments()],
        status["stopped"],
        status["injections_in_flight"],
    )


@pytest.fixture
def chaos() -> Iterator[Chaos]:
    engine = Chaos(enabled=True, seed=7)
    yield engine
    engine.halt(actor="test")  # cancels the TTL timers


@pytest.fixture
def snapshot() -> dict[str, Any]:
    return {"requests": 3, "remaining": float("inf"), "nested": {"secret": "hush", "ok": (1, 2)}}


@pytest.fixture
def api(chaos: Chaos, snapshot: dict[str, Any]) -> ControlAPI:
    return ControlAPI(chaos, token=TOKEN, snapshot=lambda: snapshot)


@pytest.fixture
async def client(api: ControlAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(api), base_url=BASE) as http:
        yield http


# -- construction --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"token": ""}, "must not be empty"),
        ({"token": None}, "must not be empty"),
        ({"token": "x" * (MIN_TOKEN_LENGTH - 1)}, f"at least {MIN_TOKEN_LENGTH}"),
        ({"token": "has spaces in the token"}, "without spaces"),
        ({"token": "t\u00f6ken-0123456789abcdef"}, "printable ASCII"),
        ({"token": TOKEN + "\n"}, "printable ASCII"),
        ({"token": TOKEN, "prefix": "_tailguard"}, "prefix must be"),
        ({"token": TOKEN, "prefix": "/_tailguard/"}, "prefix must be"),
        ({"token": TOKEN, "prefix": "/a b"}, "prefix must be"),
        ({"token": TOKEN, "max_body_size": 0}, "max_body_size"),
        ({"token": TOKEN, "max_body_size": True}, "max_body_size"),
    ],
)
def test_construction_refuses_bad_settings(
    chaos: Chaos, settings: dict[str, Any], words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        ControlAPI(chaos, **settings)


def test_the_token_never_shows_in_its_repr(api: ControlAPI) -> None:
    assert TOKEN not in repr(api)
    assert repr(api) == "ControlAPI(prefix='/_tailguard')"


# -- authentication ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "challenge"),
    [
        ([], 'Bearer realm="tailguard"'),
        ([("authorization", f"Basic {TOKEN}")], 'Bearer realm="tailguard"'),
        ([("authorization", "Bearer")], 'Bearer realm="tailguard"'),
        ([("authorization", "Bearer wrong-token-0123456789")], 'error="invalid_token"'),
        ([("authorization", f"Bearer {TOKEN}x")], 'error="invalid_token"'),
        ([("authorization", f"Bearer {TOKEN[:-1]}")], 'error="invalid_token"'),
        ([("authorization", f"Bearer {TOKEN}"), ("authorization", f"Bearer {TOKEN}")], "Bearer"),
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/_tailguard/experiments"),
        ("POST", "/_tailguard/halt"),
        ("DELETE", "/_tailguard/experiments/running"),
        ("GET", "/_tailguard/status"),
        ("GET", "/_tailguard/openapi.json"),
        ("GET", "/_tailguard/no-such-endpoint"),
    ],
)
async def test_without_the_right_token_it_is_401_and_nothing_changes(
    chaos: Chaos,
    client: httpx.AsyncClient,
    headers: list[tuple[str, str]],
    challenge: str,
    method: str,
    path: str,
) -> None:
    assert (
        await client.post("/_tailguard/experiments", json=experiment("running"), headers=AUTH)
    ).status_code == 201
    before = state(chaos)
    response = await client.request(
        method, path, json=experiment("other"), headers=httpx.Headers(headers)
    )
    assert response.status_code == 401
    assert challenge in response.headers["www-authenticate"]
    assert response.json()["field"] is None
    assert state(chaos) == before


async def test_the_scheme_is_case_insensitive(client: httpx.AsyncClient) -> None:
    response = await client.get("/_tailguard/status", headers={"authorization": f"bearer  {TOKEN}"})
    assert response.status_code == 200


# -- the endpoints -------------------------------------------------------------------------


async def test_start_list_stop(chaos: Chaos, client: httpx.AsyncClient) -> None:
    started = await client.post("/_tailguard/experiments", json=experiment(), headers=AUTH)
    assert started.status_code == 201
    assert started.headers["location"] == "/_tailguard/experiments/slow-db"
    assert started.headers["cache-control"] == "no-store"
    body = started.json()
    assert body["experiment"]["name"] == "slow-db"
    assert body["expires_at"] - body["started_at"] == pytest.approx(600)
    assert [s.experiment.name for s in chaos.experiments()] == ["slow-db"]

    listed = (await client.get("/_tailguard/experiments", headers=AUTH)).json()
    assert [e["experiment"]["name"] for e in listed["experiments"]] == ["slow-db"]
    status = (await client.get("/_tailguard/status", headers=AUTH)).json()
    assert status["enabled"] is True
    assert status["seed"] == 7
    assert [e["experiment"]["name"] for e in status["experiments"]] == ["slow-db"]

    stopped = await client.delete("/_tailguard/experiments/slow-db", headers=AUTH)
    assert (stopped.status_code, stopped.json()) == (200, {"stopped": "slow-db"})
    assert chaos.experiments() == []
    assert chaos.status()["stopped"][0]["actor"] == "api:127.0.0.1"
    again = await client.delete("/_tailguard/experiments/slow-db", headers=AUTH)
    assert again.status_code == 404
    assert "no running experiment named 'slow-db'" in again.json()["detail"]


async def test_halt_stops_everything(chaos: Chaos, client: httpx.AsyncClient) -> None:
    for name in ("a", "b"):
        await client.post("/_tailguard/experiments", json=experiment(name), headers=AUTH)
    response = await client.post("/_tailguard/halt", headers=AUTH)
    assert (response.status_code, response.json()) == (200, {"halted": 2})
    assert chaos.experiments() == []
    assert {(r["reason"], r["actor"]) for r in chaos.status()["stopped"]} == {
        ("halt", "api:127.0.0.1")
    }
    assert (await client.post("/_tailguard/halt", headers=AUTH)).json() == {"halted": 0}


async def test_secrets_are_never_sent_back(client: httpx.AsyncClient) -> None:
    body = experiment(header="x-chaos", secret=SECRET)
    started = await client.post("/_tailguard/experiments", json=body, headers=AUTH)
    assert started.status_code == 201
    for path in ("/_tailguard/experiments", "/_tailguard/status", "/_tailguard/snapshot"):
        response = await client.get(path, headers=AUTH)
        assert SECRET not in response.text
        assert "hush" not in response.text
    assert started.json()["experiment"]["secret"] == "<redacted>"


async def test_a_second_experiment_of_the_same_name_is_409(
    chaos: Chaos, client: httpx.AsyncClient
) -> None:
    await client.post("/_tailguard/experiments", json=experiment(), headers=AUTH)
    before = state(chaos)
    response = await client.post("/_tailguard/experiments", json=experiment(ttl=5), headers=AUTH)
    assert response.status_code == 409
    assert response.json() == {
        "detail": "experiment 'slow-db' is already running; stop it first",
        "field": "name",
    }
    assert state(chaos) == before


async def test_starting_beyond_max_experiments_is_409_naming_the_cap() -> None:
    capped = Chaos(enabled=True, max_experiments=1)
    api = ControlAPI(capped, token=TOKEN)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(api), base_url=BASE) as http:
            first = await http.post("/_tailguard/experiments", json=experiment("a"), headers=AUTH)
            assert first.status_code == 201
            before = state(capped)
            refused = await http.post("/_tailguard/experiments", json=experiment("b"), headers=AUTH)
            after = state(capped)
    finally:
        capped.halt(actor="test")
    assert refused.status_code == 409
    assert refused.json() == {
        "detail": "the most experiments this engine runs at once (max_experiments=1) are running;"
        " stop one first",
        "field": None,
    }
    assert after == before


async def test_an_experiment_that_expires_at_once_is_still_reported_as_started() -> None:
    ticks = itertools.count(0, 1000)  # every look at the clock is 1000 s later
    chaos = Chaos(enabled=True, clock=lambda: float(next(ticks)))
    api = ControlAPI(chaos, token=TOKEN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(api), base_url=BASE) as http:
        response = await http.post("/_tailguard/experiments", json=experiment(), headers=AUTH)
    assert response.status_code == 201
    assert response.json()["started_at"] == response.json()["expires_at"]
    assert response.json()["experiment"]["name"] == "slow-db"
    assert chaos.experiments() == []
    assert chaos.status()["stopped"][0]["reason"] == "expired"


async def test_starting_while_chaos_is_disabled_is_409_after_validation() -> None:
    disabled = Chaos(enabled=False)
    api = ControlAPI(disabled, token=TOKEN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(api), base_url=BASE) as http:
        refused = await http.post("/_tailguard/experiments", json=experiment(), headers=AUTH)
        assert refused.status_code == 409
        assert "chaos is disabled" in refused.json()["detail"]
        invalid = await http.post("/_tailguard/experiments", json={"name": "x"}, headers=AUTH)
        assert (invalid.status_code, invalid.json()["field"]) == (422, "ttl")
        assert (await http.post("/_tailguard/halt", headers=AUTH)).json() == {"halted": 0}
        assert (await http.get("/_tailguard/status", headers=AUTH)).json()["enabled"] is False
    assert disabled.experiments() == []


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"name": "x", "ttl": 60}, "faults", "is required"),
        (experiment(ttl=-5), "ttl", "greater than 0"),
        (
            experiment(faults=[{"kind": "hang", "target": "db", "rate": 7}]),
            "faults[0].rate",
            "0 and 1",
        ),
        (experiment(extra=1), "extra", "unknown field"),
        (
            experiment(faults=[{"kind": "raise", "target": "db", "exc": "os.system"}]),
            "faults[0].exc",
            "not a class",
        ),
        ([1, 2], "", "must be an object"),
        (
            experiment(
                faults=[{"kind": "respond", "target": "db", "status": 503, "headers": {"TE": "x"}}]
            ),
            "faults[0].headers.TE",
            "framing or hop-by-hop header",
        ),
    ],
)
async def test_an_invalid_experiment_is_422_naming_the_field(
    chaos: Chaos, client: httpx.AsyncClient, body: object, field: str, words: str
) -> None:
    before = state(chaos)
    response = await client.post("/_tailguard/experiments", json=body, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["field"] == field
    assert words in response.json()["detail"]
    assert state(chaos) == before


@pytest.mark.parametrize(
    ("content", "content_type", "status", "words"),
    [
        (b"{not json", "application/json", 400, "not valid JSON"),
        (b'{"ttl": NaN}', "application/json", 400, "NaN"),
        (b'{"a": 1, "a": 2}', "application/json", 400, "duplicate key"),
        (b"\xff\xfe", "application/json", 400, "not valid JSON"),
        (b"", "application/json", 400, "not valid JSON"),
        (b"[" * 60_000, "application/json", 400, "not valid JSON"),
        (json.dumps(experiment()).encode(), None, 415, "application/json"),
        (json.dumps(experiment()).encode(), "text/plain", 415, "application/json"),
        (json.dumps(experiment()).encode(), "application/x-yaml", 415, "application/json"),
        (json.dumps(experiment()).encode(), "application/json; charset=latin-1", 415, "json"),
        (b"x" * (MAX_BODY_SIZE + 1), "application/json", 413, f"at most {MAX_BODY_SIZE} bytes"),
    ],
)
async def test_bodies_that_are_not_json_experiments_are_refused(
    chaos: Chaos,
    client: httpx.AsyncClient,
    content: bytes,
    content_type: str | None,
    status: int,
    words: str,
) -> None:
    headers = dict(AUTH)
    if content_type is not None:
        headers["content-type"] = content_type
    response = await client.post("/_tailguard/experiments", content=content, headers=headers)
    assert response.status_code == status
    assert words in response.json()["detail"]
    assert chaos.experiments() == []


async def test_json_with_a_utf8_charset_parameter_is_accepted(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/_tailguard/experiments",
        content=json.dumps(experiment()).encode(),
        headers=AUTH | {"content-type": "Application/JSON; charset=UTF-8"},
    )
    assert response.status_code == 201


def _post(
    body_chunks: list[bytes], *, length: int | None = None, then: str = "end"
) -> tuple[dict[str, Any], Callable[[], Any]]:
    headers = [("authorization", f"Bearer {TOKEN}"), ("content-type", "application/json")]
    if length is not None:
        headers.append(("content-length", str(length)))
    scope = http_scope("/_tailguard/experiments", "POST", headers)
    messages = [{"type": "http.request", "body": chunk, "more_body": True} for chunk in body_chunks]
    messages.append(
        {"type": "http.disconnect"}
        if then == "disconnect"
        else {"type": "http.request", "body": b"", "more_body": False}
    )

    async def receive() -> Any:
        return messages.pop(0)

    return scope, receive


async def test_a_large_declared_length_is_413_before_reading(api: ControlAPI) -> None:
    scope, receive = _post([b"{}"], length=MAX_BODY_SIZE + 1)
    sent = Sent()
    await api(scope, receive, sent)
    assert sent.status == 413


async def test_a_chunked_body_is_cut_off_at_the_limit(chaos: Chaos, api: ControlAPI) -> None:
    chunk = b" " * 16_384
    scope, receive = _post([chunk] * 5)
    sent = Sent()
    await api(scope, receive, sent)
    assert sent.status == 413
    assert chaos.experiments() == []


async def test_a_body_split_in_chunks_is_joined(chaos: Chaos, api: ControlAPI) -> None:
    body = json.dumps(experiment()).encode()
    scope, receive = _post([body[:10], body[10:]])
    sent = Sent()
    await api(scope, receive, sent)
    assert sent.status == 201


async def test_a_client_gone_mid_body_changes_nothing(chaos: Chaos, api: ControlAPI) -> None:
    body = json.dumps(experiment()).encode()
    scope, receive = _post([body], then="disconnect")
    sent = Sent()
    await api(scope, receive, sent)
    assert sent.status == 400
    assert chaos.experiments() == []


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/_tailguard/halt", "POST"),
        ("GET", "/_tailguard/halt", "POST"),
        ("POST", "/_tailguard/status", "GET"),
        ("DELETE", "/_tailguard/experiments", "GET, POST"),
        ("GET", "/_tailguard/experiments/slow-db", "DELETE"),
    ],
)
async def test_other_methods_are_405_with_allow(
    client: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    response = await client.request(method, path, headers=AUTH)
    assert response.status_code == 405
    assert response.headers["allow"] == allow


@pytest.mark.parametrize(
    "path", ["/_tailguard", "/_tailguard/", "/_tailguard/statuss", "/_tailguard/experiments/"]
)
async def test_unknown_endpoints_are_404(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path, headers=AUTH)
    assert response.status_code == 404
    assert response.json()["detail"].startswith("no such endpoint")


async def test_paths_outside_the_prefix_are_404_when_standalone(client: httpx.AsyncClient) -> None:
    for path in ("/", "/_tailguardx/status", "/status"):
        assert (await client.get(path, headers=AUTH)).status_code == 404


async def test_the_snapshot_is_served_json_safe(client: httpx.AsyncClient) -> None:
    response = await client.get("/_tailguard/snapshot", headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {
        "requests": 3,
        "remaining": None,
        "nested": {"secret": "<redacted>", "ok": [1, 2]},
    }


async def test_without_a_snapshot_source_it_is_404(chaos: Chaos) -> None:
    api = ControlAPI(chaos, token=TOKEN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(api), base_url=BASE) as http:
        response = await http.get("/_tailguard/snapshot", headers=AUTH)
    assert response.status_code == 404


@pytest.mark.parametrize("source", [lambda: 1 / 0, lambda: [1, 2, 3]])
async def test_a_failing_snapshot_is_a_500_that_says_so(
    chaos: Chaos, source: Callable[[], Mapping[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    api = ControlAPI(chaos, token=TOKEN, snapshot=source)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(api), base_url=BASE) as http:
        response = await http.get("/_tailguard/snapshot", headers=AUTH)
    assert response.status_code == 500
    assert response.json()["detail"].startswith("the snapshot failed")
    assert any("snapshot failed" in record.getMessage() for record in caplog.records)


# -- OpenAPI -------------------------------------------------------------------------------


def _refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


async def test_openapi_describes_every_endpoint_and_embeds_the_schema(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/_tailguard/openapi.json", headers=AUTH)
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"] == "3.1.0"
    assert document["paths"].keys() == {
        "/_tailguard/status",
        "/_tailguard/experiments",
        "/_tailguard/experiments/{name}",
        "/_tailguard/validate",
        "/_tailguard/halt",
        "/_tailguard/snapshot",
        "/_tailguard/enforcement",
        "/_tailguard/openapi.json",
    }
    schemas = document["components"]["schemas"]
    expected = {k: v for k, v in EXPERIMENT_JSON_SCHEMA.items() if k != "$schema"}
    assert schemas["Experiment"] == json.loads(json.dumps(expected))
    for ref in _refs(document):
        assert ref.startswith("#/components/schemas/")
        assert ref.removeprefix("#/components/schemas/") in schemas
    for operations in document["paths"].values():
        for operation in operations.values():
            assert "401" in operation["responses"]
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


# -- mounting ------------------------------------------------------------------------------


async def test_a_custom_prefix_and_a_root_path(chaos: Chaos) -> None:
    api = ControlAPI(chaos, token=TOKEN, prefix="/ops/chaos")
    sent = Sent()
    scope = http_scope("/svc/ops/chaos/status", headers=AUTH.items())
    scope["root_path"] = "/svc"

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}  # pragma: no cover - GET reads nothing

    await api(scope, receive, sent)
    assert sent.status == 200
    openapi = api.openapi()
    assert "/ops/chaos/status" in openapi["paths"]


async def test_an_empty_prefix_serves_at_the_root(chaos: Chaos) -> None:
    api = ControlAPI(chaos, token=TOKEN, prefix="")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(api), base_url=BASE) as http:
        assert (await http.get("/status", headers=AUTH)).status_code == 200
        assert (await http.post("/halt", headers=AUTH)).json() == {"halted": 0}


def _app_behind(control: ControlAPI) -> Starlette:
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello from the app")

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("ws ok")
        await websocket.close()

    app = Starlette(routes=[Route("/hello", hello), WebSocketRoute("/ws", echo)])
    app.add_middleware(ControlMiddleware, control=control)
    return app


async def test_the_middleware_serves_the_prefix_and_passes_the_rest(api: ControlAPI) -> None:
    app = _app_behind(api)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=BASE) as http:
        assert (await http.get("/hello")).text == "hello from the app"
        assert (await http.get("/_tailguard/status", headers=AUTH)).json()["enabled"] is True
        assert (await http.get("/_tailguard/status")).status_code == 401
        assert (await http.get("/_tailguardx")).status_code == 404
        assert (await http.get("/_tailguardx")).text == "Not Found"  # the app's own 404


async def test_the_middleware_passes_websockets_and_lifespan_to_the_app(api: ControlAPI) -> None:
    from starlette.testclient import TestClient

    with TestClient(_app_behind(api)) as test_client, test_client.websocket_connect("/ws") as ws:
        assert ws.receive_text() == "ws ok"


async def test_standalone_it_speaks_lifespan_and_refuses_websockets(api: ControlAPI) -> None:
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent = Sent()

    async def receive() -> Any:
        return incoming.pop(0)

    await api({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, sent)
    assert [m["type"] for m in sent.messages] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]

    closed = Sent()

    async def connect() -> Any:
        return {"type": "websocket.connect"}

    await api({"type": "websocket", "path": "/_tailguard/status", "headers": []}, connect, closed)
    assert closed.messages == [{"type": "websocket.close", "code": 1008}]
    assert not api.handles({"type": "websocket", "path": "/_tailguard/status"})


# -- who did what --------------------------------------------------------------------------


async def test_actions_are_logged_with_the_client_and_never_the_token(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tailguard.chaos")
    await client.post("/_tailguard/experiments", json=experiment(), headers=AUTH)
    await client.delete("/_tailguard/experiments/slow-db", headers=AUTH)
    await client.post("/_tailguard/halt", headers={"authorization": "Bearer wrong-0123456789abc"})
    await client.post("/_tailguard/experiments", json={"name": 1}, headers=AUTH)
    events = [
        (getattr(r, "event", None), getattr(r, "actor", None), r.levelno) for r in caplog.records
    ]
    assert events == [
        ("start", "api:127.0.0.1", logging.INFO),
        ("stop", "api:127.0.0.1", logging.INFO),
        ("refused", "api:127.0.0.1", logging.WARNING),
        ("refused", "api:127.0.0.1", logging.INFO),
    ]
    assert caplog.records[2].status == 401  # type: ignore[attr-defined]
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
        assert "wrong-0123456789abc" not in record.getMessage()
        assert TOKEN not in json.dumps(vars(record), default=str)


async def test_a_request_without_a_client_address_acts_as_api_unknown(
    chaos: Chaos, api: ControlAPI
) -> None:
    body = json.dumps(experiment()).encode()
    headers = [*AUTH.items(), ("content-type", "application/json")]
    scope = http_scope("/_tailguard/experiments", "POST", headers)
    scope["client"] = None
    assert (await client_call(api, scope, body)).status == 201
    scope = http_scope("/_tailguard/halt", "POST", AUTH.items())
    scope["client"] = None
    assert json.loads((await client_call(api, scope)).body) == {"halted": 1}
    assert chaos.status()["stopped"][0]["actor"] == "api:unknown"


async def client_call(api: ControlAPI, scope: dict[str, Any], body: bytes = b"") -> Sent:
    sent = Sent()

    async def receive() -> Any:
        return {"type": "http.request", "body": body, "more_body": False}

    await api(scope, receive, sent)
    return sent
