"""Secret redaction (SPEC §8): masks secrets in log text and JSON as
``[REDACTED:<rule>]`` before anything is stored, sent, searched or logged.

Pure: strings and bytes in, strings and bytes out; no file, clock, socket or
thread. Everything is compiled once, when a :class:`Redactor` is built.

The rules
=========

:data:`RULES` is the built-in table of :class:`Rule` rows (name, keywords,
pattern), applied in this order. The *name* is the mask's ``<rule>`` and
the label of ``pcclog_redactions_total{rule}``; a family may take several
rows (one per spelling of a name, say). The *keywords* are literal
substrings one of which every match contains: a line containing none of
them never reaches the row's regex. Every pattern starts with one literal
(what precedes it is checked by a lookbehind placed after it), so ``re``
scans for that literal at C speed instead of trying the pattern at every
position; every quantifier is bounded or possessive, so no input
backtracks badly.

``pem-private-key``
    ``-----BEGIN … PRIVATE KEY-----`` (RSA, EC, OPENSSH, ENCRYPTED, PGP …
    BLOCK) up to and including the next ``-----END …-----``, across lines;
    with no ``END`` in the string, up to its end. A key printed one line per
    log entry is covered by :class:`LineRedactor`.
``anthropic``
    ``sk-ant-`` followed by at least 16 token characters (API, admin and
    OAuth keys: ``sk-ant-api03-…``, ``sk-ant-oat01-…``).
``openai``
    ``sk-proj-``, ``sk-svcacct-``, ``sk-admin-``, ``sk-None-`` followed by
    20 or more token characters, or ``sk-`` and 32 or more letters and
    digits with at least one digit and one capital (legacy keys). ``sk-``
    inside a word (``task-sk-1``, ``risk-…``) or before prose
    (``sk-learn-compatible``) is left alone.
``github``
    ``ghp_``, ``gho_``, ``ghu_``, ``ghs_``, ``ghr_`` and 36+ letters and
    digits; ``github_pat_`` and 22+ letters, digits and ``_``. (Keyword
    ``gh``: one check instead of five.)
``gitlab``
    ``glpat-`` (personal, project and group access tokens) and 20+ token
    characters. (Runner and deploy tokens are caught as environment values
    and ``token=…`` parameters.)
``slack``
    ``xoxa-``, ``xoxb-``, ``xoxp-``, ``xoxr-``, ``xoxs-``, ``xoxe-`` /
    ``xoxe.`` tokens, and the path of ``hooks.slack.com/services/…`` webhooks.
``aws-access-key``
    ``AKIA`` / ``ASIA`` and exactly 16 capitals or digits, as a whole word.
    (The secret access key has no shape of its own: it is caught as
    ``aws_secret_access_key=…`` by ``secret-param`` or as an environment
    value.)
``google-api-key``
    ``AIza`` and exactly 35 token characters.
``stripe``
    ``sk_live_``, ``rk_live_``, ``sk_test_``, ``rk_test_`` and 16+ letters
    and digits.
``jwt``
    ``eyJ…`` ``.`` ``eyJ…`` ``.`` signature: base64url JSON header and
    payload (both start ``eyJ``, ``{"``), signature possibly empty.
``authorization``
    the value of an ``Authorization:`` / ``Proxy-Authorization:`` header
    (also ``"authorization": "…"`` and ``authorization=…``): after a scheme
    word (``Bearer``, ``Basic``, ``token``, ``Digest``, ``Negotiate``,
    ``ApiKey``) the credential, else a value of 8+ characters with a digit.
    The scheme word stays readable.
``url-password``
    the password of ``scheme://user:PASSWORD@host`` (only the password is
    masked; up to the last ``@`` of the authority).
``password``
    the value after a name ending in ``password`` / ``passwd`` (any of
    ``password``, ``Password``, ``PASSWORD``; ``db_password``,
    ``PGPASSWORD``…) and ``=`` or ``:``. A quoted value is masked whatever
    it is; an unquoted value after ``=`` unless it is code (``None``,
    ``true``, ``password=password``, ``self.password``, ``$VAR``,
    ``{name}``, ``getpass()``, ``passwords[0]``); an unquoted value after
    ``:`` only with 6+ characters and a digit, so annotations
    (``password: str``) and prose pass.
``secret-param``
    the same for names ending in ``token``, ``secret``, a key compound
    (``api_key``, ``apiKey``, ``X-Api-Key``, ``access_key``,
    ``private_key``, ``secret_key``, ``signing_key``, ``client_key`` …),
    ``_KEY`` (``STRIPE_KEY=``) and the query parameter ``?key=`` / ``&key=``:
    quoted values of 3+ characters; unquoted values after ``=`` that are not
    code and either hold a character other than a letter, ``_`` or ``.`` or
    are a 16+ letter word (``key=lambda``, ``token=token``,
    ``token = lib.current_token()`` pass); after ``:`` as for
    ``password``. Plurals and longer names (``max_tokens``,
    ``token_count``, ``tokenizer``) never match.

Besides the table, in this order around it:

``pcclog-token`` (first)
    the exact values given as ``secrets=`` (pcclog's own tokens and JWT
    secret), also in their URL-encoded and JSON-escaped spellings.
``container-env`` (first)
    the exact values given per source with :meth:`Redactor.with_extra` or
    ``extra=`` (a followed container's secret-looking environment values,
    :func:`secret_env_values`).
``pattern-1``, ``pattern-2`` … (last)
    ``REDACT_PATTERNS``, in the order given (:func:`parse_patterns`). A
    user pattern has no keywords, so each one runs on every string.

Exact values shorter than :data:`MIN_SECRET_LENGTH` are ignored: masking
``dev`` everywhere would wreck the log (callers should warn about them).
A pattern with capturing groups masks only what its groups captured (the
name before a value stays readable); without groups the whole match is
masked. A mask is never matched again, so redacting twice changes nothing.

The prefilter
=============

A line with no candidate costs one pass of substring checks and no regex.
Every keyword (and every exact value) is filed under its *gate*: its
rarest character by :data:`_RARITY`, measured on ordinary lines. A
one-character ``in`` is a ``memchr``, so the scan tests each gate once and
only the keywords behind a gate that is present; a keyword whose characters
are all common (``ecret``) is tested directly. A keyword that contains
another is dropped for the shorter one. Each keyword carries the bit set of
the rows it selects, and a row's regex runs only if one of its keywords was
found. The scan is compiled from these tables into straight-line code (a
loop over them costs more than the ``in`` tests themselves). On 150-byte
lines of agent output it costs about 0.4 of testing every keyword with
``in``, or of one alternation regex of them (``re`` tries an alternation at
every position); ``benchmarks/redact_bench.py`` measures all four. On long
lines nearly every gate is present, so the cost grows to about one ``in``
per keyword.

JSON
====

:meth:`Redactor.redact_json` masks every string value of a JSON document,
at any depth in objects and arrays (keys are left alone), plus the whole
string value of a key that names a secret (``"password"``, ``"api_key"``,
``"GITHUB_TOKEN"`` … as for the ``password`` and ``secret-param`` rules).
The prefilter first runs on the whole document as text: when no keyword or
exact value occurs and no escape could hide one (``\\u00XX``, ``\\/``), the
input is returned as it is, not parsed. Otherwise the document is decoded with
msgspec, redacted and re-encoded compactly (only if something changed).
Bytes that are not JSON (or nest too deep) are redacted as UTF-8 text and
re-encoded, never passed through unredacted.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import msgspec

__all__ = [
    "MIN_SECRET_LENGTH",
    "RULES",
    "LineRedactor",
    "Redactor",
    "Rule",
    "mask",
    "parse_patterns",
    "secret_env_values",
]

MIN_SECRET_LENGTH: Final = 8
"""Exact secret values (``secrets=``, extra values, environment values)
shorter than this are ignored."""

EXACT_RULE: Final = "pcclog-token"
EXTRA_RULE: Final = "container-env"


def mask(rule: str) -> str:
    """The text that replaces a secret found by ``rule``."""
    return f"[REDACTED:{rule}]"


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    """One row of the table: the family's name (its mask and metric label),
    the literal keywords one of which every match contains (at least one),
    and the regular expression (inline flags only). Capturing groups, if
    any, delimit what is masked."""

    name: str
    keywords: tuple[str, ...]
    pattern: str


# --- pattern fragments -------------------------------------------------------

_TOKEN_CHAR = "[A-Za-z0-9_-]"


def _starts(*literals: str, before: str = _TOKEN_CHAR) -> str:
    """The literals, each only where no ``before`` character precedes it.
    The lookbehind comes after the literal so that ``re`` can scan for the
    literal prefix instead of trying the pattern at every position."""
    return (
        "(?:" + "|".join(f"{re.escape(lit)}(?<!{before}{re.escape(lit)})" for lit in literals) + ")"
    )


def _cased(*words: str) -> str:
    """The words spelled ``word``, ``Word`` and ``WORD``: the spellings the
    keywords of the word rules cover."""
    return "(?:" + "|".join(f"{w}|{w.capitalize()}|{w.upper()}" for w in words) + ")"


# An optional (backslash-escaped) quote after a name, then blanks.
_AFTER_NAME = r"""\\?["']?[ \t]{0,4}"""
# One character of an unquoted value; and one that is not a letter, "_" or ".".
_VAL = r"""[^\s"'`,;&<>()\[\]{}\\]"""
_ODD = r"""[^\sA-Za-z_."'`,;&<>()\[\]{}\\]"""
# Values that are code or placeholders, not secrets.
_CODE = (
    r"(?:(?:None|null|nil|undefined|true|false|True|False|str|bytes|string|int|bool|"
    r"Optional|getpass|input|password|passwd|token|secret)(?![A-Za-z0-9_.])"
    r"|(?:self|cls|args|opts|options|config|cfg|settings|os|env|process|request|req|"
    r"ctx|params|kwargs)\.)"
)


def _quoted(minimum: int) -> str:
    """``= "value"`` / ``: 'value'``: any quoted value that is not code."""
    return (
        r"""[:=][ \t]{0,4}\\?["'](?![$%{<]|"""
        + _CODE
        + r""")([^"'\\\n]{"""
        + str(minimum)
        + ",1024}+)"
    )


# ``: value`` unquoted: 6+ characters with a digit.
_COLON = r":[ \t]{0,4}(?!" + _CODE + r")(?=" + _VAL + r"{0,1024}[0-9])(" + _VAL + r"{6,1024}+)"
# ``=`` unquoted, first the characters that make it a reference or a comparison.
_EQUALS = r"=[ \t]{0,4}(?![$%{<*=]|" + _CODE + ")"

# After ``key`` / ``Key`` / ``KEY``: what makes it a secret's name.
_KEY_OWNER = (
    "(?:(?<=_KEY)|(?<=[?&](?i:key))|"
    + "|".join(
        f"(?<=(?i:{prefix}{sep}key))"
        for prefix in (
            "api",
            "access",
            "private",
            "secret",
            "signing",
            "encryption",
            "master",
            "auth",
            "client",
            "ssh",
            "deploy",
            "license",
        )
        for sep in ("", "_", "-", ".")
    )
    + ")"
)
# The value after a password's name; after any other secret's name.
# (An unquoted value right before "(" or "[" is a call or an index: code.)
_PASSWORD_VALUE = (
    _AFTER_NAME
    + "(?:"
    + _quoted(1)
    + "|"
    + _EQUALS
    + "("
    + _VAL
    + r"{1,1024}+)(?![(\[])|"
    + _COLON
    + ")"
)
_SECRET_VALUE = (
    _AFTER_NAME
    + "(?:"
    + _quoted(3)
    + "|"
    + _EQUALS
    + "(?:(?=[A-Za-z_.]{0,1024}"
    + _ODD
    + ")("
    + _VAL
    + r"{3,1024}+)|([A-Za-z_]{16,1024}+)(?![.(\[]))|"
    + _COLON
    + ")"
)
_AUTH_VALUE = (
    r"""\\?["']?[ \t]{0,4}[:=][ \t]{0,4}\\?["']?"""
    r"(?:(?:Bearer|bearer|BEARER|Basic|basic|BASIC|Token|token|TOKEN|Digest|digest"
    r"|Negotiate|ApiKey|Apikey|apikey)[ \t]{1,4}([A-Za-z0-9._~+/=-]{1,4096}+)"
    r"|(?=[A-Za-z0-9._~+/=-]{0,4096}[0-9])([A-Za-z0-9._~+/=-]{8,4096}+))"
)

# A family may take several rows (one per spelling of a name, say): each
# pattern then starts with one literal, which ``re`` scans for at C speed,
# where an alternation of literals would be tried at every position.
RULES: Final[tuple[Rule, ...]] = (
    Rule(
        "pem-private-key",
        ("PRIVATE KEY",),
        r"-----BEGIN[A-Z0-9 ]{0,64}PRIVATE KEY(?: BLOCK)?-----"
        r"(?:[^-]++|-(?!----END))*+"
        r"(?:-----END[^-\n]{0,64}(?:-----)?|\Z)",
    ),
    Rule("anthropic", ("sk-ant-",), _starts("sk-ant-") + r"[A-Za-z0-9_-]{16,512}+"),
    Rule(
        "openai",
        ("sk-",),
        _starts("sk-") + r"(?:(?:proj|svcacct|admin|None)-[A-Za-z0-9_-]{20,512}+"
        r"|(?=[A-Za-z0-9]{0,512}[0-9])(?=[A-Za-z0-9]{0,512}[A-Z])"
        r"[A-Za-z0-9]{32,512}+(?![_-]))",
    ),
    Rule(
        "github",
        ("gh", "github_pat_"),
        "(?:"
        + _starts("ghp_", "gho_", "ghu_", "ghs_", "ghr_", before="[A-Za-z0-9_]")
        + r"[A-Za-z0-9]{36,251}+|"
        + _starts("github_pat_", before="[A-Za-z0-9_]")
        + r"[A-Za-z0-9_]{22,244}+)",
    ),
    Rule("gitlab", ("glpat-",), _starts("glpat-") + r"[A-Za-z0-9_-]{20,255}+"),
    Rule(
        "slack",
        ("xox",),
        _starts("xoxa-", "xoxb-", "xoxp-", "xoxr-", "xoxs-", "xoxe-", "xoxe.")
        + r"[A-Za-z0-9.-]{10,255}+",
    ),
    Rule(
        "slack",
        ("hooks.slack.com/services/",),
        r"hooks\.slack\.com/services/[A-Za-z0-9_/-]{20,255}+",
    ),
    Rule(
        "aws-access-key",
        ("AKIA", "ASIA"),
        _starts("AKIA", "ASIA", before="[A-Za-z0-9]") + r"[A-Z0-9]{16}(?![A-Za-z0-9])",
    ),
    Rule("google-api-key", ("AIza",), _starts("AIza") + r"[A-Za-z0-9_-]{35}(?![A-Za-z0-9_-])"),
    Rule(
        "stripe",
        ("k_live_", "k_test_"),
        _starts("sk_live_", "sk_test_", before="[A-Za-z0-9_]") + r"[A-Za-z0-9]{16,247}+",
    ),
    Rule(
        "stripe",
        ("k_live_", "k_test_"),
        _starts("rk_live_", "rk_test_", before="[A-Za-z0-9_]") + r"[A-Za-z0-9]{16,247}+",
    ),
    Rule(
        "jwt",
        ("eyJ",),
        _starts("eyJ")
        + r"[A-Za-z0-9_-]{8,4096}+\.eyJ[A-Za-z0-9_-]{8,8192}+\.[A-Za-z0-9_-]{0,4096}+",
    ),
    Rule(
        "authorization",
        ("uthorization",),
        r"uthorization(?<=[aA]uthorization)(?<![A-Za-z0-9_].uthorization)" + _AUTH_VALUE,
    ),
    Rule(
        "authorization",
        ("UTHORIZATION",),
        r"UTHORIZATION(?<=AUTHORIZATION)(?<![A-Za-z0-9_]AUTHORIZATION)" + _AUTH_VALUE,
    ),
    Rule(
        "url-password",
        ("@",),
        r"""://(?<=[A-Za-z0-9]://)[^\s:/?#@"'<>\[\]]{0,256}+:([^\s/?#"'<>\[\]]{1,1024})@""",
    ),
    Rule("password", ("assw",), "assw(?<=[pP]assw)(?:ord|d)" + _PASSWORD_VALUE),
    Rule("password", ("ASSW",), "ASSW(?<=PASSW)(?:ORD|D)" + _PASSWORD_VALUE),
    Rule("secret-param", ("oken",), "oken(?<=[tT]oken)" + _SECRET_VALUE),
    Rule("secret-param", ("OKEN",), "OKEN(?<=TOKEN)" + _SECRET_VALUE),
    Rule("secret-param", ("ecret",), "ecret(?<=[sS]ecret)" + _SECRET_VALUE),
    Rule("secret-param", ("ECRET",), "ECRET(?<=SECRET)" + _SECRET_VALUE),
    Rule("secret-param", ("key",), "key" + _KEY_OWNER + _SECRET_VALUE),
    Rule("secret-param", ("Key",), "Key" + _KEY_OWNER + _SECRET_VALUE),
    Rule("secret-param", ("KEY",), "KEY" + _KEY_OWNER + _SECRET_VALUE),
)

# JSON keys whose whole string value is a secret (``redact_json``).
_PASSWORD_KEY: Final = re.compile("[A-Za-z0-9_.-]{0,64}" + _cased("password", "passwd"))
_SECRET_KEY: Final = re.compile(
    "[A-Za-z0-9_.-]{0,64}(?:" + _cased("token", "secret") + "|(?:key|Key|KEY)" + _KEY_OWNER + ")"
)
_MASKED: Final = re.compile(r"\[REDACTED:[a-z0-9-]{1,64}\]")

# Printable ASCII characters that appear in fewer than 80% of ordinary
# 150-character lines (pcclog's own sources, docs and git history cut into
# such lines), rarest first: "~" in none, "k" in 46%, "m" in 79%. The others
# (" ", "e", "t", "s", "a", "c", "(", ".", …) are in nearly every line and
# make no useful gate. Characters outside ASCII are taken as rare.
_RARITY: Final = "~^Q%$?&@JXZ!Y<\\V97|8zKGjBFHWMU+465*q/3D;'#L2PR}>{`ICOA[]01ETSxNk-=v\"_wyb:ghm"

# Keys of environment variables whose values are secrets (upper-cased name).
_SECRET_ENV: Final = re.compile(
    r"ANTHROPIC_API_KEY|CLAUDE_CODE_OAUTH_TOKEN|GH_TOKEN|GITHUB_TOKEN"
    r"|(?:[A-Z0-9_]*_)?(?:TOKEN|KEY|SECRET|APIKEY|API_KEY|PAT|CREDENTIALS?)"
    r"|[A-Z0-9_]*PASS(?:WORD|WD|PHRASE)[A-Z0-9_]*"
)

_PEM_BEGIN: Final = re.compile(r"-----BEGIN[A-Z0-9 ]{0,64}PRIVATE KEY(?: BLOCK)?-----")
_PEM_END: Final = re.compile(r"-----END[^-\n]{0,64}(?:-----)?")
_PEM_BODY: Final = re.compile(r"[A-Za-z0-9+/=]{0,128}|[A-Za-z-]{1,32}: [^\n]{0,256}")
_PEM_MAX_LINES: Final = 1024


def secret_env_values(env: Iterable[str]) -> list[str]:
    """The values of the secret-looking variables among ``KEY=VALUE``
    entries (a container's ``Config.Env``): ``ANTHROPIC_API_KEY``,
    ``CLAUDE_CODE_OAUTH_TOKEN``, ``GH_TOKEN``, ``GITHUB_TOKEN``, and any
    name ``*_TOKEN``, ``*_KEY``, ``*_SECRET``, ``*_API_KEY``, ``*_PAT``,
    ``*_CREDENTIALS``, ``*PASSWORD*``, ``*PASSWD*``, ``*PASSPHRASE*``
    (case-insensitive). Values shorter than :data:`MIN_SECRET_LENGTH` are
    skipped; each value once, in order."""
    values: list[str] = []
    seen: set[str] = set()
    for entry in env:
        name, sep, value = entry.partition("=")
        if not sep or len(value) < MIN_SECRET_LENGTH or value in seen:
            continue
        if _SECRET_ENV.fullmatch(name.upper()):
            seen.add(value)
            values.append(value)
    return values


def parse_patterns(text: str, *, one_per_line: bool = False) -> tuple[re.Pattern[str], ...]:
    """Parse ``REDACT_PATTERNS``: regular expressions separated by ``;``
    (``\\;`` keeps a ``;`` inside a pattern), or with ``one_per_line`` the
    contents of an ``@PATH`` file (read by the caller), one per line, blank
    lines and lines starting with ``#`` skipped. Surrounding blanks are
    stripped. Raises ``ValueError`` naming the first invalid pattern, or one
    that matches the empty string."""
    if one_per_line:
        pieces = [line.strip() for line in text.splitlines()]
        pieces = [p for p in pieces if p and not p.startswith("#")]
    else:
        pieces = [p.strip() for p in re.split(r"(?<!\\);", text)]
        pieces = [p for p in pieces if p]
    return tuple(_compile_pattern(p) for p in pieces)


def _compile_pattern(pattern: str | re.Pattern[str]) -> re.Pattern[str]:
    if isinstance(pattern, re.Pattern):
        compiled = pattern
    else:
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"invalid redaction pattern {pattern!r}: {exc}") from None
    if compiled.search("") is not None:
        raise ValueError(f"redaction pattern {compiled.pattern!r} matches the empty string")
    return compiled


