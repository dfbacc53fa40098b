"""A second, independent tool: guidellm at two constant rates against our harness.

Same server, same prompt file (JSONL rows with `prompt` and `output_tokens_count`, which
guidellm's column mapper reads), the same rates, at the same time: ours starts when guidellm's
first request reaches the server (its /metrics request gauges), so both measure the same
batches through the same moments (on a small shared machine the server's speed moves by tens
of percent between runs a minute apart, more than the tools differ). guidellm's constant profile spaces arrivals
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
import time
from collections.abc import Callable
from pathlib import Path

from common.results import REPO_ROOT, get_logger
from week2_serving.harness import bench, server_metrics

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


def run_ours(
    url: str, model: str, model_dir: str, prompts: Path, rate: float, count: int, warmups: int = 1
) -> dict:
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
        num_warmups=warmups,
        save=False,
    )
    return bench.main(cfg)


def wait_until_sending(url: str, proc: subprocess.Popen, timeout_s: float = 300.0) -> None:
    """Return once the server holds a request (guidellm has started sending: its start-up,
    imports and tokenizer, takes seconds); RuntimeError if guidellm exits or times out first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return  # it ended already (an error, read by the caller from its exit status)
        busy = server_metrics.requests_in_flight(url)
        if busy is None:
            raise RuntimeError(f"{url}/metrics has no request gauges: cannot align the tools")
        if busy > 0:
            return
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError(f"guidellm sent nothing to {url} in {timeout_s:g} s")


def run_together(
    url: str, model: str, model_dir: str, prompts: Path, rate: float, count: int, path: Path
) -> tuple[dict, dict, dict[str, float]]:
    """guidellm and ours at `rate` each, at the same time, on the same server: (guidellm's
    row, ours, each client's CPU seconds). Ours starts when guidellm's first request reaches
    the server, so both measure the same batches through the same moments of the machine."""
    cmd = guidellm_command(url, model, model_dir, prompts, [rate], count, path)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=path.parent,
        env=guidellm_env(),
    )  # fmt: skip
    try:
        wait_until_sending(url, proc)
        own = time.process_time()
        ours = run_ours(url, model, model_dir, prompts, rate, count, warmups=0)
        own = time.process_time() - own
        _, err = proc.communicate(timeout=1800)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"guidellm failed ({proc.returncode}):\n{(err or '')[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    theirs_cpu = (after.ru_utime - kids.ru_utime) + (after.ru_stime - kids.ru_stime)
    return parse_guidellm(path)[0], ours, {"guidellm": theirs_cpu, "ours": own}


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
    """`rounds` rounds; in each, at every rate, guidellm and ours run *at the same time* on
    the same server (`run_together`), each at that rate: the server serves both (twice the
    rate in all), and per rate and metric the medians over rounds are compared. On a small
    shared machine the server's speed moves by tens of percent from one run to the next, a
    minute apart; side by side, both tools see the same moments."""
    if not GUIDELLM.exists():
        return {"skipped": f"{GUIDELLM} not found: run `make setup-guidellm`"}
    per_round = []
    cmd: list[str] = []
    for r in range(rounds):
        g, o, cpu = [], [], {"guidellm": 0.0, "ours": 0.0}
        for i, rate in enumerate(rates):
            path = out / f"guidellm-round{r}-rate{i}.json"
            cmd = guidellm_command(url, model, model_dir, prompts, [rate], count, path)
            theirs, ours, used = run_together(url, model, model_dir, prompts, rate, count, path)
            g.append(theirs)
            o.append(ours)
            for k, v in used.items():
                cpu[k] += v
        per_round.append(
            {
                "round": r,
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
        "together": True,  # both tools at once, each at the rate
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
