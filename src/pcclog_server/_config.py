"""Every setting of ``pcclog serve``, defined once (SPEC §2).

Each ``Setting`` is an environment variable and a ``--flag``; the flag wins.
``docs/configuration.md`` is generated from ``SETTINGS`` (a test fails when
the page is stale). An invalid value stops the start with a message naming
the variable.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from pcclog_core import Authenticator, Grant, Limits, Role, parse_static_tokens
from pcclog_core._errors import ConfigurationError
from pcclog_core._redact import Redactor, parse_patterns

__all__ = ["SETTINGS", "Config", "ConfigError", "Setting", "add_arguments", "load_config"]


class ConfigError(ValueError):
    """An invalid setting; the text names the variable."""


def _int(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ValueError(f"must be {bound}, got {value}")
        return value

    return parse


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        lowered = text.strip().lower()
        if lowered not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
        return lowered

    return parse


def _text(text: str) -> str:
    return text


def _origins(text: str) -> tuple[str, ...]:
    return tuple(o.strip() for o in text.split(",") if o.strip())


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Setting:
    name: str  # attribute of Config
    env: str
    default: str | None
    parse: Callable[[str], Any]
    help: str
    secret: bool = False  # never echoed in errors or logs

    @property
    def flag(self) -> str:
        return "--" + self.env.lower().replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting(
        name="port",
        env="PORT",
        default="8080",
        parse=_int(0, 65535),
        help="TCP port to listen on (0 picks a free one).",
    ),
    Setting(
        name="host",
        env="HOST",
        default="0.0.0.0",
        parse=_text,
        help="Address to listen on; `make run` uses 127.0.0.1.",
    ),
    Setting(
        name="ws_ping_interval",
        env="WS_PING_INTERVAL",
        default="30000",
        parse=_int(0),
        help="Milliseconds between WebSocket pings the server sends (0 disables).",
    ),
    Setting(
        name="ws_ping_timeout",
        env="WS_PING_TIMEOUT",
        default="5000",
        parse=_int(1),
        help="Milliseconds to wait for a pong before closing with 1011.",
    ),
    Setting(
        name="session_timeout",
        env="SESSION_TIMEOUT",
        default="300000",
        parse=_int(0),
        help="Milliseconds an ended (stopped/error) session is kept before eviction.",
    ),
    Setting(
        name="producer_grace",
        env="PRODUCER_GRACE",
        default="60000",
        parse=_int(0),
        help=(
            "Milliseconds after the last producer connection of a running session drops "
            "without ending it before the session becomes error (reason `producer lost`); "
            "a producer that reconnects within it continues the session."
        ),
    ),
    Setting(
        name="max_sessions",
        env="MAX_SESSIONS",
        default="100",
        parse=_int(1),
        help="Most sessions kept at once.",
    ),
    Setting(
        name="session_quota",
        env="SESSION_QUOTA",
        default="25",
        parse=_int(1),
        help=(
            "Running sessions one tenant (a token or JWT subject scoped narrower than `*`) may "
            "hold; when the registry is full the ended sessions of the tenant that needs room "
            "go first, and no other tenant's ended session leaves memory before its "
            "SESSION_TIMEOUT."
        ),
    ),
    Setting(
        name="log_level",
        env="LOG_LEVEL",
        default="info",
        parse=_choice("trace", "debug", "info", "warn", "warning", "error", "fatal", "silent"),
        help="Level of the server's own JSON logs on stderr.",
    ),
    Setting(
        name="auth_tokens",
        env="AUTH_TOKENS",
        default=None,
        parse=_text,
        secret=True,
        help="Static tokens, comma-separated: TOKEN (every role, every session) or "
        "TOKEN:ROLES:GLOB with ROLES view, produce or view+produce.",
    ),
    Setting(
        name="auth_token",
        env="AUTH_TOKEN",
        default=None,
        parse=_text,
        secret=True,
        help="The original server's single token: one more static token with every role, "
        "so its wrapper and clients work unchanged.",
    ),
    Setting(
        name="auth_jwt_secret",
        env="AUTH_JWT_SECRET",
        default=None,
        parse=_text,
        secret=True,
        help="Secret for HS256 JWTs (claims: exp required, roles, sessions).",
    ),
    Setting(
        name="auth_jwt_public_key",
        env="AUTH_JWT_PUBLIC_KEY",
        default=None,
        parse=_text,
        help="PEM public key (or a path to one) for RS256/ES256 JWTs.",
    ),
    Setting(
        name="auth_disabled",
        env="AUTH_DISABLED",
        default="false",
        parse=_bool,
        help="Serve without authentication (logged as a warning).",
    ),
    Setting(
        name="auth_timeout",
        env="AUTH_TIMEOUT",
        default="10000",
        parse=_int(1),
        help="Milliseconds a connection may stay unauthenticated before 1008.",
    ),
    Setting(
        name="allowed_origins",
        env="ALLOWED_ORIGINS",
        default=None,
        parse=_origins,
        help="Comma-separated exact Origin allowlist for browsers (unset: any).",
    ),
    Setting(
        name="allowed_hosts",
        env="ALLOWED_HOSTS",
        default=None,
        parse=_origins,
        help="Comma-separated extra accepted Host names (`name` or `name:port`, `*` any). "
        "DNS-rebinding guard: on a loopback listener or with AUTH_DISABLED, Host must be "
        "the listen address, localhost, a loopback address or one of these; otherwise any "
        "Host passes unless this is set. `/healthz` and `/readyz` accept any Host.",
    ),
    Setting(
        name="docker_enabled",
        env="DOCKER_ENABLED",
        default="auto",
        parse=_choice("auto", "true", "false"),
        help="Follow Docker containers: auto (if an engine answers), true, false.",
    ),
    Setting(
        name="docker_label",
        env="DOCKER_LABEL",
        default="pcclog.session",
        parse=_text,
        help="Containers with this label are sessions; its value is the session id.",
    ),
    Setting(
        name="docker_stdout_level",
        env="DOCKER_STDOUT_LEVEL",
        default="info",
        parse=_text,
        help="Level of a plain (non-JSON) stdout line from a container.",
    ),
    Setting(
        name="docker_stderr_level",
        env="DOCKER_STDERR_LEVEL",
        default="error",
        parse=_text,
        help="Level of a plain (non-JSON) stderr line from a container.",
    ),
    Setting(
        name="history_lines",
        env="HISTORY_LINES",
        default="10000",
        parse=_int(1),
        help="Entries of history kept per session for replay and resume.",
    ),
    Setting(
        name="history_bytes",
        env="HISTORY_BYTES",
        default="8388608",
        parse=_int(1024),
        help=(
            "Bytes of in-memory history per session, counted on the stored frames "
            "(after JSON escaping); with HISTORY_LINES, whichever is hit first."
        ),
    ),
    Setting(
        name="max_line_bytes",
        env="MAX_LINE_BYTES",
        default="262144",
        parse=_int(64),
        help=(
            "A longer log message (from any source, measured as encoded JSON) is cut "
            "to this many bytes, with a marker saying how many were cut."
        ),
    ),
    Setting(
        name="subscribe_tail",
        env="SUBSCRIBE_TAIL",
        default="100",
        parse=_int(0),
        help="History entries replayed on a plain subscribe.",
    ),
    Setting(
        name="max_message_size",
        env="MAX_MESSAGE_SIZE",
        default="1048576",
        parse=_int(64, 64 * 1024 * 1024),
        help=(
            "Largest client message, bytes. A producer's longer message is answered with "
            "MESSAGE_TOO_LARGE and skipped (its connection stays open); a viewer's or an "
            "unauthenticated client's is closed with 1009."
        ),
    ),
    Setting(
        name="max_subscriptions",
        env="MAX_SUBSCRIPTIONS",
        default="128",
        parse=_int(1),
        help="Subscriptions per connection.",
    ),
    Setting(
        name="connection_buffer",
        env="CONNECTION_BUFFER",
        default="1048576",
        parse=_int(1024),
        help="Outbound bytes queued per connection before the slow-consumer policy applies.",
    ),
    Setting(
        name="memory_budget",
        env="MEMORY_BUDGET",
        default="1073741824",
        parse=_int(65536),
        help=(
            "Bytes of in-memory history plus queued output, in all. Past it the largest "
            "histories lose their oldest entries first, then producers are paused."
        ),
    ),
    Setting(
        name="slow_consumer",
        env="SLOW_CONSUMER",
        default="drop",
        parse=_choice("drop", "disconnect"),
        help="drop (drop logs for that viewer, then send gap) or disconnect (close 1013).",
    ),
    Setting(
        name="rate_limit",
        env="RATE_LIMIT",
        default="200",
        parse=_int(1),
        help="Client messages per second per connection (producer entries exempt).",
    ),
    Setting(
        name="redact",
        env="REDACT",
        default="on",
        parse=_bool,
        help=(
            "Mask secrets (SPEC §8: API keys, tokens, private keys, passwords in URLs, a "
            "container's secret environment values) in every entry before it is kept, sent "
            "or logged. `off` masks only pcclog's own tokens and keys."
        ),
    ),
    Setting(
        name="redact_patterns",
        env="REDACT_PATTERNS",
        default=None,
        parse=_text,
        secret=True,
        help="More regular expressions to mask: `;`-separated, or `@PATH` of a file with "
        "one per line.",
    ),
    Setting(
        name="tls_cert",
        env="TLS_CERT",
        default=None,
        parse=_text,
        help="PEM certificate chain: serve wss:// and https://.",
    ),
    Setting(
        name="tls_key",
        env="TLS_KEY",
        default=None,
        parse=_text,
        help="PEM private key for TLS_CERT.",
    ),
)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    port: int
    host: str
    ws_ping_interval: int
    ws_ping_timeout: int
    session_timeout: int
    producer_grace: int
    max_sessions: int
    session_quota: int
    log_level: str
    auth_tokens: str | None
    auth_token: str | None
    auth_jwt_secret: str | None
    auth_jwt_public_key: str | None
    auth_disabled: bool
    auth_timeout: int
    allowed_origins: tuple[str, ...] | None
    allowed_hosts: tuple[str, ...] | None
    docker_enabled: str
    docker_label: str
    docker_stdout_level: str
    docker_stderr_level: str
    history_lines: int
    history_bytes: int
    max_line_bytes: int
    subscribe_tail: int
    max_message_size: int
    max_subscriptions: int
    connection_buffer: int
    memory_budget: int
    slow_consumer: str
    rate_limit: int
    redact: bool
    redact_patterns: str | None
    tls_cert: str | None
    tls_key: str | None

    @property
    def auth_configured(self) -> bool:
        return bool(
            self.auth_tokens or self.auth_token or self.auth_jwt_secret or self.auth_jwt_public_key
        )

    def limits(self) -> Limits:
        return Limits(
            max_sessions=self.max_sessions,
            session_quota=self.session_quota,
            session_timeout=self.session_timeout / 1000,
            producer_grace=self.producer_grace / 1000,
            history_lines=self.history_lines,
            history_bytes=self.history_bytes,
            max_line_bytes=self.max_line_bytes,
            subscribe_tail=self.subscribe_tail,
            max_message_size=self.max_message_size,
            max_subscriptions=self.max_subscriptions,
            connection_buffer=self.connection_buffer,
            memory_budget=self.memory_budget,
            slow_consumer="disconnect" if self.slow_consumer == "disconnect" else "drop",
            ping_interval=self.ws_ping_interval / 1000,
            ping_timeout=self.ws_ping_timeout / 1000,
            auth_timeout=self.auth_timeout / 1000,
            rate_limit=float(self.rate_limit),
            rate_burst=2 * self.rate_limit,
        )

    def redactor(self, authenticator: Authenticator) -> Redactor:
        """Masks every entry (SPEC §8); ``ConfigError`` names a bad pattern."""
        patterns: tuple[re.Pattern[str], ...] = ()
        text = self.redact_patterns
        if text:
            try:
                if text.startswith("@"):
                    with open(text[1:], encoding="utf-8") as f:
                        patterns = parse_patterns(f.read(), one_per_line=True)
                else:
                    patterns = parse_patterns(text)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"REDACT_PATTERNS: {exc}") from None
        return Redactor(secrets=authenticator.secrets(), patterns=patterns, builtin=self.redact)

    def authenticator(self, generated_token: str | None = None) -> Authenticator:
        tokens = parse_static_tokens(self.auth_tokens) if self.auth_tokens else []
        if self.auth_token:
            # One token with every role, as the original server had; not
            # parsed as a list, so a ',' or ':' in it is part of the token.
            tokens.append((self.auth_token, Grant(roles=frozenset(Role), subject="AUTH_TOKEN")))
        if generated_token is not None:
            tokens += parse_static_tokens(generated_token)
        public_key = self.auth_jwt_public_key
        if public_key and not public_key.lstrip().startswith("-----BEGIN"):
            with open(public_key, encoding="ascii") as f:
                public_key = f.read()
        try:
            return Authenticator(
                static_tokens=tokens,
                jwt_secret=self.auth_jwt_secret,
                jwt_public_key=public_key,
                disabled=self.auth_disabled,
            )
        except ConfigurationError as exc:
            # The only setting the Authenticator refuses itself: a short secret.
            raise ConfigError(f"AUTH_JWT_SECRET: {exc}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per setting; unset flags fall back to the environment."""
    for setting in SETTINGS:
        default = "unset" if setting.default is None else setting.default
        parser.add_argument(
            setting.flag,
            dest=setting.name,
            default=None,
            metavar=setting.env,
            help=f"{setting.help} (env {setting.env}, default {default})",
        )


