"""Start an inference server from its own venv, wait until it is ready, stop it on exit.

    python -m week2_serving.harness.launch vllm --model runs/week1/hf-model --port 8000
    python -m week2_serving.harness.launch vllm --model DIR -- --max-num-seqs 8 --enable-prefix-caching
    python -m week2_serving.harness.launch sglang --model Qwen/Qwen2.5-0.5B-Instruct    # CUDA machines only
    python -m week2_serving.harness.launch engine --model runs/week1/hf-model -- --scheduling static

Flags after `--` go to the server unchanged. The server runs as a child process in its own
process group, bound to 127.0.0.1, logging to runs/week2/servers/<engine>-<port>.log; Ctrl-C,
an error or the end of the `with` block stops it and everything it spawned. From Python:

    with launch("vllm", "runs/week1/hf-model", port=8000) as server:
        ...  # server.url, server.command

Two steps are kept apart so a dry run can show a server on any machine: `server_spec` builds
the command line (it needs nothing installed), `preflight` lists what would stop it on a given
`Machine` (no venv, no CUDA, fewer GPUs than the parallelism flags ask for, a missing model).
`launch` does both and raises `ServerError` with every problem before it starts anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from common.cli import build_parser, config_from_args
from common.hub import CONFIG_PATTERNS, is_offline, resolve_model
from common.procs import sigterm_as_interrupt
from common.results import REPO_ROOT, get_logger, runs_root
from common.server import (
    VLLM_PYTHON,
    ManagedServer,
    ServerError,
    free_port,
    vllm_command,
    vllm_env,
)

log = get_logger("week2.launch")
ENGINES = ("vllm", "sglang", "engine")  # engine = our own (week2_serving/engine)
SGLANG_PYTHON = REPO_ROOT / ".venvs" / "sglang" / "bin" / "python"
# Flags that multiply the GPUs a server needs (vLLM's and SGLang's spellings).
PARALLEL_FLAGS = {
    "tensor parallel": ("--tensor-parallel-size", "-tp", "--tp", "--tp-size"),
    "pipeline parallel": ("--pipeline-parallel-size", "-pp", "--pp", "--pp-size"),
    "data parallel": ("--data-parallel-size", "-dp", "--dp", "--dp-size"),
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # org/name
PATH_PREFIXES = ("/", ".", "~", "runs/")  # a model named so is a local folder, never a hub id


@dataclass(frozen=True)
class Machine:
    """What this machine offers a server; passed in so every branch is testable anywhere."""

    gpus: int = 0  # CUDA devices visible to this process
    vllm_venv: bool = False  # .venvs/vllm (make setup-vllm)
    sglang_venv: bool = False  # .venvs/sglang (make setup-sglang, CUDA machines)
    offline: bool = False  # no hub downloads (--offline / HF_HUB_OFFLINE): hub ids must be cached

    @property
    def cuda(self) -> bool:
        return self.gpus > 0

    def describe(self) -> str:
        venvs = [
            name for name, ok in (("vLLM", self.vllm_venv), ("SGLang", self.sglang_venv)) if ok
        ]
        hub = "offline" if self.offline else "online"
        return f"{self.gpus} CUDA GPU(s), venvs: {', '.join(venvs) or 'none'}, hub {hub}"


def detect_machine() -> Machine:
    """This machine's facts; starts no process (torch asks the driver for the device count)."""
    import torch

    return Machine(
        gpus=torch.cuda.device_count(),
        vllm_venv=VLLM_PYTHON.exists(),
        sglang_venv=SGLANG_PYTHON.exists(),
        offline=is_offline(),
    )


@dataclass
class ServerSpec:
    """A server's command line, the environment it adds, and the URL path that says 'ready'."""

    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    ready_path: str = "/health"


