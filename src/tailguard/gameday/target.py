"""The app under test: the guard it is protected by, and the budget that guard gives a scenario.

>>> from starlette.applications import Starlette
>>> from tailguard import RoutePolicy, Tailguard
>>> from tailguard.gameday.load import Scenario
>>> guard = Tailguard(metrics=False, routes={"GET /fast": RoutePolicy(deadline=0.1)})
>>> find_guard(guard.install(Starlette(), tracing=False)) is guard
True
>>> budget_for(guard, Scenario("GET", "/fast", ("/fast",), 1))
Budget(seconds=0.1, source='GET /fast', route_seconds=0.1, header=None)
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import Receive, Scope, Send

from tailguard.gameday.load import Scenario
from tailguard.guard import Tailguard
from tailguard.middleware.asgi import TailguardMiddleware

__all__ = ["Budget", "budget_for", "find_guard"]


@dataclass(frozen=True, slots=True)
class Budget:
    """The budget a scenario's requests get, and where it comes from."""

    seconds: float | None
    """The effective budget; ``None`` when no deadline applies."""
    source: str
    """The route key that set it, ``default``, or the inbound header that shrank it."""
    route_seconds: float | None
    """The route's own budget, before inbound headers."""
    header: str | None = None
    """The inbound deadline header that shrank the route's budget, if one did."""


def find_guard(app: object) -> Tailguard | None:
    """The :class:`Tailguard` an app is guarded by, or ``None`` if there is none.

    Understands ``guard.install(app)`` and ``app.add_middleware(TailguardMiddleware, ...)``
    on Starlette and FastAPI apps, and an app wrapped as ``TailguardMiddleware(app, ...)``.
    """
    found: object = None
    if isinstance(app, TailguardMiddleware):
        found = app.guard
    else:
        for middleware in getattr(app, "user_middleware", ()):
            if getattr(middleware, "cls", None) is TailguardMiddleware:
                # Build it the way the app will, around an app that is never called.
                built = TailguardMiddleware(_unused, *middleware.args, **middleware.kwargs)
                found = built.guard
                break
    # The middleware holds whatever owns its runtime; the demo reads a Tailguard's.
    return found if isinstance(found, Tailguard) else None


async def _unused(scope: Scope, receive: Receive, send: Send) -> None:  # pragma: no cover
    raise AssertionError("find_guard() builds a middleware only to read its guard")


def budget_for(guard: Tailguard | None, scenario: Scenario) -> Budget | None:
    """The budget ``guard`` gives ``scenario``'s requests; ``None`` without a guard.

    Uses the guard's own route table and inbound-header rules, so it is the
    budget the middleware computes for these requests.
    """
    if guard is None:
        return None
    resolved = guard.routes.lookup(scenario.method, scenario.template)
    route_seconds = resolved.policy.deadline
    if guard.inbound is not None:
        sent = [(h.lower().encode("latin-1"), v.encode("latin-1")) for h, v in scenario.headers]
        found = guard.inbound.budget(sent)
        if found is not None and (route_seconds is None or found[0] < route_seconds):
            return Budget(found[0], found[1], route_seconds, header=found[1])
    return Budget(route_seconds, resolved.key or "default", route_seconds)
