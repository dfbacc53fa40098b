"""The sweep's dry run and the launcher's checks: every cell and every problem shown, nothing
started. No real servers here."""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path

import pytest
import yaml

from common import provenance
from common.server import ServerError
from tests.conftest import REPO
from tests.test_week2_sweep import config, fake_launcher, ok
from week2_serving.harness import launch as launch_mod
from week2_serving.harness import sweep
from week2_serving.harness.launch import Machine
from week2_serving.harness.sweep import SweepConfig

CONFIGS = sorted((REPO / "week2_serving" / "harness" / "configs").glob("*.yaml"))


@pytest.fixture
def no_processes(monkeypatch):
    """Any attempt to start a process (or a server) fails the test."""

    def refuse(*a, **kw):
        raise AssertionError(f"a dry run started a process: {a[:1]}")

    # the environment record runs `uname -p` and `git rev-parse` once per interpreter and
    # caches them: fill those caches first, so the test passes alone as in the full suite
    platform.platform(), platform.processor(), provenance._static()
    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(sweep, "launch", refuse)
    monkeypatch.setattr(launch_mod, "ManagedServer", refuse)


def fitting_machine(cfg: SweepConfig) -> Machine:
    """A machine the config was written for: 2 CUDA GPUs for the GPU sweeps, else this CPU."""
    if cfg.name.startswith("gpu"):
        return Machine(gpus=2, vllm_venv=True, sglang_venv=True)
    return Machine(gpus=0, vllm_venv=True)


def build_local_models(cfg: SweepConfig) -> None:
    """The runs/ folders a config serves, made empty in this test's runs folder."""
    for model in {cfg.model, *(s.get("model", cfg.model) for s in cfg.servers)}:
        if model.startswith("runs/"):
            Path(sweep.model_path(model)).mkdir(parents=True, exist_ok=True)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_dry_runs_on_a_machine_that_fits_it(path, no_processes):
    cfg = SweepConfig.from_yaml(path)
    build_local_models(cfg)
    lines = []
    assert sweep.dry_run(cfg, fitting_machine(cfg), lines.append) == 0, "\n".join(lines)
    text = "\n".join(lines)
    cells = sweep.plan(cfg)
    assert len(cells) > 0
    for cell in cells:
        assert f"[pending] {cell.server} / {cell.load}: " in text
        assert str(cell.folder) in text and cell.hash in text
    for server in cfg.servers:
        command = next(line for line in lines if line.startswith(f"\nserver {server['name']}:"))
        assert server.get("engine", cfg.engine) in command
        assert " ".join(server.get("args", [])) in text
    assert f"ready: {len(cells)} of {len(cells)} cells to run" in text


def test_the_dry_run_shows_each_cells_status(runs_dir, no_processes):
    cfg = config()
    sweep.run_sweep(cfg, fake_launcher([]), ok())
    a1, a8, a32, b1, b8, _ = sweep.plan(cfg)
    (a8.folder / "results.json").unlink()
    (a8.folder / "error.json").write_text("{}")
    (a32.folder / "results.json").write_text(json.dumps({"completed": 4, "cell_hash": "old"}))
    (b1.folder / "results.json").unlink()
    lines = []
    assert sweep.dry_run(cfg, Machine(vllm_venv=True), lines.append) == 0
    text = "\n".join(lines)
    for status, cell in [
        ("done", a1),
        ("failed", a8),
        ("stale", a32),
        ("pending", b1),
        ("done", b8),
    ]:
        assert f"[{status}] {cell.server} / {cell.load}:" in text
    assert "(local folder)" in text
    assert "ready: 3 of 6 cells to run (3 done)" in text


def test_the_dry_run_lists_every_problem(runs_dir, no_processes, tmp_path):
    servers = [
        {"name": "missing", "model": str(tmp_path / "no-such-model"), "args": []},
        {"name": "quantized", "model": "runs/week2/quantized/int4", "args": []},
        {"name": "tp2", "args": ["--tensor-parallel-size", "2"]},
        {"name": "sglang", "engine": "sglang", "args": []},
    ]
    cfg = config(model="org/model", servers=servers)
    lines = []
    assert sweep.dry_run(cfg, Machine(gpus=1, vllm_venv=True), lines.append) == 1
    text = "\n".join(lines)
    assert "4 problem(s) would stop the real run" in text
    assert f"server(s) missing: model folder {tmp_path / 'no-such-model'} does not exist" in text
    assert f"server(s) quantized: model folder {runs_dir / 'week2/quantized/int4'} does not" in text
    assert (
        "server(s) tp2: the parallelism flags in '--tensor-parallel-size 2' need 2 GPUs; this machine has 1"
        in text
    )
    assert "server(s) sglang: SGLang: " in text and "make setup-sglang" in text
    assert "[pending] sglang / c32" in text  # every cell is still shown


