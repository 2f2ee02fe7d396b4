"""Fuzzed requests: never a 5xx, and the engine changes only for a valid, authorized start.

Each example drives the real :class:`ControlAPI` over a real :class:`Chaos`
with a request built from arbitrary JSON (often a near-valid experiment with
one value damaged), arbitrary bytes, and a random choice of method, path,
token and content type.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tailguard.chaos import Chaos, ControlAPI, ExperimentError
from tailguard.chaos.schema import experiment_from_dict
from tests.asgi import Sent, http_scope
from tests.chaos.test_schema_properties import damage, documents, json_values

TOKEN = "fuzz-token-0123456789abcdef"
PATHS = [
    "/_tailguard/experiments",
    "/_tailguard/experiments/slow-db",
    "/_tailguard/status",
    "/_tailguard/halt",
    "/_tailguard/snapshot",
    "/_tailguard/openapi.json",
    "/_tailguard/x",
]
RUNNING = {"name": "slow-db", "ttl": 600, "faults": [{"kind": "hang", "target": "db"}]}


def state(chaos: Chaos) -> object:
    status = chaos.status()
    return [(s.experiment, s.started_at) for s in chaos.experiments()], status["stopped"]


async def send(
    api: ControlAPI, method: str, path: str, headers: list[tuple[str, str]], body: bytes
) -> Sent:
    sent = Sent()
    chunks = [body[i : i + 4096] for i in range(0, len(body), 4096)] or [b""]

    async def receive() -> Any:
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    await api(http_scope(path, method, headers), receive, sent)
    return sent


async def known(chaos: Chaos, name: str) -> None:
    """Wait until ``name`` is running or recorded as stopped.

    An experiment with a tiny TTL may be ending on the engine's timer
    thread right now, between the two lists; it lands in one of them at once.
    """
    for _ in range(1000):
        running = [s.experiment.name for s in chaos.experiments()]
        if name in running + [r["experiment"] for r in chaos.status()["stopped"]]:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{name} was started but is neither running nor stopped")


def run_one(method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> int:
    """Send one request to a fresh API with ``slow-db`` running; check it; return the status."""

    async def scenario() -> int:
        chaos = Chaos(enabled=True, seed=1)
        try:
            api = ControlAPI(chaos, token=TOKEN, snapshot=lambda: {"ok": True})
            chaos.start(experiment_from_dict(RUNNING), actor="setup")
            before = state(chaos)
            sent = await send(api, method, path, headers, body)
            assert sent.complete
            assert sent.status < 500, sent.body
            reply = json.loads(sent.body)
            assert isinstance(reply, dict)
            if sent.status >= 400:
                assert isinstance(reply["detail"], str)
            authorized = ("authorization", f"Bearer {TOKEN}") in headers
            changes = {
                ("POST", "/_tailguard/experiments"): 201,
                ("DELETE", "/_tailguard/experiments/slow-db"): 200,
                ("POST", "/_tailguard/halt"): 200,
            }
            if sent.status == 201:
                assert authorized
                started = experiment_from_dict(json.loads(body))
                await known(chaos, started.name)
            elif changes.get((method, path)) == sent.status:
                assert authorized
                assert state(chaos) != before
            else:
                assert state(chaos) == before
            return sent.status
        finally:
            chaos.halt(actor="teardown")

    return asyncio.run(scenario())


def _valid_or_not(document: dict[str, Any], data: st.DataObject) -> object:
    choice = data.draw(st.sampled_from(["as is", "damaged", "anything"]))
    if choice == "as is":
        return document
    if choice == "damaged":
        return damage(document, data)
    return data.draw(json_values)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    document=documents,
    data=st.data(),
    method=st.sampled_from(["POST", "POST", "GET", "DELETE", "PUT"]),
    path=st.sampled_from(PATHS),
    token=st.sampled_from([TOKEN, TOKEN, TOKEN, None, "wrong-" + TOKEN]),
    content_type=st.sampled_from(
        ["application/json", "application/json", "text/plain", None, "application/json; x"]
    ),
)
def test_fuzzed_json_requests_never_5xx_and_change_state_only_when_valid(
    document: dict[str, Any],
    data: st.DataObject,
    method: str,
    path: str,
    token: str | None,
    content_type: str | None,
) -> None:
    headers = []
    if token is not None:
        headers.append(("authorization", f"Bearer {token}"))
    if content_type is not None:
        headers.append(("content-type", content_type))
    value = _valid_or_not(document, data)
    status = run_one(method, path, headers, json.dumps(value).encode())
    if (method, path, token, content_type) == (
        "POST",
        "/_tailguard/experiments",
        TOKEN,
        "application/json",
    ):
        try:
            name = experiment_from_dict(value).name
        except ExperimentError:
            assert status == 422
        else:
            assert status == (409 if name == RUNNING["name"] else 201)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=512) | st.text(max_size=200).map(str.encode))
def test_fuzzed_raw_bodies_never_5xx_and_change_nothing(body: bytes) -> None:
    headers = [("authorization", f"Bearer {TOKEN}"), ("content-type", "application/json")]
    run_one("POST", "/_tailguard/experiments", headers, body)
