"""A shed or a deadline wrapped by an SDK still ends as tailguard's 503 or 504.

SDKs that own their httpx client (OpenAI's, for one) catch whatever the
transport raises, raise their own connection error ``from`` it, and retry.
The handler here does exactly that around a real ``httpx.AsyncClient`` on the
dependency's transport; the middleware must still answer 503 (shed) or 504
(out of time), not the app's 500.
"""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

import tailguard
from tailguard import RoutePolicy, Tailguard
from tailguard.admission import Rejected
from tailguard.middleware.exchange import CHAIN_LIMIT, chained_tailguard_error

pytestmark = pytest.mark.anyio


class SDKConnectionError(Exception):
    """What an SDK raises for any failure of its transport (openai.APIConnectionError)."""


class FakeSDK:
    """Owns its httpx client, wraps transport errors and retries them, as SDKs do."""

    def __init__(self, transport: httpx.AsyncBaseTransport, max_retries: int = 2) -> None:
        self.client = httpx.AsyncClient(base_url="http://llm", transport=transport)
        self.max_retries = max_retries
        self.attempts = 0

    async def complete(self) -> str:
        for attempt in range(self.max_retries + 1):
            self.attempts += 1
            try:
                response = await self.client.get("/v1/complete")
            except Exception as exc:
                if attempt == self.max_retries:
                    raise SDKConnectionError("Connection error.") from exc
                continue
            return response.text
        raise AssertionError("unreachable")


def build(sdk_budget: float | None = None) -> tuple[Starlette, Tailguard, FakeSDK]:
    guard = Tailguard(default=RoutePolicy(deadline=5.0), registry=CollectorRegistry())
    llm = guard.dependency("llm", max_concurrency=1, max_queue=0)
    called: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        called.append(request)
        return httpx.Response(200, text="hello")

    sdk = FakeSDK(llm.transport(httpx.MockTransport(answer)))

    async def chat(request: Request) -> Response:
        if sdk_budget is None:
            return PlainTextResponse(await sdk.complete())
        with tailguard.deadline(sdk_budget):
            return PlainTextResponse(await sdk.complete())

    app = guard.install(Starlette(routes=[Route("/chat", chat)]), tracing=False)
    return app, guard, sdk


def client(app: Starlette) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://app")


async def test_a_shed_wrapped_by_an_sdk_is_a_503() -> None:
    app, guard, sdk = build()
    held = guard.dependencies["llm"].limiter.try_acquire()  # the bulkhead is full
    assert held is not None
    async with client(app) as http:
        response = await http.get("/chat")
    held.release()
    assert response.status_code == 503
    assert response.headers["x-tailguard-reason"] == "queue_full"
    assert "retry-after" in response.headers
    assert sdk.attempts == 3  # the SDK retried; what reaches the client is still a shed


async def test_a_deadline_wrapped_by_an_sdk_is_a_504() -> None:
    # Less than 1 ms left: the transport refuses to send, the SDK wraps the refusal.
    app, _, sdk = build(sdk_budget=0.0002)
    async with client(app) as http:
        response = await http.get("/chat")
    assert response.status_code == 504
    assert response.headers["x-tailguard-reason"] == "deadline_exceeded"
    assert sdk.attempts == 3


async def test_other_app_errors_stay_500() -> None:
    guard = Tailguard(registry=CollectorRegistry())

    async def broken(request: Request) -> Response:
        try:
            raise KeyError("x")
        except KeyError as exc:
            raise SDKConnectionError("no") from exc

    app = guard.install(Starlette(routes=[Route("/", broken)]), tracing=False)
    async with client(app) as http:
        assert (await http.get("/")).status_code == 500


def test_the_walk_follows_context_and_is_cycle_safe() -> None:
    shed = Rejected("queue_full", "llm", 0.1)
    outer = RuntimeError("outer")
    outer.__context__ = shed  # raised inside an except block, no "from"
    assert chained_tailguard_error(outer) is shed

    a, b = ValueError("a"), ValueError("b")
    a.__cause__, b.__cause__ = b, a  # a cycle
    assert chained_tailguard_error(a) is None

    chain = [ValueError(str(i)) for i in range(CHAIN_LIMIT + 1)]
    for inner, outer_link in zip(chain[1:], chain, strict=False):
        outer_link.__cause__ = inner
    chain[-1].__cause__ = shed  # beyond the limit: not searched
    assert chained_tailguard_error(chain[0]) is None
    assert chained_tailguard_error(chain[2]) is shed
