"""tailguard: deadlines, admission control, task tracing and chaos for ASGI services.

>>> import tailguard
>>> tailguard.remaining()
inf
"""

from tailguard._version import __version__
from tailguard.admission import Gradient2, Rejected
from tailguard.deadlines import (
    Deadline,
    DeadlineExceeded,
    current_deadline,
    deadline,
    remaining,
)
from tailguard.dependency import Dependency, DependencyState
from tailguard.guard import Tailguard
from tailguard.middleware.asgi import TailguardMiddleware
from tailguard.policy import RoutePolicy
from tailguard.tail import (
    FanoutResult,
    HedgeSite,
    amplification,
    fallback,
    fanout,
    hedge,
    quorum,
    race,
)

__all__ = [
    "Deadline",
    "DeadlineExceeded",
    "Dependency",
    "DependencyState",
    "FanoutResult",
    "Gradient2",
    "HedgeSite",
    "Rejected",
    "RoutePolicy",
    "Tailguard",
    "TailguardMiddleware",
    "__version__",
    "amplification",
    "current_deadline",
    "deadline",
    "fallback",
    "fanout",
    "hedge",
    "quorum",
    "race",
    "remaining",
]

# Public objects report the package as their home, as httpx does, so tracebacks
# and reprs read ``tailguard.DeadlineExceeded`` rather than a private module.
for _public in (
    Deadline,
    DeadlineExceeded,
    Dependency,
    FanoutResult,
    Gradient2,
    HedgeSite,
    Rejected,
    RoutePolicy,
    Tailguard,
    TailguardMiddleware,
    deadline,
):
    _public.__module__ = "tailguard"
del _public
