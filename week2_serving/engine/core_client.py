"""The API process's side of the engine core process (engine_core.py): `--engine-process`.

`CoreClient` offers the routes what `AsyncEngine` offers (bridge.py: submit, abort, command,
check_room, error, on_death), but the engine runs in a child process: requests go to it as
messages, and one reader thread receives the core's messages and hands each to the event loop
with `call_soon_threadsafe` (one hop per step, not per token).

`EngineView` is what the routes read of an LLMEngine (tokenizer, `encode`, `make_sequence`,
`max_model_len`, `config`, `sampling_defaults`, the LoRA names) without loading weights: the
API process holds no second copy of the model. Its `encode` and `make_sequence` are
LLMEngine's own methods, so a request is validated by the same code either way.

Lifecycle: `launch()` starts the core and waits until its engine is built (its start-up error,
a bad model path say, is raised here as in-thread); `shutdown()` stops and joins it, and kills
it if it does not stop (the core ignores SIGINT and SIGTERM, which reach the whole process
group: it serves the requests in flight until the server's graceful shutdown says stop). The core dying (an exception in step(), or killed) fails every open
stream and pending command with one error and calls `on_death` (the server exits with 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import multiprocessing as mp
import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from common.results import get_logger
from week2_serving.engine.block_manager import BlockManager
from week2_serving.engine.bridge import dispatch, refuse_if_full, settle
from week2_serving.engine.engine_core import CoreFacts, run_core
from week2_serving.engine.llm_engine import EngineConfig, LLMEngine, StepOutput
from week2_serving.engine.lora.manager import LoRAManager, Registered
from week2_serving.engine.models import load_tokenizer
from week2_serving.engine.scheduler import Scheduler
from week2_serving.engine.sequence import Sequence
from week2_serving.engine.step_stats import StepStats

log = get_logger("week2.engine.server")
STOP_SECONDS = 10  # a core that has not stopped by then is killed


class _Fits:
    """What `Scheduler.check_fits` reads: the pool's size in blocks of `block_size` tokens."""

    check_fits = Scheduler.check_fits
    blocks_needed = BlockManager.blocks_needed

    def __init__(self, num_blocks: int, block_size: int):
        self.num_blocks, self.block_size = num_blocks, block_size
        self.bm = self


class LoRAView:
    """The core's adapter registry, mirrored after every command (names, paths, load ids)."""

    cache_salt = LoRAManager.cache_salt  # the same salt as the core's manager gives

    def __init__(self, registry: dict[str, Registered]):
        self.registry = registry


class EngineView:
    """An LLMEngine's request-side surface, in the API process, from the core's facts."""

    encode = LLMEngine.encode
    make_sequence = LLMEngine.make_sequence

    def __init__(self, config: EngineConfig, facts: CoreFacts, tokenizer=None):
        self.config = config
        self.tokenizer = tokenizer or load_tokenizer(facts.model_dir)
        self.max_model_len = facts.max_model_len
        self.sampling_defaults = facts.sampling_defaults
        self.eos_token_ids = facts.eos_token_ids
        self.runner = SimpleNamespace(cfg=SimpleNamespace(vocab_size=facts.vocab_size))
        self.scheduler = _Fits(facts.num_blocks, facts.block_size)
        self.lora = None if facts.lora is None else LoRAView(facts.lora)


