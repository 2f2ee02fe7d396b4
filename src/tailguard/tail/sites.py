"""Call sites: what the tail helpers remember between calls, per caller-chosen name.

A call site is one place in the code that hedges (or fans out) to the same
kind of backend: ``"inventory"``, ``"search.shards"``. Its name labels the
metrics, so it must be a constant, never a request's data. Per hedging site
tailguard keeps a :class:`HedgeSite` (a :class:`~tailguard.tail.sketch.LatencySketch`
for ``delay="p95"`` and an :class:`~tailguard.tail.budget.ExtraBudget`); per
named fan-out, a sketch of its required legs' latency (:func:`leg_latency`).
The two are kept apart: a hedge and a fan-out may share a name.

>>> inventory = site("doc.sites")
>>> site("doc.sites") is inventory, inventory.latency.count
(True, 0)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Final

from tailguard.tail.budget import ExtraBudget
from tailguard.tail.sketch import LatencySketch

__all__ = ["MAX_SITES", "HedgeSite", "leg_latency", "site"]

MAX_SITES: Final = 1000
"""Named sites (hedges and fan-outs together) one process may create: more means names
carry request data."""
UNNAMED: Final = "unnamed"
"""The metric label of a helper called without ``name=``."""


class HedgeSite:
    """The state one call site keeps: a latency sketch and a budget for extra attempts.

    Pass one to :func:`tailguard.hedge` as ``site=`` to use a sketch that
    lives elsewhere (a :class:`~tailguard.Dependency`'s, say). With
    ``observe=False`` the hedge only reads ``latency``, for a sketch that
    something else already feeds with every call's latency.

    >>> from tailguard.tail import LatencySketch
    >>> shared = LatencySketch()
    >>> HedgeSite("inventory", latency=shared, observe=False).latency is shared
    True
    """

    __slots__ = ("budget", "latency", "name", "observe")

    def __init__(
        self,
        name: str,
        *,
        latency: LatencySketch | None = None,
        burst: float = 20.0,
        observe: bool = True,
    ) -> None:
        check_name(name)
        if latency is not None and not isinstance(latency, LatencySketch):
            raise TypeError(f"latency must be a LatencySketch, not {type(latency).__name__}")
        self.name: Final = name
        self.latency: Final = LatencySketch() if latency is None else latency
        self.budget: Final = ExtraBudget(burst)
        self.observe: Final = bool(observe)

    def __repr__(self) -> str:
        return f"<HedgeSite {self.name!r} samples={self.latency.count} {self.budget!r}>"


_sites: dict[str, HedgeSite] = {}
_legs: dict[str, LatencySketch] = {}


def site(name: str) -> HedgeSite:
    """The hedging site registered under ``name``, created on first use."""
    found = _sites.get(name)
    if found is None:
        _admit(name)
        found = _sites[name] = HedgeSite(name)
    return found


def leg_latency(name: str) -> LatencySketch:
    """The sketch of the required legs' latency of the fan-out site ``name``."""
    found = _legs.get(name)
    if found is None:
        _admit(name)
        found = _legs[name] = LatencySketch()
    return found


def _admit(name: str) -> None:
    check_name(name)
    if len(_sites) + len(_legs) >= MAX_SITES:
        raise ValueError(
            f"too many tail-helper call sites ({MAX_SITES}) while adding {name!r}: "
            "name= must be a constant per call site, never per-request data"
        )


def check_name(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")


def label(name: str | None) -> str:
    """The metric label for a helper called with ``name`` (``None``: :data:`UNNAMED`)."""
    if name is None:
        return UNNAMED
    check_name(name)
    return name


def derived_name(fn: Callable[..., Any]) -> str | None:
    """``module.qualname`` of a plain function or method; ``None`` for anything else.

    Lambdas get ``None``: every lambda in a function shares one qualname, so
    two unrelated calls would share a latency estimate and a budget.

    >>> derived_name(derived_name)
    'tailguard.tail.sites.derived_name'
    >>> derived_name(lambda: None) is None
    True
    """
    target = fn.__func__ if inspect.ismethod(fn) else fn
    if not inspect.isfunction(target) or "<lambda>" in target.__qualname__:
        return None
    return f"{target.__module__}.{target.__qualname__}"
