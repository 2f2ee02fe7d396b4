"""Game-days against a service: ``tailguard gameday FILE`` and ``tailguard demo``.

The modules are public and each says what it is; they import in this order,
each only from those before it (and from the rest of tailguard):

* :mod:`~tailguard.gameday.plan`: the game-day file, checked, and its JSON Schema;
* :mod:`~tailguard.gameday.load`: open-loop load (aiohttp) and HDR histograms;
* :mod:`~tailguard.gameday.control`: the chaos control API and ``/metrics``, over HTTP;
* :mod:`~tailguard.gameday.hypothesis`: route templates and the steady-state checks;
* :mod:`~tailguard.gameday.report`: ``report.json``'s entries, the table, ``report.md``;
* :mod:`~tailguard.gameday.plot`: ``report.png`` (matplotlib);
* :mod:`~tailguard.gameday.serve`: the target, served with uvicorn in its own process;
* :mod:`~tailguard.gameday.runner`: the run itself, its rollback and exit status;
* :mod:`~tailguard.gameday.demo`: ``tailguard demo``, the bundled game-day
  (``demo.yaml``) played twice on
* :mod:`~tailguard.gameday.shop`: the example shop (imported only when served:
  it builds its app, reading ``TAILGUARD_CHAOS`` and ``TAILGUARD_TOKEN``, on import).

Only the core dependencies (and PyYAML for YAML files) are needed to import
and check a plan; running one needs ``tailguard[gameday]`` (aiohttp,
hdrhistogram, rich, uvicorn) and the picture ``tailguard[report]``
(matplotlib), each imported where it is used, with an ``ImportError`` that
names the extra.

>>> from tailguard.gameday.plan import template_matches
>>> template_matches("/items/{item_id}", "/items/1")
True
"""
