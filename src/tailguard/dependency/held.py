"""The ``async with dependency:`` blocks a context is inside, each with its permit.

``async with dependency:`` cannot keep its permit on the dependency (one
dependency serves many calls at once), so each context keeps a stack of the
blocks it is inside: :func:`push` on entry, :func:`pop` on exit.

>>> push("db", "permit")
>>> pop("db")
'permit'
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Final, NamedTuple

__all__ = ["pop", "push"]


class _Held(NamedTuple):
    """One ``async with dependency:`` block in progress, on a per-context stack."""

    dependency: object
    permit: Any
    below: _Held | None


_held: Final[ContextVar[_Held | None]] = ContextVar("tailguard.dependency", default=None)


def push(dependency: object, permit: Any) -> None:
    """Enter a block of ``dependency`` holding ``permit``, in this context."""
    # Per call, per context: concurrent tasks each have their own stack.
    _held.set(_Held(dependency, permit, _held.get()))


def pop(dependency: object) -> Any:
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
