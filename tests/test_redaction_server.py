"""Redaction against the real server (SPEC §8, issue "Ingest that loses
nothing and leaks nothing"): every family of secrets published by a
producer — in ``message``, in nested ``data``, in status metadata — is
masked for a live viewer, in a replay, in ``/api/sessions`` and in
``sessions``, and never reaches the server's own log; the original
wrapper's line that shows its own URL (produce token included) is masked
before a view-only token can read it. ``REDACT=off`` still masks pcclog's
own tokens. Secrets are assembled at run time (see tests/test_redact.py).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from typing import Any

from conftest import ServerProcess
from rawws import RawWebSocket
from test_redact import FAMILIES

PRODUCE = "producer-token-0123456789"
VIEW = "viewer-token-0123456789"
TOKENS = f"{PRODUCE}:produce:*,{VIEW}:view:*"


def _publish(server: ServerProcess, *messages: dict[str, Any]) -> None:
    with RawWebSocket.connect(server.port, token=PRODUCE) as ws:
        for message in messages:
            ws.send_json(message)
        replies = ws.barrier()
        assert not [m for m in replies if m["type"] == "error"], replies


def _api_sessions(server: ServerProcess) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/api/sessions",
        headers={"Authorization": f"Bearer {VIEW}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read().decode()


def test_every_family_is_masked_live_in_replay_in_lists_and_never_logged(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(token=TOKENS, env={"LOG_LEVEL": "debug"})
    secrets = [secret for _, _, secret in FAMILIES]
    with RawWebSocket.connect(server.port, token=VIEW, auto_pong=True) as live:
        live.send_json({"type": "subscribe", "sessionId": "agent", "tail": 0})
        live.barrier()
        messages: list[dict[str, Any]] = [
            {"type": "status", "sessionId": "agent", "status": "running",
             "metadata": {"env": {"GH": FAMILIES[5][1]}, "command": FAMILIES[0][1]}},
        ]  # fmt: skip
        for i, (_, text, _) in enumerate(FAMILIES):
            messages.append({"type": "log", "sessionId": "agent", "message": text})
            messages.append(
                {"type": "log", "sessionId": "agent", "message": f"nested {i}",
                 "data": {"deep": [{"value": text}], "n": i}}
            )  # fmt: skip
        _publish(server, *messages)
        got: list[dict[str, Any]] = []
        while len([m for m in got if "seq" in m]) < len(messages):
            frame = live.recv_message()
            assert frame is not None
            got.append(frame)
    live_text = json.dumps(got, ensure_ascii=False)
    with RawWebSocket.connect(server.port, token=VIEW) as replay:
        replay.send_json({"type": "subscribe", "sessionId": "agent", "since": 0})
        replay.send_json({"type": "list"})
        replay_text = json.dumps(replay.barrier(), ensure_ascii=False)
    listed = _api_sessions(server)
    server.stop()
    log = server.log_path.read_text()
    for where, text in (("live", live_text), ("replay", replay_text), ("api", listed)):
        for secret in secrets:
            assert secret not in text, (where, secret)
        assert "[REDACTED:" in text, where
    for secret in (*secrets, PRODUCE, VIEW):
        assert secret not in log
    rules = {rule for rule, _, _ in FAMILIES}
    assert {f"[REDACTED:{rule}]" in live_text for rule in rules} == {True}


def test_the_wrappers_own_url_with_its_token_is_masked_for_viewers(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(token=TOKENS)
    line = f"connecting to ws://pcclog:8080/?token={PRODUCE}&containerID=job-7"
    with RawWebSocket.connect(server.port, f"/?token={PRODUCE}&containerID=job-7") as wrapper:
        wrapper.send_json(
            {"type": "LOG", "containerID": "job-7", "data": {"level": "info", "message": line}}
        )
        wrapper.barrier()
    with RawWebSocket.connect(server.port, token=VIEW) as viewer:
        viewer.send_json({"type": "subscribe", "sessionId": "job-7", "since": 0})
        [entry] = [m for m in viewer.barrier() if m["type"] == "log"]
    assert PRODUCE not in entry["message"]
    assert entry["message"].startswith("connecting to ws://pcclog:8080/?token=[REDACTED:")


def test_redact_off_still_masks_pcclogs_own_tokens(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(token=TOKENS, env={"REDACT": "off"})
    github = FAMILIES[5][2]
    _publish(
        server,
        {"type": "log", "sessionId": "s", "message": f"mine {PRODUCE} and {VIEW}"},
        {"type": "log", "sessionId": "s", "message": f"theirs {github}"},
    )
    with RawWebSocket.connect(server.port, token=VIEW) as viewer:
        viewer.send_json({"type": "subscribe", "sessionId": "s", "since": 0})
        logs = [m["message"] for m in viewer.barrier() if m["type"] == "log"]
    assert logs == [
        "mine [REDACTED:pcclog-token] and [REDACTED:pcclog-token]",
        f"theirs {github}",  # off: the built-in rules do not run
    ]


def test_redactions_are_counted_by_rule(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(token=TOKENS)
    _publish(server, {"type": "log", "sessionId": "s", "message": FAMILIES[5][1]})
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    assert 'pcclog_redactions_total{rule="github"} 1.0' in metrics


# --- Docker: whole lines after the rejoin, keys over several lines ----------------------

from test_docker_source import (  # noqa: E402  (fixtures and helpers of the Docker tests)
    Viewer,
    docker_server,
    docker_test,
    label,
    run_container,
)

__all__ = ["docker_server", "label", "run_container"]  # fixtures used by name


@docker_test
def test_a_secret_split_across_two_docker_frames_is_still_masked(
    docker_server: Callable[..., ServerProcess], run_container: Callable[..., Any]
) -> None:
    """The engine cuts a line at 16 KiB into two frames; the token straddles
    the cut. Redaction runs on the whole line, after the rejoin."""
    github = FAMILIES[5][2]
    before = 16 * 1024 - 11  # then a space: the cut falls 10 characters into the token
    server = docker_server()
    viewer = Viewer(server)
    script = (
        f"head -c {before} /dev/zero | tr '\\0' x; printf ' {github} done\\n'; "
        "echo '-----BEGIN OPENSSH PRIVATE KEY-----'; "
        "echo 'b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW'; "
        "echo 'QyNTUxOQAAACDBzvLNEBZ3hXp1n8N4YtV6Y9u3V1qkQf0tZ1ZkYZ3XkAAAAJjY5dG22OXR'; "
        "echo '-----END OPENSSH PRIVATE KEY-----'; echo after"
    )
    run_container(script, session="split")
    try:
        from conftest import wait_for

        wait_for(lambda: viewer.ended("split"), timeout=30, what="the container to end")
        texts = viewer.texts("split")
    finally:
        viewer.close()
    assert len(texts) == 6, [t[:40] for t in texts]
    assert github not in texts[0] and texts[0].endswith("[REDACTED:github] done")
    assert texts[0].startswith("x" * before)
    # The key's body lines are masked although each one alone is plain base64.
    assert "b3BlbnNzaC1rZXkt" not in " ".join(texts)
    assert "QyNTUxOQAAACDBzvLN" not in " ".join(texts)
    assert texts[-1] == "after"


@docker_test
def test_a_containers_secret_environment_values_are_masked(
    docker_server: Callable[..., ServerProcess], run_container: Callable[..., Any]
) -> None:
    """SPEC §8: the values of a followed container's secret-looking
    environment variables (read from the engine's inspect) are masked in its
    entries, although they match no built-in rule."""
    import secrets as random_secrets

    value = "plain" + random_secrets.token_hex(12)  # no rule would know it
    server = docker_server()
    viewer = Viewer(server)
    run_container(
        'echo "using $DEPLOY_TOKEN"; echo "again $DEPLOY_TOKEN" >&2; echo "not $HOME"',
        session="env",
        environment={"DEPLOY_TOKEN": value, "HOME": "/root"},
    )
    try:
        from conftest import wait_for

        wait_for(lambda: viewer.ended("env"), timeout=30, what="the container to end")
        texts = viewer.texts("env")
    finally:
        viewer.close()
    server.stop()
    assert sorted(texts) == sorted(
        ["using [REDACTED:container-env]", "again [REDACTED:container-env]", "not /root"]
    )
    assert value not in server.log_path.read_text()
