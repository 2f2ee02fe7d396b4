"""The example shop, ``examples.shop:app``: the app ``tailguard demo`` serves.

Its source is ``src/tailguard/gameday/shop.py``, in the package, so that the
demo also works from an installed wheel; this module re-exports it, so
``uvicorn examples.shop:app`` and ``tailguard demo --app examples.shop:app``
work in a checkout as before. Copy that file to start your own.
"""

from tailguard.gameday.shop import app, guard, inventory

__all__ = ["app", "guard", "inventory"]
