"""What the HTTP routes need of the engine's bridge, whichever it is.

Two bridges offer it: `async_engine.AsyncEngine` (the engine in a thread of the server's
process) and `core_client.CoreClient` (the engine in a process of its own, `--engine-process`).
The routes hold one of them and call only these methods, so they serve either unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from week2_serving.engine.sequence import Sequence


class EngineBridge(Protocol):
    error: BaseException | None  # set once the engine died; every request then fails with it
    on_death: Callable[[BaseException], None] | None  # called on the event loop when it dies

    def start(self) -> None: ...  # on the event loop, before the first request
    def shutdown(self) -> None: ...  # stop the engine (thread or process) and wait for it
    def check_room(self) -> None: ...  # EngineFull while too many requests wait
    def submit(self, seq: Sequence) -> asyncio.Queue: ...  # its StepOutputs arrive there
    def abort(self, request_id: str) -> None: ...  # free its blocks at the next step

    async def command(self, name: str, *args: Any) -> Any: ...  # engine_commands.COMMANDS[name]
    async def metrics_text(self) -> str: ...  # the Prometheus exposition of the engine's metrics
