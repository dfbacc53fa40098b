"""A second, independent tool: guidellm at two constant rates against our harness.

Same server, same prompt file (JSONL rows with `prompt` and `output_tokens_count`, which
guidellm's column mapper reads), the same rates. guidellm's constant profile spaces arrivals
evenly; ours is asked for the same with a gamma shape so large (`CONSTANT_BURSTINESS`) that the
gaps vary by about 1%. Compared per rate: request throughput, output tokens/s, mean TTFT and
mean TPOT, within a relative tolerance.

Same requests: guidellm's bodies get our greedy temperature and no per-chunk usage
(`SAME_BODY`), else the server does other work for each tool. Like with like (guidellm 0.8's
metrics module): a request's `inter_token_latency_ms` is
(last token − first token) / (n − 1), vLLM's TPOT (ours ends at the stream's end, a few
microseconds later); but guidellm's *mean* of it weighs each request by its n − 1 decode
tokens, so it is total decode time / total decode tokens: our token-weighted TPOT
(`mean_tpot_token_weighted_ms`, tpot_weights.py), not the request-weighted `mean_tpot_ms` of
`vllm bench serve`. With lengths that vary (range ratio 0.5) under load the two part: the long
requests decode through more of the crowded moments. guidellm's `time_per_output_token_ms`
divides the whole time up to the last token, first token included, by n (and weighs by n):
compared with nothing. Request throughput is completed requests / measured time for both;
output tokens are the server's own counts (its usage) for both.
guidellm lives in its own venv (`make setup-guidellm`:
.venvs/guidellm, pinned in constraints/guidellm.txt); without it the check says so and is
skipped.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
from collections.abc import Callable
from pathlib import Path

from common.results import REPO_ROOT, get_logger
from week2_serving.harness import bench

log = get_logger("week2.guidellm")
GUIDELLM = REPO_ROOT / ".venvs" / "guidellm" / "bin" / "guidellm"
# guidellm sends from 10 worker processes by default; on a few cores they take CPU from the
# server (its API process shares the clients' core in validate) and inflate what guidellm
# measures. One worker process (asyncio inside, as our client) loads the machine as ours does.
GUIDELLM_WORKERS = 1
CONSTANT_BURSTINESS = 1e4  # gamma shape: gaps of CV 1/sqrt(1e4) = 1%, i.e. constant
# Merged into each of guidellm's request bodies so that both tools ask for the same work: by
# default it sends no temperature (the server then samples at its default instead of our
# greedy 0) and asks for usage in every streamed chunk (continuous_usage_stats: more work per
# chunk in the server's API process, which ours does not ask for).
SAME_BODY = {"temperature": 0.0, "stream_options": {"continuous_usage_stats": False}}
# ours -> guidellm's metric (its mean over successful requests)
METRIC_MAP = {
    "request_throughput": "requests_per_second",
    "output_throughput": "output_tokens_per_second",
    "mean_ttft_ms": "time_to_first_token_ms",
    "mean_tpot_token_weighted_ms": "inter_token_latency_ms",  # both token-weighted
}


def guidellm_command(
    url: str, model: str, tokenizer: str, prompts: Path, rates: list[float], count: int, out: Path
) -> list[str]:
    """guidellm run: the completions API, constant rates, `count` requests each, JSON out."""
    profile = json.dumps({"kind": "constant", "rate": rates})
    return [
        str(GUIDELLM),
        "run",
        "--backend",
        json.dumps(
            {
                "kind": "openai_http",
                "target": url,
                "model": model,
                "request_format": "/v1/completions",
                "extras": {"body": SAME_BODY},
            }
        ),
        "--profile",
        profile,
        "--constraint",
        f"kind=max_requests,count={count}",
        "--data",
        f"kind=json_file,path={prompts}",
        "--tokenizer",
        f"kind=huggingface_auto,model={tokenizer}",
        "--output",
        f"kind=json,path={out}",
        "--disable-console",
    ]


def guidellm_env(workers: int = GUIDELLM_WORKERS) -> dict[str, str]:
    """guidellm's environment: this one, with its worker-process count set."""
    return {**os.environ, "GUIDELLM__MAX_WORKER_PROCESSES": str(workers)}


def parse_guidellm(path: Path) -> list[dict]:
    """One row per benchmark of guidellm's benchmarks.json: its rate and our metric names."""
    data = json.loads(Path(path).read_text())
    rows = []
    for b in data["benchmarks"]:
        m = b["metrics"]
        row = {"rate": b["config"]["strategy"].get("rate")}
        for ours, theirs in METRIC_MAP.items():
            row[ours] = m[theirs]["successful"]["mean"]
        row["completed"] = m["request_totals"]["successful"]
        row["failed"] = m["request_totals"]["errored"]
        rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no benchmark")
    return rows


