"""Client-disconnect detection without stealing the request body from the app.

Starlette does not cancel a handler when its client goes away (fastapi#3766):
the server only reports ``http.disconnect`` to whoever calls ``receive()``.
:class:`Inbox` wraps ``receive`` so that a watcher task can listen for the
disconnect while the app keeps reading its body in order:

* before the watcher starts, the app reads ``receive`` directly;
* once started, the watcher is the only reader of the server's ``receive``. It
  reads at most one body chunk ahead (so backpressure on large uploads still
  works) and, once the body is complete, waits for ``http.disconnect``; the
  app's reads are served from what the watcher parked.

The watcher starts only after a short grace period, so requests that finish
quickly never pay for an extra task. A handler that never reads a streamed
(``more_body``) request body cannot be watched past its first chunk; that is
the price of not buffering uploads.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable

from starlette.types import Message, Receive

__all__ = ["Inbox"]


def _ignore() -> None:
    return None


class Inbox:
    """Per-request wrapper around ``receive`` that notices client disconnects."""

    __slots__ = (
        "_body_complete",
        "_changed",
        "_closed",
        "_disconnect",
        "_failure",
        "_on_disconnect",
        "_parked",
        "_reading",
        "_receive",
        "_start_requested",
        "_watcher",
    )

    def __init__(
        self,
        receive: Receive,
        on_disconnect: Callable[[], None],
        *,
        body_complete: bool = False,
    ) -> None:
        self._receive = receive
        self._on_disconnect = on_disconnect
        self._parked: Message | None = None
        self._disconnect: Message | None = None
        self._failure: Exception | None = None
        self._body_complete = body_complete
        self._reading = False
        self._start_requested = False
        self._closed = False
        self._watcher: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None

    @property
    def disconnected(self) -> bool:
        """Whether the client has gone away."""
        return self._disconnect is not None

    async def receive(self) -> Message:
        """The ``receive`` callable handed to the app."""
        if self._watcher is None:
            self._reading = True
            try:
                message = await self._receive()
            finally:
                self._reading = False
            self._note(message)
            if self._start_requested:
                self.start_watching()
            return message
        while True:
            if self._parked is not None:
                message, self._parked = self._parked, None
                self._notify()
                return message
            if self._disconnect is not None:
                return self._disconnect
            if self._failure is not None:
                raise self._failure
            await self._wait()

    def start_watching(self) -> None:
        """Begin listening for a disconnect (called from a timer after the grace period)."""
        if self._closed or self._watcher is not None or self._disconnect is not None:
            return
        if self._reading:
            # The app is inside the server's receive(); start when that returns.
            self._start_requested = True
            return
        loop = asyncio.get_running_loop()
        # A fresh context: the watcher is tailguard's, not a task the request spawned.
        self._watcher = loop.create_task(self._watch(), context=contextvars.Context())

    def close(self) -> None:
        """Stop watching; called when the request is over."""
        self._closed = True
        # The callback is the request's bound method: dropping it breaks the
        # request <-> inbox cycle, so both are freed by refcount, not the GC.
        self._on_disconnect = _ignore
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()

    def _note(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.request":
            if not message.get("more_body", False):
                self._body_complete = True
        elif kind == "http.disconnect":
            self._disconnect = message

    async def _watch(self) -> None:
        try:
            while not self._closed:
                if self._parked is not None and not self._body_complete:
                    await self._wait()  # backpressure: one chunk ahead at most
                    continue
                message = await self._receive()
                self._note(message)
                if self._disconnect is None:
                    self._parked = message
                    self._notify()
                    continue
                self._notify()
                if not self._closed:
                    self._on_disconnect()
                return
        except Exception as exc:  # the server's receive failed: hand the error to the app
            self._failure = exc
            self._notify()

    async def _wait(self) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        changed = self._changed
        await changed.wait()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None
