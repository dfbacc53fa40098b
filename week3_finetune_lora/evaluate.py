"""Binary-scored evals: one scorer for a local model (+adapter) and for a served endpoint.

    python -m week3_finetune_lora.evaluate --task reverse                       # base model
    python -m week3_finetune_lora.evaluate --task reverse --adapter runs/week3/sft-reverse/adapter
    python -m week3_finetune_lora.evaluate --task reverse --base-url http://127.0.0.1:8000 \
        --served-model reverse                                                  # a served adapter

Every answer is scored 0 or 1: exact match after stripping whitespace, plus task-specific
checks that say *how* a wrong answer is wrong (right digits in the wrong order, descending
instead of ascending, ...). Both paths decode greedily with the same `max_new_tokens`, so a
local score and a served score of the same weights should agree (acceptance: within 2 points).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import torch
from tqdm import tqdm

from common.device import pick_device, pick_dtype
from common.hub import is_offline, resolve_model
from common.results import get_logger, runs_root, save_results
from common.timing import environment
from week3_finetune_lora.data import HUB_TASKS, TASKS, known_tasks, read_jsonl

log = get_logger("week3.eval")

# ---- the scorer ----------------------------------------------------------------------------


def normalize(text: str) -> str:
    """What the scorer compares: the first line of the answer, without surrounding spaces."""
    return text.strip().split("\n")[0].strip()


def task_checks(task: str, x: str, output: str) -> dict[str, bool]:
    """Binary checks beyond exact match, per task (each True/False, never a partial score)."""
    y = normalize(output)
    if task in HUB_TASKS:  # a label task: was the answer one of the labels at all?
        return {"valid_label": y in HUB_TASKS[task].labels}
    checks = {"is_digits": y.isdigit()}
    if task in ("reverse", "sort"):
        checks["same_digits"] = sorted(y) == sorted(x)  # a permutation of the input's digits
    if task == "sort":
        checks["ascending"] = list(y) == sorted(y)
        checks["descending"] = list(y) == sorted(y, reverse=True) and y != "".join(sorted(y))
    if task == "add":
        checks["right_length"] = len(y) == len(TASKS["add"].answer(x))
    return checks


def score(rows: Sequence[dict], outputs: Sequence[str]) -> dict:
    """Exact match and the rate of each task check over `rows` (dicts with completion, input)."""
    if len(rows) != len(outputs):
        raise ValueError(f"{len(rows)} rows but {len(outputs)} outputs")
    exact = [normalize(o) == normalize(r["completion"]) for r, o in zip(rows, outputs)]
    rates: dict[str, list[bool]] = {}
    for r, o in zip(rows, outputs):
        if "task" in r and "input" in r:
            for k, v in task_checks(r["task"], r["input"], o).items():
                rates.setdefault(k, []).append(v)
    return {
        "n": len(rows),
        "exact_match": sum(exact) / max(len(exact), 1),
        "checks": {k: sum(v) / len(v) for k, v in rates.items()},
        "examples": [
            {"prompt": r["prompt"], "expected": r["completion"], "output": o, "correct": e}
            for r, o, e in list(zip(rows, outputs, exact))[:5]
        ],
        "per_row": exact,
    }


# ---- two ways to get outputs: a local model, or an OpenAI-compatible endpoint --------------


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


def generate_served(
    base_url: str,
    model: str,
    prompts: Sequence[str],
    max_new_tokens: int = 12,
    batch_size: int = 64,
    timeout_s: float = 300.0,
) -> list[str]:
    """Greedy completions from /v1/completions; `model` picks the base or an adapter by name.

    The OpenAI completions API takes a list of prompts per request; the server batches them.
    """
    outs: list[str] = []
    url = base_url.rstrip("/") + "/v1/completions"
    with httpx.Client(timeout=timeout_s) as client:
        for i in tqdm(range(0, len(prompts), batch_size), desc=f"served {model}", leave=False):
            chunk = list(prompts[i : i + batch_size])
            r = client.post(
                url,
                json={
                    "model": model,
                    "prompt": chunk,
                    "max_tokens": max_new_tokens,
                    "temperature": 0.0,
                },
            )
            if r.status_code != 200:
                raise RuntimeError(f"{url} with model={model!r} answered {r.status_code}: {r.text}")
            choices = sorted(r.json()["choices"], key=lambda c: c["index"])
            outs += [c["text"] for c in choices]
    return outs


def evaluate_rows(rows: Sequence[dict], generate: Callable[[list[str]], list[str]]) -> dict:
    """Score `generate` (prompts -> outputs) on `rows`, timing it."""
    t0 = time.perf_counter()
    outputs = generate([r["prompt"] for r in rows])
    res = score(rows, outputs)
    res["seconds"] = time.perf_counter() - t0
    return res


def load_local(
    model_dir: str | Path,
    adapter: str | Path | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    offline: bool | None = None,
):
    """(model, tokenizer): the base (a folder or hub id; fp32 on CPU by default) on `device`
    in `dtype`, with the LoRA adapter applied if given."""
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


# ---- CLI -----------------------------------------------------------------------------------


@dataclass
class EvalConfig:
    task: str = "reverse"
    model: str | None = None  # default: runs/week1/hf-model
    adapter: str | None = None
    data_dir: str | None = None  # default: runs/week3/data
    base_url: str | None = None  # set -> score the endpoint instead of a local model
    served_model: str | None = None
    max_new_tokens: int = 12
    limit: int | None = None
    run_name: str | None = None
    device: str = "cpu"  # local eval: auto | cpu | cuda | cuda:N
    dtype: str = "float32"  # local eval: auto | float32 | bfloat16 | float16
    offline: bool | None = None  # None: offline only if HF_HUB_OFFLINE is set


def main(cfg: EvalConfig) -> dict:
    cfg.model = cfg.model or str(runs_root() / "week1" / "hf-model")
    cfg.data_dir = cfg.data_dir or str(runs_root() / "week3" / "data")
    rows = read_jsonl(Path(cfg.data_dir) / cfg.task / "test.jsonl")[: cfg.limit]
    if cfg.base_url:
        name = cfg.served_model or cfg.task

        def gen(p):
            return generate_served(cfg.base_url, name, p, cfg.max_new_tokens)

        where = f"{cfg.base_url} model={name}"
    else:
        model, tok = load_local(cfg.model, cfg.adapter, cfg.device, cfg.dtype, cfg.offline)

        def gen(p):
            return generate_local(model, tok, p, cfg.max_new_tokens)

        where = f"local {cfg.model}" + (f" + {cfg.adapter}" if cfg.adapter else "")
    res = evaluate_rows(rows, gen)
    log.info("%s on %s: exact match %.1f%%", cfg.task, where, 100 * res["exact_match"])
    res.pop("per_row")
    out = {"config": asdict(cfg), "where": where, **res, "environment": environment()}
    save_results("week3", cfg.run_name or f"eval-{cfg.task}", out)
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    d = EvalConfig()
    p.add_argument("--task", default=d.task, choices=known_tasks())
    p.add_argument("--model", default=d.model, help="base model: HF folder or hub id")
    p.add_argument("--adapter", default=None, help="LoRA adapter folder (local eval)")
    p.add_argument("--data-dir", default=d.data_dir)
    p.add_argument("--base-url", default=None, help="score this OpenAI-compatible server")
    p.add_argument("--served-model", default=None, help="model/adapter name on the server")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--limit", type=int, default=None, help="score only the first N test rows")
    p.add_argument("--run-name", default=None)
    p.add_argument("--device", default=d.device, help="local eval: auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", default=d.dtype, help="local eval: auto, float32, bfloat16, ...")
    p.add_argument("--offline", action="store_true", default=None, help="hub cache only")
    a = p.parse_args()
    main(EvalConfig(**{k.replace("-", "_"): v for k, v in vars(a).items()}))
