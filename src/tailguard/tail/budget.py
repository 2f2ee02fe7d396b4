"""A budget for extra attempts: hedging must not multiply load when everything is slow.

:class:`ExtraBudget` is a token bucket counted in calls, not in time: every
primary call earns ``max_extra`` tokens, every extra attempt (a hedge) spends
one, and the bucket holds at most ``burst`` tokens. It starts empty, so over
any stretch of calls the extra attempts never exceed ``max_extra`` times the
primaries — the same kind of budget as gRPC's retry throttling and Finagle's
``RetryBudget``, without a clock.

>>> budget = ExtraBudget(burst=2)
>>> for _ in range(20):
...     budget.earn(0.05)
>>> budget.spend(), budget.spend()
(True, False)
"""

from __future__ import annotations

from typing import Final

from tailguard._numbers import finite

__all__ = ["ExtraBudget"]


class ExtraBudget:
    """Tokens for extra attempts: ``earn(ratio)`` per primary, ``spend()`` per extra.

    ``burst`` caps the tokens saved up while nothing needed them, so a quiet
    hour cannot fund a storm of hedges; it is also how many extra attempts
    may go out back to back when a latency spike makes many due at once.
    The default, 20, is 400 calls' worth at ``max_extra=0.05``: enough that
    the random clumps of a steady hedge rate rarely find the bucket empty.

    >>> budget = ExtraBudget()
    >>> budget.tokens, budget.burst
    (0.0, 20.0)
    """

    __slots__ = ("burst", "tokens")

    def __init__(self, burst: float = 20.0) -> None:
        number = finite(burst)
        if number is None or number < 1:
            raise ValueError(f"burst must be a finite number >= 1, got {burst!r}")
        self.burst: Final = number
        self.tokens = 0.0

    def __repr__(self) -> str:
        return f"<ExtraBudget tokens={self.tokens:.2f}/{self.burst:g}>"

    def earn(self, ratio: float) -> None:
        """Credit one primary call: ``ratio`` more tokens, up to ``burst``."""
        tokens = self.tokens + ratio
        self.tokens = tokens if tokens < self.burst else self.burst

    def spend(self) -> bool:
        """Take a token for one extra attempt; ``False`` (and nothing taken) when there is none."""
        # A little slack: twenty earnings of 0.05 must buy one hedge despite rounding.
        if self.tokens >= 1 - 1e-9:
            self.tokens = max(0.0, self.tokens - 1)
            return True
        return False