def _gate(keyword: str) -> str | None:
    """The rarest character of ``keyword``, or None if all are common."""
    best: str | None = None
    best_rank = len(_RARITY)
    for char in keyword:
        rank = _RARITY.find(char) if char.isascii() else -1
        if rank == -1 and char.isascii():
            continue
        if rank < best_rank:
            best, best_rank = char, rank
    return best


# (gate, bits of a keyword equal to the gate, ((keyword, bits), ...))
_Gates = tuple[tuple[str, int, tuple[tuple[str, int], ...]], ...]
_Direct = tuple[tuple[str, int], ...]


def _tables(keywords: dict[str, int]) -> tuple[_Gates, _Direct]:
    """File each keyword under its gate. A keyword containing another is
    dropped, its bits added to the shorter one (finding the shorter one is
    necessary for the longer one, so the scan stays exact)."""
    minimal: dict[str, int] = {}
    for keyword in sorted(keywords, key=len):
        inner = [k for k in minimal if k in keyword]
        if inner:
            for k in inner:
                minimal[k] |= keywords[keyword]
        else:
            minimal[keyword] = keywords[keyword]
    gated: dict[str, tuple[int, list[tuple[str, int]]]] = {}
    direct: list[tuple[str, int]] = []
    for keyword, bits in minimal.items():
        gate = _gate(keyword)
        if gate is None:
            direct.append((keyword, bits))
            continue
        own, entries = gated.get(gate, (0, []))
        if keyword == gate:
            own |= bits
        else:
            entries.append((keyword, bits))
        gated[gate] = (own, entries)
    gates = tuple(
        (gate, own, tuple(entries))
        for gate, (own, entries) in sorted(
            gated.items(), key=lambda item: _RARITY.find(item[0]) if item[0].isascii() else -1
        )
    )
    return gates, tuple(direct)