def model_context_len(model: str | Path, offline: bool | None = None) -> int | None:
    """config.json's max_position_embeddings (or n_positions) of a local folder or a hub id
    (only config.json is fetched); None when the folder has no config.json."""
    cfg = resolve_model(model, offline, allow_patterns=CONFIG_PATTERNS) / "config.json"
    if not cfg.is_file():
        return None
    data = json.loads(cfg.read_text())
    return data.get("max_position_embeddings") or data.get("n_positions")


def is_hub_id(model: str | Path) -> bool:
    """`org/name` that is no folder here and does not look like a path: the server downloads it."""
    model = str(model)
    return (
        not Path(model).exists()
        and not model.startswith(PATH_PREFIXES)
        and bool(HUB_ID.match(model))
    )


def check_model(model: str | Path, offline: bool | None = None) -> tuple[str, str | None]:
    """Where a server will find `model`: (a note for the dry run, the problem or None).

    A value that exists, or looks like a path (starts with '/', '.', '~' or 'runs/'), is a local
    folder and must exist; `org/name` is a hub id (the server downloads it). The one place that
    decides this, so a hub resolver can replace it.
    """
    model = str(model)
    if Path(model).exists():
        return "local folder", None
    if is_hub_id(model):
        if not (is_offline() if offline is None else offline):
            return "hub id, downloaded unless cached", None
        try:  # offline: it must be in the hub cache already
            resolve_model(model, offline=True, allow_patterns=CONFIG_PATTERNS)
            return "hub id, in the local cache", None
        except (FileNotFoundError, OSError) as e:
            return "hub id, not cached", f"{e}"
    if model.startswith(PATH_PREFIXES):
        return "missing", (
            f"model folder {model} does not exist; build it first (runs/week1/hf-model: "
            "`make week1`; runs/week2/quantized/*: `python -m week2_serving.quant.quantize`) or fix the path"
        )
    return "missing", (
        f"model {model!r} is neither an existing folder nor a hub id (org/name): fix the name"
    )


def flag_value(args: list[str], names: tuple[str, ...]) -> str | None:
    """The value of the last of `names` in `args` (`--flag V` or `--flag=V`), else None."""
    value = None
    for i, arg in enumerate(args):
        name, eq, inline = arg.partition("=")
        if name in names:
            value = inline if eq else (args[i + 1] if i + 1 < len(args) else "")
    return value


def gpus_needed(args: list[str]) -> tuple[int, list[str]]:
    """GPUs the parallelism flags ask for (their product) and the problems reading them."""
    need, problems = 1, []
    for kind, names in PARALLEL_FLAGS.items():
        value = flag_value(args, names)
        if value is None:
            continue
        if not value.isdigit() or int(value) < 1:
            problems.append(f"{kind} size {value!r} ({'/'.join(names)}): use a whole number >= 1")
        else:
            need *= int(value)
    return need, problems


def preflight(engine: str, model: str | Path, extra: list[str], machine: Machine) -> list[str]:
    """Every reason `engine` serving `model` with flags `extra` cannot start on `machine`."""
    problems = []
    if engine == "vllm" and not machine.vllm_venv:
        problems.append(f"vLLM: {VLLM_PYTHON} not found; run `make setup-vllm` first")
    if engine == "sglang" and not machine.cuda:
        problems.append(
            "SGLang needs a CUDA GPU: there is no CPU build of SGLang, so it cannot run on this "
            "machine. Use `vllm` here, or run on a GPU machine after `make setup-sglang`."
        )
    if engine == "sglang" and not machine.sglang_venv:
        problems.append(f"SGLang: {SGLANG_PYTHON} not found; run `make setup-sglang` first")
    need, bad_flags = gpus_needed(extra)
    problems += bad_flags
    if need > 1 and need > machine.gpus:
        problems.append(
            f"the parallelism flags in {' '.join(extra)!r} need {need} GPUs; this machine has "
            f"{machine.gpus}: lower them or run on a machine with {need} GPUs"
        )
    problems += [p for p in [check_model(model, machine.offline)[1]] if p]
    return problems


