"""Multi-LoRA bookkeeping and API: slots with LRU eviction (to host memory, then to disk), the
scheduler's admission by slot, peft folders the engine refuses, and the HTTP routes (model
picks the adapter, /v1/models lists it with its parent, runtime load/unload, 400/404/409)."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest
import torch

from tests.engine_server_helpers import running_server
from tests.lora_helpers import ADAPTERS, lora_engine, lora_folders  # noqa: F401
from week2_serving.engine.lora.config import LoRAConfig, parse_modules
from week2_serving.engine.lora.manager import LoRAManager
from week2_serving.engine.models import load_config
from week2_serving.engine.protocol import APIError


def manager(folders: dict, names=tuple(ADAPTERS), **kw) -> LoRAManager:
    """A LoRAManager for the tiny base, serving `names` from the start."""
    cfg = load_config(folders["base"])
    modules = {n: str(folders["paths"][n]) for n in names}
    lora = LoRAConfig(modules, **{"max_lora_rank": 8, **kw})
    return LoRAManager(lora, cfg, torch.device("cpu"), torch.float32)


def gpt2_config():
    """The engine's config of a tiny GPT-2 (no gate/up/down MLP: LoRA refuses it)."""
    from week2_serving.engine.models.config import ModelConfig

    return ModelConfig(
        family="gpt2", architecture="GPT2LMHeadModel", vocab_size=64, hidden_size=32,
        num_layers=1, num_heads=2, num_kv_heads=2, head_dim=16, intermediate_size=128,
        max_position_embeddings=64, norm="layer", act="gelu_new", gated_mlp=False,
        positions="learned",
    )  # fmt: skip


def test_slots_evict_least_recently_used_and_host_copies_go_back_to_disk(lora_folders):  # noqa: F811
    m = manager(lora_folders, max_loras=2, max_cpu_loras=2)
    assert m.num_disk_loads == 3 and list(m.host) == ["qv8", "mlp2"]  # all4 dropped from host
    assert m.activate("qv8", {"qv8"}) == 1 and m.activate("mlp2", {"mlp2"}) == 2
    assert m.scales[0] == 0 and m.A[0]["qkv"][0].abs().sum() == 0  # slot 0: the base, zeros
    m.activate("qv8", {"qv8"})  # used again: mlp2 is now the least recently used slot
    assert m.activate("all4", {"all4", "qv8"}) == 2  # evicts mlp2, reads all4 from disk again
    assert dict(m.slot_of) == {"qv8": 1, "all4": 2} and m.num_disk_loads == 4
    assert m.num_slot_loads == 3
    # the slot holds the adapter: qv8 targets q and v only, so k's columns stay zero
    B = m.B[0]["qkv"][1]  # (3 R, out)
    assert B[:8].abs().sum() > 0 and B[8:16].abs().sum() == 0 and B[16:].abs().sum() > 0


def test_a_step_never_needs_more_adapters_than_slots(lora_folders):  # noqa: F811
    from week2_serving.engine.sequence import Sequence

    m = manager(lora_folders, max_loras=1)
    seqs = [Sequence([1, 2]) for _ in range(2)]
    seqs[0].lora_name, seqs[1].lora_name = "qv8", "all4"
    with pytest.raises(RuntimeError, match="max_loras"):
        m.plan(seqs, [2, 1])


def test_scheduler_admits_only_adapters_that_can_get_a_slot(lora_folders):  # noqa: F811
    from week2_serving.engine.sequence import SamplingParams

    engine = lora_engine(lora_folders, max_loras=1)
    p = SamplingParams(max_tokens=3)
    seqs = [engine.make_sequence([5, 6, 7], p, lora_name=n) for n in ("qv8", None, "qv8", "all4")]
    seqs.append(engine.make_sequence([5, 6, 7], p, lora_name="qv8"))
    for s in seqs:
        engine.add_sequence(s)
    engine.step()  # qv8, base and qv8 run; all4 has no slot and waits first in line
    assert [s.lora_name for s in engine.scheduler.running] == ["qv8", None, "qv8"]
    while engine.has_unfinished():
        names = {s.lora_name for s in engine.scheduler.running} - {None}
        assert len(names) <= 1
        engine.step()
    assert all(s.finish_reason == "length" for s in seqs)


