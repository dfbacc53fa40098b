"""The sweep: a cartesian product of server and load settings that resumes after a crash, reruns
what failed or changed, and dry-runs without starting anything. No real servers here: a fake
launcher and a fake bench stand in for them."""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from common.server import ServerError
from tests.conftest import REPO
from week2_serving.harness import launch as launch_mod
from week2_serving.harness import sweep
from week2_serving.harness.launch import Machine
from week2_serving.harness.sweep import SweepConfig

CONFIGS = sorted((REPO / "week2_serving" / "harness" / "configs").glob("*.yaml"))


def config(**kw) -> SweepConfig:
    base = dict(
        name="t",
        engine="vllm",
        model="week2_serving/harness/configs",  # any existing folder: the fake launchers never read it
        servers=[{"name": "a", "args": []}, {"name": "b", "args": ["--max-num-seqs", "4"]}],
        loads=[
            {"name": "c1", "max_concurrency": 1},
            {"name": "c8", "max_concurrency": 8},
            {"name": "c32", "max_concurrency": 32},
        ],
        bench={"num_prompts": 4},
    )
    return SweepConfig(**{**base, **kw})


class FakeServer:
    url = "http://127.0.0.1:1"
    cmd = ["fake-server"]

    def __init__(self, log_path=None, up=True):
        self.log_path, self.up = log_path, up

    def alive(self) -> bool:
        return self.up


def fake_launcher(started, server=None):
    @contextlib.contextmanager
    def launch(engine, model, extra=None, **kw):
        started.append(tuple(extra))
        yield server or FakeServer()

    return launch


def ok(ran=None):
    """A fake bench that completes every request, noting each cell's concurrency in `ran`."""

    def runner(cfg):
        if ran is not None:
            ran.append(cfg.max_concurrency)
        return {"completed": cfg.num_prompts, "num_prompts": cfg.num_prompts}

    return runner


def out_dir(runs_dir):
    return runs_dir / "week2" / "sweep-t"


def done_cells(runs_dir) -> list[str]:
    return sorted(
        f"{p.parent.parent.name}/{p.parent.name}" for p in out_dir(runs_dir).rglob("results.json")
    )


def test_interrupted_sweep_resumes_and_skips_finished_cells(runs_dir):
    started, ran = [], []

    def runner(cfg):
        if len(ran) == 4:
            raise KeyboardInterrupt("power cut")
        ran.append((cfg.max_concurrency, cfg.num_prompts))
        return {"completed": cfg.num_prompts}

    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(config(), fake_launcher(started), runner)
    assert len(ran) == 4 and len(started) == 2  # a: 3 cells, b: 1 cell, then the crash
    assert done_cells(runs_dir) == ["a/c1", "a/c32", "a/c8", "b/c1"]

    ran, started = [], []
    sweep.run_sweep(config(), fake_launcher(started), ok(ran))
    assert ran == [8, 32] and started == [("--max-num-seqs", "4")]  # only b's two missing cells
    ran = []
    sweep.run_sweep(config(), fake_launcher(started), ok(ran))
    assert ran == []  # nothing left to do


def test_server_failure_is_recorded_and_the_sweep_goes_on(runs_dir):
    @contextlib.contextmanager
    def launch(engine, model, extra=None, **kw):
        if extra:
            raise ServerError("vLLM exited: unknown flag")
        yield FakeServer()

    sweep.run_sweep(config(), launch, ok())
    assert done_cells(runs_dir) == ["a/c1", "a/c32", "a/c8"]
    err = json.loads((out_dir(runs_dir) / "b" / "c8" / "error.json").read_text())
    assert err["server_name"] == "b" and err["load_name"] == "c8"
    assert err["engine"] == "vllm" and err["model"] == str(
        REPO / "week2_serving" / "harness" / "configs"
    )
    assert err["args"] == ["--max-num-seqs", "4"] and "unknown flag" in err["error"]
    b8 = [c for c in sweep.plan(config()) if (c.server, c.load) == ("b", "c8")]
    assert err["cell_hash"] == b8[0].hash

    ran = []  # resume: the failed server's cells are run again, the done ones are not
    sweep.run_sweep(config(), fake_launcher([]), ok(ran))
    assert ran == [1, 8, 32] and not list(out_dir(runs_dir).rglob("error.json"))


