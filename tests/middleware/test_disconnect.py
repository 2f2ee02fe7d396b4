from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tailguard.middleware.disconnect import Inbox

pytestmark = pytest.mark.anyio


class Server:
    """The server side of ``receive``: a queue the test feeds message by message."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.reads = 0

    async def receive(self) -> dict[str, Any]:
        self.reads += 1
        item = await self.queue.get()
        if isinstance(item, Exception):
            raise item
        return dict(item)

    def chunk(self, body: bytes, more: bool) -> None:
        self.queue.put_nowait({"type": "http.request", "body": body, "more_body": more})

    def disconnect(self) -> None:
        self.queue.put_nowait({"type": "http.disconnect"})


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_app_reads_body_in_order_while_watched() -> None:
    server = Server()
    fired: list[bool] = []
    inbox = Inbox(server.receive, lambda: fired.append(True))
    server.chunk(b"a", True)
    inbox.start_watching()
    await settle()
    assert server.reads == 1  # parked one chunk, waits for the app (backpressure)
    server.chunk(b"b", False)
    assert (await inbox.receive())["body"] == b"a"
    await settle()
    assert (await inbox.receive())["body"] == b"b"
    server.disconnect()
    await settle()
    assert fired == [True]
    assert inbox.disconnected
    assert (await inbox.receive())["type"] == "http.disconnect"
    inbox.close()


async def test_app_waiting_for_disconnect_shares_the_watchers_result() -> None:
    server = Server()
    inbox = Inbox(server.receive, lambda: None)
    server.chunk(b"", False)
    assert (await inbox.receive())["more_body"] is False  # app read first, directly
    inbox.start_watching()
    waiter = asyncio.create_task(inbox.receive())  # e.g. Starlette's listen_for_disconnect
    await settle()
    assert not waiter.done()
    server.disconnect()
    assert (await waiter)["type"] == "http.disconnect"
    inbox.close()


async def test_start_is_deferred_while_the_app_is_reading() -> None:
    server = Server()
    fired: list[bool] = []
    inbox = Inbox(server.receive, lambda: fired.append(True))
    reading = asyncio.create_task(inbox.receive())
    await settle()
    inbox.start_watching()  # the app is inside receive(): must not read concurrently
    await settle()
    assert server.reads == 1
    server.chunk(b"x", False)
    assert (await reading)["body"] == b"x"
    await settle()
    assert server.reads == 2  # the watcher took over once the app's read returned
    server.disconnect()
    await settle()
    assert fired == [True]
    inbox.close()


async def test_disconnect_seen_by_the_app_itself() -> None:
    server = Server()
    inbox = Inbox(server.receive, lambda: None)
    server.disconnect()
    assert (await inbox.receive())["type"] == "http.disconnect"
    assert inbox.disconnected
    inbox.start_watching()  # nothing left to watch
    inbox.close()


async def test_server_error_reaches_the_app() -> None:
    server = Server()
    inbox = Inbox(server.receive, lambda: None)
    inbox.start_watching()
    server.queue.put_nowait(OSError("connection reset"))
    with pytest.raises(OSError, match="connection reset"):
        await inbox.receive()
    inbox.close()


async def test_close_stops_the_watcher_and_later_starts() -> None:
    server = Server()
    fired: list[bool] = []
    inbox = Inbox(server.receive, lambda: fired.append(True))
    server.chunk(b"", False)
    inbox.start_watching()
    await settle()
    inbox.close()
    server.disconnect()
    await settle()
    assert fired == []  # the request was over: a late disconnect cancels nothing
    inbox.start_watching()
    inbox.close()


async def test_close_before_disconnect_is_read() -> None:
    server = Server()
    fired: list[bool] = []
    inbox = Inbox(server.receive, lambda: fired.append(True))
    server.chunk(b"", False)
    server.disconnect()
    inbox.start_watching()
    inbox._closed = True  # the request ends between two reads of the watcher
    await settle()
    assert fired == []
