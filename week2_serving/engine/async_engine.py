"""The bridge between the HTTP server's event loop and the engine's thread.

The engine runs in one background thread that loops `step()`; the asyncio side (one coroutine
per HTTP request) hands a request's Sequence to that thread through a queue and reads its
tokens from an asyncio.Queue the engine thread fills (via `call_soon_threadsafe`).

What can go wrong, and who hears of it:
- one request cannot be added (the engine refuses it): that request's queue gets the exception;
- the loop itself dies (`step()` raised): every queue gets the error at once, `error` is set
  (so /health and new requests see it) and `on_death` is called (the CLI stops the process);
- too many requests wait already: `check_room` refuses a new one with `EngineFull` (429).
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from common.results import get_logger
from week2_serving.engine.bridge import dispatch, refuse_if_full, settle
from week2_serving.engine.engine_commands import run_command
from week2_serving.engine.errors import EngineFull
from week2_serving.engine.llm_engine import LLMEngine, StepOutput
from week2_serving.engine.sequence import Sequence
from week2_serving.engine.step_stats import StepStats

log = get_logger("week2.engine.server")
STEP_LOG_ENV = "IE_ENGINE_STEP_LOG"  # "1": log each busy period's steps (http_profile.py)


class AsyncEngine:
    """LLMEngine in a background thread; coroutines talk to it through queues."""

    def __init__(
        self, engine: LLMEngine, cpus: set[int] | None = None, max_num_waiting: int | None = None
    ):
        self.engine = engine
        self.cpus = cpus  # cores the engine thread (and its torch threads) may run on
        self.max_num_waiting = max_num_waiting  # None: no bound
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()  # (kind, item) for the engine thread
        self.wake = threading.Event()
        self.streams: dict[str, asyncio.Queue] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self.error: BaseException | None = None
        self.on_death: Callable[[BaseException], None] | None = None  # called on the loop
        self.stats = StepStats()  # the engine thread's busy periods (logged at shutdown)
        self.log_periods = os.environ.get(STEP_LOG_ENV) == "1"  # and each one as it ends

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.thread.start()

    def shutdown(self) -> None:
        self.stop.set()
        self.wake.set()
        self.thread.join(timeout=10)
        if self.stats.summary():  # read by http_profile.py from the server's log
            log.info(self.stats.summary())

    # --- the event loop's side -------------------------------------------------------------
    def check_room(self) -> None:
        """Refuse a new request while `max_num_waiting` requests wait already (EngineFull).

        Counted here, from the scheduler's waiting queue plus the adds still in the inbox, so
        that a refused request costs no tokenization and no trip to the engine thread; the
        engine's own bound (LLMEngine.add_sequence raising EngineFull) backs it up.
        """
        if self.max_num_waiting is not None:
            waiting = len(self.engine.scheduler.waiting) + self.inbox.qsize()
            refuse_if_full(waiting, self.max_num_waiting)

    def submit(self, seq: Sequence) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue()
        self.streams[seq.request_id] = q
        self.inbox.put(("add", seq))
        self.wake.set()
        return q

    def abort(self, request_id: str) -> None:
        self.streams.pop(request_id, None)
        self.inbox.put(("abort", request_id))
        self.wake.set()

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn()` on the engine thread between two steps (a consistent view of its state)."""
        if self.error is not None:
            raise RuntimeError(f"engine failed: {self.error!r}")
        fut = self.loop.create_future()
        self.inbox.put(("call", (fn, fut)))
        self.wake.set()
        return await fut

    async def command(self, name: str, *args: Any) -> Any:
        """engine_commands.COMMANDS[name](engine, *args) on the engine thread (bridge.py)."""
        return await self.call(lambda: run_command(self.engine, name, args))

    async def metrics_text(self) -> str:  # recorded by the engine thread: read without a hop
        return self.engine.metrics.exposition()

    # --- the engine thread -----------------------------------------------------------------
    def _run(self) -> None:
        if self.cpus:  # binds this thread only; torch threads it starts inherit the binding
            os.sched_setaffinity(0, self.cpus)
        try:
            while not self.stop.is_set():
                self._drain_inbox()
                if not self.engine.has_unfinished():
                    ended = self.stats.idle()
                    if ended is not None and self.log_periods:
                        log.info(ended.summary())
                    self.wake.wait(0.1)
                    self.wake.clear()
                    continue
                start = time.perf_counter()
                outs = self.engine.step()
                self.stats.step(start, sum(len(o.new_token_ids) for o in outs))
                if outs:
                    self.loop.call_soon_threadsafe(self._dispatch, outs)
        except BaseException as e:  # the server must not hang silently: fail every request
            log.exception("engine thread died")
            self.error = e
            self.loop.call_soon_threadsafe(self._fail_all)

    def _drain_inbox(self) -> None:
        while True:
            try:
                kind, item = self.inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                self._add(item)
            elif kind == "abort":
                self.engine.abort(item)
            else:
                self._call(*item)

    def _add(self, seq: Sequence) -> None:
        """Add one request; if the engine refuses it, only that request fails."""
        try:
            self.engine.add_sequence(seq)
        except Exception as e:
            if not isinstance(e, EngineFull):
                log.exception("request %s could not be added", seq.request_id)
            self.loop.call_soon_threadsafe(self._fail_one, seq.request_id, e)

    def _call(self, fn: Callable[[], Any], fut: asyncio.Future) -> None:
        try:
            result, error = fn(), None
        except Exception as e:
            result, error = None, e
        self.loop.call_soon_threadsafe(settle, fut, result, error)

    # --- back on the event loop ------------------------------------------------------------
    def _dispatch(self, outs: list[StepOutput]) -> None:
        dispatch(self.streams, outs)

    def _fail_one(self, request_id: str, error: BaseException) -> None:
        q = self.streams.pop(request_id, None)
        if q is not None:
            q.put_nowait(error)

    def _fail_all(self) -> None:
        for q in self.streams.values():
            q.put_nowait(self.error)
        self.streams.clear()
        self._drain_calls()
        if self.on_death is not None:
            self.on_death(self.error)

    def _drain_calls(self) -> None:
        """Calls still queued for the dead thread fail now instead of hanging."""
        while True:
            try:
                kind, item = self.inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "call":
                settle(item[1], None, RuntimeError(f"engine failed: {self.error!r}"))
