"""The one ContextVar tailguard keeps per request.

A single variable holds both the deadline in force and the request that owns
the current task, so entering a request costs one ``ContextVar.set``, and a
task created anywhere inside the request (copying the context) inherits both.
The middleware sets its per-request object itself (it has both attributes);
a tighter ``tailguard.deadline()`` scope sets a :class:`Frame`.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Final, NamedTuple, Protocol, cast

if TYPE_CHECKING:
    import asyncio

    from tailguard.deadlines import Deadline


class TaskOwner(Protocol):
    """Whatever adopts the tasks spawned while a request is handled."""

    def add(self, task: asyncio.Future[object]) -> None: ...


class RequestView(Protocol):
    """What code outside the middleware may read about the request being handled.

    Chaos scoping, telemetry and the tail helpers use it through
    :func:`current_request`; the middleware's per-request object implements it.
    """

    @property
    def method(self) -> str: ...

    @property
    def route(self) -> str:
        """The route template the request matched (``/items/{item_id}``), ``""`` for none."""
        ...

    @property
    def tenant(self) -> str | None:
        """The request's tenant, from the guard's ``tenant_header`` or ``tenant=``."""
        ...

    def header(self, name: str) -> str | None:
        """The first value of request header ``name`` (case-insensitive), or ``None``."""
        ...


class Entry(Protocol):
    """What the context variable holds: the deadline in force and the request's task owner."""

    @property
    def deadline(self) -> Deadline | None: ...

    @property
    def owner(self) -> TaskOwner | None: ...


class Frame(NamedTuple):
    deadline: Deadline | None
    owner: TaskOwner | None


current: Final[ContextVar[Entry | None]] = ContextVar("tailguard", default=None)


def current_request() -> RequestView | None:
    """The request being handled in this context (tasks it spawned included), if any."""
    frame = current.get()
    owner = frame.owner if frame is not None else None
    # Owners are the middleware's request objects (views) or bare task registries.
    return cast("RequestView", owner) if hasattr(owner, "header") else None
