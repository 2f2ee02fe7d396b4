"""Where a fleet of workers keeps its chaos experiments: SQLite on one host, Redis across hosts.

A :class:`Store` holds what every worker of a service must agree on: the
experiments (as the schema files and the control API use, with absolute
start and end times on the store's clock), how each one ended, and each
worker's heartbeat with its injection counts. Engines given a store
(``Chaos(store="sqlite:///path")``, opened by
:func:`tailguard.chaos.fleet.open_store`) follow it from a background thread; the
request path never touches it. See ``docs/chaos-fleet.md``.

>>> import os, tempfile
>>> store = SQLiteStore(os.path.join(tempfile.mkdtemp(), "chaos.db"))
>>> store.start(record("db-down", {"name": "db-down", "ttl": 60, "faults": []}, 60, "doc"), 32)
>>> [entry["name"] for entry in store.read().running]
['db-down']
>>> store.halt("doc")
['db-down']
>>> store.read().running
[]
>>> store.close()
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "DEFAULT_SERVICE",
    "STORE_ENV_VAR",
    "SQLiteStore",
    "Snapshot",
    "Store",
    "StoreConflict",
    "StoreUnavailable",
    "check_start",
    "record",
    "stamp",
    "versioned",
    "worker_id",
]

STORE_ENV_VAR: Final = "TAILGUARD_CHAOS_STORE"
"""The environment variable an engine made with ``store=None`` reads (unset: ``memory``)."""
DEFAULT_SERVICE: Final = "tailguard"
"""The namespace of a store URL without ``?service=``."""
RECENT_ENDED: Final = 20
"""How many ended experiments a :class:`Snapshot` carries."""
WORKER_TTL: Final = 60.0
"""Heartbeats older than this (seconds, store clock) are forgotten."""


class StoreUnavailable(RuntimeError):
    """The chaos store could not be reached (or answered nonsense); nothing was changed by us."""


class StoreConflict(ValueError):
    """The store refused a start: ``field`` is ``"name"`` (one runs) or ``None`` (the cap)."""

    def __init__(self, message: str, field: str | None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a store holds, read at once: ``version`` changes whenever an experiment does."""

    version: int
    now: float
    """The store's clock (Unix seconds) when it was read: TTLs are judged on it."""
    running: list[dict[str, Any]]
    """Records of experiments that have not ended, whose end time is still ahead."""
    ended: list[dict[str, Any]] = field(default_factory=list)
    """The latest ended records, newest first (at most :data:`RECENT_ENDED`)."""


def record(name: str, experiment: dict[str, Any], ttl: float, actor: str) -> dict[str, Any]:
    """A store record for ``experiment`` (its schema form); the store sets its times on start."""
    return {
        "id": uuid.uuid4().hex,
        "name": name,
        "experiment": experiment,
        "ttl": ttl,
        "started_at": None,
        "ends_at": None,
        "actor": actor,
        "ended": None,
    }


def stamp(entry: dict[str, Any], now: float) -> dict[str, Any]:
    """``entry`` starting at ``now`` on the store's clock (for stores' ``start``)."""
    return {**entry, "started_at": now, "ends_at": now + entry["ttl"]}


