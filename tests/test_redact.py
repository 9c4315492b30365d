"""Redaction (SPEC §8): every family masked in text and in nested JSON, the
exact configured and per-source values, environment extraction, user
patterns, no false positives on ordinary output, identity when nothing
matched, counts per rule, and properties.

Every secret here is fake and assembled at run time (``"gh" + "p_" + …``),
so no credential-shaped literal is committed.
"""

from __future__ import annotations

import random
import re
import string
import urllib.parse
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcclog_core._redact import (
    MIN_SECRET_LENGTH,
    RULES,
    LineRedactor,
    Redactor,
    mask,
    parse_patterns,
    secret_env_values,
)
from pcclog_core._redact import _scan as scan

_rng = random.Random(14)
ALNUM = string.ascii_letters + string.digits


def fake(length: int, alphabet: str = ALNUM) -> str:
    """A random body that starts with a capital and a digit (as real keys
    almost always contain both)."""
    return "F4" + "".join(_rng.choice(alphabet) for _ in range(length - 2))


def upper(length: int) -> str:
    return "".join(_rng.choice(string.ascii_uppercase + string.digits) for _ in range(length))


JWT = (
    "ey" + "JhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    "." + "ey" + "JzdWIiOiJmYWtlLXVzZXIiLCJleHAiOjF9"
    "." + fake(43, ALNUM + "_-")
)
PEM_BODY = [fake(64, ALNUM + "+/") for _ in range(3)] + [fake(20, ALNUM + "+/") + "=="]
PEM = "\n".join(
    ["-----BEGIN " + "RSA PRIVATE KEY-----", *PEM_BODY, "-----END " + "RSA PRIVATE KEY-----"]
)
PASSWORD = "hunter" + fake(10)
VALUE = fake(32, ALNUM + "-_")

