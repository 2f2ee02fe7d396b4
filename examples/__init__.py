"""Runnable example apps for tailguard (``tailguard demo`` drives ``examples.shop``)."""
