"""The engine core in a process of its own, as vLLM V1's EngineCore: the child's side.

With the engine in a thread of the HTTP server (async_engine.py), the event loop's per-token
work (SSE, JSON, detokenizing, one coroutine per stream) and `step()` take turns on one GIL.
Here the engine runs in a `multiprocessing` 'spawn' process of its own, with its own GIL, and
talks to the API process (core_client.py) by messages over two pipes:

    API -> core   ("add", seq) | ("abort", request_id) | ("command", id, name, args) | ("stop",)
    core -> API   ("ready", CoreFacts) | ("failed", exc)                     once, at start
                  ("step", [StepOutput], num_waiting, adds_seen)             one per step
                  ("refused", request_id, exc)     a request the engine would not take
                  ("reply", id, result, exc, lora_registry)                  a command's answer
                  ("dead", exc)                     step() raised: the core exits with 1

The loop: take every message waiting, `step()` if there is work, send that step's outputs in
one message; with no work, sleep on the pipe until a message comes. The pipe's end of file
(the API process is gone, even killed) ends the core too: it never outlives its server.

A request's grammar (structured output, an xgrammar matcher) does not pickle: the API process
sends its `StructuredSpec` in `seq.grammar` and the core compiles its own matcher from it.
"""

from __future__ import annotations

import copyreg
import gc
import os
import pickle
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

from common.hub import is_offline, resolve_model
from common.results import get_logger
from week2_serving.engine.engine_commands import run_command
from week2_serving.engine.errors import EngineFull
from week2_serving.engine.llm_engine import EngineConfig, LLMEngine
from week2_serving.engine.lora.manager import Registered
from week2_serving.engine.protocol import APIError
from week2_serving.engine.sequence import Sequence
from week2_serving.engine.step_stats import StepStats
from week2_serving.engine.structured import Grammars, StructuredSpec

log = get_logger("week2.engine.core")
STEP_LOG_ENV = "IE_ENGINE_STEP_LOG"  # as async_engine.py: "1" logs each busy period


@dataclass
class CoreFacts:
    """What the API process needs of the built engine to validate requests without weights."""

    model_dir: str  # the resolved folder (the API process loads the tokenizer from it)
    max_model_len: int
    vocab_size: int  # the model's (logits' width), for the vocabulary check and grammars
    eos_token_ids: list[int]
    sampling_defaults: dict
    num_blocks: int
    block_size: int
    lora: dict[str, Registered] | None  # loaded adapters (None: LoRA is off)


def facts(engine: LLMEngine) -> CoreFacts:
    cfg = engine.config
    bm = engine.block_manager
    return CoreFacts(
        str(resolve_model(cfg.model, is_offline(cfg.offline))),
        engine.max_model_len,
        engine.runner.cfg.vocab_size,
        sorted(engine.eos_token_ids),
        dict(engine.sampling_defaults),
        bm.num_blocks,
        bm.block_size,
        lora_registry(engine),
    )


def lora_registry(engine: LLMEngine) -> dict[str, Registered] | None:
    return None if engine.lora is None else dict(engine.lora.registry)


# --- errors across the boundary ----------------------------------------------------------------
# APIError and EngineFull take more than their message in __init__, so pickle's default (the
# class called with `args`) cannot rebuild them: each gets a reducer with its fields. Both
# processes import this module, so both know them.
def _api_error(status, message, type_, param, headers) -> APIError:
    return APIError(status, message, type_, param, headers)


def _engine_full(num_waiting, retry_after, message) -> EngineFull:
    err = EngineFull(num_waiting, retry_after)
    err.args = (message,)
    return err


copyreg.pickle(APIError, lambda e: (_api_error, (e.status, e.message, e.type, e.param, e.headers)))
copyreg.pickle(EngineFull, lambda e: (_engine_full, (e.num_waiting, e.retry_after, str(e))))


