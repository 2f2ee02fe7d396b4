"""Tail-tolerance helpers: hedged requests, speculative execution, quorum, fan-out, fallback.

Each helper takes zero-argument async callables, so that every attempt is a
fresh call, and guarantees that when it returns or raises, no task it
started is still running: losers are cancelled *and awaited*. All of them
read the request's deadline (:func:`tailguard.remaining`), propagate the
caller's cancellation, and record metrics and spans per call-site ``name``.

>>> import asyncio, tailguard
>>> async def replica() -> str:
...     return "row"
>>> asyncio.run(tailguard.quorum(2, [replica, replica, replica], name="doc.reads"))
['row', 'row']

See ``docs/tail.md`` for the semantics, the metrics and the pitfalls.
"""

from tailguard.tail.budget import ExtraBudget
from tailguard.tail.fallback import fallback
from tailguard.tail.fanout import FanoutResult, amplification, fanout
from tailguard.tail.hedge import hedge
from tailguard.tail.quorum import quorum, race
from tailguard.tail.sites import HedgeSite, site
from tailguard.tail.sketch import LatencySketch

__all__ = [
    "ExtraBudget",
    "FanoutResult",
    "HedgeSite",
    "LatencySketch",
    "amplification",
    "fallback",
    "fanout",
    "hedge",
    "quorum",
    "race",
    "site",
]
