"""Week 2: reading guidellm's results (a canned benchmarks.json of guidellm 0.8.1, trimmed to
the fields read) and comparing them with ours."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from week2_serving.harness.guidellm_check import (
    METRIC_MAP,
    compare,
    guidellm_command,
    guidellm_env,
    parse_guidellm,
    verdict,
)

CANNED = Path(__file__).parent / "data" / "guidellm-benchmarks.json"


def test_parse_reads_each_rate_in_our_names():
    rows = parse_guidellm(CANNED)
    assert [r["rate"] for r in rows] == [2.0, 4.0]
    first = rows[0]
    assert first["completed"] == 20 and first["failed"] == 0
    raw = json.loads(CANNED.read_text())["benchmarks"][0]["metrics"]
    # guidellm's mean inter-token latency is token-weighted: our token-weighted TPOT, not the
    # request-weighted mean TPOT, and not its time_per_output_token (first token included)
    itl = raw["inter_token_latency_ms"]["successful"]["mean"]
    assert first["mean_tpot_token_weighted_ms"] == itl and "mean_tpot_ms" not in first
    assert itl != raw["time_per_output_token_ms"]["successful"]["mean"]
    assert first["output_throughput"] == raw["output_tokens_per_second"]["successful"]["mean"]
    assert rows[1]["output_throughput"] > rows[0]["output_throughput"]  # twice the rate


def test_parse_refuses_an_empty_file(tmp_path):
    empty = tmp_path / "b.json"
    empty.write_text(json.dumps({"benchmarks": []}))
    with pytest.raises(ValueError, match="no benchmark"):
        parse_guidellm(empty)


def test_compare_and_verdict_apply_the_tolerance():
    theirs = dict.fromkeys(METRIC_MAP, 100.0)
    ours = {**theirs, "mean_ttft_ms": 115.0}
    row = {"rate": 1.0, **compare(ours, theirs, 1.0)}
    assert row["mean_ttft_ms"]["relative_diff"] == pytest.approx(0.15)
    out = verdict({"rows": [row]}, tolerance=0.10)
    assert not out["all_within_tolerance"] and out["rows"][0]["output_throughput"]["within"]
    assert verdict({"rows": [row]}, tolerance=0.2)["all_within_tolerance"]
    assert verdict({"skipped": "absent"}, 0.1) == {"skipped": "absent"}


def test_the_command_asks_for_constant_rates_on_the_completions_api(tmp_path):
    cmd = guidellm_command(
        "http://h:1", "m", "/tok", tmp_path / "p.jsonl", [1.5, 3.0], 32, tmp_path / "o.json"
    )
    profile = json.loads(cmd[cmd.index("--profile") + 1])
    assert profile == {"kind": "constant", "rate": [1.5, 3.0]}
    backend = json.loads(cmd[cmd.index("--backend") + 1])
    assert backend["kind"] == "openai_http" and backend["request_format"] == "/v1/completions"
    assert backend["target"] == "http://h:1" and backend["model"] == "m"
    # the same request body as ours: greedy, usage only at the end
    body = backend["extras"]["body"]
    assert body["temperature"] == 0.0
    assert body["stream_options"] == {"continuous_usage_stats": False}
    assert cmd[cmd.index("--constraint") + 1] == "kind=max_requests,count=32"


def test_guidellm_runs_one_worker_process_by_default():
    assert guidellm_env()["GUIDELLM__MAX_WORKER_PROCESSES"] == "1"
    assert guidellm_env(4)["GUIDELLM__MAX_WORKER_PROCESSES"] == "4"


def test_check_runs_both_tools_at_once_and_compares_medians(monkeypatch, tmp_path):
    """Each rate, each round: guidellm starts, ours starts only once the server holds one of
    guidellm's requests, then both finish; per rate the medians over rounds are compared, so
    one slow round of either tool does not decide the verdict."""
    import json as _json

    from week2_serving.harness import guidellm_check as gc

    events: list[str] = []
    monkeypatch.setattr(gc, "GUIDELLM", tmp_path / "guidellm")
    (tmp_path / "guidellm").touch()
    canned = _json.loads(CANNED.read_text())

    class FakeGuidellm:
        def __init__(self, cmd, **kw):
            self.returncode = None
            rate = _json.loads(cmd[cmd.index("--profile") + 1])["rate"][0]
            one = [b for b in canned["benchmarks"] if b["config"]["strategy"]["rate"] == rate]
            out = cmd[cmd.index("--output") + 1].split("path=", 1)[1]
            Path(out).write_text(_json.dumps({**canned, "benchmarks": one}))
            events.append(f"guidellm {rate}")
            self.busy = iter([0.0, 0.0, 2.0])  # the server sees its requests on the 3rd look

        def poll(self):
            return self.returncode

        def communicate(self, timeout=None):
            self.returncode = 0
            events.append("guidellm done")
            return "", ""

    procs: list[FakeGuidellm] = []

    def popen(cmd, **kw):
        procs.append(FakeGuidellm(cmd))
        return procs[-1]

    def in_flight(url):
        busy = next(procs[-1].busy, 2.0)
        if busy:
            events.append("server busy")
        return busy

    theirs = {r["rate"]: r for r in parse_guidellm(CANNED)}
    slow = iter([1.0, 1.0, 3.0, 3.0, 1.0, 1.0])  # ours' second round is three times slower

    def fake_ours(url, model, model_dir, prompts, rate, count, warmups=1):
        assert events[-1] == "server busy" and warmups == 0
        events.append(f"ours {rate}")
        k = next(slow)
        out = {m: theirs[rate][m] * k for m in METRIC_MAP}
        return {**out, "mean_tpot_ms": out["mean_tpot_token_weighted_ms"]}

    monkeypatch.setattr(gc.subprocess, "Popen", popen)
    monkeypatch.setattr(gc.server_metrics, "requests_in_flight", in_flight)
    monkeypatch.setattr(gc.time, "sleep", lambda s: None)
    monkeypatch.setattr(gc, "run_ours", fake_ours)
    res = gc.run_check("http://h:1", "m", "/tok", tmp_path / "p.jsonl", [2.0, 4.0], 20, tmp_path)
    one_round = [
        *("guidellm 2.0", "server busy", "ours 2.0", "guidellm done"),
        *("guidellm 4.0", "server busy", "ours 4.0", "guidellm done"),
    ]
    assert events == one_round * 3
    assert res["together"] is True
    out = verdict(res, tolerance=0.10)
    assert out["all_within_tolerance"]  # the medians agree; the slow round is outvoted
    assert [r["rate"] for r in out["rows"]] == [2.0, 4.0]
    assert out["rows"][0]["mean_ttft_ms"]["relative_diff"] == pytest.approx(0.0)
    cpu = res["client_cpu_s_per_request"]
    assert set(cpu) == {"guidellm", "ours"} and all(v >= 0 for v in cpu.values())
    assert all(set(r["client_cpu_s_per_request"]) == set(cpu) for r in res["rounds"])


def test_aligning_the_tools_needs_the_servers_request_gauges(monkeypatch):
    """A server whose /metrics has no request gauges cannot tell when guidellm started: the
    check says so instead of starting ours blind; a guidellm that exits early ends the wait."""
    from week2_serving.harness import guidellm_check as gc

    class Running:
        def poll(self):
            return None

    class Exited:
        def poll(self):
            return 2

    monkeypatch.setattr(gc.server_metrics, "requests_in_flight", lambda url: None)
    with pytest.raises(RuntimeError, match="no request gauges"):
        gc.wait_until_sending("http://h:1", Running())
    gc.wait_until_sending("http://h:1", Exited())  # returns: the caller reads its exit status


def test_requests_in_flight_sums_running_and_waiting(monkeypatch):
    from week2_serving.harness import server_metrics

    text = (
        '# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name="m"} 3.0\n'
        '# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name="m"} 2.0\n'
    )

    class Resp:
        def __init__(self, t):
            self.text = t

        def raise_for_status(self):
            pass

    monkeypatch.setattr(server_metrics.httpx, "get", lambda url, timeout: Resp(text))
    assert server_metrics.requests_in_flight("http://h:1") == 5.0
    monkeypatch.setattr(server_metrics.httpx, "get", lambda url, timeout: Resp("# nothing\n"))
    assert server_metrics.requests_in_flight("http://h:1") is None


def test_cpu_seconds_counts_this_process_and_finished_children():
    import subprocess
    import sys

    from week2_serving.harness.guidellm_check import cpu_seconds

    def burn() -> list[dict]:
        end = time.process_time() + 0.2
        while time.process_time() < end:
            pass
        return [{"ok": True}]

    def child() -> list[dict]:
        code = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
        subprocess.run([sys.executable, "-c", code], check=True)
        return []

    into: dict[str, float] = {}
    assert cpu_seconds(burn, into, "ours") == [{"ok": True}]
    assert cpu_seconds(child, into, "guidellm") == []
    assert 0.19 <= into["ours"] < 1.0  # its own 0.2 s, little else
    assert into["guidellm"] >= 0.29  # the child's 0.3 s (plus its interpreter's start)

    def fails() -> list[dict]:
        raise RuntimeError("guidellm failed")

    with pytest.raises(RuntimeError):
        cpu_seconds(fails, into, "x")
    assert "x" in into  # recorded on the way out too


def test_the_readme_table_shows_each_rate_and_marks_misses():
    from week2_serving.tables import guidellm_numbers, guidellm_table

    within = {"guidellm": 10.0, "ours": 10.5, "relative_diff": 0.05, "within": True}
    miss = {"guidellm": 10.0, "ours": 12.0, "relative_diff": 0.2, "within": False}
    row = {"rate": 2.5, "rounds": 3, "mean_ttft_ms": within, "mean_tpot_token_weighted_ms": miss}
    results = {
        "guidellm": {"rows": [row], "tolerance": 0.1},
        "config": {"guidellm_rate_shares": [0.25, 0.5]},
    }
    table = guidellm_table(guidellm_numbers(results))
    ttft = next(line for line in table.splitlines() if "TTFT" in line)
    tpot = next(line for line in table.splitlines() if "TPOT" in line)
    assert "+5.0%" in ttft and ttft.endswith("| yes |")
    assert "+20.0%" in tpot and "**NO**" in tpot
    assert "medians over 3 rounds" in table and "25% and 50%" in table
    assert "Client CPU" not in table  # not recorded in these results: not made up
    results["guidellm"]["client_cpu_s_per_request"] = {"guidellm": 0.0123, "ours": 0.004}
    table = guidellm_table(guidellm_numbers(results))
    assert "guidellm 12.3 ms, ours 4.0 ms" in table
    skipped = {"guidellm": {"skipped": "no venv"}, "config": {}}
    assert guidellm_table(guidellm_numbers(skipped)) == "guidellm not run: no venv"


@pytest.mark.parametrize("share", [0.0, -1.0, float("nan")])
def test_validate_refuses_a_rate_share_that_is_not_a_positive_number(share):
    from week2_serving.harness import validate

    with pytest.raises(ValueError, match="rate_share"):
        validate.ValidateConfig(rate_share=share)


def test_validate_table_says_how_the_requests_arrived():
    """Paced rounds name their rate and its share of the saturated one; results from before
    pacing (no rate recorded) or with every request at once say so."""
    from week2_serving import tables

    base = {"summary": {}, "rounds": {}, "config": {}}
    paced = tables.arrivals({**base, "request_rate": 18.0, "saturated_request_rate": 12.0})
    assert "18.00 requests/s" in paced and "1.5×" in paced and "12.00/s" in paced
    assert "at once" in tables.arrivals(base)
    assert "at once" in tables.arrivals(
        {**base, "request_rate": None, "saturated_request_rate": 12}
    )
