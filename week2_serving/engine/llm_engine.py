"""The engine: requests in, tokens out, one scheduler step + one forward pass at a time.

    engine = LLMEngine(EngineConfig(model="runs/week1/hf-model"))
    outs = engine.generate(["The list type", "A dict is"], SamplingParams(max_tokens=32))

Online use (the HTTP server): `add_request`, then call `step()` in a loop; each step returns
the new tokens of every sequence that produced one, and which requests finished. `abort`
frees a request's blocks at once (a client that went away).

What goes wrong, and where it lands:
- too many requests waiting (`max_num_waiting`): `add_sequence` raises `errors.EngineFull`,
  with an estimate of when to retry; nothing was queued;
- a fault in one request (its sampler row, its stop check): it finishes with finish_reason
  "error" (the message on its StepOutput), its blocks are freed, the others go on;
- a fault in the batched forward pass: `step()` raises; the engine is not to be trusted any
  more, and its caller fails every request (the server answers `errors.EngineDead`).
"""

from __future__ import annotations

import time
from collections import deque

import torch
from tqdm import tqdm

from common.hub import is_offline, resolve_model
from common.results import get_logger
from week2_serving.engine import paged_cpu
from week2_serving.engine.block_manager import BlockManager
from week2_serving.engine.cuda_graphs import make_decode_graphs
from week2_serving.engine.engine_config import (
    EngineConfig,
    RequestOutput,
    StepOutput,
    paged_kernel_applies,
)
from week2_serving.engine.errors import EngineFull
from week2_serving.engine.lora.manager import attach_lora, bind_lora
from week2_serving.engine.metrics import EngineMetrics
from week2_serving.engine.model_runner import ModelRunner
from week2_serving.engine.models import load_tokenizer, model_info
from week2_serving.engine.overlap import Overlap
from week2_serving.engine.sampler import Sampler
from week2_serving.engine.scheduler import Scheduler, SchedulerConfig, fail
from week2_serving.engine.sequence import SamplingParams, Sequence
from week2_serving.engine.spec.decoder import make_spec_decoder

log = get_logger("week2.engine")


def use_paged_kernel(cfg: EngineConfig) -> bool:
    """Whether attention runs as the paged op (paged_cpu.py). It is built here, once, so that
    a missing compiler is said at start: an error when --paged-kernel asked for it, a warning
    and the SDPA path when it was left to auto."""
    if cfg.paged_kernel is False or not paged_kernel_applies(cfg):
        return False  # (True where it does not apply was refused by EngineConfig)
    why = paged_cpu.unavailable_reason()
    if why is None:
        return True
    if cfg.paged_kernel:
        raise RuntimeError(f"--paged-kernel: the op could not be built ({why})")
    log.warning("the paged attention op could not be built (%s): attention by SDPA groups", why)
    return False


def use_fused_norms(cfg: EngineConfig, norm: str) -> bool:
    """Whether RMSNorm runs as the C++ ops built with the paged op: auto where they build, on
    the CPU, for an RMSNorm model without torch.compile; --fused-norms where they cannot is an
    error said at start."""
    if cfg.fused_norms is False or cfg.torch_compile or cfg.torch_device.type != "cpu":
        return False
    why = "the model's norm is LayerNorm" if norm != "rms" else paged_cpu.unavailable_reason()
    if why is None:
        return True
    if cfg.fused_norms:
        raise RuntimeError(f"--fused-norms: not here ({why})")
    return False