# (rule, text containing the secret, the secret: must not survive)
FAMILIES: list[tuple[str, str, str]] = [
    (
        "anthropic",
        "ANTHROPIC_API_KEY is " + (s := "sk-" + "ant-api03-" + fake(93, ALNUM + "_-") + "AA"),
        s,
    ),
    ("anthropic", "oauth " + (s := "sk-" + "ant-oat01-" + fake(80, ALNUM + "_-")) + ".", s),
    ("openai", "key=" + (s := "sk-" + "proj-" + fake(120, ALNUM + "_-")), s),
    ("openai", "legacy " + (s := "sk-" + fake(20) + "T3Blbk" + "FJ" + fake(20)), s),
    ("openai", "svc " + (s := "sk-" + "svcacct-" + fake(60, ALNUM + "_-")), s),
    *[("github", f"push with {(s := 'gh' + p + '_' + fake(36))} now", s) for p in "pousr"],
    ("github", "GH_TOKEN=" + (s := "github" + "_pat_" + fake(22) + "_" + fake(59)), s),
    ("gitlab", "token " + (s := "gl" + "pat-" + fake(20, ALNUM + "_-")), s),
    (
        "slack",
        "bot " + (s := "xo" + "xb-" + "123456789012-1234567890123-" + fake(24)) + " ok",
        s,
    ),
    ("slack", "user " + (s := "xo" + "xp-" + "1234-5678-" + fake(32)), s),
    (
        "slack",
        "POST https://hooks.slack.com/services/"
        + (s := "T0" + upper(8) + "/B0" + upper(8) + "/" + fake(24)),
        s,
    ),
    ("aws-access-key", "aws_access_key_id = " + (s := "AK" + "IA" + upper(16)), s),
    ("aws-access-key", "session " + (s := "AS" + "IA" + upper(16)) + ",", s),
    ("google-api-key", "maps " + (s := "AI" + "za" + fake(35, ALNUM + "_-")), s),
    ("stripe", "charge " + (s := "sk" + "_live_" + fake(24)), s),
    ("stripe", "restricted " + (s := "rk" + "_live_" + fake(24)), s),
    ("stripe", "test " + (s := "sk" + "_test_" + fake(24)), s),
    ("jwt", "id_token: " + JWT, JWT),
    ("jwt", "cookie=" + JWT + "; Path=/", JWT),
    ("pem-private-key", "key file:\n" + PEM + "\ndone", PEM_BODY[1]),
    ("pem-private-key", "unterminated " + PEM.rsplit("\n", 1)[0], PEM_BODY[2]),
    ("authorization", "Authorization: Bearer " + (s := fake(40, ALNUM + "._~+/-")), s),
    ("authorization", "curl -H 'authorization: Basic " + (s := fake(24) + "==") + "' x", s),
    ("authorization", '{"Authorization": "token ' + (s := fake(30)) + '"}', s),
    ("authorization", "Proxy-Authorization: " + (s := fake(30)), s),
    ("url-password", "DATABASE_URL=postgres://app:" + PASSWORD + "@db:5432/app", PASSWORD),
    ("url-password", "cloning https://bot:" + (s := "p@ss" + fake(12)) + "@git.example/x", s),
    ("password", "mysql --password=" + PASSWORD + " -h db", PASSWORD),
    ("password", "PGPASSWORD=" + PASSWORD + " psql", PASSWORD),
    ("password", 'db_password = "' + (s := "correct horse " + fake(9)) + '"', s),
    ("password", '{"password":"' + PASSWORD + '"}', PASSWORD),
    ("password", "  password: " + PASSWORD, PASSWORD),
    ("secret-param", "GET /cb?code=1&access_token=" + VALUE + "&x=1", VALUE),
    ("secret-param", "wss://hub:8080/?token=" + VALUE, VALUE),
    ("secret-param", "export API_KEY=" + VALUE, VALUE),
    ("secret-param", "client_secret: '" + VALUE + "'", VALUE),
    ("secret-param", "X-Api-Key: " + VALUE, VALUE),
    ("secret-param", "STRIPE_KEY=" + VALUE, VALUE),
    ("secret-param", "https://maps.example/api?key=" + VALUE, VALUE),
    ("secret-param", 'settings = {"apiKey": "' + VALUE + '"}', VALUE),
    ("secret-param", "aws_secret_access_key=" + (s := fake(40, ALNUM + "+/")), s),
    ("secret-param", "SECRET_KEY = '" + (s := "django-insecure-" + fake(30)) + "'", s),
    ("secret-param", "token=" + (s := "abcdefghijklmnopqrstuvwx") + " (letters only)", s),
]

# Ordinary agent output: nothing here may be masked.
ORDINARY = [
    "commit 3f9a2c1e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a39",
    "Merge: 1a2b3c4 5d6e7f8  Author: Dev Person <dev@example.com>",
    "request_id=6f1c2b3a-9d4e-4f5a-8b7c-0d1e2f3a4b5c status=200 duration_ms=12.4",
    "sha256:9b2f6c7e8a1d3f5b7c9e0a2d4f6b8c1e3a5d7f9b0c2e4a6d8f1b3c5e7a9d0b2f",
    "src/pcclog_core/_hub.py:412: error: Incompatible types in assignment",
    "/home/agent/.cache/pip/wheels/3f/9a/2c1e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a39",
    "    def handle(self, request: Request) -> Response:  # see issue #42",
    "def login(user: str, password: str) -> Token:",
    "client = Client(password=password, token=token, api_key=api_key)",
    "api_key = os.environ['OPENAI_API_KEY']",
    "password = getpass()",
    "password = read_password(prompt)  # and password=passwords[0]",
    "self._token = anyio.lowlevel.current_token()",
    "token = settings.authentication.token_value",
    "token: Optional[str] = None",
    'headers = {"Authorization": f"Bearer {token}"}',
    "sorted(items, key=lambda item: item[1])",
    "cache_key = f'{user_id}:{page}'",
    '"max_tokens": 4096, "input_tokens": 1234, "output_tokens": 56',
    "token_count=3 max_tokens=4096 tokenizer=cl100k",
    "The token limit was reached, so I summarised the file instead.",
    "Tokens used: 12,345 input, 678 output.",
    "Authorization: required for every write (see the docs).",
    "Now I'll add the secret rotation step and update the key handling.",
    "I'll run task-sk-1 and the sk-learn-compatible-interface-module tests.",
    "risk-assessment and disk-usage reports are in ./reports",
    "npm WARN deprecated inflight@1.0.6: This module is not supported",
    "Step 4/12 : RUN pip install --no-cache-dir -r requirements.txt",
    "  ✓ renders the session list (38 ms)  ✓ reconnects after a drop (112 ms)",
    "base64 of the icon: iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8",
    "ssh git@github.com:org/repo.git and https://github.com/org/repo/pull/12",
    "Visit http://localhost:8080/api/sessions?limit=20&offset=40",
    "uuid 123e4567-e89b-12d3-a456-426614174000 created at 2025-01-14T12:03:44Z",
    "GITHUB_TOKEN: ${{ secrets.GITHUB_TOKEN }}",
    "export GITHUB_TOKEN=$(gh auth token)",
    "password_hash = bcrypt(password)  # and reset_password_url",
    "-----BEGIN CERTIFICATE----- is public, so is -----BEGIN PUBLIC KEY-----",
    "AKIA is the prefix of an access key id; ASIA of a temporary one",
    "eyJ starts base64 of a JSON object",
    "if token == expected_token and secret != other_secret:",
    "[REDACTED:github] was already masked; token=[REDACTED:secret-param]",
]


