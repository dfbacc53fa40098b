"""Issue #13: `--engine-process` runs the engine core in a process of its own (engine_core.py,
core_client.py). The same tokens as the engine in a thread; aborts, the prefix-cache reset and
LoRA load/unload reach the core; a killed core fails what is open and stops the server with 1;
a stopped server leaves no process behind.

Two real servers (subprocesses: the core is a child of the server, as in production): one on
the LoRA tests' tiny base (module-scoped, shared by the first tests, stopped by the last one),
one on the tiny GPT whose core the death test kills.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import psutil
import pytest

from common.server import free_port
from tests.conftest import REPO
from tests.engine_server_helpers import long_context_copy, running_server, tiny_engine, wait_until
from tests.lora_helpers import lora_folders  # noqa: F401  (a fixture)
from week2_serving.engine.sequence import SamplingParams

PROMPTS = ["the adapter", "a request", "serves one batch in"]
FLAGS = ["--device", "cpu", "--dtype", "float32", "--num-kv-blocks", "64", "--engine-process"]


def start_server(model: Path, err: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "week2_serving.engine.server", "--model", str(model)]
    cmd += ["--port", str(port), "--served-model-name", "tiny", *FLAGS, *extra]
    with open(err, "w") as err_file:
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err_file, start_new_session=True
        )  # its own process group, as a launcher starts it (and signals it)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(url + "/health") or proc.poll() is not None, 120, "start")
    except BaseException:
        proc.kill()
        raise
    assert proc.poll() is None, err.read_text()
    return proc, url


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def core_of(proc: subprocess.Popen) -> psutil.Process:
    """The server's engine core: its child started by multiprocessing's spawn."""
    kids = psutil.Process(proc.pid).children()
    cores = [k for k in kids if "spawn_main" in " ".join(k.cmdline())]
    assert len(cores) == 1, [k.cmdline() for k in kids]
    return cores[0]


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(url + "/metrics", timeout=30).text
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in /metrics")


@pytest.fixture(scope="module")
def lora_server(lora_folders, tmp_path_factory):  # noqa: F811
    err = tmp_path_factory.mktemp("core") / "server.err"
    proc, url = start_server(lora_folders["base"], err, "--enable-lora", "--max-lora-rank", "8")
    yield {"proc": proc, "url": url, "err": err, "folders": lora_folders}
    proc.kill()
    proc.wait(timeout=30)


def complete(url: str, prompt: str, stream: bool, **kw) -> str:
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 12, "temperature": 0, **kw}
    if not stream:
        r = httpx.post(url + "/v1/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]
    text = []
    with httpx.stream(
        "POST", url + "/v1/completions", json={**body, "stream": True}, timeout=60
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                text += [c["text"] for c in json.loads(line[6:])["choices"]]
    return "".join(text)


def concurrently(url: str) -> dict[tuple[str, bool], str]:
    got: dict[tuple[str, bool], str] = {}
    jobs = [(p, s) for p in PROMPTS for s in (False, True)]
    threads = [
        threading.Thread(target=lambda p=p, s=s: got.__setitem__((p, s), complete(url, p, s)))
        for p, s in jobs
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(got) == len(jobs)
    return got


def test_greedy_tokens_are_the_in_thread_servers_and_the_offline_engines(lora_server):
    url, base = lora_server["url"], lora_server["folders"]["base"]
    core_of(lora_server["proc"])  # the engine really runs in a child process
    served = concurrently(url)
    engine = tiny_engine(base)
    offline = engine.generate(PROMPTS, SamplingParams(max_tokens=12), use_tqdm=False)
    choice = {"structured_outputs": {"choice": ["serves", "the adapter"]}}  # compiled in the core
    with running_server(engine) as (thread_url, _):
        in_thread = concurrently(thread_url)
        for stream in (False, True):
            want = complete(thread_url, "a", stream, **choice)
            assert want and any(c.startswith(want) for c in ("serves", "the adapter")), want
            assert complete(url, "a", stream, **choice) == want
    assert served == in_thread
    for p, o in zip(PROMPTS, offline):
        assert len(o.token_ids) == 12
        want = engine.tokenizer.decode(o.token_ids, skip_special_tokens=True)
        assert served[(p, False)] == served[(p, True)] == want


def test_a_client_that_goes_away_frees_its_sequence_in_the_core(lora_server):
    url = lora_server["url"]
    aborted = metric(url, "vllm:request_success_total", finished_reason="abort")
    body = {"model": "tiny", "prompt": "the", "max_tokens": 200, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as r:
        next(line for line in r.iter_lines() if line.startswith("data: {"))
    wait_until(
        lambda: metric(url, "vllm:request_success_total", finished_reason="abort") == aborted + 1,
        20, "the core to abort the request",
    )  # fmt: skip
    wait_until(lambda: metric(url, "vllm:num_requests_running") == 0, 20, "no request running")
    assert complete(url, "the", stream=False)  # and the server goes on serving


def test_prefix_cache_reset_and_lora_load_unload_reach_the_core(lora_server):
    url, paths = lora_server["url"], lora_server["folders"]["paths"]
    assert httpx.post(url + "/reset_prefix_cache", json={}, timeout=30).json() == {"reset": True}
    load = {"lora_name": "qv8", "lora_path": str(paths["qv8"])}
    r = httpx.post(url + "/v1/load_lora_adapter", json=load, timeout=30)
    assert r.status_code == 200, r.text
    ids = [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]]
    assert ids == ["tiny", "qv8"]
    with_adapter = complete(url, PROMPTS[0], stream=False, model="qv8")
    assert with_adapter != complete(url, PROMPTS[0], stream=False)  # random nonzero B
    again = httpx.post(url + "/v1/load_lora_adapter", json=load, timeout=30)
    assert again.status_code == 400 and "qv8" in again.json()["error"]["message"]  # the core's
    r = httpx.post(url + "/v1/unload_lora_adapter", json={"lora_name": "qv8"}, timeout=30)
    assert r.status_code == 200, r.text
    gone = httpx.post(url + "/v1/unload_lora_adapter", json={"lora_name": "qv8"}, timeout=30)
    assert gone.status_code == 404  # an APIError raised in the core, mapped here
    r = httpx.post(url + "/v1/completions", json={"model": "qv8", "prompt": "a"}, timeout=30)
    assert r.status_code == 404


def test_sigterm_stops_the_server_and_joins_its_core(lora_server):
    """Last of the shared server's tests: it stops it. SIGTERM to the whole group reaches the
    core too, which must not die of it: the server stops it (exit code 0) after its shutdown."""
    proc = lora_server["proc"]
    core = core_of(proc)
    kids = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGTERM)  # as a launcher stops it: the core gets it too
    # uvicorn shuts down gracefully, then raises the signal again: the status says SIGTERM
    assert proc.wait(timeout=30) in (0, -signal.SIGTERM), lora_server["err"].read_text()
    assert f"engine core process {core.pid} stopped (exit code 0)" in lora_server["err"].read_text()
    assert not core.is_running()  # joined by the server, not left to the init process
    _, alive = psutil.wait_procs(kids, timeout=10)
    assert not alive, [k.cmdline() for k in alive]


def test_a_killed_core_fails_open_requests_and_stops_the_server(tiny_gpt, tmp_path):
    model = long_context_copy(tiny_gpt["hf_dir"], tmp_path / "model")  # room for a long stream
    proc, url = start_server(model, tmp_path / "server.err")
    try:
        core = core_of(proc)
        body = {"model": "tiny", "prompt": "The", "max_tokens": 900, "ignore_eos": True}
        got: dict[str, str] = {}
        started = threading.Event()

        def plain() -> None:
            got["plain"] = httpx.post(url + "/v1/completions", json=body, timeout=60).text

        def streamed() -> None:
            with httpx.stream(
                "POST", url + "/v1/completions", json={**body, "stream": True}, timeout=60
            ) as r:
                lines = []
                for line in r.iter_lines():
                    lines.append(line)
                    started.set()
            got["stream"] = [x for x in lines if x.startswith("data:")][-1]

        threads = [threading.Thread(target=f) for f in (plain, streamed)]
        for t in threads:
            t.start()
        assert started.wait(30)
        core.send_signal(signal.SIGKILL)
        for t in threads:
            t.join(timeout=30)
        for kind in ("plain", "stream"):
            assert re.search(r"engine core process died \(exit code -9\)", got[kind]), got
        assert proc.wait(timeout=30) == 1
        assert "the engine loop died" in (tmp_path / "server.err").read_text()
    finally:
        proc.kill()


def test_a_core_that_cannot_start_is_the_servers_usual_error_and_leaves_no_process(tmp_path):
    import torch

    from week2_serving.engine import server

    argv = ["--model", str(tmp_path / "missing"), "--threads", str(torch.get_num_threads())]
    errors = []
    for extra in ([], ["--engine-process"]):
        with pytest.raises(SystemExit) as e:
            server.main(server.parse_args(argv + extra))
        errors.append(str(e.value))
    assert errors[0] == errors[1] and errors[0].startswith("--model ")  # the same message
    spawned = [k for k in psutil.Process().children() if "spawn_main" in " ".join(k.cmdline())]
    assert not spawned  # the core that failed was joined