class CoreClient:
    """The engine in a child process; coroutines talk to it through messages."""

    def __init__(
        self,
        config: EngineConfig,
        cpus: set[int] | None = None,
        threads: int = 1,
        max_num_waiting: int | None = None,
    ):
        self.config, self.max_num_waiting = config, max_num_waiting
        ctx = mp.get_context("spawn")  # a fresh interpreter: no copy of this one's threads
        core_in, self.to_core = ctx.Pipe(duplex=False)
        self.from_core, core_out = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(
            target=run_core, args=(config, cpus, threads, core_in, core_out),
            name="engine-core", daemon=True,  # daemon: ended at this interpreter's exit, too
        )  # fmt: skip
        self._child_ends = (core_in, core_out)
        self.view: EngineView | None = None
        self.streams: dict[str, asyncio.Queue] = {}
        self.calls: dict[int, asyncio.Future] = {}
        self.call_ids = itertools.count()
        self.waiting = self.adds_sent = self.adds_seen = 0  # for check_room
        self.loop: asyncio.AbstractEventLoop | None = None
        self.reader = threading.Thread(target=self._read, name="core-reader", daemon=True)
        self.closing = False
        self.error: BaseException | None = None
        self.on_death: Callable[[BaseException], None] | None = None  # called on the loop
        self.stats = StepStats()  # empty here: the core keeps (and logs) its own

    # --- lifecycle -------------------------------------------------------------------------
    def launch(self) -> EngineView:
        """Start the core and wait until its engine is built; its start-up error is raised
        here (the core process joined first), as LLMEngine(...) would raise it in-thread."""
        self.proc.start()
        for end in self._child_ends:  # the core's ends: closed here, so its death reads as EOF
            end.close()
        log.info("engine core process %d starting", self.proc.pid)
        try:
            while not self.from_core.poll(0.2):
                if not self.proc.is_alive():
                    raise RuntimeError(
                        f"the engine core process exited (code {self.proc.exitcode}) "
                        "before its engine was built"
                    )
            kind, payload = self.from_core.recv()
            if kind != "ready":
                raise payload  # the core's own exception (a bad model path: FileNotFoundError)
            self.view = EngineView(self.config, payload)
        except BaseException:  # that, or Ctrl-C while the weights load: no long wait for a stop
            self.shutdown(grace=2)
            raise
        return self.view

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.reader.start()

    def shutdown(self, grace: float = STOP_SECONDS) -> None:
        """Stop the core (a message; SIGKILL if it has not stopped in time), join it; idempotent."""
        self.closing = True
        self._send(("stop",))
        if self.proc.pid is not None:
            self.proc.join(grace)
            if self.proc.is_alive():  # it ignores SIGTERM (engine_core.run_core): SIGKILL
                log.warning("the engine core did not stop in %g s; killing it", grace)
                self.proc.kill()
                self.proc.join()
            log.info(
                "engine core process %d stopped (exit code %s)", self.proc.pid, self.proc.exitcode
            )
        self.to_core.close()
        if self.reader.is_alive():
            self.reader.join(timeout=5)

    # --- the event loop's side -------------------------------------------------------------
    def check_room(self) -> None:
        """As AsyncEngine.check_room: the core's last count of waiting requests plus the adds
        it has not seen yet."""
        refuse_if_full(self.waiting + self.adds_sent - self.adds_seen, self.max_num_waiting)

    def submit(self, seq: Sequence) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue()
        self.streams[seq.request_id] = q
        if seq.grammar is not None:  # a matcher does not pickle: its spec goes, the core compiles
            seq = copy.copy(seq)
            seq.grammar = seq.grammar.spec
        self.adds_sent += 1
        self._send(("add", seq))
        return q

    def abort(self, request_id: str) -> None:
        self.streams.pop(request_id, None)
        self._send(("abort", request_id))

    async def command(self, name: str, *args: Any) -> Any:
        """engine_commands.COMMANDS[name](engine, *args) in the core, between two steps."""
        if self.error is not None:
            raise RuntimeError(f"engine failed: {self.error!r}")
        call_id = next(self.call_ids)
        fut = self.calls[call_id] = self.loop.create_future()
        self._send(("command", call_id, name, args))
        return await fut

    async def metrics_text(self) -> str:
        return await self.command("metrics")

    def _send(self, msg: tuple) -> None:
        with contextlib.suppress(OSError, ValueError):  # the core is gone: the reader says so
            self.to_core.send(msg)

    # --- the reader thread -----------------------------------------------------------------
    def _read(self) -> None:
        try:
            while True:
                self.loop.call_soon_threadsafe(self._on_message, self.from_core.recv())
        except (EOFError, OSError):  # the core's end closed: it stopped or died
            pass
        except RuntimeError:  # the event loop closed first (the server stopped)
            return
        except Exception:  # a message that cannot be read: no later one can be trusted
            log.exception("reading the engine core's messages failed")
        if not self.closing:
            self.proc.join(2)
            code = self.proc.exitcode
            error = RuntimeError(f"the engine core process died (exit code {code})")
            self.loop.call_soon_threadsafe(self._die, error)

    # --- back on the event loop ------------------------------------------------------------
    def _on_message(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == "step":
            _, outs, self.waiting, self.adds_seen = msg
            self._dispatch(outs)
        elif kind == "refused":
            q = self.streams.pop(msg[1], None)
            if q is not None:
                q.put_nowait(msg[2])
        elif kind == "reply":
            _, call_id, result, error, registry = msg
            if registry is not None and self.view is not None and self.view.lora is not None:
                self.view.lora.registry = registry
            settle(self.calls.pop(call_id, None), result, error)
        elif kind == "dead":
            self._die(msg[1])

    def _dispatch(self, outs: list[StepOutput]) -> None:
        dispatch(self.streams, outs)

    def _die(self, error: BaseException) -> None:
        """Fail every stream and pending command with `error`, once; then `on_death`."""
        if self.error is not None or self.closing:
            return
        log.error("the engine core died: %r", error)
        self.error = error
        for q in self.streams.values():
            q.put_nowait(error)
        self.streams.clear()
        for fut in self.calls.values():
            settle(fut, None, RuntimeError(f"engine failed: {error!r}"))
        self.calls.clear()
        if self.on_death is not None:
            self.on_death(error)
