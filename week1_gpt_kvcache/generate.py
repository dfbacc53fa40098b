"""Autoregressive generation, two ways: recompute everything each step, or use a KV cache.

    python -m week1_gpt_kvcache.generate --prompt "The " --max-new-tokens 100 --temperature 0.8

Prompts of different lengths are left-padded into one batch: every row shares the same slot
timeline (so one cache length fits all), a key mask hides the padding, and positions count
only each row's real tokens (so padding does not shift RoPE angles or learned positions).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from common.cli import parse
from common.device import pick_device, synchronize
from week1_gpt_kvcache.checkpoint import load_model_and_tokenizer
from week1_gpt_kvcache.model import GPT
from week1_gpt_kvcache.sampling import SamplingParams, make_generator, mask_tokens, sample

__all__ = ["GenerateOutput", "SamplingParams", "generate", "left_pad", "main"]


@dataclass
class GenerateOutput:
    tokens: list[list[int]]  # new tokens per prompt (stopped at a stop token, which is dropped)
    step_logits: list[torch.Tensor] = field(default_factory=list)  # (B, V) per step, if asked
    prefill_seconds: float = 0.0  # time to the first new token
    decode_seconds: float = 0.0  # time for the remaining tokens
    step_seconds: list[float] = field(default_factory=list)  # per step, if record_step_times


def left_pad(prompts: list[list[int]], device: torch.device, pad_id: int = 0):
    """(B, L) ids, (B, L) bool mask of real tokens, (B, L) positions (0 at each first real token)."""
    L = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), L), dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, L - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, L - len(p) :] = True
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def check_prompts(model: GPT, prompts: list[list[int]], max_tokens: int) -> int:
    """Refuse empty prompts, unknown ids and overlong requests; return the longest prompt."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError(
            "every prompt needs at least one token (got an empty prompt or no prompts)"
        )
    V, ctx = model.cfg.vocab_size, model.cfg.block_size
    bad = [t for p in prompts for t in p if not 0 <= t < V]
    if bad:
        raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {V})")
    longest = max(len(p) for p in prompts)
    if longest + max_tokens > ctx:
        raise ValueError(
            f"prompt of {longest} tokens + max_tokens={max_tokens} exceeds the context "
            f"of {ctx} tokens; shorten the prompt or lower max_tokens to {max(ctx - longest, 0)}"
        )
    return longest


class StepClock:
    """Time to the first new token (prefill), time for the rest (decode), and each step's time.

    `tick()` after a step synchronizes the device first, so GPU work is counted where it ran.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start = self.first = self.prev = self.end = time.perf_counter()
        self.steps: list[float] = []

    def tick(self) -> None:
        synchronize(self.device)
        now = time.perf_counter()
        if not self.steps:
            self.first = now
        self.steps.append(now - self.prev)
        self.prev = now

    def stop(self) -> None:
        synchronize(self.device)
        self.end = time.perf_counter()


def append_token(ids, key_mask, positions, nxt: torch.Tensor):
    """The batch one token longer: ids (B, L+1), a real-token mask bit, the next position."""
    real = torch.ones(len(nxt), 1, dtype=torch.bool, device=nxt.device)
    return (
        torch.cat([ids, nxt.unsqueeze(1)], dim=1),
        torch.cat([key_mask, real], dim=1),
        torch.cat([positions, positions[:, -1:] + 1], dim=1),
    )


def until_stop(steps: list[torch.Tensor]) -> list[list[int]]:
    """Per row, the tokens before the first -1 (the marker of "stopped")."""
    rows = torch.stack(steps, dim=1).tolist()  # (B, steps)
    return [row[: row.index(-1)] if -1 in row else row for row in rows]


@torch.inference_mode()
def generate(
    model: GPT,
    prompts: list[list[int]],
    params: SamplingParams,
    use_cache: bool = True,
    return_logits: bool = False,
    record_step_times: bool = False,
) -> GenerateOutput:
    """Generate up to `params.max_tokens` for each prompt (a list of token-id lists)."""
    longest = check_prompts(model, prompts, params.max_tokens)
    model.eval()
    device = model.lm_head.weight.device
    gen = make_generator(params.seed, device) if params.seed is not None else None
    ids, key_mask, positions = left_pad(prompts, device)
    B = len(prompts)
    cache = model.new_cache(B, longest + params.max_tokens) if use_cache else None
    stops = torch.tensor(params.stop_token_ids or [-1], device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    out: list[torch.Tensor] = []
    step_logits: list[torch.Tensor] = []
    clock = StepClock(device)
    for step in range(params.max_tokens):
        # the whole sequence so far (prefill, or no cache), else only the newest token
        new = slice(None) if cache is None or step == 0 else slice(-1, None)
        logits, _ = model(ids[:, new], cache=cache, positions=positions[:, new], key_mask=key_mask)
        logits = logits[:, -1, :]  # (B, V): the next-token distribution
        if return_logits:
            step_logits.append(logits.float().cpu())
        if step < params.min_tokens:  # no stop token before min_tokens
            logits = mask_tokens(logits, params.stop_token_ids)
        nxt = sample(logits, params, gen)  # (B,)
        done = done | torch.isin(nxt, stops)
        out.append(torch.where(done, torch.full_like(nxt, -1), nxt))
        ids, key_mask, positions = append_token(ids, key_mask, positions, nxt)
        if step == 0 or record_step_times:
            clock.tick()
        if bool(done.all()):
            break
    clock.stop()
    prefill, decode = clock.first - clock.start, clock.end - clock.first
    return GenerateOutput(until_stop(out), step_logits, prefill, decode, clock.steps)


@dataclass
class GenerateConfig:
    """Generate text from a trained week 1 checkpoint."""

    checkpoint: Path | None = None  # checkpoint.pt; None = runs/week1/gpt-llama-bpe/checkpoint.pt
    prompt: list[str] = field(default_factory=list)  # one or more prompts, one batch; none = "\n"
    max_new_tokens: int = 100  # tokens to generate per prompt
    temperature: float = 0.8  # 0 = greedy (argmax)
    top_k: int = 0  # keep the k most likely tokens (0 = off)
    top_p: float = 1.0  # nucleus sampling: the smallest set reaching probability p (1 = off)
    seed: int = 0  # for reproducible sampling
    cache: bool = True  # use the KV cache; --no-cache recomputes the whole context each step
    device: str = "auto"  # auto, cpu, cuda, cuda:N or mps

    def __post_init__(self) -> None:
        self.sampling()  # the sampling values are checked where they are defined

    def sampling(self, stop_token_ids: tuple[int, ...] = ()) -> SamplingParams:
        return SamplingParams(
            max_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            seed=self.seed,
            stop_token_ids=stop_token_ids,
        )


def main(cfg: GenerateConfig) -> list[str]:
    model, tok = load_model_and_tokenizer(cfg.checkpoint, pick_device(cfg.device))
    prompts = cfg.prompt or ["\n"]
    params = cfg.sampling(stop_token_ids=tuple(t for t in [tok.eos_id] if t is not None))
    res = generate(model, [tok.encode(p) for p in prompts], params, use_cache=cfg.cache)
    texts = [p + tok.decode(t) for p, t in zip(prompts, res.tokens)]
    for t in texts:
        print(t, "\n" + "-" * 40)
    return texts


if __name__ == "__main__":
    main(parse(GenerateConfig, description=__doc__))
