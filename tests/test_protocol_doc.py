"""docs/protocol.md cannot drift: every ``exchange`` block in it is run
against the real server, message by message."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import websockets
from conftest import ServerProcess

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
_BLOCK = re.compile(r"```exchange\n(.*?)```", re.S)
_LINE = re.compile(r"^(\w+)([<>]) (.*)$")


def _blocks() -> list[list[tuple[str, str, str]]]:
    blocks = []
    for body in _BLOCK.findall(DOC.read_text()):
        steps = []
        for line in body.strip().splitlines():
            match = _LINE.match(line)
            assert match, f"unparseable exchange line in docs/protocol.md: {line!r}"
            steps.append((match[1], match[2], match[3]))
        blocks.append(steps)
    return blocks


BLOCKS = _blocks()


def test_the_page_has_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("steps", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_exchange(
    steps: list[tuple[str, str, str]], start_server: Callable[..., ServerProcess]
) -> None:
    server = start_server(token="TOKEN")

    async def run() -> None:
        conns: dict[str, Any] = {}
        try:
            for name, direction, text in steps:
                if name not in conns:
                    conns[name] = await websockets.connect(server.url)
                ws = conns[name]
                if direction == ">":
                    if text == "CLOSE":
                        await ws.close()
                    else:
                        await ws.send(text)
                else:
                    got = json.loads(await asyncio.wait_for(ws.recv(), 5))
                    assert got == json.loads(text), f"{name} expected {text}\n got {got}"
        finally:
            for ws in conns.values():
                await ws.close()

    asyncio.run(run())
