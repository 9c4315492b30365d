"""The deployment artefacts of ``deploy/`` and ``docs/deploy.md``, exercised for real.

* nginx: the canonical ``deploy/nginx/pcclog.conf`` (the very text the docs
  show) is rendered with this test's ports, certificate, log path and a 2 s
  ``proxy_read_timeout``, and run by a real nginx in front of a real
  ``pcclog serve``: ``/healthz`` and friends, ``ws://`` and ``wss://``
  viewers idle for three read timeouts kept alive by the server's pings,
  then a producer's stream, in order; with pings off the proxy closes the
  idle connection (so the timeout is really exercised). nginx missing:
  skip, or fail with ``PCCLOG_REQUIRE_NGINX=1`` (CI installs it with
  ``tests/nginx_setup.sh``).
* systemd: ``systemd-analyze verify`` on ``deploy/pcclog.service`` (skip
  when it is not installed) and its hardening options.
* container: the Dockerfile's HEALTHCHECK command against a real server,
  the Dockerfile's and compose files' key settings.
* version: ``pcclog --version``, ``pcclog_core.__version__``, pyproject and
  ``CHANGELOG.md`` agree.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, ServerProcess, free_port, wait_for
from websockets.protocol import State
from wsclient import ConnectionClosed, barrier, open_ws, recv_json

import pcclog_core

TOKEN = "test-token"
NGINX_CONF = REPO / "deploy" / "nginx" / "pcclog.conf"
UNIT = REPO / "deploy" / "pcclog.service"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
DEPLOY_DOC = REPO / "docs" / "deploy.md"
CHANGELOG = REPO / "CHANGELOG.md"

READ_TIMEOUT = 2  # seconds: proxy_read_timeout (and send) in the rendered config
PING_INTERVAL_MS = 500  # WS_PING_INTERVAL of the server behind it: well under 2 s
STREAM = 300  # log entries the producer sends through the proxy

Start = Callable[..., ServerProcess]


# --- nginx ------------------------------------------------------------------------


def _nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if found is None:
        problem = "nginx is not installed (bash tests/nginx_setup.sh installs it)"
        if os.environ.get("PCCLOG_REQUIRE_NGINX") == "1":
            pytest.fail(f"PCCLOG_REQUIRE_NGINX=1 but {problem}")
        pytest.skip(problem)
    return found


def render_nginx_conf(
    text: str,
    *,
    upstream_port: int,
    http_port: int,
    https_port: int,
    cert: Path,
    key: Path,
    access_log: Path,
    timeout_s: int,
) -> str:
    """The documented config with this test's addresses, paths and timeouts.

    Every substitution must match exactly as often as expected, so an edit of
    the config that the test would silently stop exercising fails here.
    """
    substitutions: list[tuple[str, str, int]] = [
        (r"(?m)^(\s*server\s+)127\.0\.0\.1:8080;", rf"127.0.0.1:{upstream_port};", 1),
        (r"(?m)^(\s*listen\s+)80;", rf"127.0.0.1:{http_port};", 1),
        (r"(?m)^(\s*listen\s+)443 ssl;", rf"127.0.0.1:{https_port} ssl;", 1),
        (r"(?m)^(\s*ssl_certificate\s+)\S+;", f"{cert};", 1),
        (r"(?m)^(\s*ssl_certificate_key\s+)\S+;", f"{key};", 1),
        (r"(?m)^(\s*access_log\s+)/var/log/nginx/pcclog\.access\.log", str(access_log), 1),
        (r"(?m)^(\s*proxy_(?:read|send)_timeout\s+)\d+s;", f"{timeout_s}s;", 2),
    ]
    for pattern, replacement, expected in substitutions:
        # Keep the directive (group 1), replace its value; no escapes in paths.
        text, count = re.subn(pattern, lambda m: m.group(1) + replacement, text)  # noqa: B023
        assert count == expected, (
            f"{NGINX_CONF.relative_to(REPO)}: {pattern!r} matched {count} times, expected "
            f"{expected}; update render_nginx_conf in tests/test_deploy.py with the config"
        )
    return text


@dataclass
class Nginx:
    proc: subprocess.Popen[bytes]
    http_port: int
    https_port: int
    prefix: Path
    client_ssl: ssl.SSLContext

    @property
    def access_log(self) -> Path:
        return self.prefix / "pcclog.access.log"

    @property
    def error_log(self) -> Path:
        return self.prefix / "error.log"

    def logs(self) -> str:
        out = []
        for name in ("nginx.out", "error.log"):
            with contextlib.suppress(FileNotFoundError):
                out.append(f"--- {name}\n" + (self.prefix / name).read_text(errors="replace"))
        return "\n".join(out)

    def url(self, scheme: str) -> str:
        port = self.https_port if scheme in ("wss", "https") else self.http_port
        return f"{scheme}://127.0.0.1:{port}"

    def get(
        self, scheme: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        if scheme == "https":
            handlers.append(urllib.request.HTTPSHandler(context=self.client_ssl))
        opener = urllib.request.build_opener(*handlers)
        request = urllib.request.Request(self.url(scheme) + path, headers=headers or {})
        try:
            with opener.open(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def start_nginx(tmp_path: Path) -> Iterator[Callable[[int], Nginx]]:
    """Factory: ``start_nginx(upstream_port)`` → a real nginx running the documented config."""
    binary = _nginx_binary()
    trustme = pytest.importorskip("trustme")
    started: list[Nginx] = []

    def start(upstream_port: int) -> Nginx:
        prefix = tmp_path / f"nginx-{len(started)}"
        prefix.mkdir()
        ca = trustme.CA()
        issued = ca.issue_cert("127.0.0.1", "localhost")
        cert, key = prefix / "cert.pem", prefix / "key.pem"
        cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        issued.private_key_pem.write_to_path(str(key))
        http_port, https_port = free_port(), free_port()
        (prefix / "pcclog.conf").write_text(
            render_nginx_conf(
                NGINX_CONF.read_text(),
                upstream_port=upstream_port,
                http_port=http_port,
                https_port=https_port,
                cert=cert,
                key=key,
                access_log=prefix / "pcclog.access.log",
                timeout_s=READ_TIMEOUT,
            )
        )
        temp_paths = "\n".join(
            f"    {kind}_temp_path {prefix / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        user = "user root;\n" if os.geteuid() == 0 else ""
        (prefix / "nginx.conf").write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {prefix / 'nginx.pid'};\n"
            f"error_log {prefix / 'error.log'} info;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            f"{temp_paths}\n"
            f"    access_log {prefix / 'other.access.log'};\n"
            f"    include {prefix / 'pcclog.conf'};\n"
            "}\n"
        )
        args = [binary, "-p", f"{prefix}/", "-c", str(prefix / "nginx.conf")]
        if _nginx_version(binary) >= (1, 19, 5):  # -e: no start-up error log in /var/log
            args += ["-e", str(prefix / "error.log")]
        with open(prefix / "nginx.out", "wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        client_ssl = ssl.create_default_context()
        ca.configure_trust(client_ssl)
        nginx = Nginx(proc, http_port, https_port, prefix, client_ssl)
        started.append(nginx)

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"nginx exited {proc.returncode}:\n{nginx.logs()}")
            return _listening(http_port) and _listening(https_port)

        wait_for(up, timeout=10, what="nginx to listen")
        return nginx

    yield start
    for nginx in started:
        if nginx.proc.poll() is None:
            nginx.proc.send_signal(signal.SIGTERM)  # fast shutdown: upgraded connections too
            try:
                nginx.proc.wait(5)
            except subprocess.TimeoutExpired:
                nginx.proc.kill()
                nginx.proc.wait(5)


def _nginx_version(binary: str) -> tuple[int, ...]:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out.stderr + out.stdout)
    return tuple(int(part) for part in found.groups()) if found else (0,)


def _is_open(ws: Any) -> bool:
    return bool(ws.protocol.state is State.OPEN)


def test_docs_show_the_nginx_config_and_unit_verbatim() -> None:
    doc = DEPLOY_DOC.read_text()
    for path in (NGINX_CONF, UNIT):
        assert path.read_text().strip() in doc, (
            f"docs/deploy.md must contain {path.relative_to(REPO)} verbatim (copy it in)"
        )


def test_nginx_ws_and_wss_idle_kept_alive_by_pings_then_stream(
    start_server: Start, start_nginx: Callable[[int], Nginx]
) -> None:
    server = start_server(env={"WS_PING_INTERVAL": str(PING_INTERVAL_MS)})
    proxy = start_nginx(server.port)
    try:
        _ws_and_wss_through(proxy)
    except BaseException:
        print(proxy.logs())
        with contextlib.suppress(FileNotFoundError):
            print("--- access log\n" + proxy.access_log.read_text(errors="replace"))
        print("--- pcclog\n" + server.logs())
        raise


def _ws_and_wss_through(proxy: Nginx) -> None:

    # Plain HTTP through the proxy, on both listeners.
    for scheme in ("http", "https"):
        assert proxy.get(scheme, "/healthz") == (200, b"ok\n"), proxy.logs()
        assert proxy.get(scheme, "/readyz") == (200, b"ready\n")
        status, body = proxy.get(scheme, "/metrics")  # allowed from 127.0.0.1
        assert status == 200 and b"pcclog_connections" in body
        status, body = proxy.get(scheme, "/api/sessions", {"Authorization": f"Bearer {TOKEN}"})
        assert (status, json.loads(body)["sessions"]) == (200, [])
        status, body = proxy.get(scheme, "/")
        assert status == 200 and b"<html" in body.lower()

    session = "agent-7"
    # Only the server's pings may cross the idle period: no client keepalive.
    quiet: dict[str, Any] = {"ping_interval": None, "proxy": None}
    with (
        open_ws(proxy.url("ws"), headers={"Authorization": f"Bearer {TOKEN}"}, **quiet) as producer,
        # A browser-style viewer: the token in the URL (nginx must not log it).
        open_ws(f"{proxy.url('ws')}/?token={TOKEN}", **quiet) as viewer_ws,
        open_ws(proxy.url("wss"), ssl_context=proxy.client_ssl, **quiet) as viewer_wss,
    ):
        producer.send(json.dumps({"type": "status", "sessionId": session, "status": "running"}))
        barrier(producer)
        viewer_ws.send(json.dumps({"type": "subscribe", "sessionId": session}))
        viewer_wss.send(
            json.dumps({"type": "subscribe", "sessionId": session, "auth": {"token": TOKEN}})
        )
        for viewer in (viewer_ws, viewer_wss):
            snapshot, first = recv_json(viewer), recv_json(viewer)
            assert snapshot["type"] == "status" and "seq" not in snapshot, snapshot
            assert (first["type"], first["seq"]) == ("status", 1), first

        # Idle for three proxy read timeouts: only pcclog's pings (and the
        # clients' automatic pongs) cross the proxy.
        time.sleep(3 * READ_TIMEOUT)
        for name, ws in (("producer", producer), ("ws", viewer_ws), ("wss", viewer_wss)):
            assert _is_open(ws), f"{name} closed while idle: {ws.close_code}\n{proxy.logs()}"

        for i in range(STREAM):
            producer.send(
                json.dumps(
                    {"type": "log", "sessionId": session, "message": f"line {i}", "data": {"i": i}}
                )
            )
        barrier(producer)
        for viewer in (viewer_ws, viewer_wss):
            got = [recv_json(viewer) for _ in range(STREAM)]
            assert [m["seq"] for m in got] == list(range(2, STREAM + 2))
            assert [m["message"] for m in got] == [f"line {i}" for i in range(STREAM)]
            assert all(m["type"] == "log" and m["sessionId"] == session for m in got)
            assert barrier(viewer) == []  # nothing more: no duplicate

    # nginx logs a WebSocket when it ends: every upgrade, and never the URL token.
    wait_for(
        lambda: proxy.access_log.read_text().count('"GET / HTTP/1.1" 101') == 3,
        timeout=5,
        what="the three WebSockets in the access log",
    )
    access = proxy.access_log.read_text()
    assert TOKEN not in access, access
    assert "GET /healthz HTTP/1.1" in access


def test_nginx_closes_an_idle_websocket_when_pings_are_off(
    start_server: Start, start_nginx: Callable[[int], Nginx]
) -> None:
    """The failure mode the ping interval prevents: proves the timeout is exercised."""
    server = start_server(env={"WS_PING_INTERVAL": "0"})
    proxy = start_nginx(server.port)
    with open_ws(proxy.url("ws"), token=TOKEN, ping_interval=None, proxy=None) as viewer:
        viewer.send(json.dumps({"type": "subscribe", "sessionId": "*"}))
        barrier(viewer)
        idle_since = time.monotonic()
        with pytest.raises(ConnectionClosed):
            viewer.recv(timeout=4 * READ_TIMEOUT)
        idle = time.monotonic() - idle_since
    assert READ_TIMEOUT * 0.8 <= idle <= READ_TIMEOUT * 3, idle
    assert viewer.close_code is None or viewer.close_code == 1006  # cut, no close frame
    wait_for(lambda: "upstream timed out" in proxy.error_log.read_text(), timeout=5)


# --- systemd ----------------------------------------------------------------------


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            name, _, value = line.partition("=")
            settings.setdefault(name.strip(), []).append(value.strip())
    return settings


def test_systemd_unit_hardening() -> None:
    s = _unit_settings()
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "SupplementaryGroups": "docker",
        "DynamicUser": "yes",
    }
    for name, value in expected.items():
        assert s.get(name) == [value], (name, s.get(name))
    assert "ReadWritePaths" not in s  # pcclog writes nothing to disk
    assert s["ExecStart"] == ["/opt/pcclog/venv/bin/pcclog serve"]
    assert "HOST=127.0.0.1" in s["Environment"][0].split()


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart exists: point it at this checkout's pcclog.
    pcclog = Path(sys.executable).with_name("pcclog")
    if not pcclog.exists():
        pytest.skip(f"no {pcclog}")
    unit = tmp_path / "pcclog.service"
    text = UNIT.read_text()
    assert text.count("/opt/pcclog/venv/bin/pcclog") == 1
    unit.write_text(text.replace("/opt/pcclog/venv/bin/pcclog", str(pcclog)))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    output = result.stdout + result.stderr
    # Warnings (unknown keys, bad values) do not change the exit status: any
    # line about the unit is a failure.
    complaints = [line for line in output.splitlines() if "pcclog" in line]
    assert result.returncode == 0 and not complaints, output


# --- container --------------------------------------------------------------------


def _healthcheck_command() -> list[str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    found = re.search(r"(?m)^HEALTHCHECK\b.*?\bCMD\s+(\[.*\])\s*$", text)
    assert found, "the Dockerfile has no exec-form HEALTHCHECK"
    command: list[str] = json.loads(found.group(1))
    return command


def test_dockerfile_settings() -> None:
    text = DOCKERFILE.read_text()
    assert re.findall(r"(?m)^FROM (\S+)", text) == ["python:3.11-slim", "python:3.11-slim"]
    users = re.findall(r"(?m)^USER (\S+)", text)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"(?m)^EXPOSE 8080$", text)
    assert "/healthz" in " ".join(_healthcheck_command())
    assert re.search(r'(?m)^ENTRYPOINT \["pcclog"\]$', text)


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_dockerfile_healthcheck_against_a_real_server(
    start_server: Start, tmp_path: Path, tls: bool
) -> None:
    command = _healthcheck_command()
    assert command[0] == "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TLS_")}
    flags: list[str] = []
    if tls:
        trustme = pytest.importorskip("trustme")
        issued = trustme.CA().issue_cert("127.0.0.1")
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        issued.private_key_pem.write_to_path(str(key))
        flags = ["--tls-cert", str(cert), "--tls-key", str(key)]
        env["TLS_CERT"] = str(cert)
    server = start_server(*flags)
    env["PORT"] = str(server.port)
    healthy = subprocess.run([sys.executable, *command[1:]], env=env, timeout=30)
    assert healthy.returncode == 0
    env["PORT"] = str(free_port())  # nothing listens there
    sick = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30)
    assert sick.returncode != 0


@pytest.mark.parametrize("name", ["compose.yaml", "compose.socket-proxy.yaml"])
def test_compose_files(name: str) -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
    compose = yaml.safe_load((REPO / "deploy" / name).read_text())
    pcclog = compose["services"]["pcclog"]
    assert pcclog["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert pcclog["environment"]["DOCKER_ENABLED"] == "true"
    assert pcclog["read_only"] is True and pcclog["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in pcclog["security_opt"]
    if name == "compose.yaml":
        assert pcclog["volumes"] == ["/var/run/docker.sock:/var/run/docker.sock:ro"]
    else:
        assert "volumes" not in pcclog  # pcclog never sees the socket
        proxy = compose["services"]["docker-socket-proxy"]
        assert proxy["image"].startswith("tecnativa/docker-socket-proxy")
        allowed = {k for k, v in proxy["environment"].items() if v == "1"}
        assert allowed == {"CONTAINERS", "EVENTS", "VERSION", "PING"}
        assert proxy["environment"]["POST"] == "0"
        assert "ports" not in proxy
        assert compose["networks"]["docker-api"]["internal"] is True
        assert pcclog["environment"]["DOCKER_HOST"] == "tcp://docker-socket-proxy:2375"


# --- version ----------------------------------------------------------------------


def test_version_has_one_source() -> None:
    version = pcclog_core.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), version

    pcclog = Path(sys.executable).with_name("pcclog")
    command = [str(pcclog)] if pcclog.exists() else [sys.executable, "-m", "pcclog_server.cli"]
    out = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=30)
    assert (out.returncode, out.stdout.strip()) == (0, f"pcclog {version}")

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "pcclog_core.__version__"
    }

    releases = re.findall(
        r"(?m)^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2})$", CHANGELOG.read_text()
    )
    assert releases, "CHANGELOG.md has no '## [x.y.z] - YYYY-MM-DD' heading"
    assert releases[0][0] == version, "the newest CHANGELOG.md entry must be __version__"