def test_folders_the_engine_cannot_serve_are_refused(lora_folders, tmp_path):  # noqa: F811
    m = manager(lora_folders, ["all4"], max_lora_rank=4)
    with pytest.raises(ValueError, match="rank 8 > max_lora_rank=4"):
        m.add("big", str(lora_folders["paths"]["qv8"]))
    with pytest.raises(ValueError, match="already loaded"):
        m.add("all4", str(lora_folders["paths"]["all4"]))
    with pytest.raises(FileNotFoundError, match="not a folder"):
        m.add("gone", str(tmp_path / "gone"))
    bad = shutil.copytree(lora_folders["paths"]["all4"], tmp_path / "dora")
    cfg = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora"):
        m.add("dora", str(bad))
    with pytest.raises(ValueError, match="Llama"):
        LoRAManager(LoRAConfig(), gpt2_config(), torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError, match="max_cpu_loras=1 < max_loras=2"):
        LoRAConfig(max_loras=2, max_cpu_loras=1)
    with pytest.raises(ValueError, match="max_loras=True"):
        LoRAConfig(max_loras=True)
    with pytest.raises(ValueError, match="given twice"):
        parse_modules(["a=x", "a=y"])


def test_api_models_load_unload_and_errors(lora_folders, tmp_path):  # noqa: F811
    paths = lora_folders["paths"]
    engine = lora_engine({**lora_folders, "paths": {"all4": paths["all4"]}}, max_lora_rank=4)
    with running_server(engine) as (url, _app):
        models = httpx.get(url + "/v1/models").json()["data"]
        assert [(m["id"], m.get("parent")) for m in models] == [("tiny", None), ("all4", "tiny")]
        body = {"prompt": [5, 6, 7], "max_tokens": 3, "temperature": 0}
        r = httpx.post(url + "/v1/completions", json={**body, "model": "all4"}, timeout=30)
        assert r.status_code == 200 and r.json()["model"] == "all4"
        r = httpx.post(url + "/v1/completions", json={**body, "model": "nope"})
        assert r.status_code == 404 and "`nope`" in r.json()["error"]["message"]

        def load(name: str, path) -> httpx.Response:
            data = {"lora_name": name, "lora_path": str(path)}
            return httpx.post(url + "/v1/load_lora_adapter", json=data, timeout=30)

        assert load("x", tmp_path / "missing").status_code == 404
        r = load("big", paths["qv8"])  # rank 8 > --max-lora-rank 4
        assert r.status_code == 400 and "max_lora_rank" in r.text
        assert load("all4", paths["all4"]).status_code == 400  # the name is taken
        assert load("tiny", paths["mlp2"]).status_code == 400  # the base model's name
        assert load("mlp2", paths["mlp2"]).status_code == 200
        assert "mlp2" in [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]]
        r = httpx.post(url + "/v1/completions", json={**body, "model": "mlp2"}, timeout=30)
        assert r.status_code == 200
        unload = url + "/v1/unload_lora_adapter"
        assert httpx.post(unload, json={"lora_name": "mlp2"}).status_code == 200
        assert httpx.post(unload, json={"lora_name": "mlp2"}).status_code == 404
        assert httpx.post(unload, json={"lora_name": "mlp2", "x": 1}).status_code == 400
        r = httpx.post(url + "/v1/completions", json={**body, "model": "mlp2"})
        assert r.status_code == 404
        assert httpx.get(url + "/health").status_code == 200  # still serving


def test_unload_refuses_an_adapter_in_use(lora_folders):  # noqa: F811
    from week2_serving.engine.lora_routes import unload

    engine = lora_engine(lora_folders)
    engine.add_sequence(engine.make_sequence([5, 6, 7], lora_name="qv8"))
    with pytest.raises(APIError) as e:
        unload(engine, "qv8")
    assert e.value.status == 409
    assert "qv8" in engine.lora.registry
