"""The ``tailguard`` command.

Each subcommand is a small ``_add_<name>`` function that declares its
arguments and a ``_run_<name>`` function that does the work and returns an
exit status; :func:`main` parses, dispatches and turns a :class:`CommandError`
into a message on stderr and exit status 2. Usage errors are reported by
argparse, also with status 2; :func:`main` returns the status rather than
exiting, so it can be called from Python:

>>> main(["demo", "--requests", "0"])  # argparse explains on stderr
2
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from tailguard import __version__

__all__ = ["CommandError", "build_parser", "import_app", "main"]

DEFAULT_APP = "examples.shop:app"
MAX_DEMO_REQUESTS = 1000

_Handler = Callable[[argparse.Namespace], int]


class CommandError(Exception):
    """A problem with what the user asked for; reported as one line, exit status 2."""


class _Exit(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that lets :func:`main` return its status instead of exiting."""

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            self._print_message(message, sys.stderr)
        raise _Exit(status)


def build_parser() -> argparse.ArgumentParser:
    """The parser for ``tailguard`` and all of its subcommands."""
    parser = _Parser(
        prog="tailguard",
        description="Deadlines, admission control, task tracing and chaos for ASGI services.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )
    _add_demo(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tailguard`` with ``argv`` (default: ``sys.argv[1:]``) and return its exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _Exit as stop:  # --help, --version, or a usage error argparse has already printed
        return stop.status
    handler: _Handler = args.handler
    try:
        return handler(args)
    except CommandError as exc:
        print(f"tailguard {args.command}: error: {exc}", file=sys.stderr)
        return 2


def import_app(spec: str, app_dir: str = ".") -> Any:
    """Import the object ``spec`` names (``"package.module:attr"``), like uvicorn does.

    ``app_dir`` (default: the working directory) goes first on ``sys.path``,
    so an app next to where the command runs is found before anything
    installed under the same name. Raises :class:`CommandError` with a
    one-line reason when the module or attribute cannot be loaded.
    """
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise CommandError(f"--app must look like 'module:attribute', got {spec!r}")
    directory = os.path.abspath(app_dir)
    if not sys.path or sys.path[0] != directory:
        sys.path.insert(0, directory)
    try:
        found: Any = importlib.import_module(module_name)
    except Exception as exc:
        missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
        hint = ""
        if missing is not None and f"{module_name}.".startswith(f"{missing}."):
            hint = "; run the command from the directory that contains it, or pass --app-dir"
        raise CommandError(
            f"cannot import {module_name!r} (looked in {directory} first): "
            f"{type(exc).__name__}: {exc}{hint}"
        ) from exc
    for attr in attr_path.split("."):
        try:
            found = getattr(found, attr)
        except AttributeError:
            raise CommandError(f"module {module_name!r} has no attribute {attr_path!r}") from None
    if not callable(found):
        raise CommandError(f"{spec!r} is not an ASGI application: got {type(found).__name__}")
    return found


def _positive_requests(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 1 <= value <= MAX_DEMO_REQUESTS:
        raise argparse.ArgumentTypeError(
            f"expected a number from 1 to {MAX_DEMO_REQUESTS}, got {value}"
        )
    return value


# ``commands`` is what add_subparsers() returns; argparse keeps that class private.
def _add_demo(commands: argparse._SubParsersAction[_Parser]) -> None:
    demo = commands.add_parser(
        "demo",
        help="serve an example app and show tailguard enforcing its deadlines",
        description=(
            "Serve an app under uvicorn on 127.0.0.1, send it a short concurrent burst "
            "of requests (some fit their budget, some run past it, one carries a tighter "
            "x-request-timeout-ms, a stream is cut off mid-response) and print what "
            "happened per route. The burst is written for examples/shop.py; point --app "
            "at your copy of it."
        ),
    )
    demo.add_argument(
        "--app",
        default=DEFAULT_APP,
        metavar="MODULE:ATTR",
        help=f"the ASGI app to serve (default: {DEFAULT_APP})",
    )
    demo.add_argument(
        "--app-dir",
        default=".",
        metavar="DIR",
        help="directory to import the app from, put first on sys.path (default: .)",
    )
    demo.add_argument(
        "--requests",
        type=_positive_requests,
        default=8,
        metavar="N",
        help="requests per route (default: 8)",
    )
    demo.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    app = import_app(args.app, args.app_dir)
    try:
        from tailguard import demo

        return demo.run(app, requests=args.requests)
    except ImportError as exc:  # httpx or uvicorn missing: both are extras
        raise CommandError(
            f"the demo needs httpx and uvicorn: pip install 'tailguard[httpx,server]' ({exc})"
        ) from exc
