"""The checks behind every numeric option: a finite number, or a whole one; never a bool."""

from __future__ import annotations

import math

__all__ = ["finite", "whole"]


def finite(value: object) -> float | None:
    """``value`` as a float if it is a finite ``int`` or ``float`` (not a ``bool``), else ``None``.

    Callers add their own range and raise their own ``ValueError`` naming the option.

    >>> finite(2), finite(0.5), finite(True), finite(float("nan")), finite("1"), finite(10**400)
    (2.0, 0.5, None, None, None, None)
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return number if math.isfinite(number) else None


def whole(value: object, low: int) -> int | None:
    """``value`` if it is an ``int`` (not a ``bool``) of at least ``low``, else ``None``.

    >>> whole(3, 1), whole(0, 1), whole(True, 0), whole(2.0, 1)
    (3, None, None, None)
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        return None
    return value
