"""Enforcement modes shared by a fleet: a switch on any worker reaches every worker of the store.

With a fleet store (``Chaos(store=...)`` or ``TAILGUARD_CHAOS_STORE``), the
guard keeps its modes in the store as one small record: the mode of the
latest fleet-wide switch, the modes of single targets switched since, who
switched last, from which worker, when, and a version the store bumps on
every write. The worker that receives a switch applies it at once, then
writes it to the store (from :class:`FleetModes`'s thread, never the event
loop); every worker's thread reads the record each poll interval and, when
its version changed, applies it through :meth:`Enforcements.apply`: logged
and counted like any switch, ``who`` kept (``alice via worker host:pid``).
Requests read the modes as before: one attribute, no store, no lock.

If the store cannot be reached a worker keeps the modes it has (and says so
in the ``fleet`` part of its modes and in a warning); once it can, it writes
any switch it received meanwhile and applies the store's record.

>>> record = ModesRecord.from_dict(
...     {"version": 2, "default": "shadow", "targets": {"route GET /a": 0.25},
...      "who": "alice", "worker": "web-1:41", "at": 1700000000.0})
>>> record.to_dict() == ModesRecord.from_dict(record.to_dict()).to_dict()
True
>>> ModesRecord.from_dict({**record.to_dict(), "default": "off"})
Traceback (most recent call last):
...
ValueError: modes record: default must be 'on', 'shadow' or a fraction from 0.0 to 1.0, got 'off'
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from tailguard.chaos.store import Store
from tailguard.enforcement import Enforcements, Mode, check_mode

__all__ = ["FleetModes", "ModesRecord", "merged"]

logger = logging.getLogger("tailguard.enforce")

_KINDS: Final = ("route ", "dependency ")


@dataclass(frozen=True, slots=True)
class ModesRecord:
    """The fleet's modes as the store keeps them (JSON: :meth:`to_dict`)."""

    version: int
    default: Mode | None
    """The mode of the latest fleet-wide switch (``None``: only single targets were switched)."""
    targets: Mapping[str, Mode] = field(default_factory=dict)
    """Modes of targets switched one by one since (``"route GET /a"``, ``"dependency db"``)."""
    who: str = "unknown"
    worker: str = "unknown"
    """The worker that received the latest switch."""
    at: float = 0.0
    """When it was written (Unix seconds, the store's clock)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "default": self.default,
            "targets": dict(self.targets),
            "who": self.who,
            "worker": self.worker,
            "at": self.at,
        }

    @classmethod
    def from_dict(cls, data: object) -> ModesRecord:
        """The record in ``data``; ValueError naming the field that is not valid."""
        if not isinstance(data, dict):
            raise ValueError(f"modes record: expected an object, got {data!r}")
        version = data.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"modes record: version must be an int >= 1, got {version!r}")
        default = data.get("default")
        if default is not None:
            default = _checked("default", default)
        targets = data.get("targets", {})
        if not isinstance(targets, dict):
            raise ValueError(f"modes record: targets must be an object, got {targets!r}")
        checked: dict[str, Mode] = {}
        for target, mode in targets.items():
            if not isinstance(target, str) or not target.startswith(_KINDS):
                raise ValueError(
                    f"modes record: targets must be named 'route KEY' or 'dependency NAME', "
                    f"got {target!r}"
                )
            checked[target] = _checked(f"targets[{target!r}]", mode)
        for name in ("who", "worker"):
            if not isinstance(data.get(name, ""), str):
                raise ValueError(f"modes record: {name} must be a string, got {data[name]!r}")
        at = data.get("at", 0.0)
        if isinstance(at, bool) or not isinstance(at, int | float):
            raise ValueError(f"modes record: at must be a number, got {at!r}")
        return cls(
            version,
            default,
            checked,
            data.get("who", "unknown"),
            data.get("worker", "unknown"),
            float(at),
        )


def _checked(field: str, value: object) -> Mode:
    try:
        return check_mode(field, value)
    except ValueError as error:
        raise ValueError(f"modes record: {error}") from None


def merged(
    current: dict[str, Any] | None, switch: Mapping[str, Any], worker: str, now: float
) -> dict[str, Any]:
    """The record after ``switch`` (as :attr:`Enforcements.published` gives it; no version).

    A fleet-wide switch (no route, no dependency) sets every mode, so it
    forgets the single targets switched before it.

    >>> first = merged(None, {"mode": 0.5, "route": "GET /a", "who": "bob"}, "w:1", 10.0)
    >>> first["default"], first["targets"]
    (None, {'route GET /a': 0.5})
    >>> merged({**first, "version": 1}, {"mode": "on", "who": "alice"}, "w:2", 11.0)["targets"]
    {}
    """
    default: Mode | None = None
    targets: dict[str, Mode] = {}
    if current is not None:
        try:
            before = ModesRecord.from_dict(current)
        except ValueError as error:  # replaced by this switch, not kept
            logger.warning("the store's enforcement modes are not valid: %s", error)
        else:
            default, targets = before.default, dict(before.targets)
    mode = check_mode("mode", switch["mode"])
    route, dependency = switch.get("route"), switch.get("dependency")
    if route is None and dependency is None:
        default, targets = mode, {}
    if route is not None:
        targets[f"route {route}"] = mode
    if dependency is not None:
        targets[f"dependency {dependency}"] = mode
    return {
        "default": default,
        "targets": targets,
        "who": str(switch.get("who", "unknown")),
        "worker": worker,
        "at": now,
    }


class FleetModes:
    """Keeps one guard's :class:`Enforcements` in step with its fleet's ``store``.

    :meth:`start` reads the store once (the store's modes win over
    ``TAILGUARD_ENFORCE``: they are later, explicit switches), then follows
    it on a daemon thread every ``interval`` seconds (the store's poll
    interval by default). The thread ends with :meth:`close`, or once the
    guard's modes are gone.
    """

    def __init__(
        self,
        store: Store,
        enforcements: Enforcements,
        *,
        worker: str,
        interval: float | None = None,
    ) -> None:
        self.store = store
        self.worker = worker
        self.interval = store.interval if interval is None else interval
        self._modes = weakref.ref(enforcements)
        self._pending: deque[dict[str, Any]] = deque(maxlen=256)
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._stepping = threading.Lock()
        self.version: int | None = None
        """The version of the store's record applied here (``None``: none yet)."""
        self.error: str | None = None
        """Why the store could not be reached at the latest try (``None``: it could)."""
        self.thread: threading.Thread | None = None
        enforcements.published = self.publish
        enforcements.fleet = self.status

    def start(self) -> None:
        """Read the store now (a failure is logged, modes stay), then follow it."""
        self.step()
        if self.thread is None:
            self.thread = threading.Thread(
                target=self._run, name="tailguard-enforce-follower", daemon=True
            )
            self.thread.start()

    def close(self) -> None:
        """Stop following (the thread ends within one interval)."""
        self._closed.set()
        self._wake.set()

    def publish(self, switch: dict[str, Any]) -> None:
        """Queue ``switch`` (applied here already) for the store, and wake the thread."""
        self._pending.append(dict(switch))
        self._wake.set()

    def status(self) -> dict[str, Any]:
        """The ``fleet`` part of the modes: the store, this worker, whether it follows."""
        return {
            "store": self.store.url,
            "worker": self.worker,
            "following": self.error is None and self.version is not None,
            "version": self.version,
            "error": self.error,
            "unwritten": len(self._pending),
        }

    def step(self) -> None:
        """Write queued switches, then apply the store's record if its version changed."""
        with self._stepping:  # one step at a time: each queued switch is written once
            self._step()

    def _step(self) -> None:
        modes = self._modes()
        if modes is None:
            self.close()
            return
        try:
            while self._pending:
                written = self.store.update_modes(self._merge(self._pending[0]))
                self._pending.popleft()
                self._apply(modes, written)
            data = self.store.read_modes()
        except Exception as error:
            self._failed(error, modes)
            return
        if self.error is not None:
            self.error = None
            logger.warning("enforcement modes: the store %s answers again", self.store.url)
            self.version = None  # apply what it holds, whatever its version
        if data is not None:
            self._apply(modes, data)
        elif self.version is None:
            self.version = 0  # following: the store holds no modes yet

    def _merge(
        self, switch: dict[str, Any]
    ) -> Callable[[dict[str, Any] | None, float], dict[str, Any]]:
        return lambda current, now: merged(current, switch, self.worker, now)

    def _apply(self, modes: Enforcements, data: dict[str, Any]) -> None:
        try:
            record = ModesRecord.from_dict(data)
        except ValueError as error:
            if self.version != -1:
                logger.warning("enforcement modes: kept, the store's are not valid: %s", error)
            self.version = -1
            return
        if record.version == self.version:
            return
        with modes.lock:
            if self._pending:  # a newer switch of ours is on its way: apply what it writes
                return
            modes.apply(
                record.default, record.targets, who=f"{record.who} via worker {record.worker}"
            )
            self.version = record.version

    def _failed(self, error: Exception, modes: Enforcements) -> None:
        reason = f"{type(error).__name__}: {error}"
        if self.error is None:
            logger.warning(
                "enforcement modes: the store %s cannot be reached (%s); keeping the modes "
                "this worker has (default %s) until it can",
                self.store.url,
                reason,
                modes.default.mode,
            )
        self.error = reason

    def _run(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._closed.is_set():
                return
            self.step()