def load_config(
    args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Flags, then the environment, then defaults; raises ``ConfigError``."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = getattr(args, setting.name, None) if args is not None else None
        source = setting.flag
        if raw is None:
            raw = environ.get(setting.env)
            source = setting.env
        if raw is None or (raw == "" and setting.default is None):
            values[setting.name] = (
                None if setting.default is None else setting.parse(setting.default)
            )
            continue
        try:
            values[setting.name] = setting.parse(raw)
        except (ValueError, OSError) as exc:
            shown = "" if setting.secret else f" ({exc})"
            raise ConfigError(f"invalid {source}{shown}") from None
    config = Config(**values)
    if bool(config.tls_cert) != bool(config.tls_key):
        raise ConfigError("TLS_CERT and TLS_KEY must be set together")
    if config.auth_tokens:
        try:
            parse_static_tokens(config.auth_tokens)
        except ValueError as exc:
            raise ConfigError(f"invalid AUTH_TOKENS: {exc}") from None
    if config.auth_jwt_secret and config.auth_jwt_public_key:
        raise ConfigError("set AUTH_JWT_SECRET or AUTH_JWT_PUBLIC_KEY, not both")
    try:
        config.limits()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return config


def render_markdown() -> str:
    """``docs/configuration.md``, generated from ``SETTINGS``.

    Regenerate with ``.venv/bin/python -m pcclog_server._config > docs/configuration.md``;
    ``tests/test_config.py`` fails when the page is stale.
    """
    lines = [
        "# Configuration",
        "",
        "<!-- Generated from src/pcclog_server/_config.py by "
        "`python -m pcclog_server._config`; do not edit by hand. -->",
        "",
        "Every setting is an environment variable and a `pcclog serve` flag; the flag wins.",
        "Durations are milliseconds, sizes bytes. An invalid value stops the start with a",
        "message naming the variable (exit code 2).",
        "",
        "With no `AUTH_TOKENS`, `AUTH_JWT_SECRET` or `AUTH_JWT_PUBLIC_KEY` and `AUTH_DISABLED`",
        "not set, the server generates a token at start and prints it with a ready-to-paste",
        "`pcclog tail` command.",
        "",
        "| variable | flag | default | meaning |",
        "|---|---|---|---|",
    ]
    for setting in SETTINGS:
        default = "unset" if setting.default is None else f"`{setting.default}`"
        text = setting.help.replace("|", "\\|")
        lines.append(f"| `{setting.env}` | `{setting.flag}` | {default} | {text} |")
    lines += [
        "",
        "`pcclog serve --backend trio` (or `PCCLOG_BACKEND=trio`) runs on trio instead of",
        "asyncio; uvloop is used with asyncio when it is installed.",
        "",
        *_MEMORY_BOUND,
    ]
    return "\n".join(lines)


_MEMORY_BOUND = [
    "## The memory bound",
    "",
    "Whatever any client, producer or container sends, pcclog's memory stays under",
    "a bound computed from these settings (SPEC §6):",
    "",
    "```",
    "RSS <= base + MEMORY_BUDGET",
    "          + connections x (CONNECTION_BUFFER + MAX_MESSAGE_SIZE + 320 KiB)",
    "          + followed containers x (MAX_LINE_BYTES + 64 KiB)",
    "```",
    "",
    "* `MEMORY_BUDGET` holds every session's in-memory history (each bounded by",
    "  `HISTORY_LINES` and `HISTORY_BYTES`, counted on the stored frames after JSON",
    "  escaping) and every connection's queued output. Past it, the session with the",
    "  most history loses its oldest entries first (to 15/16 of the budget); if",
    "  queued output alone is over it, producers and containers are not read until",
    "  it drains. Viewers are never paused by it.",
    "* `CONNECTION_BUFFER` bounds every byte queued for one connection: live",
    "  entries, replays, status snapshots, `sessions` replies, errors, pongs, gaps",
    "  and close frames, including bytes the runtime has taken but not yet written.",
    "  Past it, `log` entries follow `SLOW_CONSUMER`; the connection's own replies are",
    "  never dropped, so pcclog stops reading that connection until it drains. A",
    "  replay (`since: 0` over all of history) is copied in one buffer at a time as",
    "  the viewer reads.",
    "* Outside the buffer a connection holds at most one message being assembled",
    "  (`MAX_MESSAGE_SIZE`), one socket read kept back while it is paused (256 KiB),",
    "  the one reply that crossed the budget and its own objects (a few KiB).",
    "* A followed container holds at most one line being joined (`MAX_LINE_BYTES`)",
    "  and one read of its log stream.",
    "* A closed connection's buffers are freed at once (no reference cycle).",
    "",
]


if __name__ == "__main__":
    print(render_markdown(), end="")