class LLMEngine:
    def __init__(self, config: EngineConfig | None = None, tokenizer=None):
        self.config = cfg = config or EngineConfig()
        model_dir = resolve_model(cfg.model, is_offline(cfg.offline))  # folder or hub id
        self.tokenizer = tokenizer = tokenizer or load_tokenizer(model_dir)
        device, dtype = cfg.torch_device, cfg.torch_dtype
        info = model_info(model_dir, tokenizer.eos_token_id)  # ValueError: unsupported model
        self.max_model_len = info.max_model_len(cfg.max_model_len)  # the model's bounds it
        kv = cfg.kv_cache_dtype
        per_block = ModelRunner.bytes_per_block(info.config, cfg.block_size, dtype, kv)
        num_blocks = cfg.num_blocks or max(1, int(cfg.kv_cache_memory * 2**30 // per_block))
        self.runner = ModelRunner(
            model_dir, num_blocks, cfg.block_size, device, dtype, self.max_model_len, info.config,
            kv_cache_dtype=kv,
        )  # fmt: skip
        self.runner.graphs = make_decode_graphs(self.runner, cfg)  # None: every step eager
        self.block_manager = BlockManager(num_blocks, cfg.block_size, cfg.enable_prefix_caching)
        k_spec = cfg.speculative.num_speculative_tokens if cfg.speculative else 0
        self.scheduler = Scheduler(
            SchedulerConfig(
                cfg.max_num_seqs,
                cfg.max_num_batched_tokens,
                cfg.scheduling,
                num_lookahead_slots=k_spec,
                max_model_len=self.max_model_len,
            ),
            self.block_manager,
        )
        self.lora = attach_lora(self)  # a LoRAManager when config.lora is set, else None
        self.sampler = Sampler()
        self.runner.fast_prepare, self.sampler.batched = cfg.fast_prepare, cfg.batched_sampling
        self.runner.bucket_decodes = not cfg.one_decode_group
        self.runner.paged_kernel = use_paged_kernel(cfg)  # the op is built here, at start
        if cfg.prepacked_linears is not False and not cfg.torch_compile:  # auto or on
            self.runner.prepack_linears(hint=min(cfg.max_num_seqs, 32))  # where oneDNN is
        self.runner.fused_norms = use_fused_norms(cfg, info.config.norm)
        if cfg.torch_compile:
            self.runner.compile_layers()
        self.requests: dict[str, Sequence] = {}
        self.eos_token_ids, self.sampling_defaults = info.eos_token_ids, info.sampling_defaults
        self.num_generated = 0
        self.num_prompt_tokens = 0
        self.num_finished = 0
        self.num_aborted = 0
        self.num_failed = 0
        self.num_steps = 0
        self.step_time: float | None = None  # moving average of a step's seconds
        # Prometheus metrics (vLLM's names): the engine thread records, /metrics renders
        self.metrics = EngineMetrics(cfg.served_model_name or str(cfg.model))
        self.spec = make_spec_decoder(self) if cfg.speculative else None  # spec/decoder.py
        self.overlap = Overlap(self) if cfg.overlap_scheduling else None  # overlap.py
        log.info(
            "engine: %s on %s (%s), %d KV blocks x %d tokens (%.1f MiB, kv dtype %s), "
            "scheduling=%s, prefix caching=%s, attention by %s, %d linears packed, fused norms %s",
            model_dir,
            device,
            str(dtype).removeprefix("torch."),
            num_blocks,
            cfg.block_size,
            num_blocks * per_block / 2**20,
            str(dtype).removeprefix("torch.") if kv == "auto" else kv,
            cfg.scheduling,
            cfg.enable_prefix_caching,
            "the paged op" if self.runner.paged_kernel else "SDPA groups",
            len(self.runner.packed),
            self.runner.fused_norms,
        )

    # --- requests -------------------------------------------------------------------------------
    def encode(self, prompt: str | list[int]) -> list[int]:
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        vocab = self.runner.cfg.vocab_size
        bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < vocab]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
        return ids

    def add_request(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        cache_salt: str | None = None,
    ) -> Sequence:
        seq = self.make_sequence(prompt, params, request_id, cache_salt)
        self.add_sequence(seq)
        return seq

    def make_sequence(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        cache_salt: str | None = None,
        lora_name: str | None = None,
    ) -> Sequence:
        """Validate a request and build its Sequence without touching the engine's state.

        The server calls this on its event loop (so a bad request gets its 400 at once) and
        hands the sequence to the engine thread, which calls `add_sequence`. Requests with
        different `cache_salt`s never share prefix-cache blocks (block_manager.block_key).
        """
        params = params or SamplingParams(**self.sampling_defaults)
        ids = self.encode(prompt)
        if not ids:
            raise ValueError("the prompt is empty; send at least one token")
        if len(ids) + params.max_tokens > self.max_model_len:
            raise ValueError(
                f"this model's maximum context length is {self.max_model_len} tokens; the "
                f"prompt has {len(ids)} and max_tokens is {params.max_tokens} "
                f"({len(ids) + params.max_tokens} in all): shorten the prompt or lower max_tokens"
            )
        if cache_salt is not None and (not isinstance(cache_salt, str) or not cache_salt):
            raise ValueError(f"cache_salt={cache_salt!r}: use a non-empty string, or none")
        seq = Sequence(ids, params, request_id, self.eos_token_ids, cache_salt)
        self.scheduler.check_fits(seq)
        bind_lora(self.lora, seq, lora_name)  # its adapter (ValueError if unknown) and salt
        return seq

    def is_full(self) -> bool:
        """Is the waiting queue at `max_num_waiting` (a new request would be refused)?"""
        bound = self.config.max_num_waiting
        return bool(bound) and len(self.scheduler.waiting) >= bound

    def retry_after(self) -> float:
        """Seconds until the waiting queue has room, about: a running request must finish to
        let the first waiting one in, so the fewest tokens any running request may still
        generate, times the recent time per step (a stop token can end it sooner)."""
        step = self.step_time if self.step_time is not None else 1.0  # before any step: a guess
        left = [s.params.max_tokens - s.num_output_tokens for s in self.scheduler.running]
        return step * max(1, min(left, default=1))

    def add_sequence(self, seq: Sequence) -> None:
        """Queue a sequence made by `make_sequence`; EngineFull when the queue is full."""
        if seq.request_id in self.requests:
            raise ValueError(f"request id {seq.request_id!r} is already in use")
        if self.is_full():
            raise EngineFull(len(self.scheduler.waiting), self.retry_after())
        self.scheduler.add(seq)
        self.requests[seq.request_id] = seq
        self.num_prompt_tokens += seq.num_prompt_tokens
        self.metrics.record_state(self.scheduler, self.block_manager)

    def abort(self, request_id: str) -> bool:
        """Drop a request (waiting or running, even mid-prefill); its blocks are freed at once."""
        seq = self.requests.pop(request_id, None)
        if seq is None:
            return False
        self.scheduler.abort(seq)
        self.sampler.forget(seq)
        self.num_aborted += 1
        self.metrics.on_abort()
        self.metrics.record_state(self.scheduler, self.block_manager)
        return True

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    # --- one step -------------------------------------------------------------------------------
    def step(self) -> list[StepOutput]:
        """Schedule, run the forward pass, sample, and report each sampled request's token.

        A fault in the forward pass propagates (the engine's failure); a fault in one
        request's sampling or stop check fails that request only (finish_reason "error").
        """
        start = time.monotonic()
        planned = self.overlap.take() if self.overlap is not None else None
        batch, inputs = planned if planned is not None else (self.scheduler.schedule(), None)
        if not batch.seqs:
            self.metrics.record_state(self.scheduler, self.block_manager)
            return []
        if self.spec is not None:  # guesses into the lookahead slots (spec/decoder.py)
            self.spec.propose(batch, self.scheduler.running)
        if self.overlap is None:
            logits = self.runner.execute(batch)
        else:
            logits = self._overlapped_forward(batch, inputs)
        to_sample = batch.sampled_seqs
        lens = [len(s) for s in to_sample]  # a speculating sequence may get several tokens
        if self.spec is None:
            sampled = self._sample_and_advance(logits, to_sample)
        else:
            sampled = self.spec.accept(logits, batch, self._sample_and_advance)
        self.scheduler.update(batch, sampled)
        now = time.monotonic()
        outs = [self._output(s, n, now) for s, n in zip(to_sample, lens)]
        self.num_steps += 1
        dt = now - start
        self.step_time = dt if self.step_time is None else 0.9 * self.step_time + 0.1 * dt
        self.metrics.record_state(self.scheduler, self.block_manager)
        return outs

    def _overlapped_forward(self, batch, inputs) -> torch.Tensor:
        """The forward pass while the helper thread plans the next step (overlap.py)."""
        self.runner.kv.copy_blocks(batch.copies)
        inputs = inputs if inputs is not None else self.runner.prepare(batch)
        future = self.overlap.start(batch)  # after the inputs: the helper grows block tables
        try:
            return self.runner.forward(inputs)
        finally:
            self.overlap.finish(future)

    def _sample_and_advance(self, logits: torch.Tensor, seqs: list[Sequence]) -> dict[int, int]:
        """`_sample`, then each sampled sequence's grammar (structured output) moves on."""
        return self.sampler.accept(seqs, self._sample(logits, seqs))

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> dict[int, int]:
        """seq_id -> next token; a row whose sampling fails fails its request only.

        The batch is sampled at once; only if that raises is it redone row by row to find the
        faulty request (the rows before it may then draw twice from their generators)."""
        try:
            return {s.seq_id: t for s, t in zip(seqs, self.sampler(logits, seqs))}
        except Exception:
            log.warning("sampling the batch failed; sampling row by row to isolate the fault")
        sampled = {}
        for i, seq in enumerate(seqs):
            try:
                sampled[seq.seq_id] = self.sampler(logits[i : i + 1], [seq])[0]
            except Exception as e:
                log.exception("request %s failed in sampling", seq.request_id)
                fail(seq, e)
        return sampled

    def _output(self, s: Sequence, len_before: int, now: float) -> StepOutput:
        """One sampled sequence's StepOutput; records its metrics and retires it if finished."""
        new = s.tokens[len_before:] if s.error is None else []
        for _ in new:
            self.num_generated += 1
            self.metrics.on_token(s, now)
        if s.is_finished:
            self.requests.pop(s.request_id, None)
            self.sampler.forget(s)
            self.num_finished += 1
            self.num_failed += s.finish_reason == "error"
            self.metrics.on_finish(s, now)
        return StepOutput(
            s.request_id,
            new,
            s.is_finished,
            s.finish_reason,
            s.num_prompt_tokens,
            s.num_output_tokens,
            s.error,
            s.output_logprobs[-1] if new and s.params.logprobs is not None else None,
        )

    # --- offline ----------------------------------------------------------------------------------
    def generate(
        self,
        prompts: list[str | list[int]],
        params: SamplingParams | list[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Run every prompt to completion (like vLLM's `LLM.generate`); outputs in input order."""
        params_list = params if isinstance(params, list) else [params] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError(f"{len(params_list)} SamplingParams for {len(prompts)} prompts")
        seqs = [self.make_sequence(p, sp) for p, sp in zip(prompts, params_list)]  # all checked
        pending = deque(seqs)  # fed in as the waiting queue has room
        bar = tqdm(total=len(seqs), desc="generate", disable=not use_tqdm)
        while pending or self.has_unfinished():
            while pending and not self.is_full():
                self.add_sequence(pending.popleft())
            bar.update(sum(o.finished for o in self.step()))
        bar.close()
        return [
            RequestOutput(
                s.request_id,
                s.tokens[: s.num_prompt_tokens],
                s.output_token_ids,
                self.tokenizer.decode(s.output_token_ids),
                s.finish_reason,
            )
            for s in seqs
        ]

    # --- numbers for /metrics -------------------------------------------------------------------
    def stats(self) -> dict:
        bm = self.block_manager
        return {
            "num_requests_running": len(self.scheduler.running),
            "num_requests_waiting": len(self.scheduler.waiting),
            "kv_blocks_total": bm.num_blocks,
            "kv_blocks_used": bm.num_used_blocks,
            "kv_blocks_free": bm.num_free_blocks,
            "kv_blocks_cached_free": bm.num_cached_free_blocks,
            "prefix_cache_queries_tokens": bm.prefix_queries,
            "prefix_cache_hits_tokens": bm.prefix_hits,
            "prefix_cache_hit_rate": bm.prefix_hit_rate,
            "prompt_tokens": self.num_prompt_tokens,
            "generation_tokens": self.num_generated,
            "requests_finished": self.num_finished,
            "requests_aborted": self.num_aborted,
            "requests_failed": self.num_failed,
            "preemptions": self.scheduler.num_preemptions,
            "steps": self.num_steps,
            "time": time.time(),
        }
