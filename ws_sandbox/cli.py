"""The ``ws-sandbox`` command: ``serve``, ``build-image``, ``env-example``, ``schema``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from ws_sandbox import __version__
from ws_sandbox.exceptions import ConfigError


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
