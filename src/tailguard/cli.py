"""The ``tailguard`` command.

Each subcommand is a small ``_add_<name>`` function that declares its
arguments and a ``_run_<name>`` function that does the work and returns an
exit status; :func:`main` parses, dispatches and turns a :class:`CommandError`
into a message on stderr and exit status 2. Usage errors are reported by
argparse, also with status 2; :func:`main` returns the status rather than
exiting, so it can be called from Python:

>>> main(["demo", "--requests", "8"])  # argparse explains on stderr
2
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from tailguard import __version__

__all__ = ["CommandError", "build_parser", "import_app", "main"]

DEFAULT_APP = "tailguard.gameday.shop:app"
DEFAULT_URL = "http://127.0.0.1:8000"
TOKEN_ENV = "TAILGUARD_TOKEN"
URL_ENV = "TAILGUARD_URL"
BROKEN_PIPE = 141
"""The exit status when the output's reader went away: a shell's for death by SIGPIPE (128 + 13)."""

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
    _add_gameday(commands)
    _add_chaos(commands)
    _add_enforce(commands)
    _add_dashboards(commands)
    return parser


def _glue_tokens(argv: Sequence[str]) -> list[str]:
    """``--token -abc`` as ``--token=-abc``: argparse takes a value that starts with a dash
    for an option, and ``secrets.token_urlsafe()`` (what the docs suggest) starts one in 64
    tokens with one.

    >>> _glue_tokens(["chaos", "status", "--token", "-abc", "--json"])
    ['chaos', 'status', '--token=-abc', '--json']
    """
    glued: list[str] = []
    pending = False
    for item in argv:
        if pending and item.startswith("-") and item != "--":
            glued[-1] = f"--token={item}"
        else:
            glued.append(item)
        pending = item == "--token"
    return glued


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tailguard`` with ``argv`` (default: ``sys.argv[1:]``) and return its exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(_glue_tokens(sys.argv[1:] if argv is None else argv))
    except _Exit as stop:  # --help, --version, or a usage error argparse has already printed
        return stop.status
    handler: _Handler = args.handler
    try:
        status = handler(args)
        sys.stdout.flush()  # here, where a closed pipe can still be handled
        return status
    except BrokenPipeError:
        # The reader went away (`tailguard chaos status --json | head -c1`): stop
        # quietly, as a command killed by SIGPIPE does, and leave nothing for the
        # interpreter to flush into the closed pipe at exit.
        _discard_stdout()
        return BROKEN_PIPE
    except CommandError as exc:
        action = getattr(args, "action", None)
        print(
            f"tailguard {args.command}{f' {action}' if action else ''}: error: {exc}",
            file=sys.stderr,
        )
        return 2


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so nothing left in its buffer meets the closed pipe again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test's capture)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


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


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


# ``commands`` is what add_subparsers() returns; argparse keeps that class private.
def _add_demo(commands: argparse._SubParsersAction[_Parser]) -> None:
    demo = commands.add_parser(
        "demo",
        help="play the bundled game-day on the example shop, with and without tailguard",
        description=(
            "Run the bundled game-day (tailguard/gameday/demo.yaml: a slow inventory and a "
            "slow recommender) against the example shop twice with the game-day runner: "
            "once with tailguard's protections enforcing (TAILGUARD_ENFORCE=on) and once in "
            "shadow mode (TAILGUARD_ENFORCE=shadow: decide, do not act; chaos still "
            "injects). Then show, SLO by SLO, which held and which broke in each run, and "
            "where the reports and pictures are. About fifty seconds."
        ),
    )
    demo.add_argument(
        "--app",
        default=DEFAULT_APP,
        metavar="MODULE:ATTR",
        help=f"the shop to serve (default: {DEFAULT_APP}); your copy of it",
    )
    demo.add_argument(
        "--app-dir",
        default=".",
        metavar="DIR",
        help="directory to import the app from, put first on sys.path (default: .)",
    )
    demo.add_argument(
        "--out", metavar="DIR", help="where to write the reports (default: under ./gameday-runs/)"
    )
    demo.add_argument("--plain", action="store_true", help="plain progress lines on a terminal")
    demo.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from tailguard.gameday import demo

    try:
        _check_gameday_extras()
        # Fail here, in one line, rather than in the served process's log.
        import_app(args.app, args.app_dir)
        return demo.run(
            app=args.app,
            app_dir=args.app_dir,
            out_dir=args.out,
            live=False if args.plain else None,
        )
    except ImportError as exc:
        raise CommandError(
            f"the demo needs the game-day extras: pip install 'tailguard[gameday]' ({exc})"
        ) from exc


def _check_gameday_extras() -> None:
    """Raise ``ImportError`` naming what is missing, before anything is imported or served."""
    for module in ("aiohttp", "hdrh", "uvicorn"):
        importlib.import_module(module)


def _add_gameday(commands: argparse._SubParsersAction[_Parser]) -> None:
    gameday = commands.add_parser(
        "gameday",
        help="run a game-day: open-loop load, chaos phases, a steady-state verdict and a report",
        description=(
            "Serve the app a game-day file names (or target a running service), send it an "
            "open-loop load, start each phase's chaos experiments through the control API, "
            "check the steady-state hypothesis per phase, and always roll back (halt, stop "
            "the server), also on Ctrl-C and SIGTERM. Writes report.json, report.md and "
            "report.png to --out. Exit status: 0 the hypothesis held, 1 it broke, 2 the file "
            "or target was unusable or the run unreliable, 130 interrupted. The file's format "
            "is in docs/gameday.md (--schema prints its JSON Schema)."
        ),
    )
    gameday.add_argument("file", nargs="?", metavar="FILE", help="the game-day file (.yaml, .json)")
    gameday.add_argument(
        "--out",
        metavar="DIR",
        help="where to write the report (default: a new folder under ./gameday-runs/)",
    )
    gameday.add_argument(
        "--plain", action="store_true", help="plain progress lines even on a terminal"
    )
    gameday.add_argument(
        "--schema", action="store_true", help="print the game-day file's JSON Schema and exit"
    )
    gameday.set_defaults(handler=_run_gameday)


def _run_gameday(args: argparse.Namespace) -> int:
    from tailguard.gameday import plan as plans

    if args.schema:
        print(json.dumps(plans.PLAN_JSON_SCHEMA, indent=2))
        return 0
    if args.file is None:
        raise CommandError("give a game-day FILE (or --schema)")
    try:
        plan = plans.load_plan(args.file)
    except plans.PlanError as exc:
        raise CommandError(f"{args.file}: {exc}") from None
    except ImportError as exc:
        raise CommandError(str(exc)) from None
    from tailguard.gameday.runner import run_folder, run_plan

    folder = run_folder(args.out, plan.title)
    try:
        _check_gameday_extras()
        return run_plan(plan, folder, live=False if args.plain else None)
    except ImportError as exc:
        raise CommandError(
            f"the game-day runner needs pip install 'tailguard[gameday]' ({exc})"
        ) from exc


def _add_chaos(commands: argparse._SubParsersAction[_Parser]) -> None:
    chaos = commands.add_parser(
        "chaos",
        help="start, stop, list and validate chaos experiments on a running service",
        description=(
            "Talk to a service's chaos control API (mounted with "
            "guard.install(app, control_token=...)). The token comes from --token or, "
            f"better (it stays out of the process list), from ${TOKEN_ENV}. Exit status: "
            "0 done, 1 the service refused or could not be reached, 2 a usage error."
        ),
    )
    chaos.add_argument(
        "--store",
        dest="chaos_store",
        metavar="URL",
        help="act on the fleet's chaos store instead of a service (as ACTION --store URL)",
    )
    common = _client_options()
    common.add_argument(
        "--store",
        metavar="URL",
        help="act on the fleet's chaos store itself (sqlite:///path or redis://host:port/db, "
        "?service=NAME) instead of a service: start, stop, halt and status reach every "
        "worker that follows it (see docs/chaos-fleet.md)",
    )
    actions = chaos.add_subparsers(
        dest="action", metavar="ACTION", required=True, parser_class=_Parser
    )
    start = actions.add_parser(
        "start",
        parents=[common],
        help="start the experiment in FILE (.json, .yaml or .yml)",
        description="Send the experiment in FILE to the service, which validates and starts it.",
    )
    start.add_argument("file", metavar="FILE")
    start.add_argument(
        "--allow-unknown",
        action="store_true",
        help="start it even if it names a dependency or route the service does not have",
    )
    validate = actions.add_parser(
        "validate",
        parents=[common],
        help="check the experiment in FILE against the service, without starting it",
        description=(
            "Send the experiment in FILE to the service, which validates it and says what "
            "it names that the service does not have (dependencies, routes). Nothing "
            "starts. Exit status 0 if it would start, 1 if not."
        ),
    )
    validate.add_argument("file", metavar="FILE")
    validate.add_argument(
        "--allow-unknown",
        action="store_true",
        help="judge it as 'start --allow-unknown' would",
    )
    stop = actions.add_parser("stop", parents=[common], help="stop the running experiment NAME")
    stop.add_argument("name", metavar="NAME")
    actions.add_parser("halt", parents=[common], help="kill switch: stop every experiment now")
    actions.add_parser("status", parents=[common], help="show running and recently stopped ones")
    chaos.set_defaults(handler=_run_chaos)


def _client_options() -> _Parser:
    """``--url``, ``--token``, ``--prefix``, ``--timeout``, ``--json``: the control API's client."""
    common = _Parser(add_help=False)
    common.add_argument(
        "--url",
        default=os.environ.get(URL_ENV, DEFAULT_URL),
        help=f"the service's base URL (default: ${URL_ENV} or {DEFAULT_URL})",
    )
    common.add_argument("--token", help=f"the control token (default: ${TOKEN_ENV})")
    common.add_argument(
        "--prefix", default="/_tailguard", help="where the API is mounted (default: /_tailguard)"
    )
    common.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for the service (default: 10)",
    )
    common.add_argument("--json", action="store_true", help="print the server's JSON answer")
    return common


