"""Repeated runs: the prefix-cache reset between them, and their median with min–max.

One run of a load test is one sample: on a shared machine two identical runs differ by more
than many of the effects a sweep looks for. `--num-runs N` repeats the measured part (the
warm-up runs once, before the first), and every number reported is the median of the N runs,
with the smallest and largest beside it (`spread`).

Between runs the server's prefix cache is emptied (`POST /reset_prefix_cache`: vLLM serves it
when started with VLLM_SERVER_DEV_MODE=1, our engine always), so run 2 does not find run 1's
prompts cached. A server without the route is measured anyway, and the results say so
(`prefix_cache_reset`).
"""

from __future__ import annotations

import statistics

import httpx

# the metrics whose spread over runs the results carry (and the tables show)
SPREAD_KEYS = (
    "request_throughput",
    "request_goodput",
    "output_throughput",
    "total_token_throughput",
    "mean_ttft_ms",
    "median_ttft_ms",
    "p99_ttft_ms",
    "mean_tpot_ms",
    "median_tpot_ms",
    "p99_tpot_ms",
    "mean_tpot_token_weighted_ms",
    "p99_tpot_token_weighted_ms",
    "mean_itl_ms",
    "median_itl_ms",
    "p99_itl_ms",
    "mean_e2el_ms",
    "median_e2el_ms",
    "p99_e2el_ms",
)
PER_RUN_DROPPED = ("requests", "config", "environment", "server", "per_turn")


def reset_prefix_cache(base_url: str, api_key: str | None = None, timeout_s: float = 30) -> str:
    """Empty the server's prefix cache: "reset", or why not ("unsupported: HTTP 404", ...)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        resp = httpx.post(
            base_url.rstrip("/") + "/reset_prefix_cache",
            json={},
            headers=headers,
            timeout=timeout_s,
        )
    except httpx.HTTPError as e:
        return f"failed: {type(e).__name__}: {e}"
    if resp.status_code in (404, 405):
        return f"unsupported: HTTP {resp.status_code} (vLLM: start it with VLLM_SERVER_DEV_MODE=1)"
    if resp.status_code != 200:
        return f"failed: HTTP {resp.status_code}: {resp.text[:200]}"
    return "reset"


def spread(runs: list[dict], keys: tuple[str, ...] = SPREAD_KEYS) -> dict[str, dict]:
    """{key: {median, min, max, values}} over the runs that carry a number for the key."""
    out = {}
    for key in keys:
        values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
        if values:
            out[key] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
                "values": values,
            }
    return out


def combine_runs(runs: list[dict]) -> dict:
    """One results document from N runs' documents: every number the median over runs, the
    runs' own numbers under `runs`, `spread` (median, min, max) and every request, tagged with
    its run. One run comes back as it was (with num_runs = 1)."""
    if not runs:
        raise ValueError("no run to combine")
    if len(runs) == 1:
        return {**runs[0], "num_runs": 1}
    out = dict(runs[-1])
    for key, value in runs[-1].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
            out[key] = statistics.median(values)
    out["num_runs"] = len(runs)
    out["runs"] = [{k: v for k, v in r.items() if k not in PER_RUN_DROPPED} for r in runs]
    out["spread"] = spread(runs)
    out["requests"] = [{**q, "run": i} for i, r in enumerate(runs) for q in r.get("requests", [])]
    return out


def with_range(res: dict, key: str, fmt: str = "{:.1f}") -> str:
    """`median [min–max]` of `key` when the results hold several runs, else the value."""
    s = (res.get("spread") or {}).get(key)
    if s and res.get("num_runs", 1) > 1:
        return f"{fmt.format(s['median'])} [{fmt.format(s['min'])}–{fmt.format(s['max'])}]"
    value = res.get(key)
    return fmt.format(value) if isinstance(value, (int, float)) else "n/a"
