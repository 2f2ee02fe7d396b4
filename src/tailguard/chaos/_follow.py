"""The thread that keeps one engine in step with its fleet's store.

A :class:`Follower` polls the store's version (cheap), reads everything when
it changed, and hands the snapshot to the engine; it writes the engine's
pending ends (a safeguard that tripped, a TTL seen first here) and a
heartbeat with the injection counts, and reads the others' heartbeats (from
which the engine takes its share of ``max_injections``). It never runs on a
request or on the event loop: the seams only ever read the engine's ``armed``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from tailguard.chaos._log import log_event
from tailguard.chaos.store import Snapshot, Store

__all__ = ["Follower"]

HEARTBEAT = 0.5
"""Seconds between heartbeats (each also refreshes the cached fleet view)."""


class Follower:
    """Follows ``store`` for an engine, on a daemon thread started by :meth:`start`.

    ``apply(snapshot, read_at)`` gets every new snapshot (``read_at`` on
    ``clock``, taken before the read began); ``renew(read_at)`` every poll
    that found nothing new (False: read everything after all); ``lost()``
    every poll that failed; ``info()`` the heartbeat to write; ``seen(workers)``
    every read of the fleet's heartbeats, the first before any snapshot.
    """

    def __init__(
        self,
        store: Store,
        worker: str,
        *,
        interval: float,
        clock: Callable[[], float],
        apply: Callable[[Snapshot, float], None],
        renew: Callable[[float], bool],
        lost: Callable[[], None],
        info: Callable[[], dict[str, Any]],
        seen: Callable[[list[dict[str, Any]]], None],
    ) -> None:
        self.store = store
        self.worker = worker
        self.interval = interval
        self._clock = clock
        self._apply = apply
        self._renew = renew
        self._lost = lost
        self._info = info
        self._seen = seen
        self._seen_fleet = False
        self._pending: deque[tuple[str | None, str, str, str | None]] = deque(maxlen=1024)
        self._closed = threading.Event()
        self._version: int | None = None
        self._failing = False
        self._next_heartbeat = 0.0
        self.workers: list[dict[str, Any]] = []
        """The fleet as of the latest heartbeat (what status shows)."""
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(
                target=self._run, name="tailguard-chaos-follower", daemon=True
            )
            self.thread.start()

    def close(self) -> None:
        """Stop following (the thread ends within one interval)."""
        self._closed.set()

    def queue_end(self, key: str, reason: str, actor: str, detail: str | None) -> None:
        """Write that ``key`` ended (here) to the store, now or once it can be reached."""
        self._pending.append((key, reason, actor, detail))

    def queue_halt(self, actor: str) -> None:
        """Write a halt (of everything running) to the store once it can be reached."""
        self._pending.append((None, "halt", actor, None))

    def refresh(self) -> None:
        """Read the store now and apply it (raises :class:`StoreUnavailable`)."""
        if not self._seen_fleet:
            # Before the first experiment: so a worker that just started injects its
            # share, not the fleet's whole cap.
            self._read_fleet()
        read_at = self._clock()
        snapshot = self.store.read()
        self._version = snapshot.version
        self._apply(snapshot, read_at)

    def step(self) -> None:
        """One poll: flush pending ends, read what changed, heartbeat when due."""
        try:
            self._flush()
            read_at = self._clock()
            version, _ = self.store.poll()
            if version != self._version or not self._renew(read_at):
                self.refresh()
        except Exception as error:
            self._version = None  # read everything once the store is back
            if not self._failing:
                self._failing = True
                log_event(
                    "store_error",
                    actor="follower",
                    reason=f"{type(error).__name__}: {error}",
                    level=logging.WARNING,
                    store=self.store.url,
                )
            self._lost()
            return
        if self._failing:
            self._failing = False
            log_event("store_back", actor="follower", store=self.store.url)
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + HEARTBEAT
            try:
                self.store.heartbeat(self.worker, self._info())
                self._read_fleet()
            except Exception:  # the next poll notices and says so
                self._version = None

    def _read_fleet(self) -> None:
        workers = self.store.workers()
        self.workers = workers
        self._seen(workers)
        self._seen_fleet = True

    def _flush(self) -> None:
        while self._pending:
            key, reason, actor, detail = self._pending[0]
            if key is None:
                self.store.halt(actor)
            else:
                self.store.end([key], reason, actor, detail)
            self._pending.popleft()

    def _run(self) -> None:
        while not self._closed.is_set():
            self.step()
            try:
                self.store.wait(self.interval)
            except Exception:
                self._closed.wait(self.interval)
