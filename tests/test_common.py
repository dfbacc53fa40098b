"""common/: device choice, timing, atomic results, checkpoints, the report."""

from __future__ import annotations

import json
import os
import random
import sys
import time

import numpy as np
import pytest
import torch

from common import checkpoint, device, report, results, timing


# --- device ------------------------------------------------------------------------------------
def test_auto_picks_an_available_device():
    dev = device.pick_device("auto")
    assert str(dev) in device.available_devices()
    assert device.available_devices()[-1] == "cpu"


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="this machine has CUDA; the error path needs none"
)
def test_asking_for_cuda_without_one_is_a_clear_error():
    with pytest.raises(ValueError) as e:
        device.pick_device("cuda")
    msg = str(e.value)
    assert "'cuda'" in msg and "not available" in msg and "cpu" in msg  # names what exists


def test_nonexistent_cuda_index_is_a_clear_error():
    with pytest.raises(ValueError, match="cuda:99"):
        device.pick_device("cuda:99")


def test_unknown_device_name():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        device.pick_device("tpu")


def test_explicit_cpu_and_dtype():
    assert device.pick_device(" CPU ") == torch.device("cpu")
    assert device.pick_dtype(torch.device("cpu")) == torch.float32
    assert device.pick_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="int3"):
        device.pick_dtype(torch.device("cpu"), "int3")


# --- timing ------------------------------------------------------------------------------------
def test_timer_measures_elapsed_time():
    with timing.Timer("cpu") as t:
        time.sleep(0.05)
    assert 0.045 <= t.elapsed < 1.0


def test_benchmark_statistics_are_ordered_and_count_calls():
    calls = []
    stats = timing.benchmark(lambda: calls.append(time.sleep(0.002)), warmup=2, repeats=7)
    assert len(calls) == 9
    assert stats.repeats == 7 and stats.warmup == 2
    assert 1.5 <= stats.min_ms <= stats.median_ms <= stats.p90_ms
    assert stats.min_ms <= stats.mean_ms


def test_benchmark_rejects_bad_repeats():
    with pytest.raises(ValueError, match="repeats"):
        timing.benchmark(lambda: None, repeats=0)


@pytest.mark.parametrize("q", [0, 10, 50, 90, 99, 100])
def test_percentile_matches_numpy(q):
    xs = list(np.random.default_rng(q).normal(size=37))
    assert timing.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


def test_environment_record():
    env = timing.environment("cpu")
    for key in ("torch", "cpu_model", "torch_threads", "gpu_name", "device"):
        assert key in env
    assert env["torch"] == torch.__version__


# --- results -----------------------------------------------------------------------------------
def test_results_round_trip_and_location(runs_dir):
    path = results.save_results(
        "week0", "demo", {"acc": 0.5, "nan": float("nan"), "t": torch.tensor(2.0)}
    )
    assert path == runs_dir / "week0" / "demo" / "results.json"
    saved = results.read_json(path)
    assert "git_commit" in saved.pop("environment")  # added by save_results (test_provenance)
    assert saved == {"acc": 0.5, "nan": None, "t": 2.0}


def test_crash_mid_write_leaves_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    results.write_json_atomic(path, {"version": 1})

    def crash(fd):
        raise OSError("disk pulled out mid-write")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk pulled"):
        results.write_json_atomic(path, {"version": 2, "big": list(range(10000))})
    assert json.loads(path.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left


def test_unserializable_result_never_touches_the_file(tmp_path):
    path = tmp_path / "r.json"
    results.write_json_atomic(path, {"ok": True})
    with pytest.raises(TypeError):
        results.write_json_atomic(path, {"bad": object()})
    assert results.read_json(path) == {"ok": True}


def test_read_json_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        results.read_json(tmp_path / "nope.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        results.read_json(tmp_path / "broken.json")


def test_run_dir_rejects_bad_names():
    with pytest.raises(ValueError, match="run name"):
        results.run_dir("week0", "../escape")


def test_metrics_logger_append_read_truncate(tmp_path):
    m = results.MetricsLogger(tmp_path / "m.jsonl")
    for step in range(1, 6):
        m.log(step=step, loss=1.0 / step)
    assert [r["step"] for r in m.read()] == [1, 2, 3, 4, 5]
    m.truncate_after("step", 3)
    assert [r["step"] for r in m.read()] == [1, 2, 3]
    assert results.MetricsLogger(tmp_path / "m.jsonl", append=True).read()[-1]["step"] == 3
    assert results.MetricsLogger(tmp_path / "m.jsonl").read() == []  # a fresh run starts empty


# --- checkpoints ---------------------------------------------------------------------------------
def test_checkpoint_round_trip(tmp_path):
    state = {"model": {"w": torch.randn(3, 4)}, "step": 7, "config": {"model": "cnn"}}
    checkpoint.save_checkpoint(tmp_path / "c.pt", state)
    loaded = checkpoint.load_checkpoint(tmp_path / "c.pt")
    assert loaded["step"] == 7 and loaded["config"] == {"model": "cnn"}
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="missing.pt.*does not exist"):
        checkpoint.load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("damage", ["truncated"] + [f"garbage-{seed}" for seed in range(50)])
def test_corrupted_checkpoint_names_the_path(tmp_path, damage):
    path = tmp_path / "c.pt"
    checkpoint.save_checkpoint(path, {"w": torch.randn(100, 100)})
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # random bytes make the unpickler fail in many different ways; each must be caught
        path.write_bytes(random.Random(damage).randbytes(500))
    with pytest.raises(checkpoint.CheckpointError, match=r"c\.pt is corrupted"):
        checkpoint.load_checkpoint(path)


def test_checkpoint_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"obj": time.struct_time((2000, 1, 1, 0, 0, 0, 0, 1, 0))}, path)
    with pytest.raises(checkpoint.CheckpointError, match="evil.pt"):
        checkpoint.load_checkpoint(path)


# --- report ---------------------------------------------------------------------------------------
def test_report_without_results_says_how_to_make_them(runs_dir):
    path = report.build_report()
    text = path.read_text()
    assert path == runs_dir / "report" / "README.md"
    assert "No results yet: run `make week0`" in text
    assert "Week 3" in text


def test_md_table():
    assert report.md_table(["a", "b"], [[1, 2]]) == "| a | b |\n|---|---|\n| 1 | 2 |"


def test_managed_server_has_its_own_group_in_our_session_and_stops_whole(tmp_path):
    """Own process group: stop() reaches every process it spawned. Same session: with autogroup
    scheduling a new session would be a separate CPU group competing with its own client."""
    from common.server import ManagedServer, _group_alive, free_port

    port = free_port()
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    srv = ManagedServer(cmd, port, tmp_path / "http.log", ready_path="/", timeout_s=30).start()
    try:
        pid = srv.proc.pid
        assert os.getpgid(pid) == pid != os.getpgid(0)
        assert os.getsid(pid) == os.getsid(0)
    finally:
        srv.stop(grace_s=5)
    assert not _group_alive(pid)