def test_a_cell_that_completed_no_requests_failed_and_is_rerun(runs_dir):
    def runner(cfg):
        done = 0 if cfg.max_concurrency == 8 else cfg.num_prompts
        return {"completed": done, "num_prompts": 4, "errors": ["HTTP 400: prompt too long"]}

    sweep.run_sweep(config(), fake_launcher([]), runner)
    out = out_dir(runs_dir)
    assert not (out / "a" / "c8" / "results.json").exists()
    err = json.loads((out / "a" / "c8" / "error.json").read_text())
    assert err["error"].startswith("0 of 4 requests completed") and "too long" in err["error"]

    ran = []
    sweep.run_sweep(config(), fake_launcher([]), ok(ran))
    assert ran == [8, 8]  # a/c8 and b/c8, nothing else
    assert not (out / "a" / "c8" / "error.json").exists()  # the rerun's success clears it


def test_a_results_file_with_zero_completed_is_not_done(runs_dir):
    cell = sweep.plan(config())[0]
    (cell.folder).mkdir(parents=True)
    (cell.folder / "results.json").write_text(json.dumps({"completed": 0, "cell_hash": cell.hash}))
    assert sweep.cell_status(cell) == "failed"
    (cell.folder / "results.json").write_text(json.dumps({"completed": 3, "cell_hash": cell.hash}))
    assert sweep.cell_status(cell) == "done"


def test_a_server_that_dies_fails_its_cell_and_the_rest(runs_dir, tmp_path):
    log = tmp_path / "server.log"
    log.write_text("\n".join(f"line {i}" for i in range(100)) + "\nRuntimeError: worker died\n")
    server = FakeServer(log_path=log)

    def runner(cfg):
        if cfg.max_concurrency == 8:
            server.up = False  # the server crashes during this cell
        return {"completed": cfg.num_prompts}

    sweep.run_sweep(config(servers=[{"name": "a", "args": []}]), fake_launcher([], server), runner)
    out = out_dir(runs_dir)
    assert done_cells(runs_dir) == ["a/c1"]
    died = json.loads((out / "a" / "c8" / "error.json").read_text())
    assert died["error"].startswith("the server exited") and "while this cell ran" in died["error"]
    assert died["log_tail"].splitlines()[-1] == "RuntimeError: worker died"
    assert len(died["log_tail"].splitlines()) == sweep.LOG_LINES
    skipped = json.loads((out / "a" / "c32" / "error.json").read_text())
    assert "not run: the server exited during c8" in skipped["error"]

    ran = []
    sweep.run_sweep(config(servers=[{"name": "a", "args": []}]), fake_launcher([]), ok(ran))
    assert ran == [8, 32]


def test_an_error_in_one_cell_is_recorded_and_the_sweep_goes_on(runs_dir):
    ran = []

    def runner(cfg):
        if cfg.max_concurrency == 1:
            raise KeyError("tokenizer")  # not a ServerError: it used to stop the whole sweep
        ran.append(cfg.max_concurrency)
        return {"completed": 1}

    sweep.run_sweep(config(), fake_launcher([]), runner)
    assert ran == [8, 32, 8, 32]
    err = json.loads((out_dir(runs_dir) / "a" / "c1" / "error.json").read_text())
    assert err["error"] == "KeyError: 'tokenizer'"
    ran = []
    sweep.run_sweep(config(), fake_launcher([]), ok(ran))
    assert ran == [1, 1]


