"""The embedding example: pcclog's hub inside a Starlette app served by
uvicorn, driven by a real `websockets` client. Proves the core's message
layer works without pcclog's own socket runtime."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port, wait_for

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
websockets = pytest.importorskip("websockets")

REPO = Path(__file__).resolve().parent.parent


def _up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def test_hub_embedded_in_starlette(tmp_path: Path) -> None:
    port = free_port()
    log = open(tmp_path / "uvicorn.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "examples.starlette_embed:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--ws",
            "wsproto",
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PCCLOG_TOKEN": "embed-token"},
    )
    try:
        wait_for(lambda: _up(port), timeout=20, what="uvicorn")

        async def scenario() -> list[dict[str, object]]:
            url = f"ws://127.0.0.1:{port}/pcclog"
            async with websockets.connect(url) as viewer, websockets.connect(url) as producer:
                await producer.send(json.dumps({"type": "auth", "token": "embed-token"}))
                await producer.send(
                    json.dumps({"type": "status", "sessionId": "job", "status": "running"})
                )
                await viewer.send(
                    json.dumps(
                        {"type": "subscribe", "sessionId": "job", "auth": {"token": "embed-token"}}
                    )
                )
                got = [json.loads(await asyncio.wait_for(viewer.recv(), 5))]
                for i in range(3):
                    await producer.send(
                        json.dumps({"type": "log", "sessionId": "job", "message": f"line {i}"})
                    )
                # The host service publishes too, through the same hub.
                await asyncio.to_thread(
                    urllib.request.urlopen,
                    urllib.request.Request(
                        f"http://127.0.0.1:{port}/publish/job?message=from-host", method="POST"
                    ),
                )
                while len(got) < 6:
                    got.append(json.loads(await asyncio.wait_for(viewer.recv(), 5)))
                await viewer.send(
                    json.dumps(
                        {"type": "subscribe", "sessionId": "job", "auth": {"token": "wrong"}}
                    )
                )
                got.append(json.loads(await asyncio.wait_for(viewer.recv(), 5)))
                return got

        got = asyncio.run(scenario())
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
    assert got[0] == {"type": "status", "sessionId": "job", "status": "running", "metadata": {}}
    assert [m.get("seq") for m in got[1:6]] == [1, 2, 3, 4, 5]
    assert [m.get("message") for m in got[2:6]] == ["line 0", "line 1", "line 2", "from-host"]
    assert got[6]["type"] == "error" and got[6]["code"] == "UNAUTHORIZED"
