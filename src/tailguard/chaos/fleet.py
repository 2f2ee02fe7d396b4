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

from urllib.parse import parse_qs, urlsplit

from tailguard.chaos.store import DEFAULT_SERVICE, SQLiteStore, Store

__all__ = ["open_store"]


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
