"""Opening a fleet's chaos store from its URL: :func:`open_store`.

>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "chaos.db")
>>> store = open_store(f"sqlite://{path}?service=shop")
>>> store.service
'shop'
>>> store.close()
>>> open_store("mysql://db/chaos")
Traceback (most recent call last):
...
ValueError: store URL 'mysql://db/chaos': expected memory, sqlite:///path or redis://host:port/db
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tailguard.chaos.store import DEFAULT_SERVICE, SQLiteStore, Store

__all__ = [
    "Share",
    "fleet_counts",
    "fleet_injections",
    "following",
    "injection_share",
    "open_store",
    "recent",
    "share_of",
    "store_status",
    "worker_entry",
]


def _service(url: str, query: str) -> str:
    values = parse_qs(query).get("service", [DEFAULT_SERVICE])
    service = values[-1]
    if not service or not all(c.isalnum() or c in "-_." for c in service):
        raise ValueError(
            f"store URL {url!r}: service must be letters, digits, '-', '_' or '.', got {service!r}"
        )
    return service


def open_store(url: str, *, timeout: float = 0.5) -> Store:
    """The store at ``url``: ``sqlite:///path`` or ``redis://host:port/db`` (``?service=name``).

    ``timeout`` bounds each operation (seconds). ``memory`` has no store:
    an engine given it keeps experiments to itself.
    """
    if not isinstance(url, str):
        raise ValueError(f"store must be a URL string, got {url!r}")
    parts = urlsplit(url)
    service = _service(url, parts.query)
    if parts.scheme == "sqlite":
        if parts.netloc or not parts.path or parts.path == "/":
            raise ValueError(
                f"store URL {url!r}: a SQLite store is sqlite:///path/to/file.db (three slashes)"
            )
        return SQLiteStore(parts.path, service=service, timeout=timeout)
    if parts.scheme in ("redis", "rediss", "unix"):
        from tailguard.chaos.redis_store import RedisStore

        return RedisStore(url, service=service, timeout=timeout)
    raise ValueError(f"store URL {url!r}: expected memory, sqlite:///path or redis://host:port/db")


def recent(worker: dict[str, Any], lease: float) -> bool:
    """Whether a worker's heartbeat is recent (within 2 leases): it may be injecting."""
    age = worker.get("age")
    return isinstance(age, int | float) and age <= 2 * lease


def following(worker: dict[str, Any], lease: float) -> bool:
    """Whether a worker's heartbeat says it follows the store and is recent (within 2 leases)."""
    return bool(worker.get("following")) and recent(worker, lease)


def injection_share(cap: int, worker: str, workers: Iterable[str]) -> int:
    """``worker``'s places under a fleet-wide cap of ``cap`` injections shared with ``workers``.

    The names, sorted, split ``cap`` so that the shares add up to it
    exactly: each gets ``cap // n`` and the first ``cap % n`` one more.
    ``worker`` counts itself in when ``workers`` does not list it yet (it
    has just started). A worker joining never makes another's share grow,
    nor one leaving make it shrink.

    >>> [injection_share(5, name, ["a", "b", "c"]) for name in "abc"]
    [2, 2, 1]
    >>> [injection_share(2, name, ["a", "b", "c"]) for name in "abc"]  # more workers than places
    [1, 1, 0]
    >>> injection_share(4, "b", ["a"])  # b is not listed yet: it counts itself in
    2
    """
    names = sorted({*workers, worker})
    each, extra = divmod(cap, len(names))
    return each + (names.index(worker) < extra)


def _caps(workers: list[dict[str, Any]]) -> list[int]:
    """The ``max_injections`` the heartbeats say (an older version's say nothing)."""
    return [
        cap
        for item in workers
        if isinstance(cap := item.get("max_injections"), int)
        and not isinstance(cap, bool)
        and cap >= 1
    ]


@dataclass(frozen=True, slots=True)
class Share:
    """A worker's part of the fleet's ``max_injections``, as its latest read of the store says."""

    cap: int
    """The fleet's cap: the smallest ``max_injections`` among the workers sharing it."""
    workers: int
    """How many workers share it (this one included)."""
    places: int
    """This worker's share: calls it may have under injection at once (0: none)."""