class Store(ABC):
    """The operations a fleet needs; every method may raise :class:`StoreUnavailable`.

    Methods block (briefly: each has a timeout below the lease) and are
    called from the engine's follower thread or from control actions, never
    from a request.
    """

    url: str
    """Where the store is, without any password (for status and logs)."""
    service: str
    """The namespace: services sharing one store never see each other's experiments."""
    interval: float = 0.05
    """Seconds a follower waits between polls (at most, for stores that announce changes)."""

    @abstractmethod
    def poll(self) -> tuple[int, float]:
        """The cheap check: ``(version, store clock)``."""

    @abstractmethod
    def read(self) -> Snapshot:
        """Everything about the experiments, consistently."""

    @abstractmethod
    def start(self, entry: dict[str, Any], max_experiments: int) -> None:
        """Add ``entry`` (stamped with the store's clock); :class:`StoreConflict` if it may not.

        It may not while one of its name runs, or ``max_experiments`` do.
        """

    @abstractmethod
    def end(self, ids: Sequence[str], reason: str, actor: str, detail: str | None) -> list[str]:
        """End the experiments ``ids`` that have not ended; returns the names ended now."""

    @abstractmethod
    def end_name(self, name: str, reason: str, actor: str) -> bool:
        """End the running experiment ``name``; False if none runs."""

    @abstractmethod
    def halt(self, actor: str) -> list[str]:
        """End every running experiment (the fleet-wide kill switch); returns their names."""

    @abstractmethod
    def heartbeat(self, worker: str, info: dict[str, Any]) -> None:
        """Record ``worker``'s heartbeat (``seen_at`` is set to the store's clock)."""

    @abstractmethod
    def workers(self) -> list[dict[str, Any]]:
        """The heartbeats of workers seen in the last :data:`WORKER_TTL` seconds."""

    def wait(self, timeout: float) -> None:
        """Block until something may have changed, or ``timeout`` seconds (polling stores sleep)."""
        time.sleep(timeout)

    def close(self) -> None:  # noqa: B027 - optional for stores without resources
        """Release connections; the store is not used afterwards."""

    def read_modes(self) -> dict[str, Any] | None:
        """The fleet's enforcement modes (:mod:`tailguard.fleet_modes`); None: none written yet."""
        raise StoreUnavailable(f"{self.url}: this store keeps no enforcement modes")

    def update_modes(
        self, change: Callable[[dict[str, Any] | None, float], dict[str, Any]]
    ) -> dict[str, Any]:
        """Replace the modes record by ``change(current, store clock)``, atomically; the new one.

        The store sets its ``version``: one more than the current record's.
        """
        raise StoreUnavailable(f"{self.url}: this store keeps no enforcement modes")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments (
    service TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL,
    ends_at REAL NOT NULL, ended_at REAL, PRIMARY KEY (service, id));
