"""The bridge between the HTTP server's event loop and the engine's thread.

The engine runs in one background thread that loops `step()`; the asyncio side (one coroutine
per HTTP request) hands a request's Sequence to that thread through a queue and reads its
tokens from an asyncio.Queue the engine thread fills (via `call_soon_threadsafe`).
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading

from common.results import get_logger
from week2_serving.engine.llm_engine import LLMEngine, StepOutput
from week2_serving.engine.sequence import Sequence

log = get_logger("week2.engine.server")


class AsyncEngine:
    """LLMEngine in a background thread; coroutines talk to it through queues."""

    def __init__(self, engine: LLMEngine, cpus: set[int] | None = None):
        self.engine = engine
        self.cpus = cpus  # cores the engine thread (and its torch threads) may run on
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()  # ("add", seq) | ("abort", id)
        self.wake = threading.Event()
        self.streams: dict[str, asyncio.Queue] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.thread.start()

    def shutdown(self) -> None:
        self.stop.set()
        self.wake.set()
        self.thread.join(timeout=10)

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

    def _run(self) -> None:
        if self.cpus:  # binds this thread only; torch threads it starts inherit the binding
            os.sched_setaffinity(0, self.cpus)
        try:
            while not self.stop.is_set():
                self._drain_inbox()
                if not self.engine.has_unfinished():
                    self.wake.wait(0.1)
                    self.wake.clear()
                    continue
                outs = self.engine.step()
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
                self.engine.add_sequence(item)
            else:
                self.engine.abort(item)

    def _dispatch(self, outs: list[StepOutput]) -> None:
        for o in outs:
            q = self.streams.get(o.request_id)
            if q is not None:
                q.put_nowait(o)
                if o.finished:
                    del self.streams[o.request_id]

    def _fail_all(self) -> None:
        for q in self.streams.values():
            q.put_nowait(self.error)
        self.streams.clear()
