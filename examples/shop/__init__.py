"""The example shop, ``examples.shop:app`` (or ``examples.shop.app:app``): the demo's shop.

Its source is ``src/tailguard/gameday/shop.py``, in the package, so that the
demo also works from an installed wheel; this package re-exports it, so
``uvicorn examples.shop:app`` and the game-day files in ``examples/gamedays/``
work in a checkout. Copy that file to start your own.
"""

from examples.shop.app import app, guard, inventory

__all__ = ["app", "guard", "inventory"]
