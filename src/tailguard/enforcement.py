"""Enforcement modes: enforce a limit, shadow it, or enforce it for a share of requests.

A limit is rolled out like any risky change: first in *shadow* mode (tailguard
decides everything exactly as it would and acts on nothing: no 504, no 503, no
cancellation, no bulkhead rejection; it records what would have happened),
then enforced for a fraction of requests, then ``"on"``. Each route policy and
each dependency has an :class:`Enforcement` (the guard's default unless it
names its own), switchable at run time (:class:`Enforcements`, the control API,
``tailguard enforce``).

>>> half = Enforcement(0.5, seed=7)
>>> sum(half.enforce() for _ in range(1000))
537
>>> Enforcement("shadow").enforce(), Enforcement("on").enforce()
(False, True)
>>> check_mode("enforce", "off")
Traceback (most recent call last):
...
ValueError: enforce must be 'on', 'shadow' or a fraction from 0.0 to 1.0, got 'off'
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal

__all__ = [
    "ENFORCE_ENV",
    "Enforcement",
    "Enforcements",
    "Mode",
    "UnknownTarget",
    "check_mode",
    "mode_label",
    "parse_mode",
]

Mode = Literal["on", "shadow"] | float
"""``"on"`` (enforce), ``"shadow"`` (decide, record, do not act), or the share enforced."""

ENFORCE_ENV: Final = "TAILGUARD_ENFORCE"
"""The environment variable read when a guard is created: the guard-wide default mode."""

DEFAULT_ROUTE: Final = "default"
"""The name :meth:`Enforcements.switch` takes for the default policy's route mode."""

logger = logging.getLogger("tailguard.enforce")


def check_mode(field: str, value: object) -> Mode:
    """``value`` as a mode, or an error naming ``field``.

    >>> check_mode("enforce", 0.25), check_mode("enforce", "shadow"), check_mode("enforce", 1)
    (0.25, 'shadow', 1.0)
    """
    if value == "on" or value == "shadow":
        return "on" if value == "on" else "shadow"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(
            f"{field} must be 'on', 'shadow' or a fraction from 0.0 to 1.0, got {value!r}"
        )
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{field} must be a fraction from 0.0 to 1.0, got {value!r}")
    return float(value)


def parse_mode(field: str, text: str) -> Mode:
    """A mode written as text (the environment, the command line): ``on``, ``shadow``, ``0.25``.

    >>> parse_mode("TAILGUARD_ENFORCE", " Shadow "), parse_mode("mode", "0.25")
    ('shadow', 0.25)
    """
    word = text.strip().lower()
    if word in ("on", "shadow"):
        return check_mode(field, word)
    try:
        number = float(word)
    except ValueError:
        raise ValueError(
            f"{field} must be 'on', 'shadow' or a fraction from 0.0 to 1.0, got {text!r}"
        ) from None
    return check_mode(field, number)


def mode_label(mode: Mode) -> str:
    """The bounded metric label of a mode: ``on``, ``shadow`` or ``fraction``.

    >>> mode_label(0.25), mode_label(1.0), mode_label(0.0)
    ('fraction', 'on', 'shadow')
    """
    if mode == "on" or mode == 1.0:
        return "on"
    if mode == "shadow" or mode == 0.0:
        return "shadow"
    return "fraction"


class Enforcement:
    """The mode of one route policy or dependency; :meth:`enforce` picks per request.

    ``always`` is the hot path's one read: true in ``"on"`` mode, when nothing
    is drawn. A fraction draws from a ``random.Random(seed)``, so a seeded
    guard picks the same requests every run.
    """

    __slots__ = ("_draw", "always", "explicit", "fraction", "mode")

    def __init__(
        self, mode: Mode = "on", *, seed: int | None = None, explicit: bool = False
    ) -> None:
        self._draw: Callable[[], float] = random.Random(seed).random
        self.explicit = explicit
        """Whether the policy or dependency named its own mode (else the guard's default)."""
        self.mode: Mode = "on"
        self.always = True
        self.fraction = 1.0
        self.set(mode)

    def __repr__(self) -> str:
        return f"Enforcement({self.mode!r})"

    def set(self, mode: Mode) -> None:
        """Switch to ``mode``; the next request (or call) sees it."""
        mode = check_mode("enforce", mode)
        self.mode = mode
        self.fraction = 1.0 if mode == "on" else 0.0 if mode == "shadow" else float(mode)
        self.always = self.fraction >= 1.0

    def enforce(self) -> bool:
        """Whether to enforce for this request: always, never, or with probability ``fraction``.

        Shadow mode draws nothing (a draw could never be under 0).
        """
        return self.always or (self.fraction > 0.0 and self._draw() < self.fraction)


