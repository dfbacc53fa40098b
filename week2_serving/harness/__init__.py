"""The load-test harness: launch a server, drive it with a workload, measure, sweep, report."""

# Placeholder exports for week 3 (the lead merges the harness API helper's version of this file).
from week2_serving.harness.bench import BenchConfig, run_load
from week2_serving.harness.launch import launch
from week2_serving.harness.metrics import compute_metrics
from week2_serving.harness.workloads import random_requests

__all__ = ["BenchConfig", "compute_metrics", "launch", "random_requests", "run_load"]
