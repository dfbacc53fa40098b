"""Two ways to get answers: a local HF model (+ LoRA adapter), or an OpenAI-compatible server.

Both decode greedily with the same `max_new_tokens`, so a local score and a served score of the
same weights should agree. The served path checks every response: a non-200 status, a body
that is not JSON, or choices that do not match the prompts is a *failed request* with its
error, returned beside the answers (`ServedAnswers`), never an answer scored as wrong.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch
from tqdm import tqdm

from common.device import pick_device, pick_dtype
from common.hub import is_offline, resolve_model


@torch.no_grad()
def generate_local(
    model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 12, batch_size: int = 64
) -> list[str]:
    """Greedy completions from a local HF model (peft-wrapped or not), batched with left padding."""
    model.eval()
    pad_side, tokenizer.padding_side = tokenizer.padding_side, "left"  # (B, T) prompts end aligned
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    outs: list[str] = []
    try:
        for i in tqdm(range(0, len(prompts), batch_size), desc="generate", leave=False):
            enc = tokenizer(list(prompts[i : i + batch_size]), return_tensors="pt", padding=True)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            gen = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )  # (B, T + new)
            new = gen[:, enc["input_ids"].shape[1] :]  # (B, new)
            outs += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = pad_side
    return outs


def load_local(
    model_dir: str | Path,
    adapter: str | Path | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    offline: bool | None = None,
):
    """(model, tokenizer): the base (a folder or hub id; fp32 on CPU by default) on `device`
    in `dtype`, with the LoRA adapter applied (after checking it fits) if given."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = resolve_model(model_dir, is_offline(offline))
    dev = pick_device(device)
    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=pick_dtype(dev, dtype)).to(dev)
    if adapter is not None:
        from week3_finetune_lora.adapters import load_adapter

        model = load_adapter(model, adapter, model_dir)
    return model.eval(), tok


# ---- the served path -------------------------------------------------------------------------


class ServedError(RuntimeError):
    """A request the server did not answer properly (status, body or choices)."""


def completions_payload(model: str, prompt: str | list[str], max_tokens: int) -> dict:
    """A greedy /v1/completions request; `model` picks the base or an adapter by name."""
    return {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0}


def parse_completions(status: int, body: str, n: int, what: str) -> list[str]:
    """The `n` texts of a /v1/completions response, in prompt order; ServedError otherwise."""
    if status != 200:
        raise ServedError(f"{what} answered {status}: {body[:300]}")
    try:
        choices = json.loads(body)["choices"]
        texts = [c["text"] for c in sorted(choices, key=lambda c: c["index"])]
    except (ValueError, KeyError, TypeError) as e:  # not JSON, or not the completions shape
        raise ServedError(
            f"{what} answered 200 with a malformed body ({type(e).__name__}: {e}): {body[:300]}"
        ) from e
    if len(texts) != n or not all(isinstance(t, str) for t in texts):
        raise ServedError(f"{what} answered {len(texts)} choices for {n} prompts: {body[:300]}")
    return texts


@dataclass
class ServedAnswers:
    """Answers from a server, None where the request carrying that prompt failed."""

    outputs: list[str | None] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # one per failed request

    @property
    def failed_requests(self) -> int:
        return len(self.errors)


def complete_served(
    base_url: str,
    model: str,
    prompts: Sequence[str],
    max_new_tokens: int = 12,
    batch_size: int = 64,
    timeout_s: float = 300.0,
) -> ServedAnswers:
    """Greedy completions from /v1/completions, `batch_size` prompts per request (the OpenAI
    completions API takes a list; the server batches them). A failed request leaves its
    prompts unanswered and its error in `errors`; the other requests still run."""
    url = base_url.rstrip("/") + "/v1/completions"
    res = ServedAnswers()
    with httpx.Client(timeout=timeout_s) as client:
        for i in tqdm(range(0, len(prompts), batch_size), desc=f"served {model}", leave=False):
            chunk = list(prompts[i : i + batch_size])
            what = f"{url} (model={model!r}, prompts {i}..{i + len(chunk) - 1})"
            try:
                r = client.post(url, json=completions_payload(model, chunk, max_new_tokens))
                res.outputs += parse_completions(r.status_code, r.text, len(chunk), what)
            except (ServedError, httpx.HTTPError) as e:
                res.errors.append(str(e) if isinstance(e, ServedError) else f"{what}: {e!r}")
                res.outputs += [None] * len(chunk)
    return res


def generate_served(
    base_url: str, model: str, prompts: Sequence[str], max_new_tokens: int = 12, **kw
) -> list[str]:
    """`complete_served` for callers that need every answer: the first failure is raised."""
    res = complete_served(base_url, model, prompts, max_new_tokens, **kw)
    if res.errors:
        raise ServedError(f"{res.failed_requests} request(s) failed; first: {res.errors[0]}")
    return [o for o in res.outputs if o is not None]