def _scan(text: str, gates: _Gates, direct: _Direct) -> int:
    """The bits of the rules with a keyword in ``text``: the
    reference for :func:`_compile_scan`, which does the same faster."""
    hits = 0
    for gate, own, entries in gates:
        if gate in text:
            hits |= own
            for keyword, bits in entries:
                if keyword in text:
                    hits |= bits
    for keyword, bits in direct:
        if keyword in text:
            hits |= bits
    return hits


def _compile_scan(gates: _Gates, direct: _Direct) -> Callable[[str], int]:
    """:func:`_scan` for these tables as straight-line code, compiled once:
    ``if gate in text:`` costs a fifth of a loop iteration over the table,
    and this runs on every line. Only ``repr`` of the keywords and int bit
    sets go into the source."""
    lines = ["def scan(text):", "    hits = 0"]
    for gate, own, entries in gates:
        lines.append(f"    if {gate!r} in text:")
        lines.append(f"        hits |= {own}")
        for keyword, bits in entries:
            lines.append(f"        if {keyword!r} in text:")
            lines.append(f"            hits |= {bits}")
    for keyword, bits in direct:
        lines.append(f"    if {keyword!r} in text:")
        lines.append(f"        hits |= {bits}")
    lines.append("    return hits")
    namespace: dict[str, Any] = {}
    exec(compile("\n".join(lines), "<pcclog redaction scan>", "exec"), namespace)
    scan: Callable[[str], int] = namespace["scan"]
    return scan


