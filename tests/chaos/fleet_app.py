"""The app the fleet tests serve with real uvicorn workers: every answer names its worker.

Configured by the environment, as a deployment would be: ``TAILGUARD_CHAOS=1``,
``TAILGUARD_CHAOS_STORE`` (the fleet's store), ``TAILGUARD_TOKEN`` (the
control API's token) and, for the cap tests, ``FLEET_MAX_INJECTIONS``.
``GET /call`` calls the dependency ``db`` and says whether a fault was
injected into the call, and by which process; ``GET /places`` does the same
and adds this worker's injections in flight, share and skips once the call
is done.
"""

from __future__ import annotations

import os
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tailguard import Tailguard
from tailguard.chaos import Chaos

guard = Tailguard(chaos=Chaos(max_injections=int(os.environ.get("FLEET_MAX_INJECTIONS", "100"))))
db = guard.dependency("db", max_concurrency=64)
PLACES = ("injections_in_flight", "injection_share", "injections_skipped")


async def _call() -> dict[str, Any]:
    try:
        async with db:
            pass
    except ConnectionError:
        return {"pid": os.getpid(), "injected": True}
    return {"pid": os.getpid(), "injected": False}


async def call(request: Request) -> JSONResponse:
    return JSONResponse(await _call())


async def places(request: Request) -> JSONResponse:
    answer = await _call()
    status = guard.chaos.status()
    return JSONResponse({**answer, **{name: status[name] for name in PLACES}})


app = Starlette(routes=[Route("/call", call), Route("/places", places)])
guard.install(app, control_token=os.environ.get("TAILGUARD_TOKEN"), tracing=False, instrument=False)
