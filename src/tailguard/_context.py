"""The one ContextVar tailguard keeps per request.

A single variable holds both the deadline in force and the request that owns
the current task, so entering a request costs one ``ContextVar.set``, and a
task created anywhere inside the request (copying the context) inherits both.
The middleware sets its per-request object itself (it has both attributes);
a tighter ``tailguard.deadline()`` scope sets a :class:`Frame`. :class:`Deadline`,
the value both carry, lives here too: this is the ground floor every other
module builds on (``tailguard.deadlines`` re-exports it).
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Final, NamedTuple, Protocol, cast

if TYPE_CHECKING:
    import asyncio

    from tailguard.telemetry.catalog import Catalog


class Deadline(NamedTuple):
    """An absolute point in time (``time.monotonic()`` clock) by which work must end.

    Immutable and cheap to create: one is made for every request.

    >>> d = Deadline.after(0.5, source="route")
    >>> 0 < d.remaining() <= 0.5
    True
    """

    at: float
    """Monotonic time at which the budget runs out."""
    budget: float
    """The budget in seconds this deadline was created with."""
    source: str
    """Where the budget came from: ``route``, ``scope`` or the inbound header's name."""

    @classmethod
    def after(cls, seconds: float, *, source: str) -> Deadline:
        """A deadline ``seconds`` from now."""
        return cls(time.monotonic() + seconds, seconds, source)

    def remaining(self) -> float:
        """Seconds left; negative once the deadline has passed."""
        return self.at - time.monotonic()

    def expired(self) -> bool:
        """Whether the deadline has passed."""
        return time.monotonic() >= self.at


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

    @property
    def catalog(self) -> Catalog | None:
        """The metrics of the guard handling the request; ``None`` when its metrics are off."""
        ...

    @property
    def enforced(self) -> bool:
        """Whether tailguard acts on its decisions for this request (``False``: shadow mode)."""
        ...

    def header(self, name: str) -> str | None:
        """The first value of request header ``name`` (case-insensitive), or ``None``."""
        ...


class ContextEntry(Protocol):
    """What the context variable holds: the deadline in force and the request's task owner."""

    @property
    def deadline(self) -> Deadline | None: ...

    @property
    def owner(self) -> TaskOwner | None: ...


class Frame(NamedTuple):
    deadline: Deadline | None
    owner: TaskOwner | None


current: Final[ContextVar[ContextEntry | None]] = ContextVar("tailguard", default=None)


def current_request() -> RequestView | None:
    """The request being handled in this context (tasks it spawned included), if any."""
    frame = current.get()
    owner = frame.owner if frame is not None else None
    # Owners are the middleware's request objects (views) or bare task registries.
    return cast("RequestView", owner) if hasattr(owner, "header") else None
