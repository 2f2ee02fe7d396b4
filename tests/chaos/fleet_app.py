"""The app the fleet tests serve with real uvicorn workers: every answer names its worker.

Configured by the environment, as a deployment would be: ``TAILGUARD_CHAOS=1``,
``TAILGUARD_CHAOS_STORE`` (the fleet's store) and ``TAILGUARD_TOKEN`` (the
control API's token). ``GET /call`` calls the dependency ``db`` and says
whether a fault was injected into the call, and by which process.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tailguard import Tailguard
from tailguard.chaos import Chaos

guard = Tailguard(chaos=Chaos())
db = guard.dependency("db", max_concurrency=64)


async def call(request: Request) -> JSONResponse:
    try:
        async with db:
            pass
    except ConnectionError:
        return JSONResponse({"pid": os.getpid(), "injected": True})
    return JSONResponse({"pid": os.getpid(), "injected": False})


app = Starlette(routes=[Route("/call", call)])
guard.install(app, control_token=os.environ.get("TAILGUARD_TOKEN"), tracing=False, instrument=False)