def portable(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling, else a RuntimeError carrying its type and message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


# --- the process -------------------------------------------------------------------------------
def run_core(
    config: EngineConfig, cpus: set[int] | None, threads: int, inbox: Connection, outbox: Connection
) -> None:
    """The core process's body: build the engine, say ready (or why not), serve until told."""
    import torch

    # Ctrl-C (SIGINT) and a launcher's SIGTERM reach the whole process group: the core goes on
    # serving the requests in flight through the server's graceful shutdown, and stops when
    # the API process says so (or, should that process die, at the end of its pipe)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    if cpus:
        os.sched_setaffinity(0, cpus)  # the engine's cores (--engine-cpus); torch threads too
    torch.set_num_threads(threads)
    try:
        engine = LLMEngine(config)
    except Exception as e:
        log.info("the engine core could not start: %r", e)
        outbox.send(("failed", portable(e)))
        return
    outbox.send(("ready", facts(engine)))
    gc.collect()
    gc.freeze()  # as the server does: the weights' objects stay out of the collector's reach
    EngineCore(engine, inbox, outbox).run()


class EngineCore:
    """The loop: messages in, one step, the step's outputs out."""

    def __init__(self, engine: LLMEngine, inbox: Connection, outbox: Connection):
        self.engine, self.inbox, self.outbox = engine, inbox, outbox
        self.running = True
        self.adds_seen = 0  # "add" messages taken (the API counts the ones it sent)
        self.reported = (0, 0)  # (waiting, adds_seen) the last step message told
        self.grammars: Grammars | None = None  # built at the first structured request
        self.stats = StepStats()
        self.log_periods = os.environ.get(STEP_LOG_ENV) == "1"

    def run(self) -> None:
        try:
            while self.running:
                idle = not self.engine.has_unfinished()
                if idle and (ended := self.stats.idle()) is not None and self.log_periods:
                    log.info(ended.summary())  # before sleeping: http_profile.py reads it now
                self.drain(block=idle)
                if self.running and self.engine.has_unfinished():
                    self.step()
                else:  # aborts or refusals changed the counts and no step will report them
                    self.report_state([])
        except BaseException as e:  # step() raised: the API process fails every request
            log.exception("the engine core died")
            self.send(("dead", portable(e)))
            raise SystemExit(1) from None
        finally:
            if self.stats.summary():  # read by http_profile.py from the server's log
                log.info(self.stats.summary())

    def step(self) -> None:
        start = time.perf_counter()
        outs = self.engine.step()
        self.stats.step(start, sum(len(o.new_token_ids) for o in outs))
        self.report_state(outs)

    def report_state(self, outs: list) -> None:
        """One "step" message: the step's outputs and the queue counts check_room reads."""
        state = (len(self.engine.scheduler.waiting), self.adds_seen)
        if outs or state != self.reported:
            self.reported = state
            self.send(("step", outs, *state))

    def drain(self, block: bool) -> None:
        """Handle every message waiting; with `block`, first sleep until one comes."""
        timeout = None if block else 0
        while self.running and self.inbox.poll(timeout):
            timeout = 0
            try:
                msg = self.inbox.recv()
            except EOFError:  # the API process is gone: so is the reason to run
                self.running = False
                return
            self.handle(msg)

    def handle(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == "add":
            self.add(msg[1])
        elif kind == "abort":
            self.engine.abort(msg[1])
        elif kind == "command":
            self.command(*msg[1:])
        elif kind == "stop":
            self.running = False
        else:
            raise ValueError(f"unknown message {kind!r} from the API process")

    def add(self, seq: Sequence) -> None:
        """Add one request; if the engine refuses it, only that request fails."""
        self.adds_seen += 1
        try:
            lora = self.engine.lora  # the API checked a copy: the adapter may be gone since
            if seq.lora_name is not None and (lora is None or seq.lora_name not in lora.registry):
                message = f"The model `{seq.lora_name}` does not exist."
                raise APIError(404, message, "NotFoundError", "model")
            if isinstance(seq.grammar, StructuredSpec):
                seq.grammar = self.matcher(seq.grammar)
            self.engine.add_sequence(seq)
        except Exception as e:
            if not isinstance(e, EngineFull):
                log.exception("request %s could not be added", seq.request_id)
            self.send(("refused", seq.request_id, portable(e)))

    def matcher(self, spec: StructuredSpec):
        if self.grammars is None:
            e = self.engine
            self.grammars = Grammars(e.tokenizer, e.runner.cfg.vocab_size)
        return self.grammars.matcher(spec)  # compiled once per spec (cached)

    def command(self, call_id: int, name: str, args: tuple) -> None:
        try:
            result, error = run_command(self.engine, name, args), None
        except Exception as e:
            result, error = None, portable(e)
        self.send(("reply", call_id, result, error, lora_registry(self.engine)))

    def send(self, msg: tuple) -> None:
        try:
            self.outbox.send(msg)
        except (OSError, ValueError):  # the API process is gone
            self.running = False
