"""How many servers a study starts side by side, from the memory the kernel reports."""

from __future__ import annotations

import pytest

from common.server import SERVER_GIB, mem_available_gib, servers_at_once


def test_mem_available_reads_the_kernels_line(tmp_path):
    f = tmp_path / "meminfo"
    f.write_text("MemTotal:       24000000 kB\nMemAvailable:   16777216 kB\n")
    assert mem_available_gib(str(f)) == pytest.approx(16.0)


@pytest.mark.parametrize("text", ["", "MemAvailable: lots kB\n", "MemTotal: 1 kB\n"])
def test_mem_available_unreadable_is_none(tmp_path, text):
    f = tmp_path / "meminfo"
    f.write_text(text)
    assert mem_available_gib(str(f)) is None
    assert mem_available_gib(str(tmp_path / "absent")) is None


@pytest.mark.parametrize(
    ("available", "expected"),
    [
        (None, 1),
        (float("nan"), 1),
        (-3.0, 1),
        (0.5, 1),
        (3 * SERVER_GIB - 0.01, 1),
        (3 * SERVER_GIB, 2),
        (4 * SERVER_GIB, 3),
        (500.0, 3),
        (float("inf"), 3),
    ],
)
def test_servers_at_once_leave_one_servers_worth_of_memory(available, expected):
    assert servers_at_once(available) == expected
    assert servers_at_once(available, most=1) == 1


def test_vllm_servers_open_the_prefix_cache_reset_route(monkeypatch):
    """Benchmarks reset the prefix cache between runs (POST /reset_prefix_cache): vLLM serves
    that route only with VLLM_SERVER_DEV_MODE=1, so every vLLM server we start sets it."""
    from common.server import vllm_env
    from week2_serving.harness.launch import server_spec

    assert vllm_env(offline=True)["VLLM_SERVER_DEV_MODE"] == "1"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub probe
    spec = server_spec("vllm", "/nowhere/model", 8000, ["--dtype", "float32"], 1024, "m")
    assert spec.env["VLLM_SERVER_DEV_MODE"] == "1"
