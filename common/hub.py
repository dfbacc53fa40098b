"""A model is a local folder or a Hugging Face hub id; offline only when asked or needed.

>>> from common.hub import resolve_model
>>> resolve_model("runs/week1/hf-model", offline=False)          # a folder: used as is
>>> resolve_model("Qwen/Qwen2.5-0.5B-Instruct", offline=True)    # the cached snapshot folder

Minimal version (written by the `gpu` worker against the interface the `hub` worker owns):
offline mode comes from the caller's flag or from `HF_HUB_OFFLINE` in the environment; it
is never switched on by this module itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

_TRUE = {"1", "true", "yes", "on"}


def is_offline(flag: bool | None = None, env: Mapping[str, str] = os.environ) -> bool:
    """True when the user asked (`flag`, i.e. --offline) or `HF_HUB_OFFLINE` is set truthy."""
    if flag is not None:
        return bool(flag)
    return env.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_cache_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Where hub snapshots live, read now (huggingface_hub reads it once, at import)."""
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"])
    home = env.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    return Path(home) / "hub"


def resolve_model(name_or_path: str | Path, offline: bool) -> Path:
    """A local folder for `name_or_path`: the folder itself, or the hub id's snapshot folder.

    Online, a hub id is downloaded (or found up to date in the cache); offline, only the
    cache is read, and a model that is not there is a FileNotFoundError saying what to do.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    repo_id = str(name_or_path)
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/")):
        raise FileNotFoundError(
            f"model {repo_id!r} is neither a local folder nor a hub id like 'org/name'"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, cache_dir=hub_cache_dir(), local_files_only=offline))
    except Exception as e:  # not cached offline, unknown id, no network: say what was tried
        how = "offline: only the local cache was searched" if offline else "download failed"
        raise FileNotFoundError(
            f"model {repo_id!r} is not a local folder and could not be resolved from the hub "
            f"({how}; cache {hub_cache_dir()}): {type(e).__name__}: {e}. Pass a local folder, "
            "or run once with internet (without --offline / HF_HUB_OFFLINE) to cache it."
        ) from e


def hub_env(offline: bool) -> dict[str, str]:
    """Environment for a child process (a vLLM server): offline flags only when offline."""
    return {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"} if offline else {}
