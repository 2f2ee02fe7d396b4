"""Run an ASGI app under a real uvicorn server on 127.0.0.1, in a background thread.

Used by ``tailguard demo``, the end-to-end tests and the benchmarks, so that
all of them exercise the same real server instead of an in-process shortcut.

>>> from starlette.applications import Starlette
>>> with serve_in_thread(Starlette()) as url:
...     url.startswith("http://127.0.0.1:")
True
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from starlette.types import ASGIApp

__all__ = ["serve_in_thread"]


def _uvicorn() -> Any:
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "running a server needs uvicorn: pip install 'tailguard[server]'"
        ) from exc
    return uvicorn


@contextmanager
def serve_in_thread(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    startup_timeout: float = 30.0,
    **config: Any,
) -> Iterator[str]:
    """Serve ``app`` with uvicorn until the block ends; yields the base URL.

    ``port=0`` picks a free port. Extra keyword arguments go to
    ``uvicorn.Config`` (``log_level`` defaults to ``warning``).
    """
    uvicorn = _uvicorn()
    config.setdefault("log_level", "warning")
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, **config))
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except BaseException as exc:  # uvicorn calls sys.exit(1) when it cannot bind
            failure.append(exc)

    thread = threading.Thread(target=run, name="tailguard-uvicorn", daemon=True)
    thread.start()
    give_up = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > give_up:
            server.should_exit = True
            thread.join(5)
            cause = failure[0] if failure else None
            raise RuntimeError(f"uvicorn did not start on {host}:{port}") from cause
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(30)