def test_cli_dry_run_starts_nothing_and_exits_with_the_verdict(
    runs_dir, tmp_path, monkeypatch, capsys, no_processes
):
    launch_mod.detect_machine()  # the real probe starts no process either
    path = tmp_path / "s.yaml"
    data = {
        "name": "s",
        "engine": "vllm",
        "model": "runs/week1/hf-model",
        "servers": [{"name": "a"}],
    }
    data["loads"] = [{"name": "c1", "max_concurrency": 1}]
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setattr(sweep, "detect_machine", lambda: Machine(vllm_venv=True))
    with pytest.raises(SystemExit) as e:
        sweep.main([str(path), "--dry-run"])
    out = capsys.readouterr().out
    assert e.value.code == 1 and "model folder" in out and "[pending] a / c1" in out
    (runs_dir / "week1" / "hf-model").mkdir(parents=True)
    with pytest.raises(SystemExit) as e:
        sweep.main([str(path), "--dry-run"])
    assert (
        e.value.code == 0
        and "--model " + str(runs_dir / "week1" / "hf-model") in capsys.readouterr().out
    )
    assert not (runs_dir / "week2").exists()  # nothing written either

    path.write_text(yaml.safe_dump({**data, "servers": [{"name": "a", "arg": []}], "extra": 1}))
    with pytest.raises(SystemExit) as e:
        sweep.main([str(path), "--dry-run"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unknown key 'extra'" in err and "['arg']" in err


# --- the launcher's checks, machine by machine ------------------------------------------------


@pytest.mark.parametrize("gpus", [0, 1, 2])
@pytest.mark.parametrize(
    "engine,args", [("vllm", ["--tensor-parallel-size", "2"]), ("sglang", ["--tp", "2"])]
)
def test_tensor_parallel_needs_as_many_gpus(engine, args, gpus):
    machine = Machine(gpus=gpus, vllm_venv=True, sglang_venv=True)
    problems = launch_mod.preflight(engine, "org/model", args, machine)
    too_few = [p for p in problems if "need 2 GPUs" in p]
    assert bool(too_few) == (gpus < 2), problems
    if too_few:
        assert f"this machine has {gpus}" in too_few[0]
    assert any("needs a CUDA GPU" in p for p in problems) == (engine == "sglang" and gpus == 0)


def test_parallel_flags_in_every_spelling():
    assert launch_mod.gpus_needed(["--tensor-parallel-size=4"]) == (4, [])
    assert launch_mod.gpus_needed(["-tp", "2", "--pipeline-parallel-size", "2"]) == (4, [])
    assert launch_mod.gpus_needed(["--tp", "2", "--dp", "3"]) == (6, [])
    assert launch_mod.gpus_needed(["--max-num-seqs", "2"]) == (1, [])
    need, problems = launch_mod.gpus_needed(["--tp", "two"])
    assert need == 1 and "tensor parallel size 'two'" in problems[0]


def test_check_model_tells_folders_from_hub_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here").mkdir()
    assert launch_mod.check_model(tmp_path / "here") == ("local folder", None)
    assert launch_mod.check_model("here") == ("local folder", None)
    assert launch_mod.check_model("Qwen/Qwen2.5-0.5B-Instruct", offline=False) == (
        "hub id, downloaded unless cached",
        None,
    )
    # offline, a hub id must already be in the cache
    note, problem = launch_mod.check_model("Qwen/Qwen2.5-0.5B-Instruct", offline=True)
    assert note == "hub id, not cached" and "Qwen/Qwen2.5-0.5B-Instruct" in problem
    for missing in ("runs/week1/nope", "./nope", str(tmp_path / "nope")):
        assert "does not exist" in launch_mod.check_model(missing)[1]
    assert "neither an existing folder nor a hub id" in launch_mod.check_model("a/b/c")[1]


def test_launch_refuses_before_starting_anything(no_processes, tmp_path):
    with pytest.raises(ServerError, match="SGLang needs a CUDA GPU.*make setup-sglang"):
        launch_mod.launch("sglang", "org/model", machine=Machine())
    with pytest.raises(ServerError, match="setup-vllm.*need 2 GPUs.*does not exist"):
        launch_mod.launch("vllm", tmp_path / "nope", extra=["-tp", "2"], machine=Machine())


def test_the_vllm_command_is_common_servers(monkeypatch, tmp_path):
    """launch builds vLLM's command itself (so a dry run needs no venv): it must stay the one
    common.server.vllm_server runs."""
    from common import server

    monkeypatch.setattr(server, "vllm_available", lambda: True)
    ref = server.vllm_server(
        tmp_path, 8123, tmp_path / "log", 512, ["--max-num-seqs", "4"], served_name="m"
    )
    spec = launch_mod.server_spec("vllm", tmp_path, 8123, ["--max-num-seqs", "4"], 512, "m")
    assert spec.cmd == ref.cmd
    assert {k: ref.env[k] for k in spec.env} == spec.env and spec.ready_path == ref.ready_path


def test_a_hub_id_is_served_with_the_hub_reachable(tmp_path, monkeypatch):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # conftest's; a user online has none
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("common.server.hub_reachable", lambda *a, **k: True)
    hub = launch_mod.server_spec("vllm", "Qwen/Qwen2.5-0.5B-Instruct", 8000, [], 4096)
    local = launch_mod.server_spec("vllm", tmp_path, 8000, [], 4096)
    assert "HF_HUB_OFFLINE" not in hub.env and local.env["HF_HUB_OFFLINE"] == "1"
