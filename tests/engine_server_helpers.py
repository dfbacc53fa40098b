"""Shared by tests/test_week2_engine_server_*.py: our server in this process, on a real socket.

A real socket (uvicorn in a thread) rather than an ASGI transport: client disconnects, chunked
bodies and Content-Length checks only behave as in production over a connection.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from common.server import free_port
from week2_serving.engine.guards import ServingLimits
from week2_serving.engine.llm_engine import EngineConfig, LLMEngine
from week2_serving.engine.server import create_app


def long_context_copy(hf_dir: Path, dst: Path, length: int = 1024) -> Path:
    """The tiny export with a longer context (RoPE has no table to resize): room for
    max_tokens=512, which the tiny model's own 128 positions would refuse."""
    shutil.copytree(hf_dir, dst, dirs_exist_ok=True)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["max_position_embeddings"] = length
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def tiny_engine(model: Path, **kw) -> LLMEngine:
    kw.setdefault("num_blocks", 64)
    kw.setdefault("dtype", "float32")  # the HF comparisons are float32 (auto: bf16 on BF16 CPUs)
    return LLMEngine(EngineConfig(model=model, device="cpu", **kw))


@contextmanager
def running_server(
    engine: LLMEngine, limits: ServingLimits | None = None, api_key: str | None = None
) -> Iterator[tuple[str, object]]:
    """(base URL, app) of `engine` served as "tiny" on 127.0.0.1 until the block ends."""
    app = create_app(engine, "tiny", api_key=api_key, limits=limits)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    wait_until(lambda: server.started, 30, "the server to start")
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `check` until true; the seconds it took (AssertionError naming `what` after
    `timeout`)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"waited {timeout} s for {what}")
        time.sleep(0.01)
    return time.monotonic() - start


def engine_idle(engine: LLMEngine) -> bool:
    """No request running or waiting, and every KV block back in the pool."""
    s = engine.scheduler
    return not s.running and not s.waiting and engine.block_manager.num_used_blocks == 0
