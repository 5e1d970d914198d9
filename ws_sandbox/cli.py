"""The ``ws-sandbox`` command: ``serve``, ``exec``, ``build-image``, ``env-example``, ``schema``."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from ws_sandbox import __version__
from ws_sandbox.exceptions import ConfigError

API_KEY_VARIABLE = "WS_SANDBOX_API_KEY"
"""The environment variable ``ws-sandbox exec`` takes its API key from."""


def _serve(args: argparse.Namespace) -> int:
    from ws_sandbox.server import serve
    from ws_sandbox.settings import Settings

    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    settings = Settings.from_env(**overrides)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return serve(settings)


def _env_example(args: argparse.Namespace) -> int:
    from ws_sandbox.settings import env_example

    sys.stdout.write(env_example())
    return 0


def _schema(args: argparse.Namespace) -> int:
    from ws_sandbox.schema import render_schema

    sys.stdout.write(render_schema())
    return 0


def _exec(args: argparse.Namespace) -> int:
    import asyncio

    from ws_sandbox import frames as fr
    from ws_sandbox.client import ClientError, SessionRefused, connect

    try:
        code = sys.stdin.buffer.read().decode() if args.code == "-" else args.code
    except UnicodeDecodeError as exc:
        print(f"ws-sandbox: the code on standard input is not UTF-8: {exc}", file=sys.stderr)
        return 2

    def show(frame: fr.Stream | fr.Display) -> None:
        if isinstance(frame, fr.Display):
            if "text/plain" not in frame.data:
                return
            stream, text = sys.stdout, frame.data["text/plain"] + "\n"
        else:  # a stream of a later version's name goes with stderr
            stream, text = (sys.stdout if frame.name == "stdout" else sys.stderr), frame.text
        stream.write(text)
        stream.flush()

    async def run() -> int:
        session = await connect(args.url, language=args.language, api_key=args.api_key,
                                open_timeout=args.open_timeout, result_grace=args.result_grace)
        result: fr.Result | None = None
        async with session, contextlib.aclosing(
                session.stream(code, timeout=args.timeout, program=True)) as frames:
            async for frame in frames:  # output and displays in the order they came
                match frame:
                    case fr.Stream() | fr.Display():
                        show(frame)
                    case fr.Result():
                        result = frame
                    case fr.Error():
                        raise SessionRefused(frame, None)
        if result is None:  # stream() ends with a result or raises: never, but not a crash
            print("ws-sandbox: the cell's frames ended without a result", file=sys.stderr)
            return 2
        if result.status != "success":
            print(f"[{result.status}] {result.error or ''}".rstrip(), file=sys.stderr)
        return exit_status(result.status, result.exit_code)

    try:
        return asyncio.run(run())
    except SessionRefused as exc:
        hint = (f" (give the key with --api-key or ${API_KEY_VARIABLE})"
                if exc.http_status in (401, 403) else "")
        print(f"ws-sandbox: refused: {exc}{hint}", file=sys.stderr)
        return 2
    except (ClientError, OSError) as exc:
        print(f"ws-sandbox: {exc or type(exc).__name__}", file=sys.stderr)
        return 2


EXIT_STATUSES = """\
exit status:
  0        the cell succeeded
  124      the cell timed out (as coreutils' timeout)
  130      the cell was interrupted, or ws-sandbox was (Ctrl-C)
  1-255    the cell failed otherwise (error, killed): its exit code clamped into 1..255,
           1 when it had none, or 0, or a negative one
  2        no result: bad arguments or code, a bad URL, the service unreachable or
           refusing, the session closed, or the result late past --result-grace
A cell that fails with its own exit code 2, 124 or 130 exits with it too: the status
line on standard error ([timeout], [error] ...) tells them apart.
"""


def exit_status(status: str, exit_code: int | None) -> int:
    """The exit status of ``ws-sandbox exec`` for a cell (:data:`EXIT_STATUSES`): 0 when it
    succeeded, 124 when it timed out, 130 when it was interrupted; otherwise its exit code
    clamped into 1..255 (1 stands for 0, a negative one, or none)."""
    match status:
        case "success":
            return 0
        case "timeout":
            return 124
        case "interrupted":
            return 130
    return min(max(exit_code or 1, 1), 255)


def _seconds(text: str) -> float:
    """A ``--timeout``: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _build_image(args: argparse.Namespace) -> int:
    from ws_sandbox import image

    return image.run(args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ws-sandbox``."""
    parser = argparse.ArgumentParser(prog="ws-sandbox", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ws-sandbox {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the service (settings from the environment)")
    serve.add_argument("--host", help="address to bind (SANDBOX_HOST)")
    serve.add_argument("--port", type=int, help="port (SANDBOX_PORT)")
    serve.set_defaults(func=_serve)

    run = sub.add_parser("exec", help="run one cell on a running service, streaming output",
                         description="Run the code as one program in a fresh session of a"
                         " running service, its output streamed as it comes. It ends as the"
                         " program would: a Python program's threads that are not daemons,"
                         " and its exit functions, are waited for.",
                         epilog=EXIT_STATUSES,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("code", help="the code, or - to read it from standard input")
    run.add_argument("-l", "--language", default="python",
                     help="python, javascript, shell or rust, or an alias such as bash or"
                          " node (default: python)")
    run.add_argument("--url", default="ws://127.0.0.1:8090",
                     help="the service's address (default: %(default)s)")
    run.add_argument("--timeout", type=_seconds, help="seconds (default: the service's)")
    run.add_argument("--api-key", default=os.environ.get(API_KEY_VARIABLE) or None,
                     help=f"API key, when the service requires one (default: ${API_KEY_VARIABLE},"
                          " which keeps it out of the process list and the shell's history)")
    run.add_argument("--result-grace", type=_seconds, default=60.0, metavar="SECONDS",
                     help="how long the result may be late after the cell's timeout before"
                     " giving up (default: 60, as the client library)")
    run.add_argument("--open-timeout", type=_seconds, default=60.0, metavar="SECONDS",
                     help="how long to wait for the service to answer, and again for the"
                     " session to open (default: 60, as the client library)")
    run.set_defaults(func=_exec)

    build = sub.add_parser("build-image", help="build the sandbox runtime image")
    from ws_sandbox import image

    image.add_arguments(build)
    build.set_defaults(func=_build_image)

    env = sub.add_parser("env-example", help="print every setting with its default")
    env.set_defaults(func=_env_example)

    schema = sub.add_parser("schema", help="print the protocol's JSON Schema")
    schema.set_defaults(func=_schema)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ws-sandbox`` and ``python -m ws_sandbox``."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"ws-sandbox: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
