"""Week 3's served evaluation against a fake OpenAI-compatible server (no vLLM, no model).

The fake answers by model name (FAILING): `broken` and `qlora-sort` answer 500, `garbled` and
`dpo-sort` 200 with a body that is not JSON, `short` too few choices; any other name answers
every prompt right (choices in reverse order: the client must sort them by index).
The claims: a failed request is recorded with its error and counted, never scored as a wrong
answer and never ending the run; the other adapters are scored; results.json exists after
every adapter, so an interrupted run keeps what it measured and a rerun resumes from it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from common.results import read_json
from week3_finetune_lora import serve
from week3_finetune_lora.generation import ServedError, complete_served, generate_served
from week3_finetune_lora.served_eval import RunRecord, cross_check, score_adapters
from week3_finetune_lora.tasks import TASKS


def right_answer(prompt: str) -> str:
    task, _, rest = prompt.partition(":")
    return TASKS[task].answer(rest.rstrip("="))


BROKEN = (500, "internal error: out of blocks")
GARBLED = (200, '{"choices": [oops')
FAILING = {"broken": BROKEN, "qlora-sort": BROKEN, "garbled": GARBLED, "dpo-sort": GARBLED}


class FakeServer(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        choices = [{"index": i, "text": right_answer(p)} for i, p in enumerate(prompts)]
        status, text = FAILING.get(body["model"], (200, json.dumps({"choices": choices[::-1]})))
        if body["model"] == "short":
            text = json.dumps({"choices": choices[:-1]})
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(text.encode())

    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass


@pytest.fixture(scope="module")
def fake_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


ROWS = {
    task: [
        {"prompt": TASKS[task].prompt(x), "completion": TASKS[task].answer(x)}
        | {"task": task, "input": x}
        for x in ("4819", "0720", "1234", "5550", "9081")
    ]
    for task in ("reverse", "sort")
}


def local_for(calls: list[str]):
    """A stand-in for the local model: right answers, and a log of which adapters it ran."""

    def make(adapter_dir: str, rows: list[dict]):
        calls.append(adapter_dir)
        return (lambda prompts: [right_answer(p) for p in prompts]), 8

    return make


def test_each_failure_kind_is_a_recorded_failed_request(fake_url):
    prompts = [r["prompt"] for r in ROWS["sort"]]
    ok = complete_served(fake_url, "good", prompts, 8, batch_size=2)
    assert ok.outputs == [right_answer(p) for p in prompts] and ok.errors == []
    for model, says in (("broken", "answered 500"), ("garbled", "malformed"), ("short", "1 ch")):
        res = complete_served(fake_url, model, prompts, 8, batch_size=2)
        assert res.outputs == [None] * len(prompts), model
        assert res.failed_requests == 3 and says in res.errors[0], res.errors  # 3 chunks of <= 2
    with pytest.raises(ServedError, match="3 request"):
        generate_served(fake_url, "broken", prompts, 8, batch_size=2)
    dead = complete_served("http://127.0.0.1:9", "good", prompts[:1], 8)  # nothing listens
    assert dead.outputs == [None] and "ConnectError" in dead.errors[0]


def test_failed_adapters_recorded_and_the_others_scored(fake_url, tmp_path):
    record = RunRecord(tmp_path / "results.json", {"model": "m"})
    adapters = {"good": "/a/good", "qlora-sort": "/a/q", "sort": "/a/sort", "dpo-sort": "/a/d"}
    score_adapters(fake_url, adapters, record, ROWS.__getitem__, local_for([]))
    on_disk = read_json(tmp_path / "results.json")
    by_name = {s["adapter"]: s for s in on_disk["scores"]}
    # `good` has no task of that name: not scored (a warning), the rest are
    assert set(by_name) == {"qlora-sort", "sort", "dpo-sort"}
    assert by_name["sort"]["served_exact"] == 1.0 and by_name["sort"]["failed_requests"] == 0
    assert by_name["sort"]["diff_points"] == 0.0 and by_name["sort"]["same_verdict_rate"] == 1.0
    for name in ("qlora-sort", "dpo-sort"):
        s = by_name[name]
        # not scored as 0% wrong: no served score at all, the failure named and counted
        assert s["served_exact"] is None and s["diff_points"] is None and s["served_n"] == 0
        assert s["failed_requests"] == 1 and s["errors"]
    assert "500" in by_name["qlora-sort"]["errors"][0]
    assert "malformed" in by_name["dpo-sort"]["errors"][0]
    assert by_name["dpo-sort"]["local_exact"] == 1.0  # the local side was still scored
    assert on_disk["failed_requests"] == 2


def test_interrupted_run_keeps_finished_adapters_and_resumes(fake_url, tmp_path):
    path, cfg = tmp_path / "results.json", {"model": "m", "eval_limit": None}
    adapters = {"sort": "/a/sort", "reverse": "/a/reverse"}
    calls: list[str] = []
    make = local_for(calls)

    def interrupted(adapter_dir, rows):
        if adapter_dir == "/a/reverse":
            raise KeyboardInterrupt  # Ctrl-C during the second adapter
        return make(adapter_dir, rows)

    with pytest.raises(KeyboardInterrupt):
        score_adapters(fake_url, adapters, RunRecord(path, cfg), ROWS.__getitem__, interrupted)
    kept = read_json(path)["scores"]
    assert [s["adapter"] for s in kept] == ["sort"] and kept[0]["served_exact"] == 1.0
    # The rerun keeps `sort` from the file and scores only `reverse`.
    calls.clear()
    record = RunRecord(path, cfg)
    score_adapters(fake_url, adapters, record, ROWS.__getitem__, make)
    assert calls == ["/a/reverse"]
    assert [s["adapter"] for s in read_json(path)["scores"]] == ["sort", "reverse"]
    # Other settings (another base) or --no-resume: nothing is reused.
    assert RunRecord(path, {**cfg, "model": "other"}).finished("sort", "/a/sort") is None
    assert RunRecord(path, cfg, resume=False).finished("sort", "/a/sort") is None
    assert RunRecord(path, cfg).finished("sort", "/a/sort") is not None


def test_cross_check_records_failures(fake_url):
    res = cross_check(fake_url, ["sort", "qlora-sort"], ROWS.__getitem__)
    by_model = {a["adapter"]: a for a in res["answers"]}
    assert by_model["sort"]["output"] == by_model["sort"]["expected"]
    assert by_model["qlora-sort"]["output"] is None and "500" in by_model["qlora-sort"]["error"]
    assert res["failed_requests"] == 1


def test_serve_flags_reach_the_config():
    cfg = serve.parse_args(
        ["--adapters", "a=/x", "b=/y", "--max-loras", "1", "--no-resume", "--preset", "tiny"]
    )
    assert cfg.adapter_dirs() == {"a": "/x", "b": "/y"}
    assert (cfg.max_loras, cfg.resume, cfg.skip_bench) == (1, False, True)
    with pytest.raises(ValueError, match="'nodir': use NAME=FOLDER"):
        serve.ServeConfig(adapters=("nodir",))
    with pytest.raises(ValueError, match="max_lora_rank=3"):
        serve.ServeConfig(max_lora_rank=3)
