"""The harness when the server dies mid-run: every request is accounted for, nothing is left.

Our engine plays the server (it starts in seconds; the harness does not care which server it
drives). That vLLM's engine processes die with their group is tested in test_processes_signals.
"""

from __future__ import annotations

import threading
import time

from common.results import read_json
from common.server import _group_alive
from week2_serving.harness import bench
from week2_serving.harness.launch import launch


def test_server_killed_mid_run_is_recorded_and_leaves_nothing_behind(
    tiny_gpt, tmp_path, runs_dir, monkeypatch
):
    srv = launch("engine", tiny_gpt["hf_dir"], log_dir=tmp_path, served_name="tiny").start()
    pgid = srv.pgid
    cfg = bench.BenchConfig(
        base_url=srv.url,
        num_prompts=48,
        random_input_len=16,
        random_output_len=60,
        max_concurrency=4,
        request_timeout_s=30,
        num_warmups=1,
        run_name="killed",
    )
    # Kill the server (no grace: like a crash) as soon as 5 requests of the run have completed.
    real_send, finished, killed = bench.send_request, [], threading.Event()

    async def send_then_maybe_kill(*args, **kwargs):
        rec = await real_send(*args, **kwargs)
        finished.append(rec)
        if len(finished) == 1 + 5 and not killed.is_set():  # 1 warmup + 5 measured
            killed.set()
            threading.Thread(target=srv.stop, kwargs={"grace_s": 0.0}).start()
        return rec

    monkeypatch.setattr(bench, "send_request", send_then_maybe_kill)
    try:
        res = bench.main(cfg)
    finally:
        srv.stop()
    assert killed.is_set()
    assert res["completed"] >= 5 and res["failed"] > 0 and res["completed"] + res["failed"] == 48
    assert res["errors"] and all(e for e in res["errors"])
    assert read_json(runs_dir / "week2" / "killed" / "results.json")["failed"] == res["failed"]
    time.sleep(0.5)
    assert not _group_alive(pgid)