def _control_token(args: argparse.Namespace) -> str:
    token: str | None = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        raise CommandError(f"no control token: pass --token or set {TOKEN_ENV}")
    if not token.isascii() or not token.isprintable() or " " in token:
        raise CommandError("the control token must be printable ASCII without spaces")
    return token


def _enforce_mode(text: str) -> object:
    from tailguard.enforcement import parse_mode

    try:
        return parse_mode("MODE", text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_enforce(commands: argparse._SubParsersAction[_Parser]) -> None:
    enforce = commands.add_parser(
        "enforce",
        parents=[_client_options()],
        help="switch enforcement on a running service: on, shadow, or a fraction",
        description=(
            "Switch how a running service enforces its deadlines, admission limits and "
            "bulkheads, through its control API: 'on' (enforce), 'shadow' (decide and record "
            "what would have happened, act on nothing) or a fraction such as 0.25 (enforce "
            "for that share of requests). The next request sees it. Without --route or "
            "--dependency, everything switches: 'tailguard enforce on' rolls back at once. "
            "The change is logged on the service (who, from what, to what) and counted. "
            f"The token comes from --token or ${TOKEN_ENV}. Exit status: 0 done, 1 the "
            "service refused or could not be reached, 2 a usage error."
        ),
    )
    enforce.add_argument("mode", type=_enforce_mode, metavar="MODE", help="on, shadow or 0.0-1.0")
    enforce.add_argument(
        "--route", metavar="KEY", help="only this route key ('default': the default policy)"
    )
    enforce.add_argument("--dependency", metavar="NAME", help="only this dependency")
    enforce.set_defaults(handler=_run_enforce)


def _run_enforce(args: argparse.Namespace) -> int:
    import getpass
    import socket

    from tailguard.chaos._client import ControlClient, ControlError

    token = _control_token(args)
    try:
        who = f"{getpass.getuser()}@{socket.gethostname()} (tailguard enforce)"
    except Exception:  # no user name in this environment
        who = "tailguard enforce"
    try:
        with ControlClient(args.url, token, prefix=args.prefix, timeout=args.timeout) as client:
            answer = client.enforce(args.mode, route=args.route, dependency=args.dependency, by=who)
    except ControlError as exc:
        print(f"tailguard enforce: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        for change in answer["changed"]:
            unchanged = " (unchanged)" if change.get("unchanged") else ""
            print(f"{change['target']}: {change['from']} -> {change['to']}{unchanged}")
    return 0


def _run_chaos(args: argparse.Namespace) -> int:
    from tailguard.chaos._client import (
        ControlClient,
        ControlError,
        duration,
        render_status,
        render_validation,
    )
    from tailguard.chaos.schema import ExperimentError, read_experiment_file

    args.store = args.store or args.chaos_store
    if args.store is not None:
        return _run_chaos_store(args)
    token = _control_token(args)
    document = None
    if args.action in ("start", "validate"):
        try:
            document = read_experiment_file(args.file)
        except (ExperimentError, OSError, ImportError) as exc:
            raise CommandError(f"{args.file}: {exc}") from None
    try:
        with ControlClient(args.url, token, prefix=args.prefix, timeout=args.timeout) as client:
            answer: object
            status_code = 0
            if args.action == "validate":
                answer = checked = client.validate(document, allow_unknown=args.allow_unknown)
                text = render_validation(checked, file=args.file, url=args.url)
                status_code = 0 if checked.get("would_start") else 1
            elif args.action == "start":
                answer = running = client.start(document, allow_unknown=args.allow_unknown)
                experiment = running["experiment"]
                left = duration(float(running["expires_at"]) - float(running["started_at"]))
                count = len(experiment["faults"])
                text = (
                    f"started {experiment['name']}: {count} fault{'s' if count != 1 else ''}, "
                    f"stops by itself in {left}"
                )
            elif args.action == "stop":
                answer = client.stop(args.name)
                text = f"stopped {args.name}"
            elif args.action == "halt":
                halted = client.halt()
                answer = {"halted": halted}
                text = f"halted: {halted} experiment{'s' if halted != 1 else ''} stopped"
            else:
                answer = status = client.status()
                text = render_status(status, url=args.url)
    except ControlError as exc:
        print(f"tailguard chaos {args.action}: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2) if args.json else text)
    return status_code


def _missing_sqlite_file(url: str) -> str | None:
    """The path of a ``sqlite:///path`` store URL whose file does not exist, else ``None``.

    >>> _missing_sqlite_file("sqlite:///no/such/dir/chaos.db")
    '/no/such/dir/chaos.db'
    >>> _missing_sqlite_file("redis://127.0.0.1:6379/0") is None
    True
    """
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or not parts.path or Path(parts.path).exists():
        return None
    return parts.path


def _run_chaos_store(args: argparse.Namespace) -> int:
    """``tailguard chaos --store URL ...``: straight to the store, no service asked."""
    import getpass
    import socket

    from tailguard.chaos._client import render_status
    from tailguard.chaos.engine import MAX_EXPERIMENTS
    from tailguard.chaos.fleet import open_store, store_status
    from tailguard.chaos.schema import (
        ExperimentError,
        experiment_from_dict,
        experiment_to_dict,
        read_experiment_file,
    )
    from tailguard.chaos.store import StoreUnavailable, record

    if args.action == "validate":
        raise CommandError("validate asks a service what it has: use --url, not --store")
    experiment = None
    if args.action == "start":
        try:
            experiment = experiment_from_dict(read_experiment_file(args.file))
        except (ExperimentError, OSError, ImportError) as exc:
            raise CommandError(f"{args.file}: {exc}") from None
    missing = _missing_sqlite_file(args.store)
    if missing is not None:
        # Workers create their store file when they start: a file that is not there
        # is a typo, and a halt into a new, empty store would stop nothing, silently.
        raise CommandError(
            f"no chaos store at {missing}: no worker has opened it (check the path; "
            "workers create it when they start with that store)"
        )
    try:
        store = open_store(args.store, timeout=min(args.timeout, 5.0))
    except (ValueError, StoreUnavailable) as exc:
        raise CommandError(str(exc)) from None
    actor = f"cli:{getpass.getuser()}@{socket.gethostname()}"
    answer: object
    try:
        if experiment is not None:
            entry = record(experiment.name, experiment_to_dict(experiment), experiment.ttl, actor)
            store.start(entry, MAX_EXPERIMENTS)
            answer = {"started": experiment.name, "id": entry["id"]}
            text = (
                f"started {experiment.name} in {store.url} (service {store.service}): "
                f"every worker following it applies it; stops by itself in {experiment.ttl:g} s"
            )
            if not any(item.get("following") for item in store.workers()):
                text += "\nwarning: no worker follows this store now (is TAILGUARD_CHAOS=1 set?)"
        elif args.action == "stop":
            found = store.end_name(args.name, "stopped", actor)
            if not found:
                print(
                    f"tailguard chaos stop: error: no running experiment named {args.name!r}",
                    file=sys.stderr,
                )
                return 1
            answer, text = {"stopped": args.name}, f"stopped {args.name}"
        elif args.action == "halt":
            halted = len(store.halt(actor))
            answer = {"halted": halted}
            text = f"halted: {halted} experiment{'s' if halted != 1 else ''} stopped"
        else:
            answer = status = store_status(store)
            text = render_status(status, url=store.url)
    except (StoreUnavailable, ValueError) as exc:  # ValueError: a name or cap conflict
        print(f"tailguard chaos {args.action}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(json.dumps(answer, indent=2) if args.json else text)
    return 0


def _add_dashboards(commands: argparse._SubParsersAction[_Parser]) -> None:
    dashboards = commands.add_parser(
        "dashboards",
        help="write the Grafana dashboards and Prometheus rules (the repository's dashboards/)",
        description=(
            "Generate tailguard's Grafana dashboards (JSON) and Prometheus recording and "
            "alerting rules (rules/tailguard.rules.yaml) from the metric catalog into DIR. "
            "Needs pip install 'tailguard[dashboards]'; the files themselves need nothing."
        ),
    )
    dashboards.add_argument("--out", required=True, metavar="DIR", help="where to write them")
    for name, default, what in (
        ("availability", 0.999, "share of requests not answered 5xx"),
        ("latency", 0.99, "share of requests answered within their deadline"),
    ):
        dashboards.add_argument(
            f"--{name}-objective",
            type=float,
            default=default,
            metavar="RATIO",
            help=f"SLO: {what} (default: {default})",
        )
    dashboards.set_defaults(handler=_run_dashboards)


def _run_dashboards(args: argparse.Namespace) -> int:
    from tailguard.telemetry.rules import Objectives

    try:
        objectives = Objectives(
            availability=args.availability_objective, latency=args.latency_objective
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    try:
        from tailguard.telemetry.dashboards import write

        written = write(args.out, objectives)
    except ImportError as exc:
        raise CommandError(
            f"generating dashboards needs pip install 'tailguard[dashboards]' ({exc})"
        ) from exc
    except OSError as exc:
        raise CommandError(f"cannot write to {args.out}: {exc}") from None
    for path in written:
        print(path)
    return 0
