"""One thread per engine that wakes it when an experiment's TTL runs out.

A :class:`Ticker` keeps the due times of the running experiments in a heap
and sleeps on one daemon thread until the earliest; the thread starts with
the first scheduled time and ends when none is left, so an idle engine has
no thread at all.

>>> import threading
>>> fired = threading.Event()
>>> ticker = Ticker(fired.set, "doctest-ticker")
>>> token = ticker.schedule(0.0)
>>> fired.wait(10)
True
>>> ticker.cancel(token)  # already fired: nothing to do
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable

__all__ = ["Ticker"]


class Ticker:
    """Calls ``wake()`` (on its own thread) at each time given to :meth:`schedule`.

    Times are real (``time.monotonic``), whatever clock the engine runs on:
    a late or spurious wake-up is harmless, the engine checks its own clock.
    """

    __slots__ = ("_condition", "_due", "_name", "_tokens", "_wake", "thread")

    def __init__(self, wake: Callable[[], None], name: str) -> None:
        self._wake = wake
        self._name = name
        self._due: list[tuple[float, int]] = []
        self._tokens = itertools.count()
        self._condition = threading.Condition(threading.Lock())
        self.thread: threading.Thread | None = None
        """The thread sleeping until the next due time; ``None`` while nothing is due."""

    def schedule(self, delay: float) -> int:
        """Wake the engine ``delay`` seconds from now; returns a token for :meth:`cancel`."""
        with self._condition:
            token = next(self._tokens)
            heapq.heappush(self._due, (time.monotonic() + delay, token))
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self.thread.start()
            else:
                self._condition.notify()
            return token

    def cancel(self, token: int) -> None:
        """Forget the wake-up ``token`` (a no-op once it has fired)."""
        with self._condition:
            due = [entry for entry in self._due if entry[1] != token]
            if len(due) != len(self._due):
                heapq.heapify(due)
                self._due = due
                self._condition.notify()

    def _run(self) -> None:
        condition = self._condition
        with condition:
            try:
                while self._due:
                    delay = self._due[0][0] - time.monotonic()
                    if delay > 0:
                        condition.wait(delay)
                        continue
                    heapq.heappop(self._due)
                    condition.release()
                    try:
                        self._wake()
                    finally:
                        condition.acquire()
            finally:  # even if wake() raised: the next schedule() starts a fresh thread
                self.thread = None