def vllm_spec(
    model: str | Path,
    port: int | str,
    max_model_len: int,
    extra: list[str],
    served_name: str | None,
    kv_cache_gib: int = 2,
) -> ServerSpec:
    """vLLM's OpenAI server from .venvs/vllm (the CPU build here): common.server's command and
    environment, built without requiring the venv. A local folder never asks a hub; a hub id
    is downloaded unless offline (--offline / HF_HUB_OFFLINE)."""
    cmd = vllm_command(model, port, max_model_len, extra, served_name)
    offline = None if is_hub_id(model) else True
    return ServerSpec(cmd, vllm_env(kv_cache_gib, offline), ready_path="/v1/models")


def sglang_spec(model: str | Path, port: int | str, extra: list[str]) -> ServerSpec:
    cmd = [str(SGLANG_PYTHON), "-m", "sglang.launch_server", "--model-path", str(model)]
    return ServerSpec([*cmd, "--host", "127.0.0.1", "--port", str(port), *extra])


def engine_spec(
    model: str | Path,
    port: int | str,
    extra: list[str],
    max_model_len: int | None,
    served_name: str | None,
) -> ServerSpec:
    """Our engine (week2_serving/engine/server.py), run by this venv's Python."""
    cmd = [sys.executable, "-m", "week2_serving.engine.server", "--model", str(model)]
    cmd += ["--port", str(port)]
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    if served_name:
        cmd += ["--served-model-name", served_name]
    return ServerSpec([*cmd, *extra])


def server_spec(
    engine: str,
    model: str | Path,
    port: int | str,
    extra: list[str] | None = None,
    max_model_len: int | None = None,
    served_name: str | None = None,
) -> ServerSpec:
    """The command that serves `model` with `engine` on `port`; checks nothing on the machine
    (a dry run passes a placeholder port)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    extra = list(extra or [])
    if engine == "vllm":
        if max_model_len is None:
            try:
                max_model_len = model_context_len(model)
            except FileNotFoundError:  # missing or not cached: preflight says so, not here
                max_model_len = None
        return vllm_spec(model, port, max_model_len or 2048, extra, served_name)
    if engine == "engine":
        return engine_spec(model, port, extra, max_model_len, served_name)
    return sglang_spec(model, port, extra)


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
    machine: Machine | None = None,
) -> ManagedServer:
    """A not-yet-started ManagedServer for `engine` (use it as a context manager); `env` adds to
    the server's environment (e.g. VLLM_CPU_OMP_THREADS_BIND). Raises ServerError listing every
    problem `preflight` finds on `machine` (default: this one) before anything starts."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    extra = list(extra or [])
    problems = preflight(engine, model, extra, machine or detect_machine())
    if problems:
        raise ServerError(f"cannot start {engine} here: " + "; ".join(problems))
    port = port or free_port()
    log_path = Path(log_dir or runs_root() / "week2" / "servers") / f"{engine}-{port}.log"
    spec = server_spec(engine, model, port, extra, max_model_len, served_name)
    return ManagedServer(
        spec.cmd,
        port,
        log_path,
        env={**spec.env, **(env or {})},
        ready_path=spec.ready_path,
        timeout_s=timeout_s,
    )