def test_a_changed_config_reruns_the_cells_it_changes_and_only_those(runs_dir):
    sweep.run_sweep(config(), fake_launcher([]), ok())
    before = {c.folder: c.hash for c in sweep.plan(config())}

    started, ran = [], []
    servers = [{"name": "a", "args": []}, {"name": "b", "args": ["--max-num-seqs", "8"]}]
    changed = config(servers=servers)
    assert {c.server: sweep.cell_status(c) for c in sweep.plan(changed)} == {
        "a": "done",
        "b": "stale",
    }
    sweep.run_sweep(changed, fake_launcher(started), ok(ran))
    assert started == [("--max-num-seqs", "8")] and ran == [1, 8, 32]
    assert all(
        json.loads((c.folder / "results.json").read_text())["cell_hash"] == c.hash
        for c in sweep.plan(changed)
    )

    loads = [{"name": "c1", "max_concurrency": 1}, {"name": "c8", "max_concurrency": 16}]
    loads.append({"name": "c32", "max_concurrency": 32})
    ran = []
    sweep.run_sweep(config(servers=servers, loads=loads), fake_launcher([]), ok(ran))
    assert ran == [16, 16]  # one load changed: its cell under each server

    ran = []
    sweep.run_sweep(
        config(servers=servers, loads=loads, bench={"num_prompts": 8}), fake_launcher([]), ok(ran)
    )
    assert len(ran) == 6  # the bench defaults are part of every cell
    assert before != {c.folder: c.hash for c in sweep.plan(config(bench={"num_prompts": 8}))}


def test_cell_hash_is_stable_and_ignores_names():
    a = sweep.plan(config())
    b = sweep.plan(config())
    assert [c.hash for c in a] == [c.hash for c in b] and len({c.hash for c in a}) == 6
    renamed = config(
        servers=[{"name": "x", "args": []}, {"name": "y", "args": ["--max-num-seqs", "4"]}]
    )
    assert [c.hash for c in sweep.plan(renamed)] == [c.hash for c in a]
    assert len(a[0].hash) == 12


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown field\\(s\\) \\['concurrency'\\]"):
        config(loads=[{"name": "x", "concurrency": 4}])
    with pytest.raises(ValueError, match="unique 'name'"):
        config(servers=[{"name": "a"}, {"name": "a"}])
    with pytest.raises(ValueError, match="engine 'trt'"):
        config(engine="trt")
    with pytest.raises(ValueError, match="unknown key\\(s\\) \\['arg'\\]"):
        config(servers=[{"name": "a", "arg": ["--x"]}])
    with pytest.raises(ValueError, match="args must be a list of strings"):
        config(servers=[{"name": "a", "args": ["--max-num-seqs", 4]}])
    with pytest.raises(ValueError, match="load 'c1': num_prompts=0 must be >= 1"):
        config(loads=[{"name": "c1", "num_prompts": 0}])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        SweepConfig.from_yaml(tmp_path / "nope.yaml")


def test_a_config_file_lists_every_problem(tmp_path):
    path = tmp_path / "bad.yaml"
    data = {
        "name": "bad",
        "engine": "vllm",
        "model": "m/m",
        "servres": [],  # typo: unknown key, and servers is missing
        "loads": [{"name": "c1"}],
    }
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError) as e:
        SweepConfig.from_yaml(path)
    assert "unknown key 'servres'" in str(e.value) and "missing key 'servers'" in str(e.value)

    data.pop("servres")
    data["servers"] = [{"name": "a", "modle": "x"}]
    data["loads"] = [{"name": "c1", "concurrency": 2}]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError) as e:
        SweepConfig.from_yaml(path)
    assert "['modle']" in str(e.value) and "['concurrency']" in str(e.value)


def test_a_server_may_name_its_engine_and_its_loads(runs_dir):
    engines, ran = [], []

    @contextlib.contextmanager
    def launch(engine, model, extra=None, **kw):
        engines.append(engine)
        yield FakeServer()

    servers = [
        {"name": "vllm", "args": []},
        {"name": "ours", "engine": "engine", "args": [], "loads": ["c32"]},
    ]
    sweep.run_sweep(config(servers=servers), launch, ok(ran))
    assert engines == ["vllm", "engine"] and ran == [1, 8, 32, 32]
    with pytest.raises(ValueError, match="unknown loads \\['c64'\\]"):
        config(servers=[{"name": "x", "loads": ["c64"]}])
    with pytest.raises(ValueError, match="engine 'tgi'"):
        config(servers=[{"name": "x", "engine": "tgi"}])


# --- dry runs -------------------------------------------------------------------------------


@pytest.fixture
def no_processes(monkeypatch):
    """Any attempt to start a process (or a server) fails the test."""

    def refuse(*a, **kw):
        raise AssertionError(f"a dry run started a process: {a[:1]}")

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
