"""The sweep: a cartesian product of server and load settings that resumes after a crash."""

from __future__ import annotations

import contextlib

import pytest

from common.server import ServerError
from week2_serving import sweep
from week2_serving.sweep import SweepConfig


def config(**kw) -> SweepConfig:
    base = dict(
        name="t",
        engine="vllm",
        model="week2_serving/configs",  # any existing folder: the fake launchers never read it
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


def fake_launcher(started):
    @contextlib.contextmanager
    def launch(engine, model, extra=None, **kw):
        started.append(tuple(extra))
        yield FakeServer()

    return launch


def test_interrupted_sweep_resumes_and_skips_finished_cells(runs_dir):
    started, ran = [], []

    def runner(cfg):
        if len(ran) == 4:
            raise KeyboardInterrupt("power cut")
        ran.append((cfg.max_concurrency, cfg.num_prompts))
        return {"output_throughput": 1.0}

    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(config(), fake_launcher(started), runner)
    assert len(ran) == 4 and len(started) == 2  # a: 3 cells, b: 1 cell, then the crash
    out = runs_dir / "week2" / "sweep-t"
    assert sorted(
        p.parent.name + "/" + p.parent.parent.name for p in out.rglob("results.json")
    ) == ["c1/a", "c1/b", "c32/a", "c8/a"]

    ran.clear()
    started.clear()
    sweep.run_sweep(
        config(), fake_launcher(started), lambda cfg: ran.append(cfg.max_concurrency) or {}
    )
    assert ran == [8, 32] and started == [("--max-num-seqs", "4")]  # only b's two missing cells
    ran.clear()
    sweep.run_sweep(config(), fake_launcher(started), lambda cfg: ran.append(1) or {})
    assert ran == []  # nothing left to do


def test_server_failure_is_recorded_and_the_sweep_goes_on(runs_dir):
    @contextlib.contextmanager
    def launch(engine, model, extra=None, **kw):
        if extra:
            raise ServerError("vLLM exited: unknown flag")
        yield FakeServer()

    sweep.run_sweep(config(), launch, lambda cfg: {"ok": True})
    out = runs_dir / "week2" / "sweep-t"
    assert (out / "a" / "c8" / "results.json").exists()
    assert "unknown flag" in (out / "b" / "c8" / "error.json").read_text()


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown field\\(s\\) \\['concurrency'\\]"):
        config(loads=[{"name": "x", "concurrency": 4}])
    with pytest.raises(ValueError, match="unique 'name'"):
        config(servers=[{"name": "a"}, {"name": "a"}])
    with pytest.raises(ValueError, match="engine 'trt'"):
        config(engine="trt")
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        SweepConfig.from_yaml(tmp_path / "nope.yaml")


def test_shipped_configs_parse():
    from tests.conftest import REPO

    for path in (REPO / "week2_serving" / "configs").glob("*.yaml"):
        cfg = SweepConfig.from_yaml(path)
        assert cfg.servers and cfg.loads, path


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
    sweep.run_sweep(
        config(servers=servers), launch, lambda cfg: ran.append(cfg.max_concurrency) or {}
    )
    assert engines == ["vllm", "engine"] and ran == [1, 8, 32, 32]
    with pytest.raises(ValueError, match="unknown loads \\['c64'\\]"):
        config(servers=[{"name": "x", "loads": ["c64"]}])
    with pytest.raises(ValueError, match="engine 'tgi'"):
        config(servers=[{"name": "x", "engine": "tgi"}])