@contextlib.contextmanager
def worker_core_apart(cores: list[int] | None = None) -> Iterator[dict]:
    """vLLM CPU's model worker on every core but the last, everything else on the last one.

    Yields the environment to start the vLLM server with (VLLM_CPU_OMP_THREADS_BIND); inside
    the block this process runs on the last core only, so the server started there inherits
    that (its worker then binds to the others) and so does the load client. Left to the
    scheduler, the client or the server's API and engine-core processes land now and then on
    the worker's core, and the server's speed swings between identical runs. Once the server
    is up, `lower_client_priority` puts the client below it. On one core (`cores` defaults to
    this process's affinity) it does nothing and yields {}. Restores the affinity (and the
    niceness, where the OS allows) on exit."""
    if cores is None:  # macOS has no affinity calls: nothing to pin there
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    cores = sorted(cores)
    if len(cores) < 2:
        yield {}
        return
    before = os.sched_getaffinity(0)
    nice_before = os.getpriority(os.PRIO_PROCESS, 0)
    os.sched_setaffinity(0, {cores[-1]})
    try:
        yield {"VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cores[:-1]))}
    finally:
        os.sched_setaffinity(0, before)
        with contextlib.suppress(PermissionError):  # lowering it back needs privileges
            os.setpriority(os.PRIO_PROCESS, 0, nice_before)


@contextlib.contextmanager
def clients_apart(cores: list[int] | None = None) -> Iterator[dict]:
    """`validate`'s layout: vLLM CPU's model worker bound to every core but the last, its API
    and engine-core processes free on every core, the load clients on the last one.

    Yields the environment to start the server with (VLLM_CPU_OMP_THREADS_BIND) and a function
    to call once the server has started: it moves this process (the clients) to the last core.
    Unlike `worker_core_apart` (capacity's layout) the server's other processes are not put
    on the clients' core, where a client heavier than ours (vllm bench, guidellm) would slow the
    server it measures. On one core, or without affinity calls, it pins nothing. Restores the
    affinity and the niceness on exit."""
    if cores is None:
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    cores = sorted(cores)
    if len(cores) < 2:
        yield {"env": {}, "pin_clients": lambda: None, "layout": None}
        return
    before = os.sched_getaffinity(0)
    nice_before = os.getpriority(os.PRIO_PROCESS, 0)
    worker = ",".join(map(str, cores[:-1]))
    layout = {"worker": worker, "server_rest": sorted(before), "clients": [cores[-1]]}
    try:
        yield {
            "env": {"VLLM_CPU_OMP_THREADS_BIND": worker},
            "pin_clients": lambda: os.sched_setaffinity(0, {cores[-1]}),
            "layout": layout,
        }
    finally:
        os.sched_setaffinity(0, before)
        with contextlib.suppress(PermissionError):
            os.setpriority(os.PRIO_PROCESS, 0, nice_before)


def core_layout(pin: dict) -> dict | None:
    """What `worker_core_apart` set up, for a results file (None: nothing pinned)."""
    if not pin:
        return None
    rest = sorted(os.sched_getaffinity(0))
    return {"worker": pin["VLLM_CPU_OMP_THREADS_BIND"], "server_rest_and_clients": rest}


def lower_client_priority(client_nice: int) -> None:
    """The load client below the server it shares a core with (call after the server started:
    the server keeps its priority); a heavier client otherwise slows the server it measures."""
    if type(client_nice) is not int or not 0 <= client_nice <= 19:
        raise ValueError(f"client_nice={client_nice!r} must be an integer in 0..19")
    os.nice(client_nice)


@dataclass
class LaunchArgs:
    """Start an inference server and keep it up until Ctrl-C (flags after `--` go to it)."""

    engine: str = field(metadata={"cli": False})  # vllm | sglang | engine (positional)
    model: str | None = None  # HF folder or hub id (none: runs/week1/hf-model)
    port: int = 8000  # the port on 127.0.0.1
    max_model_len: int | None = None  # context length (none: the engine's default)
    served_model_name: str | None = None  # the name clients ask for (none: the model path)
    timeout: float = 600.0  # seconds to wait for readiness
    extra: list[str] = field(default_factory=list, metadata={"cli": False})  # after `--`


def parse_args(argv: list[str] | None = None) -> LaunchArgs:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = build_parser(LaunchArgs, description=__doc__)
    p.add_argument("engine", choices=ENGINES)
    return config_from_args(LaunchArgs, p.parse_args(argv), extra=extra)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    model = a.model or str(runs_root() / "week1" / "hf-model")
    try:
        with (
            sigterm_as_interrupt(),
            launch(
                a.engine,
                model,
                a.port,
                a.extra,
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
