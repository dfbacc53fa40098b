"""The benchmark's settings: `BenchConfig`, and its command line with vLLM's flag names.

One dataclass holds every setting, its default and (in the comment beside it) its meaning;
`bench_parser()` turns it into `python -m week2_serving.harness.bench`'s flags (common.cli),
with three fields spelled as `vllm bench serve` spells them: `--goodput ttft:200 tpot:20`,
`--metric-percentiles 50,90,99` and `--request-timeout SECONDS`.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from typing import Literal

from common.cli import build_parser
from week2_serving.harness.client import BACKENDS, Backend
from week2_serving.harness.metrics import DEFAULT_PERCENTILES
from week2_serving.harness.workloads import WORKLOADS, workload_problem

NOT_ON_CLI = {"cli": False}


@dataclass
class BenchConfig:
    """Load-test an OpenAI-compatible server and measure it (flags as `vllm bench serve`)."""

    base_url: str = "http://127.0.0.1:8000"  # the server's address
    backend: Backend = "openai"  # the API to speak
    model: str | None = None  # served model name (none: the first of /v1/models)
    # HF folder or hub id for token-exact prompts (none: the served model's path)
    tokenizer: str | None = None
    dataset_name: str = "random"  # the workload (a name in workloads.WORKLOADS)
    dataset_path: str | None = None  # JSONL / ShareGPT file for --dataset-name file
    num_prompts: int = 64  # requests in the run
    random_input_len: int = 64  # mean prompt tokens (random workload)
    random_output_len: int = 64  # mean output tokens (max_tokens)
    random_range_ratio: float = 0.0  # lengths uniform in [len*(1-r), len*(1+r)]
    # output lengths: uniform (vLLM's) or exponential with a long tail (capped at 6x the mean)
    random_output_dist: Literal["uniform", "exponential"] = "uniform"
    prefix_len: int = 256  # tokens of each shared prefix (shared-prefix workload)
    suffix_len: int = 32  # unique tokens after the prefix (shared-prefix workload)
    num_prefixes: int = 4  # distinct prefixes (shared-prefix workload)
    gsp_num_groups: int = 4  # groups, each its own system prompt (generated-shared-prefix)
    gsp_prompts_per_group: int = 16  # requests per group (generated-shared-prefix)
    gsp_system_prompt_len: int = 256  # tokens of each group's system prompt
    gsp_question_len: int = 32  # tokens of each request's question after it
    gsp_output_len: int = 64  # output tokens per request (generated-shared-prefix)
    num_turns: int = 4  # turns per conversation (multi-turn; num_prompts/num_turns conversations)
    think_time_s: float = 1.0  # seconds between a reply and the next turn (multi-turn)
    trace_speedup: float = 1.0  # replay a trace this many times faster than recorded (trace)
    max_concurrency: int | None = None  # cap on requests in flight (none: no cap)
    request_rate: float = math.inf  # requests/s; inf = send all at once (up to max_concurrency)
    burstiness: float = 1.0  # gamma shape of inter-arrival times: 1 = Poisson, <1 burstier
    seed: int = 0  # seeds the workload and the arrival times
    num_warmups: int = 2  # untimed requests before the first run (their own prompts)
    num_runs: int = 1  # measured runs; the results are their medians, with min-max beside
    # POST /reset_prefix_cache before each run (vLLM with VLLM_SERVER_DEV_MODE=1, our engine)
    reset_prefix_cache: bool = True
    ignore_eos: bool = True  # generate exactly max_tokens (as vllm bench serve)
    # SLOs in ms, e.g. {"ttft": 200, "tpot": 20}; on the command line --goodput ttft:200 tpot:20
    goodput: dict[str, float] = field(default_factory=dict, metadata=NOT_ON_CLI)
    # statistics reported besides mean and median; on the command line --metric-percentiles
    percentiles: tuple[float, ...] = field(default=DEFAULT_PERCENTILES, metadata=NOT_ON_CLI)
    # seconds one request may take; on the command line --request-timeout
    request_timeout_s: float = field(default=300.0, metadata=NOT_ON_CLI)
    api_key: str | None = None  # sent as a Bearer token
    run_name: str | None = None  # results folder name (none: from backend, workload, load)
    save: bool = field(default=True, metadata=NOT_ON_CLI)  # write results.json
    # recorded as is (the launcher fills it)
    server_info: dict = field(default_factory=dict, metadata=NOT_ON_CLI)
    offline: bool | None = None  # a hub-id tokenizer must be cached (none: HF_HUB_OFFLINE decides)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r}: use one of {', '.join(BACKENDS)}")
        problem = workload_problem(self)
        if problem:
            raise ValueError(problem)
        if self.num_runs < 1:
            raise ValueError(f"num_runs={self.num_runs} must be >= 1")
        if self.num_turns < 1 or self.think_time_s < 0 or not self.trace_speedup > 0:
            raise ValueError(
                f"num_turns={self.num_turns} must be >= 1, think_time_s={self.think_time_s} "
                f">= 0 and trace_speedup={self.trace_speedup} > 0"
            )
        if self.num_prompts < 1:
            raise ValueError(f"num_prompts={self.num_prompts} must be >= 1")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency={self.max_concurrency} must be >= 1")
        if not self.request_rate > 0:
            raise ValueError(f"request_rate={self.request_rate} must be > 0 (inf = all at once)")
        if not self.burstiness > 0:
            raise ValueError(f"burstiness={self.burstiness} must be > 0")
        if self.run_name is None:
            conc = self.max_concurrency or "inf"
            self.run_name = (
                f"bench-{self.backend}-{self.dataset_name}-c{conc}-r{self.request_rate:g}"
            )


def goodput_item(item: str) -> tuple[str, float]:
    """One `--goodput` word, METRIC:MS."""
    key, _, value = item.partition(":")
    try:
        if key in ("ttft", "tpot", "e2el") and value:
            return key, float(value)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"--goodput {item!r}: use ttft:MS, tpot:MS or e2el:MS")


def parse_goodput(items: list[str] | None) -> dict[str, float]:
    return dict(goodput_item(item) for item in items or [])


def percentile_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: use comma-separated numbers, e.g. 50,90,99"
        ) from None


def bench_parser(description: str | None = None) -> argparse.ArgumentParser:
    """BenchConfig's flags, with the workload table's choices and vLLM's three spellings."""
    p = build_parser(BenchConfig, description=description)
    for action in p._actions:  # the workload table decides the choices
        if action.dest == "dataset_name":
            action.choices = list(WORKLOADS)
            action.metavar = "{" + ",".join(WORKLOADS) + "}"
            action.help += ": " + "; ".join(f"{k}: {w.description}" for k, w in WORKLOADS.items())
    shown = ",".join(f"{x:g}" for x in BenchConfig.percentiles)
    p.add_argument(
        "--goodput",
        nargs="*",
        type=goodput_item,
        metavar="METRIC:MS",
        help="SLOs in ms, e.g. ttft:200 tpot:20 (default: none)",
    )
    p.add_argument(
        "--metric-percentiles",
        dest="percentiles",
        type=percentile_list,
        metavar="P,P,...",
        help=f"percentiles to report, comma-separated (default: {shown})",
    )
    p.add_argument(
        "--request-timeout",
        dest="request_timeout_s",
        type=float,
        metavar="SECONDS",
        help=f"seconds one request may take (default: {BenchConfig.request_timeout_s:g})",
    )
    return p
