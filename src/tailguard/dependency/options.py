"""The checks behind :class:`tailguard.Dependency`'s options: errors that name the field."""

from __future__ import annotations

from tailguard._numbers import finite, whole

__all__ = ["check_options"]


def check_options(
    name: object, max_concurrency: object, max_queue: object, queue_timeout: object
) -> None:
    """Raise ``ValueError`` naming the dependency and the field for a bad option."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"dependency name must be a non-empty str, got {name!r}")
    for field, value, low in (("max_concurrency", max_concurrency, 1), ("max_queue", max_queue, 0)):
        if whole(value, low) is None:
            raise ValueError(f"dependency {name!r}: {field} must be an int >= {low}, got {value!r}")
    timeout = finite(queue_timeout)
    if queue_timeout is not None and (timeout is None or timeout <= 0):
        raise ValueError(
            f"dependency {name!r}: queue_timeout must be None or a positive, finite"
            f" number of seconds, got {queue_timeout!r}"
        )
