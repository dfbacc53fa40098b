"""Processes under signals: Ctrl-C or SIGTERM while a server starts, stops, or serves a sweep
leaves no process behind and frees the port. Real subprocesses; every wait is bounded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from common.server import free_port, vllm_available
from tests.test_processes import (
    REPO,
    assert_group_gone_and_port_free,
    bind_succeeds,
    fake_server,
    kill_group,
    read_record,
    running_in_group,
    wait_for,
)

# -- signals -------------------------------------------------------------------------------

# Runs a ManagedServer the way an entry point does; prints "started" if start() ever returns.
DRIVER = textwrap.dedent(
    """
    import json, sys
    from common.procs import sigterm_as_interrupt
    from common.server import ManagedServer
    cmd, port, log = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    with sigterm_as_interrupt(), ManagedServer(cmd, port, log, ready_path="/", timeout_s=300):
        print("started", flush=True)
    """
)


def start_driver(script: str, cmd: list[str], port: int, tmp_path: Path) -> subprocess.Popen:
    """Run `script` (one of the drivers above) in its own Python, output captured."""
    return subprocess.Popen(
        [sys.executable, "-c", script, json.dumps(cmd), str(port), str(tmp_path / "s.log")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_start_up_leaves_no_process_and_frees_the_port(tmp_path, sig):
    port = free_port()
    cmd = fake_server(tmp_path, port, delay=600)  # would take 10 minutes to be ready
    driver = start_driver(DRIVER, cmd, port, tmp_path)
    facts = None
    try:
        facts = wait_for("the fake server's record", lambda: read_record(tmp_path), 60)
        wait_for("the port taken", lambda: not bind_succeeds(port), 30)
        driver.send_signal(sig)  # mid start-up: the driver is inside start()'s readiness wait
        out, err = driver.communicate(timeout=60)
        assert "started" not in out, err
        assert driver.returncode != 0
        assert_group_gone_and_port_free(facts["pgid"], port)
    finally:
        driver.kill()
        kill_group(facts and facts["pgid"])


# A second Ctrl-C while stop() waits out a long grace goes straight to SIGKILL (a grandchild
# ignores SIGTERM here), then arrives as the KeyboardInterrupt it is.
IMPATIENT = textwrap.dedent(
    """
    import json, os, signal, sys, threading, time
    from common.server import ManagedServer
    cmd, port, log = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    srv = ManagedServer(cmd, port, log, ready_path="/", timeout_s=120).start()
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
    start = time.monotonic()
    try:
        srv.stop(grace_s=300)
    finally:
        print(f"stopped after {time.monotonic() - start:.1f}s", flush=True)
    """
)


@pytest.mark.slow
def test_signal_during_stop_cuts_the_grace_short_and_leaves_nothing(tmp_path):
    port = free_port()
    cmd = fake_server(tmp_path, port, delay=0, term_mode="ignore")
    driver = start_driver(IMPATIENT, cmd, port, tmp_path)
    facts = None
    try:
        out, err = driver.communicate(timeout=120)
        facts = read_record(tmp_path)
        assert "stopped after" in out and "KeyboardInterrupt" in err, (out, err)
        assert float(out.split("stopped after ")[1].rstrip("s\n")) < 60  # not the 300 s grace
        assert_group_gone_and_port_free(facts["pgid"], port)
    finally:
        driver.kill()
        kill_group(facts and facts["pgid"])


def engine_server_of(sweep_pid: int) -> psutil.Process | None:
    """The engine server the sweep started (a child running week2_serving.engine.server)."""
    for child in psutil.Process(sweep_pid).children():
        if "week2_serving.engine.server" in " ".join(child.cmdline()):
            return child
    return None


def requests_running(port: int) -> bool:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return False
    return any(  # vLLM's name, labelled with the model: vllm:num_requests_running{...} N
        line.startswith("vllm:num_requests_running") and float(line.split()[-1]) > 0
        for line in text.splitlines()
    )


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sweep_interrupted_mid_load_stops_its_server(tiny_gpt, tmp_path, sig):
    cfg = {
        "name": "interrupted",
        "engine": "engine",
        "model": str(tiny_gpt["hf_dir"]),
        "served_model_name": "tiny",
        "bench": {"random_input_len": 8, "random_output_len": 64, "num_warmups": 0},
        "servers": [{"name": "s", "args": ["--num-kv-blocks", "64", "--block-size", "8"]}],
        # two requests a second for 1000 requests: longer than the test by far, light on the CPU
        "loads": [{"name": "long", "max_concurrency": 4, "num_prompts": 1000, "request_rate": 2}],
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    stderr = tmp_path / "sweep.err"
    with open(stderr, "w") as err_file:
        sweep = subprocess.Popen(
            [sys.executable, "-m", "week2_serving.harness.sweep", str(path)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=err_file,
        )
    pgid = None
    try:
        server = wait_for("the engine server", lambda: engine_server_of(sweep.pid), 120)
        pgid = server.pid  # it leads its own group
        wait_for("the cell's start", lambda: "cell s / long" in stderr.read_text(), 300)
        port = int(server.cmdline()[server.cmdline().index("--port") + 1])
        wait_for("requests in flight", lambda: requests_running(port), 120)
        sweep.send_signal(sig)
        sweep.wait(timeout=90)
        assert sweep.returncode == 128 + sig, stderr.read_text()[-3000:]
        assert f"interrupted by {sig.name}" in stderr.read_text()
        assert_group_gone_and_port_free(pgid, port)
        runs = Path(os.environ["IE_RUNS_DIR"]) / "week2" / "sweep-interrupted" / "s" / "long"
        assert not (runs / "results.json").exists()  # the cell was cut, not finished
    finally:
        sweep.kill()
        sweep.wait(timeout=30)
        kill_group(pgid)


@pytest.mark.slow
def test_launch_stopped_by_sigterm_during_start_up(tiny_gpt, tmp_path):
    """`python -m week2_serving.harness.launch` is told to stop while our engine is still loading."""
    port = free_port()
    launcher = subprocess.Popen(
        [sys.executable, "-m", "week2_serving.harness.launch", "engine"]
        + ["--model", str(tiny_gpt["hf_dir"]), "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pgid = None
    try:
        server = wait_for("the engine server", lambda: engine_server_of(launcher.pid), 120)
        pgid = server.pid
        launcher.send_signal(signal.SIGTERM)
        out, err = launcher.communicate(timeout=60)
        assert launcher.returncode == 0, err  # asked to stop, it stopped: not a failure
        assert "ready at" not in out  # it was still starting
        assert_group_gone_and_port_free(pgid, port)
    finally:
        launcher.kill()
        kill_group(pgid)


VLLM_DRIVER = textwrap.dedent(
    """
    import sys
    from common.procs import sigterm_as_interrupt
    from common.server import vllm_server
    model, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with sigterm_as_interrupt(), vllm_server(model, port, log, max_model_len=128):
        print("started", flush=True)
    """
)


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason="vLLM venv .venvs/vllm is absent")
def test_vllm_interrupted_while_loading_leaves_no_engine_process(tiny_gpt, tmp_path):
    """The defect this file was written for: Ctrl-C while vLLM loads left its API server,
    engine core and workers running, holding the port and their memory."""
    port = free_port()
    driver = subprocess.Popen(
        [
            sys.executable,
            "-c",
            VLLM_DRIVER,
            str(tiny_gpt["hf_dir"]),
            str(port),
            str(tmp_path / "v.log"),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pgid = None
    try:
        server = wait_for("vLLM's process", lambda: psutil.Process(driver.pid).children(), 60)[0]
        pgid = server.pid
        wait_for("vLLM's engine process", lambda: len(running_in_group(pgid)) > 1, 180)
        driver.send_signal(signal.SIGINT)
        out, err = driver.communicate(timeout=90)
        assert "started" not in out  # interrupted while loading
        assert driver.returncode != 0 and "KeyboardInterrupt" in err, (out, err[-2000:])
        assert_group_gone_and_port_free(pgid, port)
    finally:
        driver.kill()
        kill_group(pgid)
