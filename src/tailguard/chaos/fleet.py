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

from typing import Any
from urllib.parse import parse_qs, urlsplit

from tailguard.chaos.store import DEFAULT_SERVICE, SQLiteStore, Store

__all__ = ["fleet_counts", "following", "open_store", "store_status"]


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


def following(worker: dict[str, Any], lease: float) -> bool:
    """Whether a worker's heartbeat says it follows the store and is recent (within 2 leases)."""
    age = worker.get("age")
    return bool(worker.get("following")) and isinstance(age, int | float) and age <= 2 * lease


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
    shown = [
        {
            "worker": item.get("worker"),
            "pid": item.get("pid"),
            "host": item.get("host"),
            "last_heartbeat": item.get("seen_at"),
            "age": item.get("age"),
            "following": bool(item.get("following")),
        }
        for item in workers
    ]
    return {
        "store": {"url": store.url, "service": store.service},
        "experiments": experiments,
        "stopped": [
            {"experiment": entry["name"], **entry["ended"], "injections": None}
            for entry in snapshot.ended
        ],
        "workers": shown,
        "not_following": [item["worker"] for item in shown if not following(item, lease)],
    }
