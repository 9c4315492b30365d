from __future__ import annotations

from typing import Any


class DockerSource:
    name = "docker"

    def __init__(self, config: Any, *, required: bool) -> None:
        self.required = required

    @property
    def ready(self) -> bool:
        return True

    async def run(self, server: Any) -> None:
        return None
