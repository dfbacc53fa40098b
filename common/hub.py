"""Models by hub id or by local folder, online or offline: one place that decides.

Every entry point takes a model (or tokenizer) either as a local Hugging Face folder
(`runs/week1/hf-model`, absolute or relative to the current folder or the repository) or as a
hub id (`Qwen/Qwen2.5-0.5B-Instruct`). A hub id becomes its snapshot folder in the local
cache, downloaded first when the hub can be reached:

    from common.hub import is_offline, resolve_model
    folder = resolve_model("Qwen/Qwen2.5-0.5B-Instruct", offline=is_offline(args.offline))

The cache (huggingface_hub's layout; its root is `$HF_HUB_CACHE`, by default `$HF_HOME/hub`):

    models--Qwen--Qwen2.5-0.5B-Instruct/
        refs/main            the commit hash `main` pointed to when it was downloaded
        snapshots/<hash>/    the files, as the repository holds them (links into blobs/)
        blobs/<sha>          the contents

Offline mode is never forced: it is on when the user asks (`--offline`, or HF_HUB_OFFLINE /
TRANSFORMERS_OFFLINE set to 1/true/yes/on) and, where a caller passes a probe, when the hub
cannot be reached. Child processes (vLLM, the quantizers) get the offline variables from
`hub_env` only when offline, so a server started online can download its model.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from common.results import REPO_ROOT, get_logger

log = get_logger("hub")

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")  # either one asks for offline mode
TRUE_VALUES = frozenset({"1", "true", "yes", "on"})  # huggingface_hub's truthy spellings
DEFAULT_ENDPOINT = "https://huggingface.co"
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")

# What a tokenizer needs (tokenizer.json, its config, vocab/merges, sentencepiece, chat
# template) and never the weights: a tokenizer-only download of a 7B model stays small.
TOKENIZER_PATTERNS = ("*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja")
CONFIG_PATTERNS = ("config.json",)
# Other frameworks' copies of the weights that transformers and vLLM never read here.
IGNORE_PATTERNS = (
    "*.h5",
    "*.msgpack",
    "*.ot",
    "*.onnx",
    "*.onnx_data",
    "*.gguf",
    "*.tflite",
    "onnx/*",
    "openvino/*",
    "original/*",
)
# org/name or a bare legacy name (gpt2): letters, digits, '.', '_', '-', no '--' or '..'
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?")


class ModelNotFoundError(FileNotFoundError):
    """Neither a local folder nor a hub id that could be found (in the cache or online)."""


# ---- online or offline ----


def env_true(value: str | None) -> bool:
    """An environment variable's value read as a switch: 1, true, yes, on (any case)."""
    return value is not None and value.strip().lower() in TRUE_VALUES


