"""Workloads: the requests a benchmark sends, one table of them (`WORKLOADS`).

- `random`: prompts of random token ids with input/output lengths drawn uniformly from
  [len·(1−r), len·(1+r)]; sent as token ids, so the server sees exactly `input_len` tokens.
- `file`: a local JSONL file, one request a line: {"prompt": "...", "output_len": 128}, or the
  ShareGPT format ({"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}]},
  as JSON or JSONL): the first human turn is the prompt and the reply's token count the
  output length.
- `shared-prefix`: `num_prefixes` system-prompt-like prefixes of `prefix_len` tokens, each
  followed by a unique suffix: the workload that prefix caching speeds up.
- `generated-shared-prefix`: SGLang's gsp, groups × prompts per group × system-prompt length.
- `multi-turn`: conversations whose every turn resends the history (multiturn.py).
- `trace`: a BurstGPT-style CSV replayed at its own timestamps (traces.py).
- `custom` and `prefix_repetition`: `vllm bench serve`'s names for `file` and `shared-prefix`.

Adding a workload is one entry in `WORKLOADS`: a name, a function `(cfg, tokenizer) ->
list[Request]` that reads the BenchConfig fields it needs, those fields' names, the fields it
cannot do without, and a line of description. The bench's `--dataset-name` choices, its
validation and its error messages all read that table.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from week2_serving.harness.client import Request
from week2_serving.harness.gsp import generated_shared_prefix_requests
from week2_serving.harness.multiturn import multi_turn_requests
from week2_serving.harness.synth import lengths as _lengths
from week2_serving.harness.synth import random_ids as _random_ids
from week2_serving.harness.synth import vocabulary
from week2_serving.harness.traces import trace_requests

OUTPUT_DISTS = ("uniform", "exponential")
EXP_CAP = 6  # exponential output lengths are capped at 6x their mean


def _exponential_lengths(rng: np.random.Generator, mean: int, n: int) -> np.ndarray:
    """Long-tailed lengths, like real chat replies: most short, a few many times the mean."""
    if mean < 1:
        raise ValueError(f"lengths must be >= 1, got {mean}")
    return np.clip(np.rint(rng.exponential(mean, size=n)), 1, EXP_CAP * mean).astype(int)


def random_requests(
    tokenizer,
    num: int,
    input_len: int,
    output_len: int,
    range_ratio: float = 0.0,
    seed: int = 0,
    ignore_eos: bool = True,
    output_dist: str = "uniform",
) -> list[Request]:
    """Random token-id prompts. Input lengths are uniform in [mean(1-r), mean(1+r)]; output
    lengths too (`uniform`, vLLM's random dataset) or exponential with the same mean, capped at
    6x (`exponential`: the long tail that makes static batching wait for its longest member)."""
    if output_dist not in OUTPUT_DISTS:
        raise ValueError(f"output_dist={output_dist!r}: use one of {', '.join(OUTPUT_DISTS)}")
    rng = np.random.default_rng(seed)
    vocab = vocabulary(tokenizer)
    ins = _lengths(rng, input_len, range_ratio, num)
    if output_dist == "uniform":
        outs = _lengths(rng, output_len, range_ratio, num)
    else:
        outs = _exponential_lengths(rng, output_len, num)
    return [
        Request(
            prompt=_random_ids(rng, vocab, int(i)),
            prompt_len=int(i),
            output_len=int(o),
            ignore_eos=ignore_eos,
        )
        for i, o in zip(ins, outs)
    ]


def shared_prefix_requests(
    tokenizer,
    num: int,
    num_prefixes: int,
    prefix_len: int,
    suffix_len: int,
    output_len: int,
    seed: int = 0,
    ignore_eos: bool = True,
) -> list[Request]:
    if num_prefixes < 1 or prefix_len < 1 or suffix_len < 1:
        raise ValueError("num_prefixes, prefix_len and suffix_len must be >= 1")
    rng = np.random.default_rng(seed)
    vocab = vocabulary(tokenizer)
    prefixes = [_random_ids(rng, vocab, prefix_len) for _ in range(num_prefixes)]
    reqs = []
    for i in range(num):
        ids = prefixes[i % num_prefixes] + _random_ids(rng, vocab, suffix_len)
        reqs.append(
            Request(prompt=ids, prompt_len=len(ids), output_len=output_len, ignore_eos=ignore_eos)
        )
    return reqs


def file_requests(
    path: Path | str,
    tokenizer,
    num: int | None = None,
    default_output_len: int = 128,
    max_input_len: int | None = None,
    ignore_eos: bool = False,
) -> list[Request]:
    """Requests from a JSONL ({"prompt", "output_len"?}) or ShareGPT JSON/JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"workload file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        rows = json.loads(text)
        rows = rows if isinstance(rows, list) else [rows]
    except json.JSONDecodeError:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n} is not valid JSON ({e.msg})") from e
    reqs = []
    for n, row in enumerate(rows, 1):
        if "conversations" in row:
            turns = row["conversations"]
            if len(turns) < 2:
                continue  # ShareGPT rows without a reply carry no output length
            prompt, reply = turns[0].get("value", ""), turns[1].get("value", "")
            out_len = len(tokenizer(reply)["input_ids"])
        elif "prompt" in row:
            prompt, out_len = row["prompt"], int(row.get("output_len", default_output_len))
        else:
            raise ValueError(
                f"{path} row {n} has neither 'prompt' nor 'conversations': {str(row)[:80]}"
            )
        ids = tokenizer(prompt)["input_ids"]
        if not ids or out_len < 1 or (max_input_len and len(ids) > max_input_len):
            continue
        reqs.append(
            Request(prompt=prompt, prompt_len=len(ids), output_len=out_len, ignore_eos=ignore_eos)
        )
        if num is not None and len(reqs) >= num:
            break
    if not reqs:
        raise ValueError(f"{path} gave no usable requests")
    return reqs


