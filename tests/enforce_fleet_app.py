"""The app the fleet enforcement tests serve with real uvicorn workers: answers name the worker.

Configured by the environment: ``TAILGUARD_CHAOS_STORE`` (the fleet's store),
``TAILGUARD_TOKEN`` (the control API's token). ``GET /slow`` outlives its
route's deadline: enforced, tailguard answers 504; shadowed, the app answers
200 with its pid.
"""

from __future__ import annotations

import asyncio
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tailguard import RoutePolicy, Tailguard

guard = Tailguard(routes={"GET /slow": RoutePolicy(deadline=0.05)})


async def slow(request: Request) -> JSONResponse:
    await asyncio.sleep(0.3)
    return JSONResponse({"pid": os.getpid()})


async def ping(request: Request) -> JSONResponse:
    return JSONResponse({"pid": os.getpid()})


app = Starlette(routes=[Route("/slow", slow), Route("/ping", ping)])
guard.install(app, control_token=os.environ.get("TAILGUARD_TOKEN"), tracing=False, instrument=False)
