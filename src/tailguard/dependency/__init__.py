"""Dependencies: a bulkhead per named outbound dependency, and its one seam.

:class:`Dependency` (``bulkhead.py``) is what users hold: its entry points
(``async with``, the decorator, ``call``, ``run_sync``, ``transport()``) all
go through its :class:`~tailguard.dependency.seam.Seam` (``seam.py``), which
takes the slot, meets chaos and counts the call. ``threads.py`` is its own
thread pool, ``transport.py`` its httpx/httpx2 transport, ``held.py`` the
stack of ``async with`` blocks per context, ``options.py`` its option checks.
"""

from tailguard.dependency.bulkhead import Dependency
from tailguard.telemetry.pools import DependencyState

__all__ = ["Dependency", "DependencyState"]
