"""Autoregressive generation, two ways: recompute everything each step, or use a KV cache.

    python -m week1_gpt_kvcache.generate --prompt "The " --max-new-tokens 100 --temperature 0.8

Prompts of different lengths are left-padded into one batch: every row shares the same slot
timeline (so one cache length fits all), a key mask hides the padding, and positions count
only each row's real tokens (so padding does not shift RoPE angles or learned positions).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from common.device import pick_device, synchronize
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


def check_prompts(prompts: list[list[int]], vocab: int, ctx: int, max_tokens: int) -> None:
    """Refuse, naming the problem, prompts that are empty, outside the vocabulary or too long."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError(
            "every prompt needs at least one token (got an empty prompt or no prompts)"
        )
    bad = [t for p in prompts for t in p if not 0 <= t < vocab]
    if bad:
        raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {vocab})")
    longest = max(len(p) for p in prompts)
    if longest + max_tokens > ctx:
        raise ValueError(
            f"prompt of {longest} tokens + max_tokens={max_tokens} exceeds the context "
            f"of {ctx} tokens; shorten the prompt or lower max_tokens to {max(ctx - longest, 0)}"
        )


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
    check_prompts(prompts, model.cfg.vocab_size, model.cfg.block_size, params.max_tokens)
    longest = max(len(p) for p in prompts)
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
    step_seconds: list[float] = []
    t0 = time.perf_counter()
    t_first = t_prev = t0
    for step in range(params.max_tokens):
        if cache is None or step == 0:  # the whole sequence so far (prefill / no cache)
            logits, _ = model(ids, cache=cache, positions=positions, key_mask=key_mask)
        else:  # only the newest token, against the cache
            logits, _ = model(
                ids[:, -1:], cache=cache, positions=positions[:, -1:], key_mask=key_mask
            )
        logits = logits[:, -1, :]  # (B, V): the next-token distribution
        if return_logits:
            step_logits.append(logits.float().cpu())
        if step < params.min_tokens:  # no stop token before min_tokens
            logits = mask_tokens(logits, params.stop_token_ids)
        nxt = sample(logits, params, gen)  # (B,)
        done = done | torch.isin(nxt, stops)
        out.append(torch.where(done, torch.full_like(nxt, -1), nxt))
        ids = torch.cat([ids, nxt.unsqueeze(1)], dim=1)
        key_mask = torch.cat([key_mask, torch.ones(B, 1, dtype=torch.bool, device=device)], dim=1)
        positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
        if step == 0 or record_step_times:
            synchronize(device)
            now = time.perf_counter()
            t_first = now if step == 0 else t_first
            step_seconds.append(now - t_prev)
            t_prev = now
        if bool(done.all()):
            break
    synchronize(device)
    t_end = time.perf_counter()
    new = torch.stack(out, dim=1).tolist()  # (B, steps)
    tokens = [[t for t in row[: row.index(-1)]] if -1 in row else row for row in new]
    return GenerateOutput(tokens, step_logits, t_first - t0, t_end - t_first, step_seconds)


def main(argv: list[str] | None = None) -> list[str]:
    from week1_gpt_kvcache.train import load_model_and_tokenizer

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="checkpoint.pt (default: runs/week1/gpt-llama-bpe/checkpoint.pt)",
    )
    parser.add_argument("--prompt", action="append", default=None, help="repeat for a batch")
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=0, help="0: off")
    parser.add_argument("--top-p", type=float, default=1.0, help="1: off")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-cache", action="store_true", help="recompute the whole context each step"
    )
    parser.add_argument("--device", default="auto")
    a = parser.parse_args(argv)
    model, tok = load_model_and_tokenizer(a.checkpoint, pick_device(a.device))
    prompts = a.prompt or ["\n"]
    params = SamplingParams(
        max_tokens=a.max_new_tokens,
        temperature=a.temperature,
        top_k=a.top_k,
        top_p=a.top_p,
        seed=a.seed,
        stop_token_ids=tuple(t for t in [tok.eos_id] if t is not None),
    )
    res = generate(model, [tok.encode(p) for p in prompts], params, use_cache=not a.no_cache)
    texts = [p + tok.decode(t) for p, t in zip(prompts, res.tokens)]
    for t in texts:
        print(t, "\n" + "-" * 40)
    return texts


if __name__ == "__main__":
    main()
