"""Game-days against a tailguard-guarded app: load, its outcomes, and what to make of them.

The modules are public and each says what it is; they import in this order,
each only from those before it (and from the rest of tailguard):

* :mod:`~tailguard.gameday.load`: scenarios of requests, sent in a burst or
  on a schedule, and how each ended (:class:`~tailguard.gameday.load.Outcome`);
* :mod:`~tailguard.gameday.target`: the app's guard and the budget it gives a scenario;
* :mod:`~tailguard.gameday.control`: the chaos control API over HTTP (start,
  halt, watch a bulkhead);
* :mod:`~tailguard.gameday.report`: tables and explanations;
* :mod:`~tailguard.gameday.demo`: ``tailguard demo``, the bundled game-day, which serves
* :mod:`~tailguard.gameday.shop`: the example shop (imported only when served:
  it builds its app, reading ``TAILGUARD_CHAOS`` and ``TAILGUARD_TOKEN``, on import).

Only the core dependencies are needed to import any of them; sending
requests needs httpx (``tailguard[httpx]``) and serving an app uvicorn
(``tailguard[server]``), each imported where it is used, with an
``ImportError`` that names the extra.

>>> from tailguard.gameday import load
>>> load.Scenario("GET", "/items/{item_id}", ("/items/1",), 2).requests()
['/items/1', '/items/1']
"""