CREATE TABLE IF NOT EXISTS versions (service TEXT PRIMARY KEY, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS workers (
    service TEXT NOT NULL, worker TEXT NOT NULL, body TEXT NOT NULL, seen_at REAL NOT NULL,
    PRIMARY KEY (service, worker));
"""


class SQLiteStore(Store):
    """A SQLite file (WAL mode) shared by the workers of one host; its clock is the host's.

    >>> import os, tempfile
    >>> store = SQLiteStore(os.path.join(tempfile.mkdtemp(), "chaos.db"))
    >>> store.poll()[0]
    0
    >>> store.close()
    """

    def __init__(
        self,
        path: str,
        *,
        service: str = DEFAULT_SERVICE,
        timeout: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.clock = clock
        """The store's clock (Unix seconds): the host's, which every worker on it shares."""
        self.service = service
        self.url = f"sqlite://{path}" if path.startswith("/") else f"sqlite:///{path}"
        self._timeout = timeout
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._connect()

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r}, service={self.service!r})"

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            try:
                connection = sqlite3.connect(
                    self.path,
                    timeout=self._timeout,
                    isolation_level=None,
                    check_same_thread=False,
                )
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")
                connection.executescript(_SCHEMA)
            except sqlite3.Error as error:
                raise StoreUnavailable(f"{self.url}: {error}") from error
            self._connection = connection
        return self._connection

    def _run(self, work: Any, *, write: bool = False) -> Any:
        with self._lock:
            try:
                connection = self._connect()
                connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    result = work(connection)
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
                connection.execute("COMMIT")
                return result
            except sqlite3.Error as error:
                broken, self._connection = self._connection, None
                if broken is not None:
                    broken.close()
                raise StoreUnavailable(f"{self.url}: {error}") from error

    def _bump(self, connection: sqlite3.Connection) -> None:
        connection.execute(
            "INSERT INTO versions VALUES (?, 1) "
            "ON CONFLICT(service) DO UPDATE SET version = version + 1",
            (self.service,),
        )

    def _version(self, connection: sqlite3.Connection) -> int:
        row = connection.execute(
            "SELECT version FROM versions WHERE service = ?", (self.service,)
        ).fetchone()
        return int(row[0]) if row else 0

    def poll(self) -> tuple[int, float]:
        return self._run(lambda c: (self._version(c), self.clock()))  # type: ignore[no-any-return]

    def read(self) -> Snapshot:
        def work(connection: sqlite3.Connection) -> Snapshot:
            now = self.clock()
            running = [
                json.loads(body)
                for (body,) in connection.execute(
                    "SELECT body FROM experiments WHERE service = ? AND ended_at IS NULL "
                    "AND ends_at > ? ORDER BY rowid",
                    (self.service, now),
                )
            ]
            ended = [
                json.loads(body)
                for (body,) in connection.execute(
                    "SELECT body FROM experiments WHERE service = ? AND ended_at IS NOT NULL "
                    "ORDER BY ended_at DESC LIMIT ?",
                    (self.service, RECENT_ENDED),
                )
            ]
            return Snapshot(self._version(connection), now, running, ended)

        return self._run(work)  # type: ignore[no-any-return]

    def start(self, entry: dict[str, Any], max_experiments: int) -> None:
        def work(connection: sqlite3.Connection) -> None:
            now = self.clock()
            names = [
                name
                for (name,) in connection.execute(
                    "SELECT name FROM experiments WHERE service = ? AND ended_at IS NULL "
                    "AND ends_at > ?",
                    (self.service, now),
                )
            ]
            check_start(entry["name"], names, max_experiments)
            stamped = stamp(entry, now)
            connection.execute(
                "INSERT INTO experiments VALUES (?, ?, ?, ?, ?, NULL)",
                (self.service, entry["id"], entry["name"], json.dumps(stamped), stamped["ends_at"]),
            )
            self._bump(connection)

        self._run(work, write=True)

    def _end_where(
        self, connection: sqlite3.Connection, rows: list[tuple[str, str]], ending: dict[str, Any]
    ) -> list[str]:
        now = ending["at"]
        names = []
        for key, body in rows:
            entry = json.loads(body)
            entry["ended"] = ending
            connection.execute(
                "UPDATE experiments SET ended_at = ?, body = ? WHERE service = ? AND id = ?",
                (now, json.dumps(entry), self.service, key),
            )
            names.append(entry["name"])
        if names:
            self._bump(connection)
        return names

    def end(self, ids: Sequence[str], reason: str, actor: str, detail: str | None) -> list[str]:
        def work(connection: sqlite3.Connection) -> list[str]:
            rows = [
                row
                for key in ids
                for row in connection.execute(
                    "SELECT id, body FROM experiments WHERE service = ? AND id = ? "
                    "AND ended_at IS NULL",
                    (self.service, key),
                )
            ]
            ending = _ending(reason, actor, detail, self.clock())
            return self._end_where(connection, rows, ending)

        return self._run(work, write=True)  # type: ignore[no-any-return]

    def end_name(self, name: str, reason: str, actor: str) -> bool:
        def work(connection: sqlite3.Connection) -> bool:
            rows = connection.execute(
                "SELECT id, body FROM experiments WHERE service = ? AND name = ? "
                "AND ended_at IS NULL AND ends_at > ?",
                (self.service, name, self.clock()),
            ).fetchall()
            return bool(
                self._end_where(connection, rows, _ending(reason, actor, None, self.clock()))
            )

        return self._run(work, write=True)  # type: ignore[no-any-return]

    def halt(self, actor: str) -> list[str]:
        def work(connection: sqlite3.Connection) -> list[str]:
            rows = connection.execute(
                "SELECT id, body FROM experiments WHERE service = ? AND ended_at IS NULL "
                "AND ends_at > ?",
                (self.service, self.clock()),
            ).fetchall()
            return self._end_where(connection, rows, _ending("halt", actor, None, self.clock()))

        return self._run(work, write=True)  # type: ignore[no-any-return]

    def heartbeat(self, worker: str, info: dict[str, Any]) -> None:
        def work(connection: sqlite3.Connection) -> None:
            now = self.clock()
            body = json.dumps({**info, "worker": worker, "seen_at": now})
            connection.execute(
                "INSERT INTO workers VALUES (?, ?, ?, ?) ON CONFLICT(service, worker) "
                "DO UPDATE SET body = excluded.body, seen_at = excluded.seen_at",
                (self.service, worker, body, now),
            )
            connection.execute(
                "DELETE FROM workers WHERE service = ? AND seen_at < ?",
                (self.service, now - WORKER_TTL),
            )

        self._run(work, write=True)

    def workers(self) -> list[dict[str, Any]]:
        def work(connection: sqlite3.Connection) -> list[dict[str, Any]]:
            now = self.clock()
            return [
                {**json.loads(body), "age": max(0.0, now - seen)}
                for body, seen in connection.execute(
                    "SELECT body, seen_at FROM workers WHERE service = ? AND seen_at >= ? "
                    "ORDER BY worker",
                    (self.service, now - WORKER_TTL),
                )
            ]

        return self._run(work)  # type: ignore[no-any-return]

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def read_modes(self) -> dict[str, Any] | None:
        def work(connection: sqlite3.Connection) -> dict[str, Any] | None:
            try:
                row = connection.execute(
                    "SELECT body FROM modes WHERE service = ?", (self.service,)
                ).fetchone()
            except sqlite3.OperationalError as error:  # no modes table: never written
                if "no such table" in str(error):
                    return None
                raise
            return json.loads(row[0]) if row else None

        return self._run(work)  # type: ignore[no-any-return]

    def update_modes(
        self, change: Callable[[dict[str, Any] | None, float], dict[str, Any]]
    ) -> dict[str, Any]:
        def work(connection: sqlite3.Connection) -> dict[str, Any]:
            connection.execute(_MODES_SCHEMA)
            row = connection.execute(
                "SELECT body FROM modes WHERE service = ?", (self.service,)
            ).fetchone()
            current = json.loads(row[0]) if row else None
            updated = versioned(current, change(current, self.clock()))
            connection.execute(
                "INSERT INTO modes VALUES (?, ?) "
                "ON CONFLICT(service) DO UPDATE SET body = excluded.body",
                (self.service, json.dumps(updated)),
            )
            return updated

        return self._run(work, write=True)  # type: ignore[no-any-return]


def _ending(reason: str, actor: str, detail: str | None, now: float) -> dict[str, Any]:
    return {"reason": reason, "actor": actor, "detail": detail, "at": now}


def check_start(name: str, running: list[str], max_experiments: int) -> None:
    """Raise :class:`StoreConflict` if ``name`` may not start beside ``running`` (for stores)."""
    if name in running:
        raise StoreConflict(f"experiment {name!r} is already running; stop it first", "name")
    if len(running) >= max_experiments:
        raise StoreConflict(
            f"the most experiments the fleet runs at once (max_experiments={max_experiments}) "
            "are running; stop one first",
            None,
        )


_ENGINES = itertools.count(1)


def worker_id() -> str:
    """A new engine's name in its fleet: ``host:pid`` (``host:pid/2`` for a process's second)."""
    number = next(_ENGINES)
    suffix = f"/{number}" if number > 1 else ""
    return f"{os.uname().nodename}:{os.getpid()}{suffix}"


_MODES_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS modes (service TEXT PRIMARY KEY, body TEXT NOT NULL)"
)


def versioned(current: dict[str, Any] | None, updated: dict[str, Any]) -> dict[str, Any]:
    """``updated`` with the version after ``current``'s (for stores' ``update_modes``).

    >>> versioned({"version": 4}, {"default": "on"})
    {'default': 'on', 'version': 5}
    """
    before = current.get("version") if isinstance(current, dict) else None
    number = before if isinstance(before, int) and not isinstance(before, bool) else 0
    return {**updated, "version": number + 1}