REFERENCE = Redactor(secrets=["pcclog-" + fake(24), "Qz~" + fake(12)])


def fresh(**kwargs: Any) -> Redactor:
    return Redactor(**kwargs)


# --- families ------------------------------------------------------------------


@pytest.mark.parametrize(("rule", "text", "secret"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_every_family_is_masked_in_text(rule: str, text: str, secret: str) -> None:
    redactor = fresh()
    out = redactor.redact(text)
    assert secret not in out, out
    assert mask(rule) in out, out
    assert redactor.counts[rule] >= 1
    assert sum(redactor.counts.values()) >= 1


@pytest.mark.parametrize(("rule", "text", "secret"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_every_family_is_masked_in_nested_json(rule: str, text: str, secret: str) -> None:
    doc = {
        "type": "log",
        "message": text,
        "data": {"items": [1, None, {"line": text}, [text]], "note": "ordinary", "n": 2.5},
    }
    raw = msgspec.json.encode(doc)
    redactor = fresh()
    out = redactor.redact_json(raw)
    decoded = msgspec.json.decode(out)
    expected = fresh().redact(text)
    assert decoded == {
        "type": "log",
        "message": expected,
        "data": {"items": [1, None, {"line": expected}, [expected]], "note": "ordinary", "n": 2.5},
    }
    assert secret.encode() not in out
    assert redactor.counts[rule] >= 3


def test_masks_keep_the_readable_part() -> None:
    redactor = fresh()
    assert redactor.redact("Authorization: Bearer " + VALUE) == (
        "Authorization: Bearer [REDACTED:authorization]"
    )
    assert redactor.redact("postgres://app:" + PASSWORD + "@db/x") == (
        "postgres://app:[REDACTED:url-password]@db/x"
    )
    assert redactor.redact("a?token=" + VALUE + "&b=1") == "a?token=[REDACTED:secret-param]&b=1"
    assert redactor.redact('{"password": "' + PASSWORD + '"}') == (
        '{"password": "[REDACTED:password]"}'
    )
    assert redactor.redact("x " + JWT + " y") == "x [REDACTED:jwt] y"
    assert redactor.redact("key:\n" + PEM + "\nafter") == "key:\n[REDACTED:pem-private-key]\nafter"


def test_the_table_is_complete_and_named() -> None:
    names = [rule.name for rule in RULES]
    # Rows of one family are adjacent, and every family has a test case.
    assert [n for i, n in enumerate(names) if i == 0 or n != names[i - 1]] == list(
        dict.fromkeys(names)
    )
    assert {f[0] for f in FAMILIES} == set(names)
    assert all(rule.keywords for rule in RULES)
    redactor = fresh()
    assert set(names) | {"pcclog-token", "container-env"} == set(redactor.counts)
    assert not any(redactor.counts.values())


def test_every_keyword_selects_its_rule() -> None:
    redactor = fresh(secrets=["pcclog-" + fake(24)])
    for index, rule in enumerate(RULES):
        for keyword in rule.keywords:
            text = f"<<{keyword}>>"
            assert scan(text, *redactor._tables) & (2 << index), (rule.name, keyword)
            assert redactor._scan(text) == scan(text, *redactor._tables)


# --- false positives and identity ------------------------------------------------


@pytest.mark.parametrize("line", ORDINARY)
def test_ordinary_output_is_left_alone(line: str) -> None:
    redactor = fresh(secrets=["pcclog-" + fake(24)])
    assert redactor.redact(line) is line
    raw = msgspec.json.encode({"message": line, "data": {"lines": [line]}})
    assert redactor.redact_json(raw) is raw
    assert not any(redactor.counts.values())


def test_nothing_found_returns_the_same_object() -> None:
    redactor = fresh()
    text = "".join(["plain ", "line"])
    assert redactor.redact(text) is text
    for raw in (
        b'{"message":"a\\nb \\"quoted\\" \\u00e9","data":[1,2,{"k":"v"}]}',
        b'{"message":"with \\/ escaped slash"}',
        b'"just a string"',
        b"not json at all",
        b"",
    ):
        assert redactor.redact_json(raw) is raw


def test_disabled_passes_everything_through() -> None:
    redactor = Redactor(secrets=["pcclog-" + fake(24)], patterns=["x+"], enabled=False)
    text = FAMILIES[0][1]
    assert redactor.redact(text) is text
    raw = msgspec.json.encode({"m": text})
    assert redactor.redact_json(raw) is raw
    assert redactor.with_extra([VALUE]).redact(VALUE) == VALUE


def test_redacting_twice_changes_nothing() -> None:
    redactor = fresh()
    for _, text, _ in FAMILIES:
        once = redactor.redact(text)
        assert redactor.redact(once) is once


# --- exact values ----------------------------------------------------------------


def test_configured_secrets_are_masked_in_every_spelling() -> None:
    token = "pcclog-" + fake(24)
    jwt_secret = "hmac/" + fake(20) + "+key="
    redactor = Redactor(secrets=[token, jwt_secret, "short"])
    assert redactor.redact(f"auth with {token}.") == "auth with [REDACTED:pcclog-token]."
    quoted = urllib.parse.quote(jwt_secret, safe="")
    assert quoted != jwt_secret
    assert redactor.redact(f"?s={quoted}") == "?s=[REDACTED:pcclog-token]"
    assert redactor.redact(f"wss://h/?token={token}") == "wss://h/?token=[REDACTED:pcclog-token]"
    # Shorter than MIN_SECRET_LENGTH: ignored, or "short" would vanish from prose.
    assert len("short") < MIN_SECRET_LENGTH
    assert redactor.redact("a short line") == "a short line"
    assert redactor.counts["pcclog-token"] == 3
    raw = msgspec.json.encode({"url": f"ws://h/?t={token}", "list": [jwt_secret]})
    assert msgspec.json.decode(redactor.redact_json(raw)) == {
        "url": "ws://h/?t=[REDACTED:pcclog-token]",
        "list": ["[REDACTED:pcclog-token]"],
    }


def test_overlapping_secrets_mask_the_longest() -> None:
    short = "abcdefgh1234"
    long = short + "-and-more-5678"
    redactor = Redactor(secrets=[short, long])
    assert redactor.redact(f"{long} {short}") == "[REDACTED:pcclog-token] [REDACTED:pcclog-token]"


def test_a_secret_with_json_metacharacters_is_found_in_raw_json() -> None:
    secret = 'quote"and\\slash-' + fake(10)
    redactor = Redactor(secrets=[secret])
    raw = msgspec.json.encode({"m": f"x {secret} y"})
    assert msgspec.json.decode(redactor.redact_json(raw)) == {"m": "x [REDACTED:pcclog-token] y"}


def test_extra_values_belong_to_one_source() -> None:
    base = Redactor(secrets=["pcclog-" + fake(24)])
    env_value = "container-" + fake(20)
    line = f"echo {env_value}"
    container = base.with_extra([env_value, "tiny"])
    assert container.redact(line) == "echo [REDACTED:container-env]"
    assert base.redact(line) is line
    assert base.redact(line, extra=[env_value]) == "echo [REDACTED:container-env]"
    raw = msgspec.json.encode({"m": line})
    assert base.redact_json(raw) is raw
    assert base.redact_json(raw, extra=(env_value,)) == b'{"m":"echo [REDACTED:container-env]"}'
    # One counter for all: the metric is per rule, not per source.
    assert base.counts is container.counts
    assert base.counts["container-env"] == 3
    # Nothing worth masking: the same redactor back.
    assert base.with_extra(["tiny", ""]) is base
    # The built-in rules still apply to the derived redactor.
    assert mask("github") in container.redact(FAMILIES[5][1])


# --- environment -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "picked"),
    [
        ("ANTHROPIC_API_KEY=" + VALUE, True),
        ("CLAUDE_CODE_OAUTH_TOKEN=" + VALUE, True),
        ("GH_TOKEN=" + VALUE, True),
        ("GITHUB_TOKEN=" + VALUE, True),
        ("NPM_TOKEN=" + VALUE, True),
        ("hf_token=" + VALUE, True),
        ("STRIPE_KEY=" + VALUE, True),
        ("OPENAI_API_KEY=" + VALUE, True),
        ("AWS_SECRET_ACCESS_KEY=" + VALUE, True),
        ("CLIENT_SECRET=" + VALUE, True),
        ("DB_PASSWORD=" + VALUE, True),
        ("PGPASSWORD=" + VALUE, True),
        ("MYSQL_ROOT_PASSWORD_FILE=" + VALUE, True),
        ("GOOGLE_CREDENTIALS=" + VALUE, True),
        ("TOKEN=" + VALUE, True),
        ("GH_TOKEN=short", False),
        ("PATH=/usr/local/bin:/usr/bin:/bin", False),
        ("HOME=/home/agent-" + VALUE, False),
        ("TOKENIZER=" + VALUE, False),
        ("KEYBOARD=" + VALUE, False),
        ("LANG=C.UTF-8", False),
        ("NO_EQUALS_SIGN", False),
    ],
)
def test_secret_env_values(entry: str, picked: bool) -> None:
    assert secret_env_values([entry]) == ([entry.partition("=")[2]] if picked else [])


def test_secret_env_values_keeps_order_once() -> None:
    env = ["A_TOKEN=" + VALUE, "PATH=/bin", "B_KEY=second-value-123", "C_SECRET=" + VALUE]
    assert secret_env_values(env) == [VALUE, "second-value-123"]
    assert secret_env_values(["X_TOKEN=a=b=c=d=e"]) == ["a=b=c=d=e"]


# --- user patterns ---------------------------------------------------------------


def test_parse_patterns_semicolons_and_lines() -> None:
    assert [p.pattern for p in parse_patterns(r"ACME-\d{6}; internal-[a-z]+ ;;")] == [
        r"ACME-\d{6}",
        "internal-[a-z]+",
    ]
    assert [p.pattern for p in parse_patterns(r"a\;b;c")] == [r"a\;b", "c"]
    text = "# company ids\nACME-\\d{6}\n\n  x;y  \n"
    assert [p.pattern for p in parse_patterns(text, one_per_line=True)] == [r"ACME-\d{6}", "x;y"]
    assert parse_patterns("") == ()


@pytest.mark.parametrize("bad", ["ok;(unclosed", "[z-a]", "a{2,1}"])
def test_invalid_pattern_is_named(bad: str) -> None:
    culprit = bad.split(";")[-1]
    with pytest.raises(ValueError, match=re.escape(repr(culprit))):
        parse_patterns(bad)
    with pytest.raises(ValueError, match="invalid redaction pattern"):
        Redactor(patterns=[culprit])


def test_pattern_matching_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="empty string"):
        parse_patterns("x*")


def test_user_patterns_mask_whole_match_or_groups() -> None:
    redactor = Redactor(patterns=[*parse_patterns(r"ACME-\d{6}"), r"session=(\w{8,})"])
    assert redactor.redact("id ACME-123456 ok") == "id [REDACTED:pattern-1] ok"
    assert redactor.redact("session=abcdefgh12 end") == "session=[REDACTED:pattern-2] end"
    assert redactor.redact("nothing") == "nothing"
    raw = msgspec.json.encode({"d": ["ACME-000001"]})
    assert redactor.redact_json(raw) == b'{"d":["[REDACTED:pattern-1]"]}'
    assert redactor.counts["pattern-1"] == 2
    assert redactor.counts["pattern-2"] == 1


# --- JSON ------------------------------------------------------------------------


def test_json_secret_named_keys_mask_the_whole_value() -> None:
    redactor = fresh()
    doc = {
        "password": "correct horse battery staple",
        "env": {"GITHUB_TOKEN": "anything at all", "HOME": "/root"},
        "apiKey": "x y z",
        "max_tokens": "4096",
        "token_count": "3",
        "secret": "",
        "list": ["password", "token"],
        "token": None,
    }
    out = msgspec.json.decode(redactor.redact_json(msgspec.json.encode(doc)))
    assert out == {
        "password": "[REDACTED:password]",
        "env": {"GITHUB_TOKEN": "[REDACTED:secret-param]", "HOME": "/root"},
        "apiKey": "[REDACTED:secret-param]",
        "max_tokens": "4096",
        "token_count": "3",
        "secret": "",
        "list": ["password", "token"],
        "token": None,
    }
    assert redactor.counts["password"] == 1
    assert redactor.counts["secret-param"] == 2


def test_json_escapes_cannot_hide_a_secret() -> None:
    redactor = fresh()
    token = "gh" + "p_" + fake(36)
    hidden = token.replace("p", "\\u0070").replace("_", "\\u005f")
    raw = b'{"m":"push ' + hidden.encode() + b'"}'
    assert msgspec.json.decode(raw) == {"m": f"push {token}"}
    assert msgspec.json.decode(redactor.redact_json(raw)) == {"m": "push [REDACTED:github]"}
    url = b'{"m":"https:\\/\\/u:' + PASSWORD.encode() + b'@h\\/x"}'
    assert msgspec.json.decode(redactor.redact_json(url)) == {
        "m": "https://u:[REDACTED:url-password]@h/x"
    }


def test_invalid_json_is_redacted_as_text() -> None:
    redactor = fresh()
    token = "gh" + "p_" + fake(36)
    raw = b'{"m": "cut off ' + token.encode() + b" \xff"
    assert redactor.redact_json(raw) == b'{"m": "cut off [REDACTED:github] \xff'


def test_deep_json_is_walked_without_recursion() -> None:
    redactor = fresh()
    token = "gh" + "p_" + fake(36)
    depth = 900
    raw = b"[" * depth + msgspec.json.encode(token) + b"]" * depth
    assert redactor.redact_json(raw) == b"[" * depth + b'"[REDACTED:github]"' + b"]" * depth
    too_deep = b"[" * 100_000 + msgspec.json.encode(token) + b"]" * 100_000
    out = redactor.redact_json(too_deep)
    assert token.encode() not in out and b"[REDACTED:github]" in out


def test_top_level_string_and_scalars() -> None:
    redactor = fresh()
    token = "gh" + "p_" + fake(36)
    assert redactor.redact_json(msgspec.json.encode(token)) == b'"[REDACTED:github]"'
    for raw in (b"12", b"null", b"true", b'{"a":1.5e300}'):
        assert redactor.redact_json(raw) is raw


# --- counts ----------------------------------------------------------------------


def test_counts_per_rule() -> None:
    redactor = fresh()
    gh = ["gh" + "p_" + fake(36) for _ in range(2)]
    line = f"{gh[0]} and {gh[1]} and password={PASSWORD} and {JWT}"
    out = redactor.redact(line)
    assert out == (
        "[REDACTED:github] and [REDACTED:github] and password=[REDACTED:password]"
        " and [REDACTED:jwt]"
    )
    assert {k: v for k, v in redactor.counts.items() if v} == {
        "github": 2,
        "password": 1,
        "jwt": 1,
    }


# --- PEM over several lines -------------------------------------------------------


def test_line_redactor_masks_a_key_printed_line_by_line() -> None:
    redactor = fresh()
    lines = LineRedactor(redactor)
    out = [lines.redact(line) for line in ["$ cat id_rsa", *PEM.split("\n"), "$ ls", "ok"]]
    key_mask = mask("pem-private-key")
    assert out == ["$ cat id_rsa", *[key_mask] * (len(PEM_BODY) + 2), "$ ls", "ok"]
    assert redactor.counts["pem-private-key"] == 1


def test_line_redactor_ends_the_block_on_an_ordinary_line() -> None:
    lines = LineRedactor(fresh())
    begin = "-----BEGIN " + "OPENSSH PRIVATE KEY-----"
    assert lines.redact(begin) == mask("pem-private-key")
    assert lines.redact(PEM_BODY[0]) == mask("pem-private-key")
    assert lines.redact("Traceback (most recent call last):") == (
        "Traceback (most recent call last):"
    )
    assert lines.redact(PEM_BODY[1]) == PEM_BODY[1]


# --- properties ------------------------------------------------------------------


def _family(prefix: str, alphabet: str, low: int, high: int) -> st.SearchStrategy[str]:
    return st.text(alphabet, min_size=low, max_size=high).map(lambda body: prefix + "A1" + body)


_BODY = ALNUM + "_-"
_SECRETS: st.SearchStrategy[tuple[str, str]] = st.one_of(
    _family("sk-" + "ant-api03-", _BODY, 20, 100).map(lambda s: (s, s)),
    _family("sk-" + "proj-", _BODY, 20, 100).map(lambda s: (s, s)),
    _family("sk-", ALNUM, 32, 60).map(lambda s: (s, s)),
    st.sampled_from("pousr")
    .flatmap(lambda p: _family("gh" + p + "_", ALNUM, 34, 40))
    .map(lambda s: (s, s)),
    _family("github" + "_pat_", ALNUM + "_", 22, 82).map(lambda s: (s, s)),
    _family("gl" + "pat-", _BODY, 20, 30).map(lambda s: (s, s)),
    _family("xo" + "xb-", ALNUM + "-", 10, 50).map(lambda s: (s, s)),
    st.text(string.ascii_uppercase + string.digits, min_size=16, max_size=16).map(
        lambda b: ("AK" + "IA" + b, "AK" + "IA" + b)
    ),
    st.text(_BODY, min_size=33, max_size=33).map(lambda b: ("AI" + "za" + "A1" + b,) * 2),
    _family("sk" + "_live_", ALNUM, 16, 40).map(lambda s: (s, s)),
    st.tuples(st.text(_BODY, min_size=8, max_size=40), st.text(_BODY, max_size=40)).map(
        lambda p: (JWT.split(".")[0] + ".ey" + "J" + p[0] + "." + p[1],) * 2
    ),
    st.text(ALNUM, min_size=12, max_size=40).map(
        lambda b: ("Authorization: Bearer Z9" + b, "Z9" + b)
    ),
    st.text(ALNUM + "!$*", min_size=12, max_size=30).map(
        lambda b: ("https://user:Z9" + b + "@host/path", "Z9" + b)
    ),
    st.text(ALNUM, min_size=12, max_size=30).map(lambda b: ("password=Z9" + b, "Z9" + b)),
    st.sampled_from(["token", "api_key", "client_secret", "ACCESS_TOKEN", "X_KEY"]).flatmap(
        lambda name: st.text(ALNUM, min_size=12, max_size=30).map(
            lambda b: (f"{name}=Z9{b}", "Z9" + b)
        )
    ),
    st.text(ALNUM, min_size=12, max_size=30).map(
        lambda b: (
            PEM.split("\n")[0] + "\n" + "Z9" + b + "\n-----END RSA PRIVATE KEY-----",
            "Z9" + b,
        )
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60), _SECRETS, st.text(max_size=60))
def test_an_inserted_secret_never_survives(
    before: str, secret: tuple[str, str], after: str
) -> None:
    text, value = secret
    redactor = fresh()
    out = redactor.redact(f"{before} {text} {after}")
    assert value not in out
    raw = msgspec.json.encode({"m": [f"{before} {text} {after}"]})
    assert value.encode() not in redactor.redact_json(raw)


_ALL_KEYWORDS = sorted({k for rule in RULES for k in rule.keywords} | {"REDACTED"})


def _keyword_free(text: str) -> bool:
    return not any(k in text for k in _ALL_KEYWORDS)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300).filter(_keyword_free))
