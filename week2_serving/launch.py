"""Start an inference server from its own venv, wait until it is ready, stop it on exit.

    python -m week2_serving.launch vllm --model runs/week1/hf-model --port 8000
    python -m week2_serving.launch vllm --model DIR -- --max-num-seqs 8 --enable-prefix-caching
    python -m week2_serving.launch sglang --model Qwen/Qwen2.5-1.5B-Instruct    # CUDA machines only
    python -m week2_serving.launch engine --model runs/week1/hf-model -- --scheduling static

Flags after `--` go to the server unchanged. The server runs as a child process in its own
process group, bound to 127.0.0.1, logging to runs/week2/servers/<engine>-<port>.log; Ctrl-C,
an error or the end of the `with` block stops it and everything it spawned. From Python:

    with launch("vllm", "runs/week1/hf-model", port=8000) as server:
        ...  # server.url, server.command
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from common.procs import sigterm_as_interrupt
from common.results import REPO_ROOT, get_logger, runs_root
from common.server import ManagedServer, ServerError, free_port, vllm_server

log = get_logger("week2.launch")
ENGINES = ("vllm", "sglang", "engine")  # engine = our own (week2_serving/engine)
SGLANG_PYTHON = REPO_ROOT / ".venvs" / "sglang" / "bin" / "python"


def model_context_len(model: str | Path) -> int | None:
    cfg = Path(model) / "config.json"
    if not cfg.is_file():
        return None
    data = json.loads(cfg.read_text())
    return data.get("max_position_embeddings") or data.get("n_positions")


def cuda_available() -> bool:
    return shutil.which("nvidia-smi") is not None


def sglang_server(
    model: str | Path, port: int, log_path: Path, extra: list[str], timeout_s: float
) -> ManagedServer:
    if not cuda_available():
        raise ServerError(
            "SGLang needs a CUDA GPU: there is no CPU build of SGLang, so it cannot run on this "
            "machine. Use `vllm` here, or run on a GPU machine after `make setup-sglang`."
        )
    if not SGLANG_PYTHON.exists():
        raise ServerError(
            f"{SGLANG_PYTHON} not found; run `make setup-sglang` first (CUDA machines)"
        )
    cmd = [
        str(SGLANG_PYTHON),
        "-m",
        "sglang.launch_server",
        "--model-path",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra,
    ]
    return ManagedServer(cmd, port, log_path, ready_path="/health", timeout_s=timeout_s)


def engine_server(
    model: str | Path,
    port: int,
    log_path: Path,
    extra: list[str],
    max_model_len: int | None,
    served_name: str | None,
    timeout_s: float,
) -> ManagedServer:
    """Our engine (week2_serving/engine/server.py), run by this venv's Python."""
    cmd = [sys.executable, "-m", "week2_serving.engine.server", "--model", str(model)]
    cmd += ["--port", str(port)]
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    if served_name:
        cmd += ["--served-model-name", served_name]
    return ManagedServer([*cmd, *extra], port, log_path, ready_path="/health", timeout_s=timeout_s)


def launch(
    engine: str,
    model: str | Path,
    port: int | None = None,
    extra: list[str] | None = None,
    max_model_len: int | None = None,
    log_dir: Path | None = None,
    timeout_s: float = 600.0,
    served_name: str | None = None,
    env: dict[str, str] | None = None,
) -> ManagedServer:
    """A not-yet-started ManagedServer for `engine` (use it as a context manager); `env` is
    passed to vLLM's server (e.g. VLLM_CPU_OMP_THREADS_BIND)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    port = port or free_port()
    log_dir = log_dir or runs_root() / "week2" / "servers"
    log_path = Path(log_dir) / f"{engine}-{port}.log"
    extra = list(extra or [])
    if engine == "vllm":
        if max_model_len is None:
            max_model_len = model_context_len(model) or 2048
        return vllm_server(
            model,
            port,
            log_path,
            max_model_len,
            extra,
            timeout_s=timeout_s,
            served_name=served_name,
            env=env,
        )
    if engine == "engine":
        return engine_server(model, port, log_path, extra, max_model_len, served_name, timeout_s)
    return sglang_server(model, port, log_path, extra, timeout_s)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("engine", choices=ENGINES)
    p.add_argument("--model", default=str(runs_root() / "week1" / "hf-model"))
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for readiness")
    a = p.parse_args(argv)
    try:
        with (
            sigterm_as_interrupt(),
            launch(
                a.engine,
                a.model,
                a.port,
                extra,
                a.max_model_len,
                timeout_s=a.timeout,
                served_name=a.served_model_name,
            ) as server,
        ):
            print(
                f"{a.engine} ready at {server.url} (log: {server.log_path}); Ctrl-C to stop",
                flush=True,
            )
            while server.alive():
                time.sleep(1.0)
            log.error("server exited; see %s", server.log_path)
            return 1
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (raised as Terminated, a KeyboardInterrupt)
        pass
    except ServerError as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
