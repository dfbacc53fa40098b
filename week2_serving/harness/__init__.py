"""The load-test harness: start a server, send it a workload, measure it as `vllm bench serve`
does, sweep its levers, and write the one-page report.

    with launch_server("vllm", "runs/week1/hf-model") as server:
        results = run_bench(BenchConfig(base_url=server.url, num_prompts=64, max_concurrency=8))

Modules, in the order a request meets them: `launch` (servers), `workloads` (the requests,
one table of workloads), `client` (one streamed request), `bench` (a run: arrivals,
concurrency, results), `metrics` (TTFT, TPOT, ITL, goodput), `server_metrics` (the server's
own counters from /metrics), `sweep` + `cells` + `sweep_config` (servers × loads, resumable),
`report` (tables, plots, roofline), `validate` (ours against `vllm bench serve` and guidellm).
Capacity: `rates` (open-loop rate sweeps), `slo` (SLO terms, bisection), `capacity` (the
highest rate meeting an SLO, checked and priced); `repeats` (--num-runs, prefix-cache reset).
Workloads beyond random/file/shared-prefix: `multiturn`, `gsp`, `traces` (replay + generator).
Other packages import from here, not from the modules. The launcher is exported as
`launch_server`: the name `launch` stays the module, so `harness.launch.preflight` and the like
keep working (a function of the same name would hide the module).
"""

from week2_serving.harness.bench import BenchConfig, run_load
from week2_serving.harness.bench import main as run_bench
from week2_serving.harness.capacity_search import search_capacity
from week2_serving.harness.client import BACKENDS, Request, send_request
from week2_serving.harness.gsp import generated_shared_prefix_requests
from week2_serving.harness.launch import ENGINES, Machine
from week2_serving.harness.launch import launch as launch_server
from week2_serving.harness.metrics import RequestRecord, compute_metrics
from week2_serving.harness.multiturn import TurnRequest, multi_turn_requests
from week2_serving.harness.report import Section, load_cells
from week2_serving.harness.report import build as build_report
from week2_serving.harness.server_metrics import scrape as scrape_server_metrics
from week2_serving.harness.slo import SLOTerm, parse_term
from week2_serving.harness.sweep import resolve_model, run_sweep, sweep_dir
from week2_serving.harness.sweep_config import SweepConfig
from week2_serving.harness.traces import TimedRequest, trace_requests
from week2_serving.harness.workloads import (
    WORKLOADS,
    Workload,
    file_requests,
    random_requests,
    shared_prefix_requests,
)

__all__ = [
    "BACKENDS",
    "ENGINES",
    "WORKLOADS",
    "BenchConfig",
    "Machine",
    "Request",
    "RequestRecord",
    "SLOTerm",
    "Section",
    "SweepConfig",
    "TimedRequest",
    "TurnRequest",
    "Workload",
    "search_capacity",
    "build_report",
    "compute_metrics",
    "file_requests",
    "generated_shared_prefix_requests",
    "launch_server",
    "load_cells",
    "multi_turn_requests",
    "parse_term",
    "random_requests",
    "resolve_model",
    "run_bench",
    "run_load",
    "run_sweep",
    "scrape_server_metrics",
    "send_request",
    "shared_prefix_requests",
    "sweep_dir",
    "trace_requests",
]
