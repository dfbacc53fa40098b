"""The server's own counters (/metrics): parsed from Prometheus text with vLLM's names (new and
old), differenced per sweep cell, and "unavailable" (never a failed cell) when absent."""

from __future__ import annotations

import http.server
import threading

import pytest

from common.results import read_json
from common.server import free_port
from tests.test_week2_sweep import config, fake_launcher, ok, out_dir
from week2_serving.harness import server_metrics, sweep

# What vLLM's CPU server exposes (trimmed): counters with `_total` and `_created` samples, one
# label set per engine; plus metrics we do not read.
VLLM_TEXT = """\
# HELP vllm:prefix_cache_queries Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{engine="0",model_name="tiny"} 1200.0
vllm:prefix_cache_queries_created{engine="0",model_name="tiny"} 1.7e+09
vllm:prefix_cache_queries_total{engine="1",model_name="tiny"} 800.0
# HELP vllm:prefix_cache_hits Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{engine="0",model_name="tiny"} 900.0
vllm:prefix_cache_hits_total{engine="1",model_name="tiny"} 100.0
# HELP vllm:num_preemptions Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions counter
vllm:num_preemptions_total{engine="0",model_name="tiny"} 3.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 0.0
"""

OLD_VLLM_TEXT = """\
# TYPE vllm:gpu_prefix_cache_queries counter
vllm:gpu_prefix_cache_queries_total{model_name="m"} 50.0
# TYPE vllm:gpu_prefix_cache_hits counter
vllm:gpu_prefix_cache_hits_total{model_name="m"} 20.0
"""


def test_counters_are_summed_over_engines_and_created_is_ignored():
    assert server_metrics.parse_counters(VLLM_TEXT) == {
        "prefix_cache_queries": 2000.0,
        "prefix_cache_hits": 1000.0,
        "num_preemptions": 3.0,
    }


def test_older_vllm_names_are_read_too():
    assert server_metrics.parse_counters(OLD_VLLM_TEXT) == {
        "prefix_cache_queries": 50.0,
        "prefix_cache_hits": 20.0,
    }


def test_a_cell_gets_the_difference_and_its_hit_rate():
    before = {"available": True, "prefix_cache_queries": 100.0, "prefix_cache_hits": 10.0}
    after = {"available": True, "prefix_cache_queries": 300.0, "prefix_cache_hits": 160.0}
    got = server_metrics.cell_counters(before, after)
    assert got == {
        "available": True,
        "prefix_cache_queries": 200.0,
        "prefix_cache_hits": 150.0,
        "prefix_cache_hit_rate": 0.75,
    }
    missing = {"available": False, "error": "metrics unavailable: ConnectError: refused"}
    assert server_metrics.cell_counters(before, missing) == missing
    assert not server_metrics.cell_counters(missing, after)["available"]
    idle = server_metrics.cell_counters(before, before)  # no queries: no rate, not a crash
    assert idle["prefix_cache_hit_rate"] is None


class Exposition(http.server.BaseHTTPRequestHandler):
    status, body = 200, VLLM_TEXT

    def do_GET(self):
        self.send_response(self.status if self.path == "/metrics" else 404)
        self.end_headers()
        self.wfile.write(self.body.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def metrics_server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Exposition)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", Exposition
    srv.shutdown()
    Exposition.status, Exposition.body = 200, VLLM_TEXT


def test_scrape_reads_a_server_or_says_why_not(metrics_server):
    url, handler = metrics_server
    assert server_metrics.scrape(url) == {
        "available": True,
        **server_metrics.parse_counters(VLLM_TEXT),
    }
    handler.status = 500
    got = server_metrics.scrape(url)
    assert not got["available"] and "500" in got["error"]
    handler.status, handler.body = 200, "this is { not prometheus"
    assert not server_metrics.scrape(url)["available"]
    gone = server_metrics.scrape(f"http://127.0.0.1:{free_port()}", timeout_s=2)
    assert not gone["available"] and gone["error"].startswith("metrics unavailable")


def test_the_sweep_records_each_cells_counters(runs_dir):
    totals = iter([0.0, 40.0, 40.0, 100.0] + [0.0, 10.0, 30.0, 60.0])  # server a, then b

    def scraper(url):
        queries = next(totals)
        return {
            "available": True,
            "prefix_cache_queries": queries,
            "prefix_cache_hits": queries / 2,
        }

    sweep.run_sweep(config(), fake_launcher([]), ok(), scraper)
    cells = {
        f"{p.parent.parent.name}/{p.parent.name}": read_json(p)["server_metrics"]
        for p in out_dir(runs_dir).rglob("results.json")
    }
    assert cells["a/c1"]["prefix_cache_queries"] == 40.0
    assert cells["a/c8"]["prefix_cache_queries"] == 0.0  # nothing new during that cell
    assert cells["a/c32"]["prefix_cache_queries"] == 60.0
    assert cells["b/c32"] == {
        "available": True,
        "prefix_cache_queries": 30.0,
        "prefix_cache_hits": 15.0,
        "prefix_cache_hit_rate": 0.5,
    }


def test_a_server_without_metrics_is_not_a_failed_cell(runs_dir):
    sweep.run_sweep(config(), fake_launcher([]), ok())  # the real scraper: nothing listens there
    results = sorted(out_dir(runs_dir).rglob("results.json"))
    assert len(results) == 6 and not list(out_dir(runs_dir).rglob("error.json"))
    for path in results:
        counters = read_json(path)["server_metrics"]
        assert counters["available"] is False and "metrics unavailable" in counters["error"]