def _nothing(text: str) -> int:
    return 0


class _Masker:
    """``re.sub`` replacement for one rule: the whole match, or only what
    the pattern's groups captured; counts each masked match."""

    __slots__ = ("_counts", "_groups", "_mask", "_name")

    def __init__(self, name: str, groups: int, counts: dict[str, int]) -> None:
        self._name = name
        self._mask = mask(name)
        self._groups = groups
        self._counts = counts
        counts.setdefault(name, 0)

    def __call__(self, match: re.Match[str]) -> str:
        start, end = match.span()
        if start == end:
            return ""
        if not self._groups:
            self._counts[self._name] += 1
            return self._mask
        whole = match.group()
        parts: list[str] = []
        pos = 0
        for group in range(1, self._groups + 1):
            g_start, g_end = match.span(group)
            if g_start == g_end or g_start - start < pos:
                continue  # did not take part, empty, or inside an earlier group
            parts.append(whole[pos : g_start - start])
            parts.append(self._mask)
            pos = g_end - start
        if not parts:
            return whole
        parts.append(whole[pos:])
        self._counts[self._name] += 1
        return "".join(parts)


class _ExactMasker:
    """``re.sub`` replacement for the exact values: the rule by value."""

    __slots__ = ("_counts", "_names")

    def __init__(self, names: dict[str, str], counts: dict[str, int]) -> None:
        self._names = names
        self._counts = counts

    def __call__(self, match: re.Match[str]) -> str:
        name = self._names[match.group()]
        self._counts[name] += 1
        return mask(name)


