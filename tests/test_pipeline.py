"""`make all`'s runner: failed steps skip only their dependants, failures inside finished steps
are found in the results, the summary names them all and the exit status says so."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from common import pipeline
from common.pipeline import Step, failures_in_results, run_steps, select, summary
from common.results import write_json_atomic


def steps() -> list[Step]:
    return [
        Step("week1/train", "week1", ("a",)),
        Step("week1/export", "week1", ("b",), ("week1/train",)),
        Step("week2/sweep", "week2", ("c",), ("week1/export",)),
        Step("week3/data", "week3", ("d",)),
    ]


def test_a_failed_step_skips_its_dependants_and_the_rest_goes_on():
    ran = []

    def runner(cmd: list[str]) -> int:
        ran.append(cmd[-1])
        return 1 if cmd[-1] == "a" else 0

    out = run_steps(steps(), runner)
    assert [o.status for o in out] == ["failed", "skipped", "skipped", "ok"]
    assert ran == ["a", "d"]
    assert "week1/train" in out[1].detail and "week1/export" in out[2].detail
    text = summary(out, [])
    assert "week1/train" in text and "exit code 1" in text and "1 step(s) failed" not in text
    assert "3 step(s) failed or skipped" in text


def test_failures_inside_finished_steps_are_found(tmp_path):
    write_json_atomic(tmp_path / "week2/sweep-cpu/int8/c1/error.json", {"error": "died\nlog"})
    write_json_atomic(tmp_path / "week2/sweep-cpu/default/c1/results.json", {"completed": 3})
    write_json_atomic(
        tmp_path / "week2/quant-quality/results.json",
        {"variants": {"fp32": {"status": "ok"}, "int8-w8a8": {"status": "error", "error": "x"}}},
    )
    write_json_atomic(tmp_path / "week3/serve/results.json", {"variants": ["a", "b"]})
    found = failures_in_results(tmp_path)
    assert found == [
        "week2/sweep-cpu/int8/c1: died",
        "week2/quant-quality / int8-w8a8: x",
    ]
    assert failures_in_results(tmp_path, {"week3"}) == []
    assert "2 variant(s) or cell(s) failed" in summary([], found)
    assert summary([], []).rstrip().endswith("everything ran")


@pytest.mark.parametrize("profile", sorted(pipeline.PROFILES))
def test_every_profile_is_well_formed(profile):
    all_steps = pipeline.PROFILES[profile]()
    names = [s.name for s in all_steps]
    assert len(names) == len(set(names))
    for i, s in enumerate(all_steps):
        assert set(s.needs) <= set(names[:i]), f"{s.name} needs a later or unknown step"
        assert s.group in pipeline.GROUPS
        assert importlib.util.find_spec(s.args[0]) is not None, s.args[0]
    assert {s.group for s in all_steps} >= {"week0", "week1", "week2", "week3", "report"}


def test_select_by_make_target():
    assert [s.name for s in select(steps(), ["week3"])] == ["week3/data"]
    assert select(steps(), None) == steps()
    with pytest.raises(ValueError, match="unknown part.*week9"):
        select(steps(), ["week9"])


def test_main_exits_nonzero_and_prints_the_summary(monkeypatch, capsys, runs_dir):
    fail = Step("week0/boom", "week0", ("-c", "import sys; sys.exit(3)"))
    ok = Step("week0/fine", "week0", ("-c", "pass"))
    monkeypatch.setattr(pipeline, "PROFILES", {"cpu": lambda: [fail, ok]})
    monkeypatch.setattr(Step, "command", property(lambda s: [sys.executable, *s.args]))
    assert pipeline.main(["--only", "week0"]) == 1
    out = capsys.readouterr().out
    assert "week0/boom" in out and "failed" in out and "exit code 3" in out
    monkeypatch.setattr(pipeline, "PROFILES", {"cpu": lambda: [ok]})
    assert pipeline.main([]) == 0
    # a cell that failed inside a finished step fails the run too
    write_json_atomic(runs_dir / "week0" / "x" / "error.json", {"error": "server died"})
    assert pipeline.main([]) == 1
    assert "week0/x: server died" in capsys.readouterr().out


def test_dry_run_prints_every_step_and_runs_nothing(monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "_run", lambda cmd: pytest.fail("a step ran"))
    assert pipeline.main(["--profile", "gpu", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "week3/serve" in out and "serve --preset gpu" in out and "--task sst2" in out


@pytest.mark.parametrize(
    ("flags", "has_bf16_step"),
    [({"avx512f", "avx512_bf16"}, True), ({"amx_tile", "amx_bf16"}, True), ({"avx2"}, False)],
)
def test_the_bf16_engine_bench_runs_only_on_native_bf16_cpus(flags, has_bf16_step):
    from common.cpu import CpuCaps

    caps = CpuCaps(model="test cpu", flags=frozenset(flags))
    names = [s.name for s in pipeline.cpu_steps(caps)]
    assert ("week2/engine-bench-bf16" in names) is has_bf16_step
    if has_bf16_step:  # after the float32 bench, in week2-engine, on its own config
        step = next(s for s in pipeline.cpu_steps(caps) if s.name == "week2/engine-bench-bf16")
        assert step.group == "week2-engine" and "engine-cpu-bf16.yaml" in " ".join(step.args)
        assert names.index("week2/engine-bench-bf16") > names.index("week2/engine-bench")