def share_of(cap: int, worker: str, workers: list[dict[str, Any]], lease: float) -> Share:
    """``worker``'s :class:`Share` of ``cap``, given the store's heartbeats ``workers``.

    Every worker with a recent heartbeat counts, following or not (one
    that does not follow yet is about to). If they were given different
    caps (a rolling deploy), the smallest applies to all.

    >>> beats = [{"worker": "a", "age": 0.2, "max_injections": 5},
    ...          {"worker": "b", "age": 0.1, "max_injections": 3},
    ...          {"worker": "gone", "age": 60.0, "max_injections": 1}]
    >>> share_of(10, "a", beats, lease=2.0)
    Share(cap=3, workers=2, places=2)
    """
    live = [item for item in workers if recent(item, lease) and item.get("worker") is not None]
    fleet_cap = min([cap, *_caps(live)])
    names = {str(item["worker"]) for item in live} | {worker}
    return Share(fleet_cap, len(names), injection_share(fleet_cap, worker, names))


def fleet_counts(key: str, workers: list[dict[str, Any]]) -> dict[str, Any]:
    """Injection counts of the store's experiment ``key``, summed and per worker."""
    total = {"injections": 0, "skipped": 0, "injection_errors": 0}
    by_worker: dict[str, int] = {}
    for worker in workers:
        counts = (worker.get("counts") or {}).get(key)
        if not counts:
            continue
        for name in total:
            total[name] += int(counts.get(name, 0))
        by_worker[str(worker.get("worker"))] = int(counts.get("injections", 0))
    return {**total, "workers": by_worker}


def worker_entry(worker: dict[str, Any]) -> dict[str, Any]:
    """A worker's heartbeat as status shows it (``None`` for what an older version left out)."""
    return {
        "worker": worker.get("worker"),
        "pid": worker.get("pid"),
        "host": worker.get("host"),
        "last_heartbeat": worker.get("seen_at"),
        "age": worker.get("age"),
        "following": bool(worker.get("following")),
        "max_injections": worker.get("max_injections"),
        "injection_share": worker.get("injection_share"),
        "injections_in_flight": worker.get("injections_in_flight"),
        "injections_skipped": worker.get("injections_skipped"),
    }


def fleet_injections(workers: list[dict[str, Any]], lease: float) -> dict[str, Any]:
    """The fleet's injections as the recent heartbeats say: cap, workers, in flight, skipped.

    ``max_injections`` is the smallest cap a worker was given (``None``
    without heartbeats); the sums are half a second behind at most.

    >>> beats = [{"worker": "a", "age": 0.2, "max_injections": 3, "injections_in_flight": 2},
    ...          {"worker": "b", "age": 0.1, "max_injections": 3, "injections_in_flight": 1,
    ...           "injections_skipped": 4}]
    >>> fleet_injections(beats, lease=2.0)
    {'max_injections': 3, 'workers': 2, 'in_flight': 3, 'skipped': 4}
    """
    live = [item for item in workers if recent(item, lease)]

    def total(name: str) -> int:
        return sum(int(item.get(name) or 0) for item in live)

    return {
        "max_injections": min(_caps(live), default=None),
        "workers": len(live),
        "in_flight": total("injections_in_flight"),
        "skipped": total("injections_skipped"),
    }


def store_status(store: Store, *, lease: float = 2.0) -> dict[str, Any]:
    """The fleet as its store sees it, shaped like the control API's status (secrets redacted).

    What ``tailguard chaos --store URL status`` shows: no worker is asked.
    """
    snapshot = store.read()
    workers = store.workers()
    experiments = []
    for entry in snapshot.running:
        counts = fleet_counts(entry["id"], workers)
        experiment = dict(entry["experiment"])
        if "secret" in experiment:
            experiment["secret"] = "<redacted>"
        experiments.append(
            {
                "experiment": experiment,
                "started_at": entry["started_at"],
                "expires_at": entry["ends_at"],
                "injections": counts["injections"],
                "skipped": counts["skipped"],
                "injection_errors": counts["injection_errors"],
                "actor": entry.get("actor"),
                "fleet": counts,
            }
        )
    shown = [worker_entry(item) for item in workers]
    return {
        "store": {"url": store.url, "service": store.service},
        "fleet_injections": fleet_injections(workers, lease),
        "experiments": experiments,
        "stopped": [
            {"experiment": entry["name"], **entry["ended"], "injections": None}
            for entry in snapshot.ended
        ],
        "workers": shown,
        "not_following": [item["worker"] for item in shown if not following(item, lease)],
    }