@dataclasses.dataclass(frozen=True, slots=True)
class _Shared:
    """What every Redactor derived from one construction shares."""

    rules: tuple[tuple[re.Pattern[str], _Masker], ...]
    patterns: tuple[tuple[re.Pattern[str], _Masker], ...]
    keywords: dict[str, int]
    counts: dict[str, int]
    # JSON key -> the rule that masks its whole value, or "" (a cache: the
    # same few keys come back in every message).
    key_rules: dict[str, str] = dataclasses.field(default_factory=dict)


def _spellings(value: str) -> set[str]:
    """The value as written, URL-encoded and JSON-escaped."""
    return {
        value,
        urllib.parse.quote(value, safe=""),
        msgspec.json.encode(value)[1:-1].decode(),
    }


class Redactor:
    """Masks secrets in strings and JSON documents (see the module doc).

    ``secrets`` are pcclog's own tokens and keys, masked as
    ``pcclog-token``; ``patterns`` are ``REDACT_PATTERNS`` (strings or
    compiled, see :func:`parse_patterns`), masked as ``pattern-<n>``; with
    ``builtin=False`` (``REDACT=off``) only ``secrets`` and the exact values
    given per source are masked, no rule or pattern runs; with
    ``enabled=False`` everything is returned as it is. ``counts`` maps each
    rule name to how many secrets it masked (every name is present, from 0),
    shared with the redactors made by :meth:`with_extra`.
    """

    __slots__ = (
        "_derived",
        "_enabled",
        "_exact",
        "_exact_masker",
        "_json_escape",
        "_patterns",
        "_scan",
        "_shared",
        "_tables",
        "_values",
        "counts",
    )

    counts: dict[str, int]

    def __init__(
        self,
        secrets: Iterable[str] = (),
        patterns: Iterable[str | re.Pattern[str]] = (),
        enabled: bool = True,
        builtin: bool = True,
    ) -> None:
        counts: dict[str, int] = {EXACT_RULE: 0, EXTRA_RULE: 0}
        keywords: dict[str, int] = {}
        rules = []
        if not builtin:
            patterns = ()
        for index, rule in enumerate(RULES if builtin else ()):
            compiled = re.compile(rule.pattern)
            bit = 2 << index
            rules.append((compiled, _Masker(rule.name, compiled.groups, counts)))
            for keyword in rule.keywords:
                keywords[keyword] = keywords.get(keyword, 0) | bit
        user = []
        for number, pattern in enumerate(patterns, 1):
            compiled = _compile_pattern(pattern)
            user.append((compiled, _Masker(f"pattern-{number}", compiled.groups, counts)))
        shared = _Shared(tuple(rules), tuple(user), keywords, counts)
        values = {s: EXACT_RULE for s in secrets if len(s) >= MIN_SECRET_LENGTH}
        self._setup(shared, values, enabled)

    def _setup(self, shared: _Shared, values: dict[str, str], enabled: bool) -> None:
        self._shared = shared
        self.counts = shared.counts
        self._enabled = enabled
        self._patterns = shared.patterns if enabled else ()
        self._values = values
        self._derived: dict[tuple[str, ...], Redactor] = {}
        names: dict[str, str] = {}
        for value, name in values.items():
            for spelling in _spellings(value):
                names.setdefault(spelling, name)
        keywords = dict(shared.keywords)
        for spelling in names:
            keywords[spelling] = keywords.get(spelling, 0) | 1
        self._tables = _tables(keywords)
        self._scan = _compile_scan(*self._tables) if enabled else _nothing
        # Escapes that could hide a keyword or a value inside a JSON string.
        self._json_escape = "\\u" if any(not v.isascii() for v in names) else "\\u00"
        if names:
            alternation = "|".join(re.escape(v) for v in sorted(names, key=len, reverse=True))
            self._exact: re.Pattern[str] | None = re.compile(alternation)
        else:
            self._exact = None
        self._exact_masker = _ExactMasker(names, shared.counts)

    @property
    def enabled(self) -> bool:
        return self._enabled

    def with_extra(self, values: Iterable[str]) -> Redactor:
        """A redactor that also masks these exact values as
        ``container-env``, for one source (a followed container): built
        once when the source appears, so other sources pay nothing. It shares
        the rules and ``counts``."""
        extra = {v: EXTRA_RULE for v in values if len(v) >= MIN_SECRET_LENGTH}
        if not extra:
            return self
        derived = object.__new__(Redactor)
        derived._setup(self._shared, {**extra, **self._values}, self._enabled)
        return derived

    def _with(self, extra: Sequence[str]) -> Redactor:
        key = tuple(extra)
        derived = self._derived.get(key)
        if derived is None:
            if len(self._derived) >= 64:
                self._derived.clear()
            derived = self._derived[key] = self.with_extra(key)
        return derived

    def redact(self, text: str, extra: Sequence[str] = ()) -> str:
        """``text`` with every secret masked; the same object if none was
        found. ``extra`` are exact values for this call (compiled once per
        distinct tuple and cached; prefer :meth:`with_extra` per source)."""
        if extra:
            return self._with(extra).redact(text)
        hits = self._scan(text)
        if not hits and not self._patterns:
            return text
        return self._apply(text, hits)

    def _apply(self, text: str, hits: int) -> str:
        out = text
        if hits & 1 and self._exact is not None:
            out = self._exact.sub(self._exact_masker, out)
        hits >>= 1
        rules = self._shared.rules
        while hits:
            # Only the rules whose bit is set, in table order.
            low = hits & -hits
            compiled, masker = rules[low.bit_length() - 1]
            out = compiled.sub(masker, out)
            hits ^= low
        for compiled, masker in self._patterns:
            out = compiled.sub(masker, out)
        return text if out == text else out

    def redact_json(self, raw: bytes, extra: Sequence[str] = ()) -> bytes:
        """``raw`` (a JSON document) with every string value masked at any
        depth, and the value of a secret-named key masked whole; the same
        object if nothing was found. Not JSON: redacted as UTF-8 text."""
        if extra:
            return self._with(extra).redact_json(raw)
        if not self._enabled:
            return raw
        # The prefilter runs on the document as text (``in`` on bytes costs
        # a raised and cleared TypeError each time: it first tries an int).
        text = raw.decode("utf-8", "surrogateescape")
        if (
            not self._patterns
            and not self._scan(text)
            and not ("\\" in text and (self._json_escape in text or "\\/" in text))
        ):
            return raw
        try:
            doc = msgspec.json.decode(raw)
        except (msgspec.DecodeError, RecursionError):
            redacted = self.redact(text)
            return raw if redacted is text else redacted.encode("utf-8", "surrogateescape")
        if isinstance(doc, str):
            new = self.redact(doc)
            return raw if new is doc else msgspec.json.encode(new)
        if self._walk(doc):
            return msgspec.json.encode(doc)
        return raw

    def _walk(self, doc: Any) -> bool:
        """Redact the strings of a decoded document in place; True if any
        changed. Iterative, so depth costs no recursion."""
        changed = False
        stack = [doc]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                for key, value in node.items():
                    if isinstance(value, str):
                        new = self._redact_field(key, value)
                        if new is not value:
                            node[key] = new
                            changed = True
                    elif isinstance(value, dict | list):
                        stack.append(value)
            elif isinstance(node, list):
                for index, value in enumerate(node):
                    if isinstance(value, str):
                        new = self.redact(value)
                        if new is not value:
                            node[index] = new
                            changed = True
                    elif isinstance(value, dict | list):
                        stack.append(value)
        return changed

    def _redact_field(self, key: str, value: str) -> str:
        new = self.redact(value)
        key_rules = self._shared.key_rules
        name = key_rules.get(key)
        if name is None:
            if len(key_rules) >= 4096:
                key_rules.clear()
            if _PASSWORD_KEY.fullmatch(key):
                name = "password"
            elif _SECRET_KEY.fullmatch(key):
                name = "secret-param"
            else:
                name = ""
            key_rules[key] = name
        if not name or not new or _MASKED.fullmatch(new):
            return new
        self.counts[name] += 1
        return mask(name)


class LineRedactor:
    """Line-by-line redaction for one source that also masks the body of a
    PEM private key printed over several lines (one log entry per line):
    after a line that opens a ``-----BEGIN … PRIVATE KEY-----`` block
    without closing it, the following lines are masked whole up to the
    ``-----END …-----`` line, as long as they look like a key body (base64,
    or a ``Name: value`` header) and for at most 1024 lines. Counted once per
    block. Holds no more state than that flag."""

    __slots__ = ("_in_key", "_lines", "_redactor")

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._in_key = False
        self._lines = 0

    def redact(self, line: str) -> str:
        redactor = self._redactor
        if self._in_key:
            end = _PEM_END.search(line)
            if end is not None:
                self._in_key = False
                return mask("pem-private-key") + redactor.redact(line[end.end() :])
            self._lines += 1
            if self._lines <= _PEM_MAX_LINES and _PEM_BODY.fullmatch(line.strip()):
                return mask("pem-private-key")
            self._in_key = False
        out = redactor.redact(line)
        if redactor._enabled and "PRIVATE KEY" in line:
            begins = list(_PEM_BEGIN.finditer(line))
            if begins and "-----END" not in line[begins[-1].end() :]:
                self._in_key = True
                self._lines = 0
        return out
