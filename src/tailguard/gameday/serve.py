"""The game-day's target: an app served with uvicorn in a process of its own, or a running service.

A served app gets a fresh control token (in ``TAILGUARD_TOKEN``, or the
target's ``token_env``) and the target's ``env``, and runs in its own
session, so a Ctrl-C at the terminal reaches the runner only: the runner
halts the experiments first, then stops the server. The server's output goes
to ``uvicorn.log`` in the run's folder.

>>> free_port() > 0
True
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import tailguard
from tailguard.gameday.plan import TargetSpec

__all__ = ["Served", "TargetError", "free_port", "start_target", "stop_target"]

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class TargetError(Exception):
    """The target cannot be used: it did not start, it exited, or there is no token for it."""


@dataclass(slots=True)
class Served:
    """A target the runner can reach: its URL, its control token, and its process if served."""

    url: str
    token: str | None
    process: asyncio.subprocess.Process | None = None
    log: Path | None = None

    def log_tail(self, size: int = 2000) -> str:
        """The end of the server's output, for an error message."""
        if self.log is None or not self.log.exists():
            return ""
        return self.log.read_bytes()[-size:].decode("utf-8", "replace")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def start_target(spec: TargetSpec, folder: Path) -> Served:
    """Serve ``spec.app`` (or find ``spec.url``) and return it once it answers HTTP."""
    if spec.url is not None:
        return Served(spec.url, os.environ.get(spec.token_env) or None)
    assert spec.app is not None
    token = secrets.token_urlsafe(32)
    port = free_port()
    here = os.path.dirname(os.path.dirname(tailguard.__file__))  # serve this same tailguard
    env = {**os.environ, **spec.env, spec.token_env: token}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "uvicorn", spec.app, "--app-dir", spec.app_dir]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    command += ["--no-access-log", "--workers", str(spec.workers)]
    log = folder / "uvicorn.log"
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    served = Served(f"http://127.0.0.1:{port}", token, process, log)
    try:
        await _wait_until_up(served, port)
    except BaseException:
        await stop_target(served)
        raise
    return served


async def _wait_until_up(served: Served, port: int) -> None:
    assert served.process is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STARTUP_TIMEOUT
    while loop.time() < deadline:
        if served.process.returncode is not None:
            raise TargetError(
                f"the app exited with status {served.process.returncode} while starting:\n"
                f"{served.log_tail()}"
            )
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        await asyncio.sleep(0.05)
    raise TargetError(
        f"the app did not listen within {STARTUP_TIMEOUT:.0f} s:\n{served.log_tail()}"
    )


async def stop_target(served: Served) -> int | None:
    """Stop a served app (its whole process group) and wait for it; its exit status."""
    process = served.process
    if process is None:
        return None
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    else:
        # The server is gone; its workers, if it had any, must go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    return process.returncode
