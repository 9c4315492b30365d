"""Settings: parsing, errors naming the variable, and the generated docs page."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from pcclog_server._config import SETTINGS, ConfigError, add_arguments, load_config, render_markdown

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_defaults_match_the_spec() -> None:
    config = load_config(None, {})
    assert (config.port, config.host) == (8080, "0.0.0.0")
    assert (config.ws_ping_interval, config.ws_ping_timeout) == (30000, 5000)
    assert (config.session_timeout, config.max_sessions) == (300000, 100)
    assert (config.history_lines, config.subscribe_tail) == (10000, 100)
    assert (config.max_message_size, config.max_subscriptions) == (1_048_576, 128)
    assert (config.connection_buffer, config.slow_consumer) == (1048576, "drop")
    assert config.docker_enabled == "auto" and config.docker_label == "pcclog.session"
    assert not config.auth_configured and not config.auth_disabled
    limits = config.limits()
    assert limits.ping_interval == 30.0 and limits.session_timeout == 300.0


def test_flag_wins_over_environment() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--port", "9000"])
    assert load_config(args, {"PORT": "7000", "HOST": "::1"}).port == 9000
    assert load_config(args, {"PORT": "7000", "HOST": "::1"}).host == "::1"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PORT": "eighty"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"WS_PING_INTERVAL": "-5"}, "WS_PING_INTERVAL"),
        ({"SLOW_CONSUMER": "maybe"}, "SLOW_CONSUMER"),
        ({"DOCKER_ENABLED": "sometimes"}, "DOCKER_ENABLED"),
        ({"AUTH_DISABLED": "perhaps"}, "AUTH_DISABLED"),
        ({"TLS_CERT": "/x.pem"}, "TLS_KEY"),
        ({"AUTH_TOKENS": "tok:admin:*"}, "AUTH_TOKENS"),
        ({"MAX_MESSAGE_SIZE": "10"}, "MAX_MESSAGE_SIZE"),
    ],
)
def test_invalid_values_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_config(None, env)


def test_secret_values_are_not_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {"AUTH_TOKENS": "s3cret-value:admin:*"})
    assert "s3cret-value" not in str(info.value)


def test_every_setting_has_a_flag_and_a_config_field() -> None:
    fields = set(load_config(None, {}).__dataclass_fields__)
    assert {s.name for s in SETTINGS} == fields
    assert len({s.flag for s in SETTINGS}) == len(SETTINGS)


def test_configuration_page_is_generated_from_the_settings() -> None:
    assert DOCS.read_text() == render_markdown(), (
        "docs/configuration.md is stale: run "
        "`.venv/bin/python -m pcclog_server._config > docs/configuration.md`"
    )