def hub_reachable(env: Mapping[str, str] = os.environ, timeout_s: float = 1.0) -> bool:
    """Whether a TCP connection to the hub (HF_ENDPOINT, default huggingface.co) opens within
    `timeout_s`: a cheap probe, no request sent. Behind a proxy a direct connection says
    nothing, so it answers yes and leaves the rest to huggingface_hub."""
    if any(env.get(k) for k in PROXY_VARS):
        return True
    url = urlsplit(env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def is_offline(
    flag: bool | None = None,
    env: Mapping[str, str] = os.environ,
    probe: Callable[[], bool] | None = None,
) -> bool:
    """Should the hub be left alone?

    - flag True (`--offline`): yes;
    - HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE truthy in `env`: yes (the user asked, and child
      processes inherit those variables anyway, whatever the flag says);
    - flag False: no (the caller says the network is there: no probe);
    - flag None: no, unless `probe` is given (e.g. `hub_reachable`) and says the hub cannot be
      reached: then this machine is offline.
    """
    if flag or any(env_true(env.get(k)) for k in OFFLINE_VARS):
        return True
    if flag is None and probe is not None:
        return not probe()
    return False


def hub_env(offline: bool) -> dict[str, str]:
    """Variables for a child process: the offline switches when offline, nothing otherwise
    (never "0": a user's own HF_HUB_OFFLINE=1, inherited, still holds)."""
    if not offline:
        return {}
    return {name: "1" for name in (*OFFLINE_VARS, "HF_DATASETS_OFFLINE")}


def add_offline_arg(parser: argparse.ArgumentParser) -> None:
    """`--offline` for a command line: True when given, None (not asked) otherwise."""
    parser.add_argument(
        "--offline",
        action="store_true",
        default=None,
        help="never contact the hub: a hub id must already be in the cache "
        "(also on with HF_HUB_OFFLINE=1)",
    )


# ---- where things are ----


def hub_cache_dir(env: Mapping[str, str] = os.environ) -> Path:
    """The hub cache folder, read now (huggingface_hub reads it once, at import):
    HF_HUB_CACHE, else HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub or ~/.cache/..."""
    explicit = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = env.get("HF_HOME")
    if not home:
        cache = env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
        home = os.path.join(cache, "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def local_folder(name: str | Path, root: Path = REPO_ROOT) -> Path | None:
    """`name` as an existing local path: as given (absolute, or from the current folder),
    else relative to the repository root; None when there is no such path."""
    path = Path(name).expanduser()
    candidates = [path] if path.is_absolute() else [path, root / path]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.absolute()
        if candidate.exists():
            raise NotADirectoryError(
                f"model {str(name)!r} is a file ({candidate}); pass the folder that holds "
                "config.json and the tokenizer files"
            )
    return None


def is_hub_id(name: str) -> bool:
    """Whether `name` is spelled like a hub id: org/name or a bare name such as gpt2."""
    return bool(_HUB_ID.fullmatch(name)) and ".." not in name and "--" not in name


# ---- resolving ----


def resolve_model(
    name_or_path: str | Path,
    offline: bool | None = None,
    allow_patterns: Sequence[str] | None = None,
    env: Mapping[str, str] = os.environ,
) -> Path:
    """The local folder holding the model `name_or_path`.

    A local folder is returned as it is (absolute). A hub id is looked up in the hub cache
    (`hub_cache_dir(env)`) and, unless offline, downloaded or brought up to date first;
    `allow_patterns` limits what is fetched (e.g. TOKENIZER_PATTERNS, CONFIG_PATTERNS).
    offline=None reads HF_HUB_OFFLINE (see is_offline); online, a hub that cannot be reached
    falls back to the cache. Errors say what was looked for, where, and what to do.
    """
    name = str(name_or_path)
    folder = local_folder(name)
    if folder is not None:
        return folder
    if not is_hub_id(name):
        raise ModelNotFoundError(
            f"model {name!r}: no such folder (relative paths are tried from {Path.cwd()} and "
            f"{REPO_ROOT}), and it is not a hub id (org/name). Pass an HF model folder, e.g. "
            "runs/week1/hf-model after `make week1`, or a hub id such as "
            "Qwen/Qwen2.5-0.5B-Instruct"
        )
    return _snapshot(name, is_offline(offline, env), allow_patterns, hub_cache_dir(env))


def resolve_tokenizer(
    name_or_path: str | Path, offline: bool | None = None, env: Mapping[str, str] = os.environ
) -> Path:
    """resolve_model for a tokenizer: a hub id fetches the tokenizer files only."""
    return resolve_model(name_or_path, offline, TOKENIZER_PATTERNS, env)


def _snapshot(
    repo_id: str, offline: bool, allow_patterns: Sequence[str] | None, cache_dir: Path
) -> Path:
    """huggingface_hub's snapshot folder of `repo_id`, with its errors made actionable."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        folder = snapshot_download(
            repo_id,
            cache_dir=cache_dir,
            local_files_only=offline,
            allow_patterns=list(allow_patterns) if allow_patterns else None,
            ignore_patterns=list(IGNORE_PATTERNS),
        )
    except HFValidationError as e:
        raise ValueError(f"model {repo_id!r} is not a valid hub id: {e}") from e
    except RepositoryNotFoundError as e:
        raise ModelNotFoundError(
            f"model {repo_id!r} is neither a local folder nor a repository on the hub: check "
            "the spelling; a private or gated model needs `hf auth login` (or HF_TOKEN)"
        ) from e
    except LocalEntryNotFoundError as e:
        partial = getattr(e, "snapshot_path", None)  # cached, but some listed files missing
        if partial and Path(partial).is_dir():
            log.warning("using the incomplete cached snapshot %s: %s", partial, e)
            return Path(partial)
        raise ModelNotFoundError(_not_cached_message(repo_id, offline, cache_dir)) from e
    return Path(folder)


def _not_cached_message(repo_id: str, offline: bool, cache_dir: Path) -> str:
    why = (
        "offline mode is on (--offline, HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE)"
        if offline
        else "the hub could not be reached"
    )
    return (
        f"model {repo_id!r} is not in the hub cache {cache_dir} (no local folder of that name "
        f"either), and {why}. Run once with network access and without offline mode to "
        "download it, point HF_HOME / HF_HUB_CACHE at a cache that holds it, or pass a local "
        "HF folder instead"
    )
