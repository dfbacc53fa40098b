"""Start a server as a child process, wait until it answers, and always stop it.

    with ManagedServer(cmd, port=8011, log_path=Path("runs/x/server.log")) as srv:
        httpx.get(srv.url + "/v1/models")

The child runs in its own process group (in the caller's session), so stopping it also stops
every process it spawned (vLLM starts worker processes). Readiness is polled over HTTP with a
timeout; if the child dies first, the error shows the tail of its log. Servers bind 127.0.0.1
only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from common.cpu import CpuCaps, cpu_caps, model_quantization, vllm_cpu_dtype
from common.hub import hub_env, hub_reachable, is_offline
from common.results import REPO_ROOT, get_logger

log = get_logger("server")
VLLM_PYTHON = REPO_ROOT / ".venvs" / "vllm" / "bin" / "python"


_OWN_GROUP = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}


class ServerError(RuntimeError):
    """The server did not start, or died."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class ManagedServer:
    def __init__(
        self,
        cmd: list[str],
        port: int,
        log_path: Path | str,
        env: dict[str, str] | None = None,
        ready_path: str = "/v1/models",
        timeout_s: float = 300.0,
    ):
        self.cmd, self.port, self.log_path = cmd, port, Path(log_path)
        self.env = {**os.environ, **(env or {})}
        self.ready_path, self.timeout_s = ready_path, timeout_s
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ManagedServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self._log.write("$ " + " ".join(self.cmd) + "\n")
        self._log.flush()
        log.info("starting: %s (log: %s)", " ".join(self.cmd[:4]) + " ...", self.log_path)
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            # Its own process group (stop() signals the whole group), but not its own session:
            # with the kernel's autogroup scheduling (sched_autogroup_enabled=1, the default on
            # desktop and many VM kernels) a new session is a new scheduling group that gets
            # an equal share of CPU against the client's. On 2 cores that stalled vLLM's
            # streams for seconds at a time (measured: 3.5-9.8 s TTFT outliers in most runs, 0
            # of 6 with the server in the client's session).
            **_OWN_GROUP,
            stdin=subprocess.DEVNULL,  # a background group reading the terminal would stop
        )
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise ServerError(
                    f"server exited with code {self.proc.returncode} before it was ready; "
                    f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"
                )
            try:
                if httpx.get(self.url + self.ready_path, timeout=2.0).status_code == 200:
                    log.info("server ready at %s", self.url)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise ServerError(
            f"server not ready after {self.timeout_s:.0f}s; last lines of {self.log_path}:\n"
            f"{log_tail(self.log_path)}"
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM the whole process group, then SIGKILL what is left after `grace_s`."""
        if self.proc is None:
            return
        try:
            pgid = os.getpgid(self.proc.pid)
        except ProcessLookupError:
            pgid = None
        if pgid is not None:
            for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(pgid, sig)
                except ProcessLookupError:
                    break
                deadline = time.monotonic() + wait
                # poll() reaps the leader once it exits: an unreaped (zombie) leader still
                # counts as a member of its group, and the wait would run out its full grace
                while time.monotonic() < deadline and (self.proc.poll(), _group_alive(pgid))[1]:
                    time.sleep(0.1)
                if not _group_alive(pgid):
                    break
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        if not self._log.closed:
            self._log.close()

    def __enter__(self) -> ManagedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def vllm_dtype_args(
    model_dir: Path | str, extra_args: list[str], caps: CpuCaps | None, cuda: bool | None
) -> list[str]:
    """`--dtype X` for vLLM, or nothing when the caller chose (`--dtype` in `extra_args`) or
    a GPU serves (vLLM's own 'auto'). On a CPU: what `common.cpu.vllm_cpu_dtype` decides for
    the checkpoint's quantization on this CPU (or on `caps`, for tests)."""
    if any(a == "--dtype" or a.startswith("--dtype=") for a in extra_args):
        return []
    if cuda if cuda is not None else shutil.which("nvidia-smi") is not None:
        return []
    dtype = vllm_cpu_dtype(model_quantization(model_dir), caps or cpu_caps())
    return ["--dtype", dtype]


def vllm_available() -> bool:
    return VLLM_PYTHON.exists()


def vllm_command(
    model_dir: Path | str,
    port: int | str,
    max_model_len: int,
    extra_args: list[str] | None = None,
    served_name: str | None = None,
    caps: CpuCaps | None = None,
    cuda: bool | None = None,
) -> list[str]:
    """vLLM's OpenAI server command line (checks nothing: a dry run prints it anywhere). The
    dtype comes from `extra_args` if they name one, else from `vllm_dtype_args`."""
    extra_args = list(extra_args or [])
    cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir)]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    cmd += vllm_dtype_args(model_dir, extra_args, caps, cuda)
    cmd += ["--max-model-len", str(max_model_len)]
    if served_name:
        cmd += ["--served-model-name", served_name]
    return cmd + extra_args


def vllm_env(kv_cache_gib: int = 2, offline: bool | None = None) -> dict[str, str]:
    """The variables vLLM's server gets: its CPU KV-cache size, no usage reports, and the hub's
    offline switches only when offline (True, HF_HUB_OFFLINE, or None and the hub unreachable)."""
    return {
        "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
        **hub_env(is_offline(offline, probe=hub_reachable)),
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }


def vllm_server(
    model_dir: Path | str,
    port: int,
    log_path: Path | str,
    max_model_len: int,
    extra_args: list[str] | None = None,
    kv_cache_gib: int = 2,
    timeout_s: float = 400.0,
    served_name: str | None = None,
    env: dict[str, str] | None = None,
    caps: CpuCaps | None = None,
    cuda: bool | None = None,
    offline: bool | None = None,
) -> ManagedServer:
    """A ManagedServer running vLLM's OpenAI server (the CPU build here) from .venvs/vllm:
    `vllm_command` and `vllm_env`, with `env` added on top. `model_dir` may be a hub id."""
    if not vllm_available():
        raise ServerError(f"{VLLM_PYTHON} not found; run `make setup-vllm` first")
    cmd = vllm_command(model_dir, port, max_model_len, extra_args, served_name, caps, cuda)
    server_env = {**vllm_env(kv_cache_gib, offline), **(env or {})}
    return ManagedServer(cmd, port, log_path, env=server_env, timeout_s=timeout_s)
