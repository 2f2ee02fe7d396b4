"""Runnable example apps for tailguard (``examples.shop`` re-exports ``tailguard.gameday.shop``)."""
