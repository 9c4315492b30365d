"""``pcclog token``: mint a JWT for ``AUTH_JWT_SECRET`` (HS256) or, with a
private key, RS256/ES256 for ``AUTH_JWT_PUBLIC_KEY``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import jwt

__all__ = ["mint_token", "register"]


def mint_token(
    *,
    roles: list[str],
    sessions: list[str],
    ttl: float,
    secret: str | None = None,
    private_key: str | None = None,
    algorithm: str | None = None,
    subject: str | None = None,
    now: float | None = None,
) -> str:
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {
        "iat": int(issued),
        "exp": int(issued + ttl),
        "roles": roles,
        "sessions": sessions,
    }
    if subject:
        claims["sub"] = subject
    if private_key is not None:
        key: Any = private_key
        alg = algorithm or ("ES256" if "EC PRIVATE" in private_key else "RS256")
    elif secret:
        key, alg = secret, "HS256"
    else:
        raise ValueError("a secret (AUTH_JWT_SECRET) or a private key is required")
    return jwt.encode(claims, key, algorithm=alg)


def _parse_duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip()
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration: {text!r} (try 3600, 90m, 12h, 7d)"
        ) from None


def cmd_token(args: argparse.Namespace) -> int:
    roles = sorted({r.strip() for r in args.roles.split(",") if r.strip()})
    if not roles or any(r not in ("view", "produce") for r in roles):
        print("pcclog token: --roles takes view, produce or view,produce", file=sys.stderr)
        return 2
    private_key = None
    if args.private_key:
        with open(args.private_key, encoding="ascii") as f:
            private_key = f.read()
    secret = args.secret or os.environ.get("AUTH_JWT_SECRET")
    try:
        token = mint_token(
            roles=roles,
            sessions=args.sessions or ["*"],
            ttl=args.expires_in,
            secret=secret,
            private_key=private_key,
            subject=args.subject,
        )
    except ValueError as exc:
        print(f"pcclog token: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "token",
        help="mint a JWT with roles, sessions and expiry",
        description="Mint a JWT the server accepts (HS256 with AUTH_JWT_SECRET, or RS256/ES256 "
        "with --private-key for a server configured with AUTH_JWT_PUBLIC_KEY).",
    )
    parser.add_argument("--roles", default="view", help="view, produce or view,produce")
    parser.add_argument(
        "--session",
        dest="sessions",
        action="append",
        help="session glob the token covers (repeatable; default '*')",
    )
    parser.add_argument(
        "--expires-in",
        type=_parse_duration,
        default=_parse_duration("12h"),
        help="lifetime: seconds or 90m, 12h, 7d (default 12h)",
    )
    parser.add_argument("--secret", help="HS256 secret (default: $AUTH_JWT_SECRET)")
    parser.add_argument("--private-key", help="PEM private key file for RS256/ES256")
    parser.add_argument("--subject", help="sub claim (shown in server logs)")
    parser.set_defaults(func=cmd_token)
