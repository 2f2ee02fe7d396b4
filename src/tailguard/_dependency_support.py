"""Parts of :class:`tailguard.Dependency` kept out of its module: option checks, held blocks.

``async with dependency:`` cannot keep its permit on the dependency (one
dependency serves many calls at once), so each context keeps a stack of the
blocks it is inside: :func:`push` on entry, :func:`pop` on exit.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Final, NamedTuple

from tailguard._numbers import finite

if TYPE_CHECKING:
    from tailguard.admission import Permit

__all__ = ["check_options", "pop", "push"]


def check_options(
    name: object, max_concurrency: object, max_queue: object, queue_timeout: object
) -> None:
    """Raise ``ValueError`` naming the dependency and the field for a bad option."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"dependency name must be a non-empty str, got {name!r}")
    _check_int(name, "max_concurrency", max_concurrency, 1)
    _check_int(name, "max_queue", max_queue, 0)
    timeout = finite(queue_timeout)
    if queue_timeout is not None and (timeout is None or timeout <= 0):
        raise ValueError(
            f"dependency {name!r}: queue_timeout must be None or a positive, finite"
            f" number of seconds, got {queue_timeout!r}"
        )


def _check_int(name: str, field: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"dependency {name!r}: {field} must be an int >= {low}, got {value!r}")


class _Held(NamedTuple):
    """One ``async with dependency:`` block in progress, on a per-context stack."""

    dependency: object
    permit: Permit
    below: _Held | None


_held: Final[ContextVar[_Held | None]] = ContextVar("tailguard.dependency", default=None)


def push(dependency: object, permit: Permit) -> None:
    """Enter a block of ``dependency`` holding ``permit``, in this context."""
    # Per call, per context: concurrent tasks each have their own stack.
    _held.set(_Held(dependency, permit, _held.get()))


def pop(dependency: object) -> Permit:
    """Leave this context's innermost block of ``dependency``; its permit."""
    node = _held.get()
    above: list[_Held] = []
    while node is not None and node.dependency is not dependency:
        above.append(node)
        node = node.below
    if node is None:
        raise RuntimeError(f"{dependency!r}: __aexit__ without __aenter__ in this context")
    # Blocks of other dependencies exited out of order (an async generator
    # interleaved with its caller) keep their slots.
    below = node.below
    for other in reversed(above):
        below = _Held(other.dependency, other.permit, below)
    _held.set(below)
    return node.permit
