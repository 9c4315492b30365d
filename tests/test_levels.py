"""The one level table (``pcclog_core._levels``): names, order, aliases,
leading keywords, and the producers' levels normalised through it."""

from __future__ import annotations

import json

import pytest

from pcclog_core import (
    LEVEL_RANK,
    LEVELS,
    Authenticator,
    Hub,
    format_wall,
    leading_level,
    normalize_level,
)
from pcclog_core._levels import level_of, levels_json

# An open hub: these tests are not about authentication.
OPEN = Authenticator(disabled=True)


def test_order() -> None:
    assert LEVELS == ("trace", "debug", "info", "warn", "error", "fatal")
    assert [LEVEL_RANK[n] for n in LEVELS] == list(range(6))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("info", "info"),
        ("WARNING", "warn"),
        (" Err ", "error"),
        ("critical", "fatal"),
        ("emerg", "fatal"),  # syslog's most severe: never hidden behind --level error
        ("alert", "fatal"),
        ("crit", "fatal"),
        ("notice", "info"),
        ("panic", "fatal"),
        ("dpanic", "fatal"),
        ("verbose", "debug"),
        (10, "trace"),
        (20, "debug"),
        (30, "info"),
        (35, "info"),  # a custom pino level takes the one at or below it
        (40, "warn"),
        (50, "error"),
        (60, "fatal"),
        ("50", "error"),
        (55.5, "error"),
    ],
)
def test_level_of_names_aliases_and_pino_numbers(value: object, expected: str) -> None:
    assert level_of(value) == expected
    assert normalize_level(value) == expected


@pytest.mark.parametrize("value", ["loud", "", None, True, float("nan"), [], "9" * 50])
def test_unknown_levels_become_the_default(value: object) -> None:
    assert level_of(value) is None
    assert normalize_level(value) == "info"
    assert normalize_level(value, "error") == "error"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("ERROR: disk full", "error"),
        ("error disk full", "error"),
        ("[WARN] slow", "warn"),
        ("WARNING: deprecated", "warn"),
        ("Warning - deprecated", "warn"),
        ("INFO starting", "info"),
        ("DEBUG x=1", "debug"),
        ("(fatal) gone", "fatal"),
        ("Traceback (most recent call last):", "error"),
        ("Errors found: 0", None),  # a keyword must be the whole word
        ("Informational text", None),
        ("Traceback is a word", None),
        ("compiling", None),
        ("", None),
        ("   ", None),
        ("warnings were emitted", None),
    ],
)
def test_leading_keyword(line: str, expected: str | None) -> None:
    assert leading_level(line) == expected


def test_levels_json_is_the_table() -> None:
    table = json.loads(levels_json())
    assert table["levels"] == list(LEVELS)
    assert table["aliases"]["warning"] == "warn"
    assert set(table["aliases"].values()) <= set(LEVELS)


def test_producer_levels_are_normalised_through_the_table() -> None:
    hub = Hub(authenticator=OPEN)
    stamp = format_wall(1_700_000_000.0)
    for level in ("WARNING", "emerg", "bogus", "info"):
        hub.publish_log("s", level=level, message="m", timestamp=stamp, now=0.0)
    levels = [json.loads(f[2:])["level"] for f in hub.sessions["s"].frames]
    assert levels == ["warn", "fatal", "info", "info"]
