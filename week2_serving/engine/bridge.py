"""What the HTTP routes need of the engine's bridge, whichever it is.

Two bridges offer it: `async_engine.AsyncEngine` (the engine in a thread of the server's
process) and `core_client.CoreClient` (the engine in a process of its own, `--engine-process`).
The routes hold one of them and call only these methods, so they serve either unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from week2_serving.engine.engine_config import StepOutput
from week2_serving.engine.errors import EngineFull
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


# --- what both bridges do the same way, on the event loop ------------------------------------
def refuse_if_full(waiting: int, max_num_waiting: int | None) -> None:
    """EngineFull (429) when `waiting` requests wait already and the bound is `max_num_waiting`."""
    if max_num_waiting is not None and waiting >= max_num_waiting:
        raise EngineFull(waiting, retry_after=1.0, limit=f"--max-num-waiting {max_num_waiting}")


def dispatch(streams: dict[str, asyncio.Queue], outs: list[StepOutput]) -> None:
    """Each step output to its request's queue; a finished request's queue is let go."""
    for o in outs:
        q = streams.get(o.request_id)
        if q is not None:
            q.put_nowait(o)
            if o.finished:
                del streams[o.request_id]


def settle(fut: asyncio.Future | None, result: Any, error: BaseException | None) -> None:
    """Answer a command's future, unless its caller went away."""
    if fut is None or fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)