# ---- the table: a workload's name -> how its requests are built from a BenchConfig ----


@dataclass(frozen=True)
class Workload:
    """One entry of `WORKLOADS`. `build(cfg, tokenizer)` reads only the BenchConfig fields
    named in `fields`; `required` are fields that must be set (not None) for it to run."""

    build: Callable[[Any, Any], list[Request]]
    fields: tuple[str, ...]
    description: str
    required: tuple[str, ...] = ()


def _random(cfg, tokenizer) -> list[Request]:
    return random_requests(
        tokenizer,
        cfg.num_prompts,
        cfg.random_input_len,
        cfg.random_output_len,
        cfg.random_range_ratio,
        cfg.seed,
        cfg.ignore_eos,
        cfg.random_output_dist,
    )


def _shared_prefix(cfg, tokenizer) -> list[Request]:
    return shared_prefix_requests(
        tokenizer,
        cfg.num_prompts,
        cfg.num_prefixes,
        cfg.prefix_len,
        cfg.suffix_len,
        cfg.random_output_len,
        cfg.seed,
        cfg.ignore_eos,
    )


def _file(cfg, tokenizer) -> list[Request]:
    return file_requests(
        cfg.dataset_path,
        tokenizer,
        cfg.num_prompts,
        cfg.random_output_len,
        ignore_eos=cfg.ignore_eos,
    )


def _gsp(cfg, tokenizer) -> list[Request]:
    return generated_shared_prefix_requests(
        tokenizer,
        cfg.gsp_num_groups,
        cfg.gsp_prompts_per_group,
        cfg.gsp_system_prompt_len,
        cfg.gsp_question_len,
        cfg.gsp_output_len,
        cfg.seed,
        cfg.ignore_eos,
    )


def _multi_turn(cfg, tokenizer) -> list[Request]:
    conversations = cfg.num_prompts // cfg.num_turns
    if conversations < 1:
        raise ValueError(
            f"num_prompts={cfg.num_prompts} < num_turns={cfg.num_turns}: no whole conversation"
        )
    return multi_turn_requests(
        tokenizer,
        conversations,
        cfg.num_turns,
        cfg.random_input_len,
        cfg.random_output_len,
        cfg.think_time_s,
        cfg.random_range_ratio,
        cfg.seed,
        cfg.ignore_eos,
    )


def _trace(cfg, tokenizer) -> list[Request]:
    return trace_requests(
        cfg.dataset_path, tokenizer, cfg.num_prompts, cfg.trace_speedup, cfg.seed, cfg.ignore_eos
    )


WORKLOADS: dict[str, Workload] = {
    "random": Workload(
        _random,
        (
            "random_input_len",
            "random_output_len",
            "random_range_ratio",
            "random_output_dist",
            "seed",
        ),
        "random token ids, exact input lengths",
    ),
    "file": Workload(
        _file,
        ("dataset_path", "random_output_len"),
        "JSONL {prompt, output_len} or ShareGPT rows from --dataset-path",
        required=("dataset_path",),
    ),
    "shared-prefix": Workload(
        _shared_prefix,
        ("num_prefixes", "prefix_len", "suffix_len", "random_output_len", "seed"),
        "a few long shared prefixes, each request a unique suffix (prefix caching)",
    ),
    "prefix_repetition": Workload(  # vllm bench serve's name for the same workload
        _shared_prefix,
        ("num_prefixes", "prefix_len", "suffix_len", "random_output_len", "seed"),
        "vLLM's name for shared-prefix",
    ),
    "generated-shared-prefix": Workload(
        _gsp,
        (
            "gsp_num_groups",
            "gsp_prompts_per_group",
            "gsp_system_prompt_len",
            "gsp_question_len",
            "gsp_output_len",
            "seed",
        ),
        "SGLang's gsp: groups x prompts per group, each group one system prompt (num_prompts unused)",
    ),
    "custom": Workload(  # vllm bench serve's name for a JSONL prompt file
        _file,
        ("dataset_path", "random_output_len"),
        "vLLM's name for file",
        required=("dataset_path",),
    ),
    "multi-turn": Workload(
        _multi_turn,
        (
            "num_turns",
            "think_time_s",
            "random_input_len",
            "random_output_len",
            "random_range_ratio",
            "seed",
        ),
        "num_prompts/num_turns conversations; each turn's prompt holds the history",
    ),
    "trace": Workload(
        _trace,
        ("dataset_path", "trace_speedup", "seed"),
        "replay a CSV trace (BurstGPT columns or timestamp,input_len,output_len)",
        required=("dataset_path",),
    ),
}


def workload_problem(cfg) -> str | None:
    """Why `cfg` (a BenchConfig) names no runnable workload, or None if it does."""
    entry = WORKLOADS.get(cfg.dataset_name)
    if entry is None:
        return f"dataset_name={cfg.dataset_name!r}: use one of {', '.join(WORKLOADS)}"
    missing = [f for f in entry.required if getattr(cfg, f) in (None, "")]
    if missing:
        flags = ", ".join("--" + f.replace("_", "-") for f in missing)
        return f"dataset_name {cfg.dataset_name!r} needs {flags}"
    return None


def build_workload(cfg, tokenizer) -> list[Request]:
    """The requests of `cfg.dataset_name`, built by its entry in `WORKLOADS`."""
    problem = workload_problem(cfg)
    if problem:
        raise ValueError(problem)
    return WORKLOADS[cfg.dataset_name].build(cfg, tokenizer)
