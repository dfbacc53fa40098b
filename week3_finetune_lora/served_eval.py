"""Served evaluation: every adapter scored through the server and locally, saved as it goes.

Per adapter, the same held-out rows are answered by the server (vLLM) and by the same weights
run locally (HF + peft), and scored by the same scorer. Requests the server did not answer
properly (status, body) are *failed*: counted, their errors kept, their prompts not scored,
and the other adapters still run. The run's results.json is rewritten (atomically) after
every adapter, so an interrupted run keeps what it measured, and a rerun with the same
settings takes the finished adapters from it instead of scoring them again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from common.results import get_logger, read_json, write_results
from week3_finetune_lora.generation import (
    ServedAnswers,
    ServedError,
    complete_served,
    completions_payload,
    parse_completions,
)
from week3_finetune_lora.multilora import has_task, task_of
from week3_finetune_lora.scoring import evaluate_rows

log = get_logger("week3.served")

Generate = Callable[[list[str]], list[str]]
# (adapter folder, rows) -> a local generate function and the max new tokens for these rows
LocalFactory = Callable[[str, list[dict]], tuple[Generate, int]]
RowsFor = Callable[[str], list[dict]]  # task -> held-out rows
RESUME_KEYS = ("model", "data_dir", "eval_limit", "dtype")  # settings a reused score needs


class RunRecord:
    """A run's results.json, kept on disk: `save()` after each step writes it atomically."""

    def __init__(self, path: Path, config: dict, resume: bool = True) -> None:
        self.path = Path(path)
        self.data: dict = {"config": config, "scores": [], "failed_requests": 0}
        self.previous: dict[tuple[str, str], dict] = {}
        if resume and self.path.is_file():
            old = read_json(self.path)
            if all(old.get("config", {}).get(k) == config.get(k) for k in RESUME_KEYS):
                for s in old.get("scores", []):
                    if s.get("failed_requests") == 0:
                        self.previous[(s["adapter"], s["adapter_dir"])] = s

    def finished(self, name: str, adapter_dir: str) -> dict | None:
        """The score of `name` from an earlier run with the same settings, if it completed."""
        return self.previous.get((name, str(adapter_dir)))

    def add_score(self, row: dict) -> None:
        self.data["scores"].append(row)
        self.data["failed_requests"] += row["failed_requests"]
        self.save()

    def save(self) -> Path:
        return write_results(self.path, self.data)


def score_adapter(
    name: str, adapter_dir: str, rows: list[dict], local: Generate, served: Callable
) -> dict:
    """One adapter's local and served scores on `rows`; `served(prompts)` -> ServedAnswers."""
    local_res = evaluate_rows(rows, local)
    answers: ServedAnswers = served([r["prompt"] for r in rows])
    served_res = evaluate_rows(rows, lambda _: answers.outputs)
    both = [(a, b) for a, b in zip(local_res["per_row"], served_res["per_row"]) if b is not None]
    exact = served_res["exact_match"]
    return {
        "adapter": name,
        "adapter_dir": str(adapter_dir),
        "task": task_of(name),
        "n": len(rows),
        "local_exact": local_res["exact_match"],
        "served_exact": exact,  # over the answered rows; None if no request succeeded
        "served_n": served_res["n"],
        "diff_points": None if exact is None else 100 * (exact - local_res["exact_match"]),
        "same_verdict_rate": sum(a == b for a, b in both) / len(both) if both else None,
        "failed_requests": answers.failed_requests,
        "errors": answers.errors[:5],
        "served_examples": served_res["examples"][:3],
    }


def _log_score(row: dict) -> None:
    if row["served_exact"] is None:
        log.error("%s: every served request failed: %s", row["adapter"], row["errors"][:1])
        return
    log.info(
        "%s: served %.1f%% vs local %.1f%% (%+.1f points), %d failed request(s)",
        row["adapter"],
        100 * row["served_exact"],
        100 * row["local_exact"],
        row["diff_points"],
        row["failed_requests"],
    )


def score_adapters(
    url: str,
    adapters: dict[str, str],
    record: RunRecord,
    rows_for: RowsFor,
    local_for: LocalFactory,
) -> None:
    """Score each adapter (served vs local) into `record`, saving it after each one."""
    for name, adapter_dir in adapters.items():
        if not has_task(name):
            log.warning("adapter %s: no task %r in tasks.TASKS, not scored", name, task_of(name))
            continue
        done = record.finished(name, adapter_dir)
        if done is not None:
            log.info("%s: finished in an earlier run, kept (rerun with --no-resume to redo)", name)
            record.add_score(done)
            continue
        rows = rows_for(task_of(name))
        local, n_new = local_for(adapter_dir, rows)
        row = score_adapter(
            name,
            adapter_dir,
            rows,
            local,
            lambda prompts, a=name, n=n_new: complete_served(url, a, prompts, n),
        )
        _log_score(row)
        record.add_score(row)


async def _ask_all(url: str, asks: list[tuple[str, dict]]) -> list[dict]:
    async with httpx.AsyncClient(timeout=120) as c:

        async def one(model: str, row: dict) -> dict:
            out = {"adapter": model, "prompt": row["prompt"], "expected": row["completion"]}
            try:
                r = await c.post(
                    url + "/v1/completions", json=completions_payload(model, row["prompt"], 10)
                )
                return {**out, "output": parse_completions(r.status_code, r.text, 1, model)[0]}
            except (ServedError, httpx.HTTPError) as e:
                return {**out, "output": None, "error": str(e) or repr(e)}

        return list(await asyncio.gather(*[one(m, r) for m, r in asks]))


def cross_check(url: str, names: Sequence[str], rows_for: RowsFor) -> dict:
    """One prompt per task sent to every adapter in one batch of concurrent requests: each
    adapter must answer its own task, so the outputs differ by adapter. A failed request is
    kept with its error (output None)."""
    prompts: dict[str, dict] = {}
    for name in names:
        if has_task(name) and task_of(name) not in prompts:
            prompts[task_of(name)] = rows_for(task_of(name))[0]
    answers = asyncio.run(_ask_all(url, [(n, r) for n in names for r in prompts.values()]))
    return {"answers": answers, "failed_requests": sum("error" in a for a in answers)}


def bench_models(url: str, tokenizer_dir: str, models: list[str], label: str, load: dict) -> dict:
    """Week 2's load harness with random prompts, request i sent to models[i % len(models)].

    `load`: prompts, concurrency, input_len, output_len (the run's load shape)."""
    from transformers import AutoTokenizer

    from week2_serving.harness import BenchConfig, compute_metrics, random_requests, run_load

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    bc = BenchConfig(
        base_url=url,
        num_prompts=load["prompts"],
        random_input_len=load["input_len"],
        random_output_len=load["output_len"],
        max_concurrency=load["concurrency"],
        save=False,
        run_name=label,
    )
    reqs = random_requests(
        tok, bc.num_prompts, bc.random_input_len, bc.random_output_len, 0.0, bc.seed, True
    )
    for i, r in enumerate(reqs):
        r.extra["model"] = models[i % len(models)]  # round-robin over the adapters

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    records, duration = asyncio.run(run_load(bc, reqs, models[0], count, progress=False))
    m = compute_metrics(records, duration)
    log.info(
        "%s: %.0f output tok/s, mean TTFT %.0f ms, mean TPOT %.1f ms, failed %d",
        label,
        m["output_throughput"],
        m["mean_ttft_ms"],
        m["mean_tpot_ms"],
        m["failed"],
    )
    keys = ("output_throughput", "mean_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "failed")
    return {"label": label, "models": models, **{k: m[k] for k in keys}}
