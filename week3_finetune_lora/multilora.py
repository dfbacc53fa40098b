"""One vLLM server, many LoRA adapters: finding them, checking them, the server's flags.

vLLM serves adapters with

    --enable-lora --lora-modules reverse=DIR sort=DIR ... --max-lora-rank R --max-loras K

and a request picks its adapter by `"model": "<name>"` (the base answers to its own name).
`--max-lora-rank` must be one of the values vLLM accepts and at least every adapter's rank;
`--max-loras` is how many adapters one batch may mix. Every adapter is checked against the
base (fingerprint and shapes) before vLLM starts, so a bad one fails at once with its name.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch

from week3_finetune_lora.adapters import AdapterError, adapter_rank, check_adapter_base
from week3_finetune_lora.generation import ServedError, complete_served
from week3_finetune_lora.tasks import TASKS

# vLLM accepts only these values for --max-lora-rank.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
RUN_PREFIXES = ("qlora", "dpo")  # adapter names beside the plain task name: qlora-sort, ...


def discover_adapters(week_dir: Path) -> dict[str, str]:
    """{task: folder} for every runs/week3/sft-<task>/adapter, plus qlora-/dpo- ones."""
    found = {}
    for prefix in ("sft", *RUN_PREFIXES):
        for d in sorted(week_dir.glob(f"{prefix}-*/adapter")):
            task = d.parent.name.split("-", 1)[1]
            found[task if prefix == "sft" else f"{prefix}-{task}"] = str(d)
    return found


def task_of(name: str) -> str:
    """Adapter name -> its task: 'reverse', 'qlora-reverse', 'dpo-reverse' -> 'reverse'."""
    prefix, _, rest = name.partition("-")
    return rest if prefix in RUN_PREFIXES and rest else name


def has_task(name: str) -> bool:
    """Whether an adapter's task is in the table (so it has test rows to be scored on)."""
    return task_of(name) in TASKS


def pick_max_rank(adapters: dict[str, str], max_lora_rank: int | None) -> int:
    """The server's --max-lora-rank; raises AdapterError for an adapter that cannot fit."""
    ranks = {name: adapter_rank(d) for name, d in adapters.items()}
    if max_lora_rank is None:
        need = max(ranks.values(), default=1)
        fits = [r for r in VLLM_LORA_RANKS if r >= need]
        if not fits:
            raise AdapterError(f"adapter rank {need} exceeds vLLM's largest {VLLM_LORA_RANKS[-1]}")
        return fits[0]
    too_big = {n: r for n, r in ranks.items() if r > max_lora_rank}
    if too_big:
        raise AdapterError(
            f"adapter(s) {too_big} have rank above the server's --max-lora-rank {max_lora_rank}; "
            f"raise --max-lora-rank to at least {max(too_big.values())} or retrain with a smaller "
            "--rank"
        )
    return max_lora_rank


def check_adapters(model_dir: str, adapters: dict[str, str]) -> None:
    """Every adapter must be for this base (fingerprint and shapes); fail before vLLM starts."""
    from transformers import AutoModelForCausalLM

    # the fingerprint hashes the embedding in fp32: loading it in fp32 matches any trained dtype
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    for name, d in adapters.items():
        try:
            check_adapter_base(d, base)
        except AdapterError as e:
            raise AdapterError(f"adapter {name!r}: {e}") from e


def lora_args(adapters: dict[str, str], max_rank: int, max_loras: int | None = None) -> list[str]:
    """vLLM's multi-LoRA flags; max_loras = adapters resident per batch (default: all)."""
    return [
        "--enable-lora",
        "--lora-modules",
        *[f"{n}={d}" for n, d in adapters.items()],
        "--max-lora-rank",
        str(max_rank),
        "--max-loras",
        str(max_loras or max(len(adapters), 1)),
    ]


@dataclass
class AdapterPlan:
    """Which adapters a server starts with, which one is loaded at runtime, the rank limit."""

    startup: dict[str, str]  # name -> folder, given to --lora-modules
    runtime: tuple[str, str] | None  # (name, folder) loaded after start-up
    max_rank: int

    @property
    def all(self) -> dict[str, str]:
        out = dict(self.startup)
        if self.runtime:
            out[self.runtime[0]] = self.runtime[1]
        return out


def plan_adapters(
    given: dict[str, str], runtime: str | None, week_dir: Path, max_lora_rank: int | None
) -> AdapterPlan:
    """The adapters to serve: `given` or every one found under `week_dir`; by default a DPO
    adapter is kept back and loaded at runtime (`runtime` = "NAME=FOLDER" picks another)."""
    startup = dict(given) or discover_adapters(week_dir)
    if runtime:
        name, _, path = runtime.partition("=")
        late: tuple[str, str] | None = (name, path)
    else:
        dpo = [n for n in startup if n.startswith("dpo-")]
        late = (dpo[0], startup.pop(dpo[0])) if dpo else None
    if not startup:
        raise FileNotFoundError(
            f"no adapters given and none found under {week_dir}/*/adapter; run "
            "week3_finetune_lora.sft"
        )
    every = {**startup, **dict([late] if late else [])}
    return AdapterPlan(startup, late, pick_max_rank(every, max_lora_rank))


def load_runtime_adapter(url: str, name: str, path: str, prompt: str = "1") -> dict:
    """POST /v1/load_lora_adapter, timed; then the first request to it, timed. A refusal is
    recorded (`error`, `listed: False`), not raised."""
    t0 = time.perf_counter()
    r = httpx.post(
        url + "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path}, timeout=120
    )
    load_s = time.perf_counter() - t0
    out = {"name": name, "path": path, "load_seconds": load_s}
    if r.status_code != 200:
        return {**out, "listed": False, "error": f"answered {r.status_code}: {r.text[:300]}"}
    try:
        listed = [m["id"] for m in httpx.get(url + "/v1/models", timeout=10).json()["data"]]
    except (ValueError, KeyError, TypeError, httpx.HTTPError) as e:
        return {**out, "listed": False, "error": f"/v1/models: {e!r}"}
    t0 = time.perf_counter()
    first = complete_served(url, name, [prompt], 10)
    out["first_request_seconds"] = time.perf_counter() - t0
    if first.errors:
        return {**out, "listed": name in listed, "error": first.errors[0]}
    return {**out, "listed": name in listed, "first_output": first.outputs[0]}


def served_models(url: str) -> list[dict]:
    """The server's /v1/models as [{id, parent}] (an adapter's parent is the base)."""
    r = httpx.get(url + "/v1/models", timeout=10)
    if r.status_code != 200:
        raise ServedError(f"{url}/v1/models answered {r.status_code}: {r.text[:300]}")
    return [{"id": m["id"], "parent": m.get("parent")} for m in r.json()["data"]]


def merge_to_folder(model_dir: str, adapter_dir: str, out: Path, dtype: str = "float32") -> Path:
    """Fold an adapter into the base weights (W + (alpha/r)·B·A) and save a plain HF folder."""
    from transformers import AutoTokenizer

    from week3_finetune_lora.generation import load_local

    model, _ = load_local(model_dir, adapter_dir, "cpu", dtype)
    merged = model.merge_and_unload()
    merged.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out