def compare(ours: dict, theirs: dict, tolerance: float) -> dict:
    """Per metric: both values, the relative difference (vs guidellm) and the verdict."""
    out = {}
    for k in METRIC_MAP:
        o, t = ours[k], theirs[k]
        diff = (o - t) / t if t else float("inf")
        out[k] = {"ours": o, "guidellm": t, "relative_diff": diff, "within": abs(diff) <= tolerance}
    return out


def run_ours(url: str, model: str, model_dir: str, prompts: Path, rate: float, count: int) -> dict:
    """Our harness at `rate` on the same prompt file, arrivals spaced as guidellm's constant."""
    cfg = bench.BenchConfig(
        base_url=url,
        model=model,
        tokenizer=model_dir,
        dataset_name="file",
        dataset_path=str(prompts),
        num_prompts=count,
        request_rate=rate,
        burstiness=CONSTANT_BURSTINESS,
        num_warmups=1,
        save=False,
    )
    return bench.main(cfg)


def run_check(
    url: str,
    model: str,
    model_dir: str,
    prompts: Path,
    rates: list[float],
    count: int,
    out: Path,
    rounds: int = 3,
) -> dict:
    """`rounds` rounds, each guidellm at every rate (one run of it) and ours at the same rates,
    who goes first alternating; per rate and metric the medians over rounds are compared. A
    server's speed drifts over minutes on a small shared machine: one run of each, a minute
    apart, differs by more than the tools do."""
    if not GUIDELLM.exists():
        return {"skipped": f"{GUIDELLM} not found: run `make setup-guidellm`"}
    per_round = []
    cmd: list[str] = []
    for r in range(rounds):
        path = out / f"guidellm-round{r}.json"
        cmd = guidellm_command(url, model, model_dir, prompts, rates, count, path)

        def theirs(cmd=cmd, path=path) -> list[dict]:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=1800, cwd=out, env=guidellm_env()
            )
            if proc.returncode != 0:
                raise RuntimeError(f"guidellm failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
            return parse_guidellm(path)

        def ours() -> list[dict]:
            return [run_ours(url, model, model_dir, prompts, rate, count) for rate in rates]

        cpu: dict[str, float] = {}
        if r % 2 == 0:
            g, o = cpu_seconds(theirs, cpu, "guidellm"), cpu_seconds(ours, cpu, "ours")
        else:
            o, g = cpu_seconds(ours, cpu, "ours"), cpu_seconds(theirs, cpu, "guidellm")
        per_round.append(
            {
                "round": r,
                "first": "guidellm" if r % 2 == 0 else "ours",
                "guidellm": g,
                "ours": [{k: res[k] for k in (*METRIC_MAP, "mean_tpot_ms")} for res in o],
                # CPU seconds per request of each client (all rates): the load each puts on
                # the machine beside the server it measures
                "client_cpu_s_per_request": {k: v / (count * len(rates)) for k, v in cpu.items()},
            }
        )
    cpu = {
        tool: statistics.median(r["client_cpu_s_per_request"][tool] for r in per_round)
        for tool in ("guidellm", "ours")
    }
    return {
        "command": cmd,
        "rounds": per_round,
        "rows": combine_rounds(per_round, rates),
        "client_cpu_s_per_request": cpu,  # median over rounds
    }


def cpu_seconds(run: Callable[[], list[dict]], into: dict[str, float], name: str) -> list[dict]:
    """run(), adding the CPU seconds it took to into[name]: this process's own (our client
    runs in it) plus those of the child processes that ended meanwhile (guidellm)."""

    def now() -> float:
        own, kids = (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    start = now()
    try:
        return run()
    finally:
        into[name] = now() - start


def combine_rounds(per_round: list[dict], rates: list[float]) -> list[dict]:
    """Per rate: each metric's median over rounds for both tools, compared (the verdict's
    tolerance is applied by `verdict`)."""
    rows = []
    for i, rate in enumerate(rates):
        theirs = {k: statistics.median(r["guidellm"][i][k] for r in per_round) for k in METRIC_MAP}
        ours = {k: statistics.median(r["ours"][i][k] for r in per_round) for k in METRIC_MAP}
        row = {"rate": rate, "rounds": len(per_round), **compare(ours, theirs, 1.0)}
        request_weighted = statistics.median(r["ours"][i]["mean_tpot_ms"] for r in per_round)
        row["ours_mean_tpot_request_weighted_ms"] = request_weighted  # shown, not judged
        rows.append(row)
    return rows


def verdict(result: dict, tolerance: float) -> dict:
    """Mark each compared metric within `tolerance` or not; all_within for the whole check."""
    if "rows" not in result:
        return result
    ok = True
    for row in result["rows"]:
        for k in METRIC_MAP:
            row[k]["within"] = abs(row[k]["relative_diff"]) <= tolerance
            ok &= row[k]["within"]
    return {**result, "tolerance": tolerance, "all_within_tolerance": ok}
