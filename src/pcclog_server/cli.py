"""The ``pcclog`` command: serve, tail, sessions, token, run."""

from __future__ import annotations

import argparse
import os
import secrets
import ssl
import sys
from collections.abc import Sequence
from typing import Any

import anyio

from pcclog_core import Hub, __version__

from ._config import ConfigError, add_arguments, load_config
from ._log import Logger
from ._server import Server, Source

__all__ = ["main"]


def _serve_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "serve",
        help="run the WebSocket server",
        description="Run the pcclog server. Every setting is also an environment variable.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(parser)
    parser.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default=os.environ.get("PCCLOG_BACKEND", "asyncio"),
        help="event loop (uvloop is used with asyncio when installed)",
    )
    parser.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(args)
        generated = None
        if not config.auth_configured and not config.auth_disabled:
            generated = secrets.token_urlsafe(24)
        authenticator = config.authenticator(generated)
        redactor = config.redactor(authenticator)
        ssl_context = None
        if config.tls_cert and config.tls_key:
            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                ssl_context.load_cert_chain(config.tls_cert, config.tls_key)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"invalid TLS_CERT/TLS_KEY: {exc}") from None
    except ConfigError as exc:
        print(f"pcclog: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"pcclog: {exc}", file=sys.stderr)
        return 2
    logger = Logger(config.log_level)
    if config.auth_disabled:
        logger.warn(
            "authentication is disabled (AUTH_DISABLED): anyone who reaches this port can "
            "read and write every session"
        )
    for position in authenticator.short_tokens():
        # Accepted (the original README's examples are short), never printed.
        logger.warn(
            f"static token #{position} is shorter than 16 characters: "
            "use a long random token (pcclog token, or openssl rand -hex 32)"
        )
    hub = Hub(config.limits(), authenticator, redactor)
    sources: list[Source] = []
    if config.docker_enabled != "false":
        from ._docker_source import DockerSource

        sources.append(DockerSource(config, required=config.docker_enabled == "true"))
    server = Server(config, hub=hub, logger=logger, sources=sources, ssl_context=ssl_context)
    try:
        server.bind()
    except OSError as exc:
        print(f"pcclog: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            port = await tg.start(server.serve)
            if generated is not None:
                scheme = "wss" if ssl_context else "ws"
                host = config.host if config.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
                if ":" in host:
                    host = f"[{host}]"
                url = f"{scheme}://{host}:{port}"
                print(
                    "\npcclog: no authentication configured, so this run generated a token:\n\n"
                    f"    {generated}\n\n"
                    "Watch every session:\n\n"
                    f"    pcclog tail '*' --url {url} --token {generated}\n\n"
                    f"Browser viewer: {'https' if ssl_context else 'http'}://{host}:{port}/ "
                    "(sign in with the token)\n"
                    "Set AUTH_TOKENS or AUTH_JWT_SECRET to choose your own.\n",
                    flush=True,
                )

    backend_options: dict[str, Any] = {}
    if args.backend == "asyncio":
        try:
            import uvloop  # type: ignore[import-not-found, unused-ignore]

            backend_options["loop_factory"] = uvloop.new_event_loop
        except ImportError:
            pass
    try:
        anyio.run(run, backend=args.backend, backend_options=backend_options)
    except KeyboardInterrupt:
        pass
    return 0


def _token_parser(sub: Any) -> None:
    from ._token import register

    register(sub)


def _client_parsers(sub: Any) -> None:
    from . import cmd_run, cmd_sessions, cmd_tail

    cmd_tail.register(sub)
    cmd_sessions.register(sub)
    cmd_run.register(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pcclog",
        description="Stream the logs and status of parallel agent sessions over WebSocket.",
    )
    parser.add_argument("--version", action="version", version=f"pcclog {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _serve_parser(sub)
    _client_parsers(sub)
    _token_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
