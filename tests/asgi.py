"""A tiny ASGI driver for tests that need exact control over receive and send."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message

Receive = Callable[[], Awaitable[Message]]


def http_scope(
    path: str = "/",
    method: str = "GET",
    headers: Iterable[tuple[str, str]] = (),
    app: Any = None,
) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    if app is not None:
        scope["app"] = app
    return scope


@dataclass
class Sent:
    """What the app sent, in order."""

    messages: list[Message] = field(default_factory=list)

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def starts(self) -> list[Message]:
        return [m for m in self.messages if m["type"] == "http.response.start"]

    @property
    def status(self) -> int:
        (start,) = self.starts
        return int(start["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        (start,) = self.starts
        return dict(start["headers"])

    @property
    def body(self) -> bytes:
        bodies = (m for m in self.messages if m["type"] == "http.response.body")
        return b"".join(m.get("body", b"") for m in bodies)

    @property
    def complete(self) -> bool:
        bodies = [m for m in self.messages if m["type"] == "http.response.body"]
        return bool(bodies) and not bodies[-1].get("more_body", False)


class Client:
    """Plays the server side: hands out the request, then waits, then disconnects."""

    def __init__(self, chunks: Iterable[bytes] = (b"",)) -> None:
        self._chunks = list(chunks)
        self.gone = asyncio.Event()
        self.reads = 0

    async def receive(self) -> Message:
        self.reads += 1
        if self._chunks:
            body = self._chunks.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(self._chunks)}
        await self.gone.wait()
        return {"type": "http.disconnect"}


async def call(
    app: ASGIApp,
    path: str = "/",
    *,
    method: str = "GET",
    headers: Iterable[tuple[str, str]] = (),
    client: Client | None = None,
) -> Sent:
    """Run one request through ``app`` and return what it sent."""
    sent = Sent()
    client = client or Client()
    scope = http_scope(path, method, headers)
    await app(scope, client.receive, sent)
    return sent
