"""The one ContextVar tailguard keeps per request.

A single variable holds both the deadline in force and the request that owns
the current task, so entering a request costs one ``ContextVar.set``, and a
task created anywhere inside the request (copying the context) inherits both.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Final, NamedTuple, Protocol

if TYPE_CHECKING:
    import asyncio

    from tailguard.deadlines import Deadline


class TaskOwner(Protocol):
    """Whatever adopts the tasks spawned while a request is handled."""

    def add(self, task: asyncio.Future[object]) -> None: ...


class Frame(NamedTuple):
    deadline: Deadline | None
    owner: TaskOwner | None


current: Final[ContextVar[Frame | None]] = ContextVar("tailguard", default=None)
