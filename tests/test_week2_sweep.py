"""The sweep: a cartesian product of server and load settings that resumes after a crash, reruns
what failed or changed (its dry run: test_week2_sweep_dry_run.py). No real servers here: a fake
launcher and a fake bench stand in for them."""

from __future__ import annotations

import contextlib
import json

import pytest
import yaml

from common.server import ServerError
from tests.conftest import REPO
from week2_serving.harness import sweep
from week2_serving.harness.sweep import SweepConfig
from week2_serving.harness.sweep_config import ConfigError


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


class SpawnableServer(FakeServer):
    """A fake with ManagedServer's spawn/start/stop, noting each event in `events`."""

    def __init__(self, name, events):
        super().__init__()
        self.name, self.events, self.spawned = name, events, False

    def spawn(self):
        self.spawned = True
        self.proc = object()  # a child runs
        self.events.append(("spawn", self.name))
        return self

    def wait_ready(self):
        self.events.append(("ready", self.name))

    def __enter__(self):
        self.events.append(("wait" if self.spawned else "start", self.name))
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        if ("stop", self.name) not in self.events:
            self.events.append(("stop", self.name))


def spawnable_launcher(events):
    def launch(engine, model, extra=None, **kw):
        return SpawnableServer("b" if extra else "a", events)

    return launch


def bench_noting(events, crash_at=None):
    def runner(cfg):
        events.append(("cell", cfg.max_concurrency))
        if crash_at is not None and len([e for e in events if e[0] == "cell"]) == crash_at:
            raise KeyboardInterrupt("power cut")
        return {"completed": cfg.num_prompts, "num_prompts": cfg.num_prompts}

    return runner


@pytest.mark.parametrize("at_once", [1, 2])
def test_servers_at_once_overlaps_start_ups_never_cells(runs_dir, at_once, monkeypatch):
    monkeypatch.setattr(sweep, "mem_available_gib", lambda: 64.0)  # room for any number
    events = []
    sweep.run_sweep(
        config(servers_at_once=at_once), spawnable_launcher(events), bench_noting(events)
    )
    kinds = [e for e in events if e[0] != "cell"]
    if at_once == 2:  # both spawned and ready before a's first cell; b used after a stopped
        assert kinds == [
            ("spawn", "a"), ("spawn", "b"), ("ready", "a"), ("ready", "b"),
            ("wait", "a"), ("stop", "a"), ("wait", "b"), ("stop", "b"),
        ]  # fmt: skip
    else:
        assert kinds == [("start", "a"), ("stop", "a"), ("start", "b"), ("stop", "b")]
    # every cell ran while exactly one server was in use
    in_use = None
    for kind, who in events:
        if kind in ("spawn", "ready"):
            assert in_use is None  # no start-up while a cell runs
        elif kind in ("start", "wait"):
            assert in_use is None
            in_use = who
        elif kind == "stop" and who == in_use:
            in_use = None
        elif kind == "cell":
            assert in_use is not None
    assert len(done_cells(runs_dir)) == 6


def test_interrupted_sweep_stops_the_server_spawned_early(runs_dir, monkeypatch):
    monkeypatch.setattr(sweep, "mem_available_gib", lambda: 64.0)
    events = []
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(
            config(servers_at_once=2), spawnable_launcher(events), bench_noting(events, crash_at=2)
        )
    assert ("spawn", "b") in events and ("stop", "b") in events and ("stop", "a") in events
    assert ("wait", "b") not in events


@pytest.mark.parametrize("bad", [0, 9, 1.5, "2", True])
def test_servers_at_once_must_be_a_small_integer(bad):
    with pytest.raises(ConfigError, match="servers_at_once"):
        config(servers_at_once=bad)


def test_short_memory_starts_one_server_at_a_time(runs_dir, monkeypatch):
    monkeypatch.setattr(sweep, "mem_available_gib", lambda: 6.0)  # one server's worth free
    events = []
    sweep.run_sweep(config(servers_at_once=2), spawnable_launcher(events), bench_noting(events))
    assert [e for e in events if e[0] == "spawn"] == []
