"""A running experiment: its clock, its scope check, its counters and its sleepers."""

from __future__ import annotations

import hmac
from collections.abc import Callable

from tailguard._context import RequestView
from tailguard.chaos._safeguard import Watcher
from tailguard.chaos.experiment import Experiment
from tailguard.chaos.faults import Fault

__all__ = ["MAX_REACHED", "Run"]

MAX_REACHED = 1024
"""At most this many routes an unscoped experiment's safeguard learns it reaches."""


class Run:
    """One experiment from :meth:`Chaos.start <tailguard.chaos.Chaos.start>` until it stops.

    ``stopped`` is set once, under the engine's lock, and never cleared;
    everything that was waiting on the run's faults is woken then.
    """

    __slots__ = (
        "_failing",
        "_secret",
        "_wakers",
        "errors",
        "experiment",
        "expires_at",
        "injections",
        "key",
        "last_error",
        "name",
        "reached",
        "scoped",
        "skipped",
        "started_at",
        "stopped",
        "ttl_token",
        "watcher",
    )

    def __init__(
        self,
        experiment: Experiment,
        started_at: float,
        expires_at: float,
        ttl_token: int,
    ) -> None:
        self.experiment = experiment
        self.name = experiment.name
        self.started_at = started_at
        """Wall-clock time (``time.time()``) of the start, for status and logs."""
        self.expires_at = expires_at
        """When the TTL runs out, on the engine's (monotonic) clock."""
        self.scoped = experiment.scoped
        self.key: str | None = None
        """The experiment's id in the fleet's store (``None`` without a store)."""
        secret = experiment.secret
        self._secret = secret.encode() if secret is not None else b""
        self.stopped = False
        self.injections = 0
        self.skipped = 0
        self.errors = 0
        """Faults that could not be planned or applied (the calls went on without them)."""
        self.last_error: str | None = None
        """What the latest of those errors was, for status."""
        self._failing: set[int] = set()
        self.ttl_token = ttl_token
        """The engine's wake-up at the TTL (so an idle experiment still ends on time)."""
        abort = experiment.abort
        self.watcher = Watcher(abort) if abort is not None else None
        self.reached: set[str] = set()
        """Route templates whose requests this experiment's faults applied to (for the safeguard).

        Filled only while a safeguard watches and the experiment names no
        ``routes``; bounded by the app's routes (templates, never raw paths).
        """
        self._wakers: set[Callable[[], None]] = set()

    def applies(self, request: RequestView | None) -> bool:
        """Whether the experiment's scope (routes, tenants, header secret) covers ``request``."""
        if not self.scoped:
            return True
        if request is None:
            return False
        experiment = self.experiment
        keys = experiment.route_keys
        if keys:
            method, route = request.method, request.route
            if not any(key.matches(method, route) for key in keys):
                return False
        if experiment.tenants and request.tenant not in experiment.tenants:
            return False
        header = experiment.header
        if header is not None:
            value = request.header(header)
            if value is None:
                return False
            return hmac.compare_digest(value.encode("utf-8", "replace"), self._secret)
        return True

    def reach(self, request: RequestView) -> None:
        """Note that a fault of this experiment applied to a call made for ``request``."""
        route = request.route
        if route and route not in self.reached and len(self.reached) < MAX_REACHED:
            self.reached.add(route)

    def watches(self, method: str, route: str) -> bool:
        """Whether the safeguard counts a request on ``route`` (a template; ``""``: unmatched).

        An experiment that names ``routes`` is judged on them. One that does
        not is judged on the routes its faults can reach: routes whose
        requests its faults applied to (a call to a dependency it targets, or
        a route fault's own route), so requests elsewhere cannot dilute it.
        (The engine leaves unmatched requests out before asking.)
        """
        keys = self.experiment.route_keys
        if keys:
            return any(key.matches(method, route) for key in keys)
        return route in self.reached

    def note_failing(self, fault: Fault) -> bool:
        """Note that ``fault`` failed; True the first time (so it is logged once)."""
        key = id(fault)  # the experiment holds its faults for as long as the run lives
        if key in self._failing:
            return False
        self._failing.add(key)
        return True

    def add_waker(self, wake: Callable[[], None]) -> None:
        self._wakers.add(wake)

    def discard_waker(self, wake: Callable[[], None]) -> None:
        self._wakers.discard(wake)

    def wake_all(self) -> None:
        """Wake every injection sleeping on this run's faults (they end at once)."""
        for wake in list(self._wakers):
            wake()
        self._wakers.clear()
