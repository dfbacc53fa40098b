"""Issue #11: a fault in one request fails that request only; a dead engine loop fails every
request at once, turns /health to 503 and stops the process with a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time

import httpx

from common.server import free_port
from tests.conftest import REPO
from tests.engine_server_helpers import engine_idle, running_server, tiny_engine, wait_until

BODY = {"model": "tiny", "prompt": "The", "max_tokens": 8, "ignore_eos": True}


def test_a_fault_while_handling_one_request_fails_that_request_only(tiny_gpt):
    engine = tiny_engine(tiny_gpt["hf_dir"])
    encode = engine.encode

    def faulty_encode(prompt):
        if prompt == "boom":
            raise RuntimeError("injected fault")
        return encode(prompt)

    engine.encode = faulty_encode
    with running_server(engine) as (url, _):
        r = httpx.post(url + "/v1/completions", json={**BODY, "prompt": "boom"}, timeout=30)
        assert r.status_code == 500, r.text
        err = r.json()["error"]
        assert "injected fault" in err["message"] and err["type"] == "InternalServerError"
        assert httpx.post(url + "/v1/completions", json=BODY, timeout=30).status_code == 200
        assert httpx.get(url + "/health").status_code == 200


def test_a_fault_inside_the_engine_step_fails_that_request_only(tiny_gpt):
    """The sampler raising for one request's row mid-generation: that request gets a 500 (its
    stream an error event), a request decoding beside it in the same steps is served whole."""
    from week2_serving.engine.sampler import Sampler

    class FaultySampler(Sampler):
        def __call__(self, logits, seqs):
            if any(s.params.seed == 666 and s.num_output_tokens >= 2 for s in seqs):
                raise ValueError("injected sampler fault")
            return super().__call__(logits, seqs)

    engine = tiny_engine(tiny_gpt["hf_dir"])
    engine.sampler = FaultySampler()
    bad = {**BODY, "max_tokens": 32, "seed": 666, "temperature": 1.0}
    good = {**BODY, "max_tokens": 32}
    with running_server(engine) as (url, _):
        results: dict[str, httpx.Response] = {}
        threads = [
            threading.Thread(
                target=lambda k=k, b=b: results.__setitem__(
                    k, httpx.post(url + "/v1/completions", json=b, timeout=60)
                )
            )
            for k, b in (("bad", bad), ("good", good))
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=60)
        assert results["bad"].status_code == 500
        assert "injected sampler fault" in results["bad"].json()["error"]["message"]
        assert results["good"].status_code == 200, results["good"].text
        assert results["good"].json()["usage"]["completion_tokens"] == 32
        with httpx.stream("POST", url + "/v1/completions", json={**bad, "stream": True}) as r:
            events = [line for line in r.iter_lines() if line.startswith("data:")]
        assert any("injected sampler fault" in e for e in events), events
        assert httpx.get(url + "/health").status_code == 200
        wait_until(lambda: engine_idle(engine), 10, "the engine to free every block")


def test_a_request_the_engine_thread_cannot_add_fails_alone(tiny_gpt):
    """`add_sequence` raising (on the engine thread) for one request: that request gets its 500
    (or its stream an error event); requests around it, before and after, are served."""
    engine = tiny_engine(tiny_gpt["hf_dir"])
    add = engine.add_sequence

    def faulty_add(seq):
        if seq.tokens[: seq.num_prompt_tokens] == [7, 7, 7]:
            raise RuntimeError("injected add fault")
        add(seq)

    engine.add_sequence = faulty_add
    bad = {**BODY, "prompt": [7, 7, 7]}
    with running_server(engine) as (url, _):
        results: list[int] = []
        others = [
            threading.Thread(
                target=lambda: results.append(
                    httpx.post(url + "/v1/completions", json=BODY, timeout=30).status_code
                )
            )
            for _ in range(4)
        ]
        for t in others:
            t.start()
        r = httpx.post(url + "/v1/completions", json=bad, timeout=30)
        assert r.status_code == 500 and "injected add fault" in r.json()["error"]["message"]
        with httpx.stream("POST", url + "/v1/completions", json={**bad, "stream": True}) as s:
            events = [line for line in s.iter_lines() if line.startswith("data:")]
        assert json.loads(events[-1][5:])["error"]["code"] == 500
        for t in others:
            t.join(timeout=30)
        assert results == [200] * 4
        assert httpx.post(url + "/v1/completions", json=BODY, timeout=30).status_code == 200
        assert httpx.get(url + "/health").status_code == 200 and engine_idle(engine)


def test_engine_loop_death_fails_everything_at_once(tiny_gpt):
    engine = tiny_engine(tiny_gpt["hf_dir"])
    step, calls = engine.step, []

    def dying_step():
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected step fault")
        time.sleep(0.05)  # slow enough that every request below is in flight at step 3
        return step()

    engine.step = dying_step
    long = {**BODY, "max_tokens": 100}
    with running_server(engine) as (url, app):
        deaths: list[BaseException] = []
        app.state.engine.on_death = deaths.append
        got: list[tuple[str, int, str]] = []

        def plain():
            r = httpx.post(url + "/v1/completions", json=long, timeout=30)
            got.append(("plain", r.status_code, r.text))

        def streamed():
            with httpx.stream("POST", url + "/v1/completions", json={**long, "stream": True}) as r:
                last = [line for line in r.iter_lines() if line.startswith("data:")][-1]
            got.append(("stream", r.status_code, last))

        threads = [threading.Thread(target=f) for f in (plain, plain, streamed, streamed)]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert time.monotonic() - start < 5  # at once, not after a timeout
        assert sorted(kind for kind, *_ in got) == ["plain", "plain", "stream", "stream"]
        for kind, status, text in got:
            assert "injected step fault" in text, (kind, status, text)
            assert status == (500 if kind == "plain" else 200)  # a stream has begun already
        assert len(deaths) == 1 and "injected step fault" in repr(deaths[0])
        health = httpx.get(url + "/health")
        assert health.status_code == 503 and "injected step fault" in health.text
        r = httpx.post(url + "/v1/completions", json=BODY, timeout=5)
        assert r.status_code == 503 and r.json()["error"]["type"] == "ServiceUnavailableError"
        assert httpx.get(url + "/metrics").status_code == 503


DYING_SERVER = textwrap.dedent(
    """
    import sys
    from week2_serving.engine import server
    from week2_serving.engine.llm_engine import LLMEngine

    step = LLMEngine.step
    calls = []

    def dying_step(self):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected step fault")
        return step(self)

    LLMEngine.step = dying_step
    server.main(server.parse_args(sys.argv[1:]))
    """
)


def test_server_process_exits_non_zero_when_the_engine_dies(tiny_gpt, tmp_path):
    port = free_port()
    cmd = [sys.executable, "-c", DYING_SERVER, "--model", str(tiny_gpt["hf_dir"])]
    cmd += ["--port", str(port), "--served-model-name", "tiny", "--num-kv-blocks", "32"]
    err = tmp_path / "server.err"
    with open(err, "w") as err_file:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err_file)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(url + "/health"), 120, "the server to start")
        r = httpx.post(url + "/v1/completions", json=BODY, timeout=30)
        assert r.status_code == 500 and "injected step fault" in r.text
        assert proc.wait(timeout=30) == 1
        assert "the engine loop died" in err.read_text()
    finally:
        proc.kill()
        proc.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
