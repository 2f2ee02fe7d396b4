"""Serve one benchmark arm under uvicorn on 127.0.0.1, in this process.

Run by ``overhead.py`` as ``python benchmarks/_serve.py ARM [HTTP]``, where
``HTTP`` is uvicorn's HTTP implementation (``auto``, the default, means
httptools when it is importable, else h11). The child binds
an ephemeral port itself (no race between picking a port and binding it),
prints one line ``PORT <n> HTTP <impl> LOOP <impl>`` on stdout for the parent,
then serves until it gets SIGTERM/SIGINT or its stdin reaches end-of-file. The
parent holds the write end of that pipe, so the server also exits when the
parent dies without cleaning up (even on SIGKILL).

uvicorn settings: one worker, ``--log-level warning``, no access log, httptools
when it is importable (h11 otherwise), the default loop choice (uvloop when
installed, else asyncio), lifespan on.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
import threading
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from _arms import build


def http_implementation() -> str:
    """``httptools`` when installed, else ``h11``: what uvicorn's ``--http auto`` picks."""
    return "httptools" if importlib.util.find_spec("httptools") else "h11"


def loop_implementation() -> str:
    """``uvloop`` when installed, else ``asyncio``: what uvicorn's ``--loop auto`` picks."""
    return "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print("usage: _serve.py ARM [auto|h11|httptools]", file=sys.stderr)
        return 2
    app = build(argv[0])
    http = argv[1] if len(argv) == 2 and argv[1] != "auto" else http_implementation()
    return serve_until_parent_exits(app, http)


def serve_until_parent_exits(app: ASGIApp, http: str, **config: Any) -> int:
    """Serve ``app`` on a free 127.0.0.1 port, print it, and stop when stdin closes.

    The parent reads the ``PORT ...`` line; closing our stdin (or dying) stops us.
    """
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto
    # is IPPROTO_TCP, and accepted sockets inherit proto 0 from a plain
    # socket.socket(). Without it every response waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            http=http,
            loop="auto",
            lifespan="on",
            workers=1,
            **config,
        )
    )

    def exit_with_parent() -> None:
        sys.stdin.read()  # returns at EOF: the parent closed the pipe or died
        server.should_exit = True

    threading.Thread(target=exit_with_parent, name="parent-watch", daemon=True).start()
    print(f"PORT {port} HTTP {http} LOOP {loop_implementation()}", flush=True)
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
