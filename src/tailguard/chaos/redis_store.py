"""The Redis chaos store (placeholder until the implementation lands)."""

from __future__ import annotations

from tailguard.chaos.store import Store

__all__ = ["RedisStore"]


class RedisStore(Store):  # pragma: no cover - replaced by the implementation
    """Not available yet."""

    def __init__(self, url: str, *, service: str, timeout: float) -> None:
        raise ValueError(f"store URL {url!r}: the Redis store is not available yet")
