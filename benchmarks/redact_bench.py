"""Redaction cost per log line (SPEC §8): the core's ``Redactor`` alone.

Cases, each over a dozen different lines of ordinary agent output (log
lines, code, prose, JSON events, paths, hashes):

* ``150 B, ordinary`` — lines cut to 150 bytes with no secret; a third of
  them hold a keyword all the same ("token" in prose, an e-mail's ``@``), so
  a rule's regex runs and finds nothing;
* ``150 B, no keyword`` — the others: the prefilter is all the work;
* ``150 B + secret`` — the same lines with one secret of a different family
  in each (the rule's regex runs and masks);
* ``2 KiB, ordinary`` — long lines with no secret (each holds keywords);
* ``150 B, 8 env values`` — as ``150 B, ordinary`` through ``with_extra`` with eight
  container environment values (a followed container's redactor);
* ``150 B, 1 pattern`` — as ``150 B, ordinary`` with one ``REDACT_PATTERNS`` regex,
  which has no keywords and so runs on every line;
* ``JSON 150 B`` — ``redact_json`` on a producer's ``log`` message
  (about 220 bytes) whose ``message`` is a 150-byte line.

Reported per case, in nanoseconds of the benchmark thread's CPU time
(``thread_time``, so other load on the machine inflates it little; best of
several rounds): ``baseline`` is one copy of the line (``str.encode``, or
``bytes.decode`` for JSON), ``redact`` the redaction, ``ratio`` the two
divided. A second table compares prefilter strategies on the ``150 B``
lines: ``in`` for every keyword, one alternation regex of all keywords, the
gated scan as a loop over the table, and the same compiled to straight-line
code (what the core uses).

Run ``python -m benchmarks.redact_bench [seconds]`` (default 2 s overall).
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from pcclog_core._redact import RULES, Redactor, _scan

__all__ = ["run_redact_bench"]

ORDINARY = [
    "2025-01-14T12:03:44.512Z INFO  Running tests in src/app/models/user_profile.py: "
    "collected 42 items, 3 skipped; see the docs for the fixtures",
    "    def handle(self, request: Request) -> Response:  # returns 200 on success, "
    "see issue #42 for the details and tests/test_api.py",
    "I'll update the function so that it handles the edge case where the input list "
    "is empty, then run the test suite again to confirm nothing else broke.",
    '{"type":"assistant","message":{"id":"msg_01XyZ","role":"assistant","content":'
    '[{"type":"text","text":"Done, the migration ran."}]}}',
    "commit 3f9a2c1e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a39 Author: Dev Person "
    "<dev@example.com> Date: Tue Jan 14 12:03:44 2025 +0000",
    'src/pcclog_core/_hub.py:412: error: Argument 1 to "append" of "list" has '
    'incompatible type "str"; expected "int"  [arg-type]',
    "npm WARN deprecated inflight@1.0.6: This module is not supported, and leaks "
    "memory. Do not use it. Check out lru-cache if you want a good one",
    "  PASS  tests/session-list.test.ts (38 ms)  renders the list, reconnects after "
    "a dropped socket (112 ms), shows the gap marker",
    "request_id=6f1c2b3a-9d4e-4f5a-8b7c-0d1e2f3a4b5c status=200 duration_ms=12.4 "
    "path=/api/sessions method=GET bytes=5120 cache=miss",
    "Step 4/12 : RUN pip install --no-cache-dir -r requirements.txt ---> Running in "
    "7c2d9e1f0a3b; Collecting anyio>=4.11 (from -r requirements.txt)",
    "diff --git a/src/parser.py b/src/parser.py index 3c1d2e4..9f8e7d6 100644 "
    "--- a/src/parser.py +++ b/src/parser.py @@ -10,7 +10,9 @@",
    "The token limit was close, so I summarised the long file first and kept only "
    "the functions that the failing test touches; next I will run it again.",
]

# One secret per family, assembled at run time (no credential-shaped literal).
_BODY = "F4kEb0dy9xQ2wE3rT5yU7iO1pA8sD6fG0hJ2kL4zX6cV8bN0mQ3"
SECRETS = [
    "sk-" + "ant-api03-" + _BODY,
    "gh" + "p_" + _BODY[:36],
    "AK" + "IA" + "F4KE0NLY0EXAMPLE",
    "AI" + "za" + _BODY[:35],
    "ey" + "JhbGciOiJIUzI1NiJ9.ey" + "JzdWIiOiJ4In0." + _BODY[:20],
    "Authorization: Bearer " + _BODY[:30],
    "postgres://app:" + _BODY[:12] + "@db:5432/app",
    "password=" + _BODY[:14],
    "?access_token=" + _BODY[:24],
    "xo" + "xb-1234567890-" + _BODY[:24],
    "sk" + "_live_" + _BODY[:24],
    "gl" + "pat-" + _BODY[:20],
]

ENV_VALUES = [f"env-value-{i}-{_BODY[i : i + 20]}" for i in range(8)]


def _cut(line: str, size: int) -> str:
    return (line * (size // len(line) + 1))[:size]


def _with_secret(line: str, secret: str) -> str:
    head = (150 - len(secret) - 2) // 2
    return _cut(line[:head] + " " + secret + " " + line[head:], 150)


def _json(line: str) -> bytes:
    return msgspec.json.encode(
        {"type": "log", "sessionId": "agent-7", "level": "info", "message": line}
    )


def _cases() -> list[tuple[str, Sequence[Any], Callable[[Any], Any], Callable[[Any], Any]]]:
    plain = Redactor(secrets=["pcclog-" + _BODY[:32]])
    container = plain.with_extra(ENV_VALUES)
    patterned = Redactor(secrets=["pcclog-" + _BODY[:32]], patterns=[r"ACME-\d{6}"])
    short = [_cut(line, 150) for line in ORDINARY]
    secret = [_with_secret(line, s) for line, s in zip(ORDINARY, SECRETS, strict=True)]
    long = [_cut(" ".join(ORDINARY[i:] + ORDINARY[:i]), 2048) for i in range(len(ORDINARY))]
    raw = [_json(line) for line in short]
    clean = [line for line in short if not plain._scan(line)]
    assert all(plain.redact(line) is line for line in short + long)
    assert all(plain.redact(line) != line for line in secret)
    assert all(plain.redact_json(r) is r for r in raw)
    return [
        (f"150 B, no keyword ({len(clean)})", clean, str.encode, plain.redact),
        (f"150 B, ordinary ({len(short)})", short, str.encode, plain.redact),
        ("150 B + secret", secret, str.encode, plain.redact),
        ("2 KiB, ordinary", long, str.encode, plain.redact),
        ("150 B, 8 env values", short, str.encode, container.redact),
        ("150 B, 1 pattern", short, str.encode, patterned.redact),
        ("JSON 150 B", raw, bytes.decode, plain.redact_json),
    ]


def _ns_per_item(items: Sequence[Any], func: Callable[[Any], Any], budget: float) -> float:
    """Best CPU ns per call over rounds of about ``budget / 5`` seconds."""
    rounds = 5
    calls = 0
    start = time.thread_time()
    while time.thread_time() - start < budget / (rounds * 4):
        for item in items:
            func(item)
        calls += 1
    best = float("inf")
    for _ in range(rounds):
        t0 = time.thread_time_ns()
        for _ in range(calls * 4):
            for item in items:
                func(item)
        best = min(best, (time.thread_time_ns() - t0) / (calls * 4 * len(items)))
    return best


def _strategies() -> list[tuple[str, Callable[[str], Any]]]:
    redactor = Redactor()
    keywords = sorted({k for rule in RULES for k in rule.keywords})
    combined = re.compile("|".join(re.escape(k) for k in keywords))
    gates, direct = redactor._tables

    def every_keyword(text: str) -> bool:
        return any(k in text for k in keywords)

    return [
        (f"'in' for each of {len(keywords)} keywords", every_keyword),
        ("one alternation regex of them", combined.search),
        (
            f"gates, a loop ({len(gates)} gates, {len(direct)} direct)",
            lambda t: _scan(t, gates, direct),
        ),
        ("gates, compiled (the core's)", redactor._scan),
    ]


def run_redact_bench(duration: float = 2.0) -> dict[str, list[dict[str, Any]]]:
    """Measure every case and prefilter strategy within about ``duration``."""
    cases = _cases()
    strategies = _strategies()
    budget = duration / (2 * len(cases) + len(strategies))
    rows = []
    for name, items, baseline, redact in cases:
        base = _ns_per_item(items, baseline, budget)
        cost = _ns_per_item(items, redact, budget)
        rows.append({"case": name, "baseline_ns": base, "redact_ns": cost, "ratio": cost / base})
    short = [_cut(line, 150) for line in ORDINARY]
    prefilters = [
        {"strategy": name, "ns": _ns_per_item(short, func, budget)} for name, func in strategies
    ]
    return {"cases": rows, "prefilters": prefilters}


def _format(results: dict[str, list[dict[str, Any]]]) -> str:
    lines = [f"{'case':<26} {'baseline ns':>11} {'redact ns':>10} {'ratio':>7}"]
    for row in results["cases"]:
        lines.append(
            f"{row['case']:<26} {row['baseline_ns']:>11,.0f} {row['redact_ns']:>10,.0f} "
            f"{row['ratio']:>6.1f}x"
        )
    lines.append("")
    lines.append(f"{'prefilter on the 150 B ordinary lines':<46} {'ns':>8}")
    for row in results["prefilters"]:
        lines.append(f"{row['strategy']:<46} {row['ns']:>8,.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    duration = float(args[0]) if args else 2.0
    print("pcclog redaction, CPU ns per line (best of 5 rounds)")
    print(_format(run_redact_bench(duration)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
