"""Admission control: every request is admitted, queued, or shed.

>>> from tailguard.admission import Limiter
>>> limiter = Limiter("inventory", max_concurrency=8, max_queue=16, queue_timeout=0.05)
>>> permit = limiter.try_acquire()  # the synchronous fast path
>>> limiter.in_use
1
>>> permit.release()
"""

from tailguard.admission.adaptive import AdaptiveLimit, Gradient2, LimitController
from tailguard.admission.errors import REASONS, Reason, Rejected
from tailguard.admission.limiter import (
    MAX_TENANTS,
    UNLISTED,
    Limiter,
    LimiterState,
    Permit,
    UnlistedTenants,
)

__all__ = [
    "MAX_TENANTS",
    "REASONS",
    "UNLISTED",
    "AdaptiveLimit",
    "Gradient2",
    "LimitController",
    "Limiter",
    "LimiterState",
    "Permit",
    "Reason",
    "Rejected",
    "UnlistedTenants",
]
