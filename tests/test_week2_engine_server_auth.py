"""Issue #11: the API key comes from IE_API_KEY or a file, never argv, never a log; it guards
every route but /health (and /metrics with --metrics-public)."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import REPO
from tests.engine_server_helpers import tiny_engine
from week2_serving.engine.guards import ServingLimits
from week2_serving.engine.server import (
    create_app,
    exposure_warning,
    load_api_key,
    parse_args,
)
from week2_serving.harness.launch import launch

KEY = "s3cret-key-0123456789"
GUARDED_GETS = ["/v1/models", "/metrics", "/version", "/docs", "/openapi.json"]


@pytest.fixture(scope="module")
def engine(tiny_gpt):
    return tiny_engine(tiny_gpt["hf_dir"])


def test_every_route_but_health_needs_the_key(engine):
    right = {"Authorization": f"Bearer {KEY}"}
    wrong = {"Authorization": "Bearer " + "x" * len(KEY)}  # same length: compared in full
    with TestClient(create_app(engine, "tiny", api_key=KEY)) as client:
        for path in GUARDED_GETS:
            for headers in ({}, wrong, {"Authorization": KEY}):
                r = client.get(path, headers=headers)
                assert r.status_code == 401, (path, headers)
                assert r.json()["error"]["type"] == "AuthenticationError"
            assert client.get(path, headers=right).status_code == 200, path
        body = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
        assert client.post("/v1/completions", json=body).status_code == 401
        assert client.post("/v1/completions", json=body, headers=right).status_code == 200
        assert client.get("/v1/unknown").status_code == 401  # no route list for strangers
        assert client.get("/health").status_code == 200


def test_metrics_public_opens_metrics_only(engine):
    limits = ServingLimits(metrics_public=True)
    with TestClient(create_app(engine, "tiny", api_key=KEY, limits=limits)) as client:
        assert client.get("/metrics").status_code == 200
        assert client.get("/v1/models").status_code == 401


def test_api_key_on_the_command_line_is_refused():
    out = subprocess.run(
        [sys.executable, "-m", "week2_serving.engine.server", "--api-key", KEY],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "IE_API_KEY" in out.stderr and "--api-key-file" in out.stderr
    assert KEY not in out.stderr + out.stdout


def test_key_from_the_environment_or_a_file(tmp_path, monkeypatch):
    monkeypatch.delenv("IE_API_KEY", raising=False)
    assert load_api_key(parse_args([])) is None
    monkeypatch.setenv("IE_API_KEY", f"  {KEY}\n")
    assert load_api_key(parse_args([])) == KEY
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    assert load_api_key(parse_args(["--api-key-file", str(key_file)])) == "from-file"
    key_file.write_text("\n")
    with pytest.raises(SystemExit, match="is empty"):
        load_api_key(parse_args(["--api-key-file", str(key_file)]))
    with pytest.raises(SystemExit, match="cannot read it"):
        load_api_key(parse_args(["--api-key-file", str(tmp_path / "missing")]))


def test_binding_beyond_loopback_without_a_key_warns():
    for host in ("0.0.0.0", "192.168.1.5", "::", "myhost.example"):
        assert "without an API key" in exposure_warning(host, has_key=False)
        assert exposure_warning(host, has_key=True) is None
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert exposure_warning(host, has_key=False) is None


def test_bad_limits_are_usage_errors(capsys):
    for argv, name in (
        (["--max-num-waiting", "0"], "max_num_waiting=0"),
        (["--request-timeout", "-1"], "request_timeout=-1"),
        (["--max-body-bytes", "0"], "max_body_bytes=0"),
    ):
        with pytest.raises(SystemExit):
            parse_args(argv)
        assert name in capsys.readouterr().err


def test_the_key_never_reaches_the_server_log(tiny_gpt, tmp_path, monkeypatch):
    """Served for real (launcher, subprocess) with the key in a file: requests with the right
    key, a wrong one and none; neither key appears in the log or the command line."""
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    wrong = "wrong-key-9876543210"
    log_dir = tmp_path / "logs"
    with launch(
        "engine",
        tiny_gpt["hf_dir"],
        extra=["--api-key-file", str(key_file), "--num-kv-blocks", "32"],
        log_dir=log_dir,
        served_name="tiny",
        timeout_s=120,
    ) as srv:
        body = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
        for key, status in ((KEY, 200), (wrong, 401), (None, 401)):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            r = httpx.post(srv.url + "/v1/completions", json=body, headers=headers, timeout=30)
            assert r.status_code == status
        assert KEY not in " ".join(srv.cmd)  # only the file's path is on the command line
    logs = "".join(p.read_text(errors="replace") for p in log_dir.rglob("*") if p.is_file())
    assert logs  # the server wrote its log there
    assert KEY not in logs and wrong not in logs