class UnknownTarget(LookupError):
    """:meth:`Enforcements.switch` was given a route key or dependency the guard lacks."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail)
        self.field = field


class Enforcements:
    """Every mode of one guard: its default, each route key's and each dependency's.

    ``default`` is the guard's ``enforce=``, replaced by ``TAILGUARD_ENFORCE``
    when that is set (``env``). Routes and dependencies that name no mode of
    their own follow the default when it is switched.

    >>> modes = Enforcements("on", env={})
    >>> route = modes.route("GET /slow", None)
    >>> [change["target"] for change in modes.switch("shadow", who="ops")]
    ['guard', 'route GET /slow']
    >>> route.enforce()
    False
    """

    def __init__(
        self,
        default: Mode = "on",
        *,
        seed: int | None = None,
        env: Any = None,
    ) -> None:
        environ = os.environ if env is None else env
        mode = check_mode("enforce", default)
        text = environ.get(ENFORCE_ENV)
        if text is not None and text.strip():
            mode = parse_mode(ENFORCE_ENV, text)
        self.seed = seed
        self.default = Enforcement(mode, seed=seed)
        self.routes: dict[str, Enforcement] = {}
        """By route key (``"default"`` for the default policy)."""
        self.dependencies: dict[str, Enforcement] = {}
        self.changes: Callable[[str, Mode], None] | None = None
        """Called with (target kind, new mode) on every change (the guard counts them)."""
        self.published: Callable[[dict[str, Any]], None] | None = None
        """Called with each switch (``mode``, ``route``, ``dependency``, ``who``) once it is
        applied here, under :attr:`lock` (a fleet's store shares it; see tailguard.fleet_modes)."""
        self.fleet: Callable[[], dict[str, Any]] | None = None
        """The fleet's view for :meth:`describe` (``None``: modes are this process's own)."""
        self.lock = threading.RLock()
        """Held while modes change (never by a request: requests only read them)."""
        self._fleet_targets: dict[str, Mode] = {}

    def _new(self, mode: Mode | None) -> Enforcement:
        if mode is None:
            return Enforcement(self.default.mode, seed=self.seed)
        return Enforcement(check_mode("enforce", mode), seed=self.seed, explicit=True)

    def route(self, key: str | None, mode: Mode | None) -> Enforcement:
        """The enforcement of route ``key`` (``None``: the default policy), made on first use."""
        name = DEFAULT_ROUTE if key is None else key
        found = self.routes.get(name)
        if found is None:
            found = self.routes[name] = self._new(mode)
            self._follow_fleet(f"route {name}", found)
        return found

    def dependency(self, name: str, mode: Mode | None) -> Enforcement:
        """The enforcement of dependency ``name``, made on first use."""
        found = self.dependencies.get(name)
        if found is None:
            found = self.dependencies[name] = self._new(mode)
            self._follow_fleet(f"dependency {name}", found)
        return found

    def _follow_fleet(self, target: str, enforcement: Enforcement) -> None:
        """A target made after the fleet switched it takes the fleet's mode."""
        mode = self._fleet_targets.get(target)
        if mode is not None:
            enforcement.set(mode)

    def describe(self) -> dict[str, Any]:
        """Every mode, JSON-able: ``{"default": ..., "routes": {...}, "dependencies": {...}}``."""
        described: dict[str, Any] = {
            "default": self.default.mode,
            "routes": {key: e.mode for key, e in self.routes.items()},
            "dependencies": {name: e.mode for name, e in self.dependencies.items()},
        }
        if self.fleet is not None:
            described["fleet"] = self.fleet()
        return described

    def switch(
        self,
        mode: Mode,
        *,
        route: str | None = None,
        dependency: str | None = None,
        who: str = "unknown",
    ) -> list[dict[str, Any]]:
        """Change modes at run time; what changed, each ``{"target", "from", "to"}``.

        With neither ``route`` nor ``dependency``: the guard's default and every
        route and dependency (one command rolls everything back). Each change is
        logged on the ``tailguard.enforce`` logger (who, from what, to what) and
        counted. Unknown names raise :class:`UnknownTarget` and change nothing.
        """
        mode = check_mode("mode", mode)
        with self.lock:
            changed = self._switch(mode, route, dependency, who)
            if self.published is not None:
                self.published({"mode": mode, "route": route, "dependency": dependency, "who": who})
        return changed

    def _switch(
        self, mode: Mode, route: str | None, dependency: str | None, who: str
    ) -> list[dict[str, Any]]:
        targets: list[tuple[str, str, Enforcement]] = []
        if route is not None:
            found = self.routes.get(route)
            if found is None:
                known = ", ".join(sorted(self.routes)) or "none"
                raise UnknownTarget("route", f"no route key {route!r} (known: {known})")
            targets.append(("route", f"route {route}", found))
        if dependency is not None:
            found = self.dependencies.get(dependency)
            if found is None:
                known = ", ".join(sorted(self.dependencies)) or "none"
                raise UnknownTarget("dependency", f"no dependency {dependency!r} (known: {known})")
            targets.append(("dependency", f"dependency {dependency}", found))
        if route is None and dependency is None:
            targets.append(("guard", "guard", self.default))
            targets += [("route", f"route {k}", e) for k, e in self.routes.items()]
            targets += [("dependency", f"dependency {n}", e) for n, e in self.dependencies.items()]
        return [self._change(kind, target, e, mode, who) for kind, target, e in targets]

    def _change(
        self, kind: str, target: str, enforcement: Enforcement, mode: Mode, who: str
    ) -> dict[str, Any]:
        """Set one target's mode: logged (who, from what, to what) and counted, if it changed.

        Asking for the mode a target has already changes nothing, so it is neither
        logged nor counted (a "switches" alert would fire on a no-op otherwise).
        """
        before = enforcement.mode
        if before == mode:
            return {"target": target, "from": before, "to": mode, "unchanged": True}
        enforcement.set(mode)
        logger.warning("enforcement of %s changed from %s to %s by %s", target, before, mode, who)
        if self.changes is not None:
            self.changes(kind, mode)
        return {"target": target, "from": before, "to": mode}

    def apply(
        self, default: Mode | None, targets: Mapping[str, Mode], *, who: str
    ) -> list[dict[str, Any]]:
        """Make the modes what a fleet's record says; what changed (as :meth:`switch` says).

        ``default``: the mode of the latest fleet-wide switch (``None``: none
        yet), for the guard and every route and dependency the record does not
        name; ``targets``: modes by target (``"route GET /a"``,
        ``"dependency db"``), kept for those this process makes later. Only
        modes that differ change, each logged and counted like a switch.

        >>> modes = Enforcements("on", env={})
        >>> slow = modes.route("GET /slow", None)
        >>> [c["target"] for c in modes.apply("shadow", {"route GET /slow": "on"}, who="ops")]
        ['guard']
        >>> modes.dependency("db", None).mode, slow.mode
        ('shadow', 'on')
        """
        with self.lock:
            self._fleet_targets = dict(targets)
            everything: list[tuple[str, str, Enforcement]] = [("guard", "guard", self.default)]
            everything += [("route", f"route {k}", e) for k, e in self.routes.items()]
            everything += [
                ("dependency", f"dependency {n}", e) for n, e in self.dependencies.items()
            ]
            changed = []
            for kind, target, enforcement in everything:
                wanted = default if kind == "guard" else targets.get(target, default)
                if wanted is not None and wanted != enforcement.mode:
                    changed.append(self._change(kind, target, enforcement, wanted, who))
            return changed
