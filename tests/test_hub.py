"""A model named by hub id or by local folder, online or offline, at every week 2 entry point.

The hub is faked with a cache folder: a temporary HF_HOME holding `testorg/tiny` (the tiny
export) in huggingface_hub's layout. Every resolution below runs with the network cut
(`no_network`), so a test that passes here cannot have downloaded anything.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from common import hub, server
from common.hub import ModelNotFoundError, hub_env, is_offline, resolve_model
from common.results import REPO_ROOT
from common.server import ServerError

REPO_ID = "testorg/tiny"
REVISION = "0123456789abcdef0123456789abcdef01234567"  # a commit hash: any 40 hex digits


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every DNS look-up and outgoing connection of this process fails."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def hub_cache(tiny_gpt: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HF_HOME/hub/models--testorg--tiny/{refs/main, snapshots/<REVISION>/...}: what
    huggingface_hub leaves after downloading the repository (it links the snapshot's files
    into blobs/; plain copies are found the same way). Returns the snapshot folder."""
    home = tmp_path / "hf-home"
    repo = home / "hub" / "models--testorg--tiny"
    snapshot = repo / "snapshots" / REVISION
    shutil.copytree(tiny_gpt["hf_dir"], snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return snapshot


@pytest.fixture
def fake_hub(hub_cache: Path, no_network) -> Path:
    """The fake hub cache, with this process's network cut."""
    return hub_cache


def online_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's environment without the offline switches (conftest sets them)."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)


# ---- offline or not ----


@pytest.mark.parametrize(
    "flag, env, reachable, expected",
    [
        (True, {}, True, True),  # --offline
        (None, {"HF_HUB_OFFLINE": "1"}, True, True),
        (None, {"TRANSFORMERS_OFFLINE": "yes"}, True, True),
        (None, {"HF_HUB_OFFLINE": "TRUE"}, None, True),
        (False, {"HF_HUB_OFFLINE": "on"}, True, True),  # the user's variable still holds
        (None, {"HF_HUB_OFFLINE": "0"}, None, False),
        (None, {"HF_HUB_OFFLINE": ""}, None, False),
        (None, {}, None, False),  # no probe: never forced
        (None, {}, True, False),
        (None, {}, False, True),  # the hub cannot be reached: this machine is offline
        (False, {}, False, False),  # online on the caller's word: no probe
    ],
)
def test_is_offline_truth_table(flag, env, reachable, expected):
    asked = []
    probe = None if reachable is None else (lambda: asked.append(1) or reachable)
    assert is_offline(flag, env, probe) is expected
    if flag is not None or any(hub.env_true(v) for v in env.values()):
        assert not asked  # the flag or the environment decided: no probe


def test_is_offline_reads_the_environment_when_called(monkeypatch):
    online_env(monkeypatch)
    assert not is_offline()
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert is_offline()


def test_hub_env_only_when_offline():
    assert hub_env(False) == {}
    env = hub_env(True)
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"


def test_hub_reachable_is_a_local_tcp_probe():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert hub.hub_reachable({"HF_ENDPOINT": f"http://127.0.0.1:{port}"})
    assert not hub.hub_reachable({"HF_ENDPOINT": f"http://127.0.0.1:{port}"})  # closed now
    assert hub.hub_reachable({"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HTTPS_PROXY": "x"})


def test_hub_cache_dir_is_read_at_call_time(tmp_path):
    assert hub.hub_cache_dir({"HF_HUB_CACHE": "/c", "HF_HOME": "/h"}) == Path("/c")
    assert hub.hub_cache_dir({"HF_HOME": str(tmp_path)}) == tmp_path / "hub"
    assert hub.hub_cache_dir({"XDG_CACHE_HOME": "/x"}) == Path("/x/huggingface/hub")


# ---- resolving ----


def test_local_folders_resolve_to_themselves(tmp_path, monkeypatch, no_network):
    assert resolve_model(tmp_path) == tmp_path
    monkeypatch.chdir(tmp_path)  # relative to the repository when not in the current folder
    assert (
        resolve_model("week2_serving/harness/configs")
        == REPO_ROOT / "week2_serving" / "harness" / "configs"
    )
    (tmp_path / "week2_serving" / "harness" / "configs").mkdir(
        parents=True
    )  # ... and the current folder first
    assert (
        resolve_model("week2_serving/harness/configs")
        == tmp_path / "week2_serving" / "harness" / "configs"
    )
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(NotADirectoryError, match="config.json"):
        resolve_model("config.json")


def test_hub_id_resolves_to_its_cached_snapshot(fake_hub, monkeypatch):
    assert resolve_model(REPO_ID, offline=True) == fake_hub
    assert hub.resolve_tokenizer(REPO_ID, offline=True) == fake_hub
    monkeypatch.delenv("HF_HUB_CACHE")  # HF_HOME alone: the cache is HF_HOME/hub
    assert resolve_model(REPO_ID, offline=True) == fake_hub
    assert (resolve_model(REPO_ID) / "config.json").is_file()  # offline from HF_HUB_OFFLINE


def test_offline_and_not_cached_says_what_to_do(fake_hub):
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model("testorg/absent", offline=True)
    msg = str(err.value)
    assert "'testorg/absent'" in msg and str(fake_hub.parents[2]) in msg  # the id, the cache
    assert "offline mode is on" in msg and "network access" in msg and "local" in msg


def test_neither_a_folder_nor_a_hub_id(no_network):
    for name in ("runs/no/such-model", "not an id", "/no/such/folder"):
        with pytest.raises(ModelNotFoundError, match="no such folder.*not a hub id"):
            resolve_model(name, offline=True)
    assert not hub.is_hub_id("org--x/name") and not hub.is_hub_id("org/a..b")
    assert hub.is_hub_id("gpt2") and hub.is_hub_id("Qwen/Qwen2.5-1.5B-Instruct")


# ---- through each entry point ----


def test_bench_loads_a_hub_tokenizer(fake_hub, tiny_gpt):
    from transformers import AutoTokenizer

    from week2_serving.harness import bench

    text = "def f(x): return x"
    want = AutoTokenizer.from_pretrained(tiny_gpt["hf_dir"])(text)["input_ids"]
    assert bench.load_tokenizer(REPO_ID, offline=True)(text)["input_ids"] == want
    assert bench.load_tokenizer(REPO_ID)(text)["input_ids"] == want  # HF_HUB_OFFLINE=1
    with pytest.raises(ModelNotFoundError, match="testorg/other"):
        bench.load_tokenizer("testorg/other", offline=True)


def test_sweep_and_launch_resolve_a_hub_id(fake_hub):
    from week2_serving.harness import launch, sweep

    assert sweep.resolve_model(REPO_ID) == str(fake_hub)
    config = json.loads((fake_hub / "config.json").read_text())
    assert launch.model_context_len(REPO_ID, offline=True) == config["max_position_embeddings"]


def test_quantize_resolves_a_hub_id_and_passes_offline_to_its_worker(
    fake_hub, tmp_path, monkeypatch
):
    from week2_serving.quant import quantize
    from week2_serving.quant.variants import VARIANTS

    calls = []

    def fake_run(cmd, **kwargs):
        calls.append((cmd, kwargs["env"]))
        return subprocess.CompletedProcess(cmd, 1)

    monkeypatch.setattr(quantize.subprocess, "run", fake_run)
    awq = replace(VARIANTS["int4-awq"], python=Path(sys.executable), worker="week2_serving.x")
    monkeypatch.setitem(VARIANTS, "int4-awq", awq)
    cfg = quantize.QuantizeConfig(
        model=REPO_ID,
        data=str(tmp_path),
        out=str(tmp_path / "q"),
        variants=["int4-awq"],
        offline=True,
    )
    res = quantize.main(cfg)
    assert res["model"] == str(fake_hub) and res["variants"]["fp32"]["path"] == str(fake_hub)
    cmd, env = calls[0]
    assert cmd[cmd.index("--model") + 1] == str(fake_hub)
    assert cmd[cmd.index("--group-size") + 1] == "64"  # read from the snapshot's config.json
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"

    online_env(monkeypatch)  # online (a local folder: nothing to download) -> no offline vars
    cfg = quantize.QuantizeConfig(
        model=str(fake_hub), data=str(tmp_path), out=str(tmp_path / "q2"), variants=["int4-awq"]
    )
    quantize.main(cfg)
    assert "HF_HUB_OFFLINE" not in calls[1][1] and "TRANSFORMERS_OFFLINE" not in calls[1][1]


def test_quantize_workers_take_a_hub_id(fake_hub, tmp_path):
    from week2_serving.quant.shared import worker_args

    argv = ["--model", REPO_ID, "--out", str(tmp_path), "--data", str(tmp_path)]
    assert worker_args([*argv, "--offline"], "").model == str(fake_hub)
    with pytest.raises(ModelNotFoundError, match="testorg/none"):
        worker_args(["--model", "testorg/none", *argv[2:], "--offline"], "")


def test_quality_serves_the_hub_model_from_its_snapshot(fake_hub, tmp_path, monkeypatch):
    from week2_serving.quant import quality

    np.arange(2000, dtype=np.uint16).tofile(tmp_path / "val.bin")
    launched = []

    def failing_launch(engine, folder, **kwargs):
        launched.append((folder, kwargs.get("env") or {}))
        raise ServerError("no vLLM in this test")

    monkeypatch.setattr(quality, "launch", failing_launch)
    cfg = quality.QualityConfig(
        variants=["fp32"],
        model=REPO_ID,
        quantized=str(tmp_path / "q"),
        data=str(tmp_path),
        offline=True,
    )
    rows = quality.main(cfg)["variants"]
    assert launched[0][0] == fake_hub and rows["fp32"]["model"] == str(fake_hub)
    assert launched[0][1]["HF_HUB_OFFLINE"] == "1"
    assert rows["fp32"]["weight_bytes"] > 0  # the snapshot's weights were found and sized


def test_validate_resolves_a_hub_id(fake_hub):
    from week2_serving.harness import validate

    assert validate.model_folder(validate.ValidateConfig(model=REPO_ID, offline=True)) == str(
        fake_hub
    )


def test_offline_flag_on_every_command_line():
    from week2_serving.harness import bench, validate
    from week2_serving.quant import quality, quantize

    for parse in (
        bench.parse_args,
        quantize.parse_args,
        quality.parse_args,
        validate.parse_args,
    ):
        assert parse(["--offline"]).offline is True, parse
        assert parse([]).offline is None, parse  # not asked: the environment decides


# ---- vLLM's environment ----


def test_vllm_server_is_offline_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(server, "VLLM_PYTHON", Path(sys.executable))  # never started here
    online_env(monkeypatch)

    def env_of(offline, reachable=True):
        monkeypatch.setattr(server, "hub_reachable", lambda: reachable)
        srv = server.vllm_server(REPO_ID, 1, tmp_path / "log", 128, offline=offline)
        assert srv.cmd[srv.cmd.index("--model") + 1] == REPO_ID  # vLLM gets the hub id
        return srv.env

    assert "HF_HUB_OFFLINE" not in env_of(False) and "TRANSFORMERS_OFFLINE" not in env_of(False)
    assert "HF_HUB_OFFLINE" not in env_of(None)  # the hub answers: online
    assert env_of(None, reachable=False)["HF_HUB_OFFLINE"] == "1"  # this machine is offline
    assert env_of(True)["HF_HUB_OFFLINE"] == "1" and env_of(True)["TRANSFORMERS_OFFLINE"] == "1"