def test_text_without_keywords_is_returned_unchanged(text: str) -> None:
    redactor = fresh(secrets=["pcclog-" + fake(24)])
    assert redactor.redact(text) is text
    raw = msgspec.json.encode({"m": text, "d": [text, {"x": text}]})
    assert redactor.redact_json(raw) is raw


# Fragments that assemble into near-misses and matches of every rule.
_FRAGMENTS = [
    *{k for rule in RULES for k in rule.keywords},
    "ant-",
    "proj-",
    "p_",
    "_pat_",
    "pat-",
    "xoxb-",
    "-----BEGIN ",
    "RSA ",
    "PRIVATE KEY-----",
    "-----END ",
    "-----",
    "Authorization",
    "Bearer ",
    "https",
    "://",
    "user",
    "password",
    "token",
    "api_key",
    "?key",
    "&",
    "_KEY",
    "max_tokens",
    "=",
    ":",
    " ",
    "\n",
    '"',
    "'",
    "\\",
    ".",
    "$",
    "[REDACTED:x]",
    "A1b2C3d4E5f6G7h8",
    "0123456789",
    "QWERTYUIOPASDFGH",
    "abcdefghij",
    "eyJhbGciOi",
]
_ASSEMBLED = st.lists(st.sampled_from(_FRAGMENTS), max_size=40).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), _ASSEMBLED))
def test_the_compiled_scan_equals_the_table_scan(text: str) -> None:
    redactor = REFERENCE
    assert redactor._scan(text) == scan(text, *redactor._tables)


