"""The example shop's app, as ``examples.shop.app:app`` (the game-day files name it so).

Its source is ``src/tailguard/gameday/shop.py``, in the package, so that
``tailguard demo`` also works from an installed wheel: a service whose
dependencies (catalog cache, replicas and primary, inventory, payments,
recommendations) are simulated in-process with configurable latencies.
"""

from tailguard.gameday.shop import app, guard, inventory

__all__ = ["app", "guard", "inventory"]
