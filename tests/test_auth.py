"""Static tokens and JWT (SPEC §2 ``AUTH_*``); the clock is the ``wall`` argument."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pcclog_core import ALL_ACCESS, Authenticator, AuthError, Grant, Role, parse_static_tokens
from pcclog_core._errors import ConfigurationError

WALL = 1_700_000_000.0
SECRET = "s3cret-hmac-key-that-is-long-enough-for-hs256!"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[Any, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, public.decode()


@pytest.fixture(scope="module")
def ec_keys() -> tuple[Any, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, public.decode()


# --- static tokens ------------------------------------------------------------------


def test_plain_token_has_every_role_and_session() -> None:
    [(token, grant)] = parse_static_tokens("abc")
    assert token == "abc"
    assert grant.roles == frozenset({Role.VIEW, Role.PRODUCE})
    assert grant.can_view("anything") and grant.can_produce("anything")
    assert grant.expires is None


@pytest.mark.parametrize(
    ("roles", "view", "produce"),
    [
        ("view", True, False),
        ("produce", False, True),
        ("view+produce", True, True),
        ("produce+view", True, True),
    ],
)
def test_token_roles_glob(roles: str, view: bool, produce: bool) -> None:
    [(token, grant)] = parse_static_tokens(f"tok:{roles}:team-*")
    assert token == "tok"
    assert grant.can_view("team-1") is view
    assert grant.can_produce("team-1") is produce
    assert not grant.can_view("other-1")
    assert not grant.can_produce("other-1")
    assert grant.allows("team-x") and not grant.allows("xteam-1")


def test_several_tokens_and_blank_entries() -> None:
    tokens = parse_static_tokens(" a , ,b:view:s1,c:produce:s? ,")
    assert [t for t, _ in tokens] == ["a", "b", "c"]
    assert tokens[1][1].globs == ("s1",)
    assert tokens[2][1].can_produce("s9") and not tokens[2][1].can_produce("s10")
    assert parse_static_tokens("") == []


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("hunter2:admin:*", "entry 1: roles must be view, produce or view+produce"),
        ("ok,hunter2:view", "entry 2: expected TOKEN or TOKEN:ROLES:GLOB"),
        ("hunter2:view:*:extra", "entry 1: expected TOKEN or TOKEN:ROLES:GLOB"),
        ("hunter2:view:", "entry 1: the session glob is empty"),
        (":view:*", "entry 1: the token is empty"),
        ("a,b,:produce:x", "entry 3: the token is empty"),
    ],
)
def test_bad_spec_raises_without_echoing_the_token(spec: str, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_static_tokens(spec)
    text = str(info.value)
    assert needle in text
    assert "hunter2" not in text


def test_static_authenticate() -> None:
    auth = Authenticator(static_tokens=parse_static_tokens("aaa,bbb:view:s-*"))
    assert auth.required and auth.configured
    assert auth.authenticate("aaa", wall=WALL).roles == frozenset(Role)
    grant = auth.authenticate("bbb", wall=WALL)
    assert grant.roles == frozenset({Role.VIEW})
    assert grant.subject == "static#2"
    for bad in ("", "aa", "aaaa", "AAA", "bbb:view:s-*", "ccc"):
        with pytest.raises(AuthError) as info:
            auth.authenticate(bad, wall=WALL)
        assert str(info.value) == "invalid token"


def test_token_that_is_not_utf8_is_refused_cleanly() -> None:
    auth = Authenticator(static_tokens=parse_static_tokens("aaa"), jwt_secret=SECRET)
    for bad in ("\ud800", "a.\udc80.b"):
        with pytest.raises(AuthError):
            auth.authenticate(bad, wall=WALL)


def test_nothing_configured_refuses_everything() -> None:
    auth = Authenticator()
    assert auth.required and not auth.configured
    with pytest.raises(AuthError):
        auth.authenticate("anything", wall=WALL)


def test_disabled_grants_everything() -> None:
    auth = Authenticator(disabled=True, static_tokens=parse_static_tokens("aaa"))
    assert not auth.required
    assert auth.authenticate("whatever", wall=WALL) is ALL_ACCESS
    assert ALL_ACCESS.can_view("x") and ALL_ACCESS.can_produce("x")


# --- JWT HS256 -----------------------------------------------------------------------------


def _hs(claims: dict[str, Any], key: str = SECRET) -> str:
    return jwt.encode(claims, key, algorithm="HS256")


def test_hs256_valid() -> None:
    auth = Authenticator(jwt_secret=SECRET)
    grant = auth.authenticate(
        _hs({"exp": WALL + 60, "roles": ["view", "produce"], "sessions": ["a-*"], "sub": "u1"}),
        wall=WALL,
    )
    assert grant.roles == frozenset(Role)
    assert grant.globs == ("a-*",)
    assert grant.expires == WALL + 60
    assert grant.subject == "u1"
    assert grant.can_view("a-1") and not grant.can_view("b-1")


def test_hs256_without_sessions_is_refused_unless_a_default_is_configured() -> None:
    # Issue 13: a JWT without a ``sessions`` claim used to view every
    # session (fail-open); now it is refused, or gets the configured default.
    with pytest.raises(AuthError, match="no sessions claim"):
        Authenticator(jwt_secret=SECRET).authenticate(_hs({"exp": WALL + 1}), wall=WALL)
    auth = Authenticator(jwt_secret=SECRET, jwt_default_sessions=["ci-*"])
    grant = auth.authenticate(_hs({"exp": WALL + 1}), wall=WALL)
    assert grant.roles == frozenset({Role.VIEW})
    assert grant.globs == ("ci-*",)
    assert grant.subject == "jwt"
    assert grant.tenant == "jwt"
    assert not grant.can_produce("x") and grant.can_view("ci-1") and not grant.can_view("x")
    assert auth.authenticate(_hs({"exp": WALL + 1, "sessions": ["*"]}), wall=WALL).tenant is None


def test_short_hs256_secret_is_refused_and_short_static_tokens_are_reported() -> None:
    with pytest.raises(ConfigurationError, match="at least 32 bytes"):
        Authenticator(jwt_secret="x" * 31)
    Authenticator(jwt_secret="x" * 32)
    auth = Authenticator(static_tokens=parse_static_tokens("short,abcdefghijklmnop:view:a-*"))
    assert auth.short_tokens() == [1]


def test_static_tokens_still_work_beside_jwt() -> None:
    auth = Authenticator(static_tokens=parse_static_tokens("plain"), jwt_secret=SECRET)
    assert auth.authenticate("plain", wall=WALL).subject == "static#1"
    assert auth.authenticate(_hs({"exp": WALL + 1, "sessions": ["*"]}), wall=WALL).subject == "jwt"


@pytest.mark.parametrize(
    ("claims", "needle"),
    [
        ({}, "no exp claim"),
        ({"sub": "x"}, "no exp claim"),
        ({"exp": WALL}, "expired"),
        ({"exp": WALL - 1}, "expired"),
        ({"exp": WALL + 60, "nbf": WALL + 10}, "not valid yet"),
        ({"exp": WALL + 60, "nbf": "soon"}, "nbf"),
        ({"exp": "later"}, "exp"),
        ({"exp": True}, "exp claim is not a number"),
        ({"exp": float("nan")}, "expired"),
        ({"exp": WALL + 60, "roles": "view"}, "roles claim"),
        ({"exp": WALL + 60, "roles": ["admin"]}, "roles claim"),
        ({"exp": WALL + 60, "sessions": "s1"}, "sessions claim"),
        ({"exp": WALL + 60, "sessions": [""]}, "sessions claim"),
        ({"exp": WALL + 60, "sessions": [1]}, "sessions claim"),
    ],
)
def test_hs256_claims_refused(claims: dict[str, Any], needle: str) -> None:
    token = _hs(claims)
    with pytest.raises(AuthError) as info:
        Authenticator(jwt_secret=SECRET).authenticate(token, wall=WALL)
    assert needle in str(info.value)
    assert token not in str(info.value)


def test_nbf_in_the_past_and_leeway() -> None:
    auth = Authenticator(jwt_secret=SECRET)
    assert auth.authenticate(_hs({"sessions": ["*"], "exp": WALL + 60, "nbf": WALL - 1}), wall=WALL)
    lenient = Authenticator(jwt_secret=SECRET, leeway=30)
    assert lenient.authenticate(_hs({"sessions": ["*"], "exp": WALL - 10}), wall=WALL)
    assert lenient.authenticate(
        _hs({"sessions": ["*"], "exp": WALL + 60, "nbf": WALL + 10}), wall=WALL
    )


def test_hs256_wrong_secret() -> None:
    with pytest.raises(AuthError, match="signature is invalid"):
        Authenticator(jwt_secret=SECRET).authenticate(
            _hs({"exp": WALL + 60}, key="another-secret-of-32-bytes-or-more!!"), wall=WALL
        )


def test_tampered_payload() -> None:
    token = _hs({"exp": WALL + 60, "roles": ["view"], "sessions": ["*"]})
    header, _, signature = token.split(".")
    forged = _unsigned({"alg": "HS256", "typ": "JWT"}, {"exp": WALL + 60, "roles": ["produce"]})
    with pytest.raises(AuthError, match="signature is invalid"):
        Authenticator(jwt_secret=SECRET).authenticate(forged + "." + signature, wall=WALL)
    assert header  # the original header is untouched


def test_alg_none_rejected() -> None:
    token = _unsigned({"alg": "none", "typ": "JWT"}, {"exp": WALL + 60, "roles": ["produce"]}) + "."
    for auth in (Authenticator(jwt_secret=SECRET), Authenticator(jwt_public_key="unused")):
        with pytest.raises(AuthError):
            auth.authenticate(token, wall=WALL)


def test_garbage_with_two_dots() -> None:
    for token in ("a.b.c", "..", "eyJ.eyJ.x", "a.b.c" + "\x00"):
        with pytest.raises(AuthError):
            Authenticator(jwt_secret=SECRET).authenticate(token, wall=WALL)


# --- JWT RS256 / ES256 ----------------------------------------------------------------------


def test_rs256_valid(rsa_keys: tuple[Any, str]) -> None:
    private, public = rsa_keys
    token = jwt.encode(
        {"exp": WALL + 60, "roles": ["produce"], "sessions": ["c-*"]}, private, algorithm="RS256"
    )
    grant = Authenticator(jwt_public_key=public).authenticate(token, wall=WALL)
    assert grant.can_produce("c-1") and not grant.can_view("c-1")
    assert not grant.can_produce("d-1")


def test_es256_valid(ec_keys: tuple[Any, str]) -> None:
    private, public = ec_keys
    token = jwt.encode({"exp": WALL + 60, "sessions": ["*"]}, private, algorithm="ES256")
    grant = Authenticator(jwt_public_key=public).authenticate(token, wall=WALL)
    assert grant.can_view("x")


def test_rs256_expired_and_missing_exp(rsa_keys: tuple[Any, str]) -> None:
    private, public = rsa_keys
    auth = Authenticator(jwt_public_key=public)
    with pytest.raises(AuthError, match="expired"):
        auth.authenticate(jwt.encode({"exp": WALL - 5}, private, algorithm="RS256"), wall=WALL)
    with pytest.raises(AuthError, match="no exp"):
        auth.authenticate(jwt.encode({"sub": "x"}, private, algorithm="RS256"), wall=WALL)


def test_rs256_other_key_refused(rsa_keys: tuple[Any, str]) -> None:
    _, public = rsa_keys
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode({"exp": WALL + 60}, other, algorithm="RS256")
    with pytest.raises(AuthError, match="signature is invalid"):
        Authenticator(jwt_public_key=public).authenticate(token, wall=WALL)


def test_es256_token_against_rsa_key_refused(
    rsa_keys: tuple[Any, str], ec_keys: tuple[Any, str]
) -> None:
    _, rsa_public = rsa_keys
    ec_private, _ = ec_keys
    token = jwt.encode({"exp": WALL + 60, "sessions": ["*"]}, ec_private, algorithm="ES256")
    with pytest.raises(AuthError):
        Authenticator(jwt_public_key=rsa_public).authenticate(token, wall=WALL)


def test_hs256_signed_with_the_public_key_is_refused(rsa_keys: tuple[Any, str]) -> None:
    """The classic key-confusion attack: the attacker knows the public key
    and uses its PEM as an HMAC secret."""
    _, public = rsa_keys
    signing_input = _unsigned(
        {"alg": "HS256", "typ": "JWT"}, {"exp": WALL + 60, "roles": ["view", "produce"]}
    )
    signature = hmac.new(public.encode(), signing_input.encode(), hashlib.sha256).digest()
    token = signing_input + "." + _b64(signature)
    with pytest.raises(AuthError, match="algorithm is not allowed"):
        Authenticator(jwt_public_key=public).authenticate(token, wall=WALL)


def test_rs256_token_refused_by_an_hs256_server(rsa_keys: tuple[Any, str]) -> None:
    private, _ = rsa_keys
    token = jwt.encode({"exp": WALL + 60, "sessions": ["*"]}, private, algorithm="RS256")
    with pytest.raises(AuthError, match="algorithm is not allowed"):
        Authenticator(jwt_secret=SECRET).authenticate(token, wall=WALL)


# --- grants and globs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("globs", "session", "allowed"),
    [
        (("*",), "anything/at:all", True),
        (("team-*",), "team-", True),
        (("team-*",), "team-42", True),
        (("team-*",), "Team-42", False),
        (("team-*",), "my-team-42", False),
        (("s?",), "s1", True),
        (("s?",), "s12", False),
        (("s[0-9]",), "s7", True),
        (("s[0-9]",), "sx", False),
        (("a", "b-*"), "a", True),
        (("a", "b-*"), "ab", False),
        (("a", "b-*"), "b-1", True),
        (("exact",), "exact", True),
        (("exact",), "exact2", False),
        (("a.b",), "axb", False),
        (("(x|y)",), "x", False),
        ((), "x", False),
    ],
)
def test_glob_matching(globs: tuple[str, ...], session: str, allowed: bool) -> None:
    grant = Grant(roles=frozenset(Role), globs=globs)
    assert grant.allows(session) is allowed
    assert grant.can_view(session) is allowed
    assert grant.can_produce(session) is allowed


def test_roles_limit_the_grant() -> None:
    viewer = Grant(roles=frozenset({Role.VIEW}))
    producer = Grant(roles=frozenset({Role.PRODUCE}))
    assert viewer.can_view("s") and not viewer.can_produce("s")
    assert producer.can_produce("s") and not producer.can_view("s")
    assert Grant(roles=frozenset()).allows("s")
    assert not Grant(roles=frozenset()).can_view("s")