def _assert_keywords_in_matches(text: str) -> None:
    for rule in RULES:
        for match in re.finditer(rule.pattern, text):
            assert any(k in match.group() for k in rule.keywords), (rule.name, match.group())


@pytest.mark.parametrize(("rule", "text", "secret"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_every_family_match_contains_a_keyword(rule: str, text: str, secret: str) -> None:
    assert any(re.search(r.pattern, text) for r in RULES if r.name == rule)
    _assert_keywords_in_matches(text)


@settings(max_examples=500, deadline=None)
@given(st.one_of(_ASSEMBLED, st.tuples(_ASSEMBLED, _SECRETS, _ASSEMBLED)))
def test_every_match_contains_a_keyword(text: str | tuple[str, tuple[str, str], str]) -> None:
    if isinstance(text, tuple):
        text = text[0] + text[1][0] + text[2]
    _assert_keywords_in_matches(text)


@settings(max_examples=500, deadline=None)
@given(_ASSEMBLED)
def test_redaction_is_idempotent(text: str) -> None:
    redactor = fresh()
    once = redactor.redact(text)
    assert redactor.redact(once) is once


_JSON_STRINGS = st.one_of(st.text(max_size=30), _ASSEMBLED)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | _JSON_STRINGS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["a", "msg", "data", "items"]), inner, max_size=4)
    ),
    max_leaves=20,
)


def _expected(doc: Any, redactor: Redactor) -> Any:
    if isinstance(doc, str):
        return redactor.redact(doc)
    if isinstance(doc, list):
        return [_expected(v, redactor) for v in doc]
    if isinstance(doc, dict):
        return {k: _expected(v, redactor) for k, v in doc.items()}
    return doc


@settings(max_examples=300, deadline=None)
@given(_JSON)
def test_redact_json_equals_redacting_each_string(doc: Any) -> None:
    raw = msgspec.json.encode(doc)
    out = fresh().redact_json(raw)
    assert msgspec.json.decode(out) == _expected(doc, fresh())
    if out is not raw:
        assert out != raw
