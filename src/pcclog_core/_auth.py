"""Authentication and authorization (SPEC §2 ``AUTH_*``).

A token resolves to a ``Grant``: the roles it carries (``view``,
``produce``), the fnmatch globs of the session ids it may touch, and when it
expires. The connection keeps its grant and checks every subscribe and every
producer message against it.

* Static tokens (``AUTH_TOKENS``): ``TOKEN`` (every role, every session) or
  ``TOKEN:ROLES:GLOB``. Compared in constant time: every configured token is
  compared with ``hmac.compare_digest`` and none short-circuits, so timing
  tells nothing about which prefix matched.
* JWT (``AUTH_JWT_SECRET`` for HS256, ``AUTH_JWT_PUBLIC_KEY`` for RS256 and
  ES256): PyJWT verifies the signature against a fixed algorithm list (so
  ``alg=none`` and an HS256 token signed with the public key are refused);
  ``exp`` is required. PyJWT's own clock checks are turned off and done here
  against the ``wall`` time the runtime passes in: the core reads no clock.
  A JWT must say which sessions it covers (a ``sessions`` claim), or the
  operator must name a default (``jwt_default_sessions``): a token without
  one views nothing rather than everything (fail closed). An HS256 secret
  shorter than 32 bytes (RFC 7518 §3.2: a key at least as long as the hash)
  is refused at start.

Tenancy. A grant scoped narrower than ``*`` is a tenant, named by its
subject (``static#N``, a JWT's ``sub``): ``Grant.tenant``. The hub bounds
what one tenant may hold (``SESSION_QUOTA``, ``_hub``).
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
import hmac
import math
import re
from collections.abc import Iterable
from typing import Any

import jwt

from ._errors import ConfigurationError, PcclogError

__all__ = [
    "ALL_ACCESS",
    "AuthError",
    "Authenticator",
    "Grant",
    "Role",
    "authorize_request",
    "bearer_token",
    "parse_static_tokens",
]

# RFC 7518 §3.2: an HS256 key must be at least 256 bits.
MIN_JWT_SECRET_BYTES = 32
# Shorter static tokens are accepted (the original README's examples are
# short) but the runtime warns at start (``Authenticator.short_tokens``).
MIN_TOKEN_LENGTH = 16


class Role(enum.StrEnum):
    VIEW = "view"
    PRODUCE = "produce"


class AuthError(PcclogError):
    """The token was refused; the text says why, and never repeats the token.

    ``status`` is the HTTP answer where a request is refused before any
    WebSocket exists: 401 for a missing or invalid token, 403 for a valid
    one that lacks the role asked for.
    """

    def __init__(self, message: str, *, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """What a connection may do.

    ``expires`` is a wall-clock time (seconds since the epoch) or ``None``.
    ``globs`` are fnmatch patterns over session ids; ``("*",)`` is every one.
    """

    roles: frozenset[Role]
    globs: tuple[str, ...] = ("*",)
    expires: float | None = None
    subject: str = "token"
    _pattern: re.Pattern[str] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        joined = "|".join(f"(?:{fnmatch.translate(g)})" for g in self.globs) or "(?!)"
        object.__setattr__(self, "_pattern", re.compile(joined))

    def can_view(self, session_id: str) -> bool:
        return Role.VIEW in self.roles and self._pattern.match(session_id) is not None

    def can_produce(self, session_id: str) -> bool:
        return Role.PRODUCE in self.roles and self._pattern.match(session_id) is not None

    def allows(self, session_id: str) -> bool:
        return self._pattern.match(session_id) is not None

    @property
    def tenant(self) -> str | None:
        """The tenant this grant acts for: its subject when its globs are
        narrower than ``*``; ``None`` for a grant over every session (an
        operator's, the Docker source's), which no quota applies to."""
        return None if "*" in self.globs else self.subject


ALL_ACCESS = Grant(roles=frozenset(Role), subject="anonymous")
"""The grant of every connection when auth is disabled."""

_ROLE_SETS = {
    "view": frozenset({Role.VIEW}),
    "produce": frozenset({Role.PRODUCE}),
    "view+produce": frozenset(Role),
    "produce+view": frozenset(Role),
}


def parse_static_tokens(spec: str) -> list[tuple[str, Grant]]:
    """Parse ``AUTH_TOKENS``: comma-separated ``TOKEN`` or ``TOKEN:ROLES:GLOB``.

    Raises ``ConfigurationError`` (a ``ValueError``) naming the bad entry by
    position (never the token).
    """
    tokens: list[tuple[str, Grant]] = []
    for index, item in enumerate(spec.split(","), start=1):
        item = item.strip()
        if not item:
            continue
        parts = item.split(":")
        if len(parts) == 1:
            grant = Grant(roles=frozenset(Role), subject=f"static#{index}")
        elif len(parts) == 3:
            _, roles, glob = parts
            if roles not in _ROLE_SETS:
                raise ConfigurationError(
                    f"entry {index}: roles must be view, produce or view+produce, not {roles!r}"
                )
            if not glob:
                raise ConfigurationError(f"entry {index}: the session glob is empty")
            grant = Grant(roles=_ROLE_SETS[roles], globs=(glob,), subject=f"static#{index}")
        else:
            raise ConfigurationError(f"entry {index}: expected TOKEN or TOKEN:ROLES:GLOB")
        if not parts[0]:
            raise ConfigurationError(f"entry {index}: the token is empty")
        tokens.append((parts[0], grant))
    return tokens


class Authenticator:
    """Resolves tokens to grants. ``disabled=True`` grants everyone everything."""

    def __init__(
        self,
        *,
        static_tokens: Iterable[tuple[str, Grant]] = (),
        jwt_secret: str | None = None,
        jwt_public_key: str | None = None,
        disabled: bool = False,
        leeway: float = 0.0,
        jwt_default_sessions: Iterable[str] | None = None,
    ) -> None:
        if jwt_secret and len(jwt_secret.encode()) < MIN_JWT_SECRET_BYTES:
            raise ConfigurationError(
                f"the HS256 JWT secret must be at least {MIN_JWT_SECRET_BYTES} bytes, "
                f"got {len(jwt_secret.encode())}"
            )
        self.disabled = disabled
        # The globs of a JWT without a ``sessions`` claim; ``None``: refused.
        self._jwt_default_sessions = (
            None if jwt_default_sessions is None else tuple(jwt_default_sessions)
        )
        self._static = [(t.encode(), g) for t, g in static_tokens]
        self._leeway = leeway
        self._jwt_key: Any = None
        self._jwt_algorithms: list[str] = []
        if jwt_secret:
            self._jwt_key = jwt_secret
            self._jwt_algorithms = ["HS256"]
        elif jwt_public_key:
            self._jwt_key = jwt_public_key
            self._jwt_algorithms = ["RS256", "ES256"]

    def secrets(self) -> list[str]:
        """Every secret this authenticator holds (static tokens, the HS256
        key): masked wherever they would appear in an entry (SPEC §8)."""
        values = [t.decode() for t, _ in self._static]
        if self._jwt_algorithms == ["HS256"] and isinstance(self._jwt_key, str):
            values.append(self._jwt_key)
        return values

    def short_tokens(self) -> list[int]:
        """Positions (1-based) of static tokens shorter than
        ``MIN_TOKEN_LENGTH``: the runtime warns about them at start, naming
        the position, never the token."""
        return [
            i
            for i, (t, _) in enumerate(self._static, start=1)
            if len(t.decode()) < MIN_TOKEN_LENGTH
        ]

    @property
    def required(self) -> bool:
        return not self.disabled

    @property
    def configured(self) -> bool:
        return bool(self._static or self._jwt_algorithms)

    def authenticate(self, token: str, *, wall: float) -> Grant:
        """The grant of ``token`` at wall-clock time ``wall``, or ``AuthError``."""
        if self.disabled:
            return ALL_ACCESS
        try:
            candidate = token.encode()
        except UnicodeEncodeError:
            # A lone surrogate (an embedder's str); PyJWT would raise it too.
            raise AuthError("token is not valid UTF-8") from None
        if self._jwt_algorithms and token.count(".") == 2:
            return self._authenticate_jwt(token, wall)
        found: Grant | None = None
        for secret, grant in self._static:
            # No early exit: the time taken does not depend on which matched.
            if hmac.compare_digest(candidate, secret) and found is None:
                found = grant
        if found is None:
            raise AuthError("invalid token")
        return found

    def _authenticate_jwt(self, token: str, wall: float) -> Grant:
        try:
            claims = jwt.decode(
                token,
                self._jwt_key,
                algorithms=self._jwt_algorithms,
                options={
                    "require": ["exp"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                },
            )
        except jwt.MissingRequiredClaimError:
            raise AuthError("token has no exp claim") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError("token algorithm is not allowed") from None
        except jwt.InvalidSignatureError:
            raise AuthError("token signature is invalid") from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"token is invalid ({type(exc).__name__})") from None
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise AuthError("token exp claim is not a number")
        if math.isnan(exp) or exp + self._leeway <= wall:  # NaN would never expire
            raise AuthError("token has expired")
        nbf = claims.get("nbf")
        if nbf is not None:
            if not isinstance(nbf, int | float) or isinstance(nbf, bool):
                raise AuthError("token nbf claim is not a number")
            if nbf - self._leeway > wall:
                raise AuthError("token is not valid yet (nbf)")
        roles_claim = claims.get("roles", ["view"])
        if not isinstance(roles_claim, list) or not all(
            r in ("view", "produce") for r in roles_claim
        ):
            raise AuthError("token roles claim must be a list of 'view' and 'produce'")
        sessions_claim = claims.get("sessions")
        if sessions_claim is None:
            if self._jwt_default_sessions is None:
                raise AuthError("token has no sessions claim (the session globs it may use)")
            sessions_claim = list(self._jwt_default_sessions)
        if not isinstance(sessions_claim, list) or not all(
            isinstance(s, str) and s for s in sessions_claim
        ):
            raise AuthError("token sessions claim must be a list of session globs")
        subject = claims.get("sub")
        return Grant(
            roles=frozenset(Role(r) for r in roles_claim),
            globs=tuple(sessions_claim),
            expires=float(exp),
            subject=str(subject) if subject is not None else "jwt",
        )


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header (RFC 6750 §2.1:
    the scheme is case-insensitive), or ``None``."""
    if authorization is None or authorization[:7].lower() != "bearer ":
        return None
    return authorization[7:].strip() or None


def authorize_request(
    authenticator: Authenticator,
    token: str | None,
    *,
    wall: float,
    role: Role | None = None,
    required: bool = True,
) -> Grant | None:
    """The one decision for a request that carries its token in HTTP (a
    WebSocket upgrade, ``/api/sessions``, the hooks).

    Returns the grant, or ``None`` when no token came and none is
    ``required`` (a WebSocket may still authenticate with a message) or auth
    is disabled. Raises ``AuthError`` with ``status`` 401 (no token where one
    is required, or an invalid one) or 403 (valid, without ``role``).
    """
    if not authenticator.required:
        return ALL_ACCESS
    if token is None:
        if required:
            raise AuthError("missing Bearer token")
        return None
    grant = authenticator.authenticate(token, wall=wall)
    if role is not None and role not in grant.roles:
        raise AuthError(f"token lacks the {role.value!r} role", status=403)
    return grant
