"""Start a server as a child process, wait until it answers, and always stop it.

    with ManagedServer(cmd, port=8011, log_path=Path("runs/x/server.log")) as srv:
        httpx.get(srv.url + "/v1/models")

The child runs in its own process group (in the caller's session), so stopping it also stops
every process it spawned (vLLM starts engine and worker processes), even after the child itself
has exited. A port something already listens on is refused before anything starts; the server is
ready when its ready path answers 200 from a socket that a process of its own group holds (so a
leftover server on the port is never taken for the new one). A signal at any moment, start-up
included, stops the group before the exception goes on; entry points wrap their work in
`common.procs.sigterm_as_interrupt()` so SIGTERM unwinds like Ctrl-C. Servers bind 127.0.0.1
only.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from common.cpu import CpuCaps, cpu_caps, model_quantization, vllm_cpu_dtype
from common.hub import hub_env, hub_reachable, is_offline
from common.procs import (
    describe,
    group_members,
    listener_groups,
    listener_owner,
    listener_pids,
    signals_held,
)
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


def port_free(port: int) -> bool:
    """Whether a server could bind 127.0.0.1:`port` now. SO_REUSEADDR, as servers set it:
    connections an earlier server left in TIME_WAIT do not count, a listener does."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def check_port_free(port: int) -> None:
    """Raise ServerError, naming who holds it, when something listens on `port` already."""
    holders = listener_pids(port)  # None: this system cannot tell who
    if port_free(port) and not holders:
        return
    who = ", ".join(describe(pid) for pid in sorted(holders or ())) or "a process we cannot see"
    kill = f"stop it (kill {' '.join(map(str, sorted(holders)))})" if holders else "stop it"
    raise ServerError(
        f"port {port} is already in use by {who}; {kill} or choose another port "
        "(launch's --port, or common.server.free_port() for a free one)"
    )


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
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is outside 1..65535; pick one such as free_port()")
        self.cmd, self.port, self.log_path = cmd, port, Path(log_path)
        self.env = {**os.environ, **(env or {})}
        self.ready_path, self.timeout_s = ready_path, timeout_s
        self.proc: subprocess.Popen | None = None
        self.pgid: int | None = None  # the child's group (its pid), kept until the group is gone

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ManagedServer:
        """Refuse a busy port, start the child (unless `spawn` did), wait until it is ready.
        Whatever ends the wait (not ready in time, the child died, Ctrl-C, SIGTERM) stops the
        whole group first."""
        try:
            if self.proc is None:
                self.spawn()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def spawn(self) -> ManagedServer:
        """Start the child and return at once (`start` then only waits for it): servers spawned
        together start side by side. The child is stopped at exit if nobody stops it before."""
        check_port_free(self.port)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self._log.write("$ " + " ".join(self.cmd) + "\n")
        self._log.flush()
        log.info("starting: %s (log: %s)", " ".join(self.cmd[:4]) + " ...", self.log_path)
        with signals_held():  # a signal between fork and `self.proc = ...` would lose the child
            self.proc = subprocess.Popen(
                self.cmd,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=self.env,
                # Its own process group (stop() signals the whole group), but not its own
                # session: with the kernel's autogroup scheduling (sched_autogroup_enabled=1,
                # the default on desktop and many VM kernels) a new session is a new
                # scheduling group that gets an equal share of CPU against the client's. On 2
                # cores that stalled vLLM's streams for seconds at a time (TTFT outliers in most
                # runs, none with the server in the client's session).
                **_OWN_GROUP,
                stdin=subprocess.DEVNULL,  # a background group reading the terminal would stop
            )
            self.pgid = self.proc.pid  # it leads its own group: pgid == pid
            _STARTED.add(self)
        return self

    def wait_ready(self) -> None:
        """Poll until the ready path answers 200 from our own group's socket (see `is_ready`);
        raise ServerError if the child exits, another process answers, or time runs out."""
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(
                    f"server exited with code {self.proc.returncode} before it was ready; "
                    f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"
                )
            if self.is_ready():
                log.info("server ready at %s", self.url)
                return
            time.sleep(0.5)
        raise ServerError(
            f"server not ready after {self.timeout_s:.0f}s; last lines of {self.log_path}:\n"
            f"{log_tail(self.log_path)}"
        )

    def is_ready(self) -> bool:
        """The ready path answers 200 and the socket answering is our group's. Where the system
        cannot tell who listens (no /proc), the answer alone counts: start() refused a port that
        was busy before, so only a process that took it since could answer in our place."""
        try:
            if httpx.get(self.url + self.ready_path, timeout=2.0).status_code != 200:
                return False
        except httpx.HTTPError:
            return False
        owner = listener_owner(listener_groups(self.port), self.pgid)
        if owner == "foreign":
            who = ", ".join(describe(pid) for pid in sorted(listener_pids(self.port) or ()))
            raise ServerError(
                f"port {self.port} answered, but from {who or 'another process'}, not from our "
                f"server (process group {self.pgid}); stop that process or choose another port"
            )
        return owner in ("ours", "unknown")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM the whole process group, then SIGKILL what is left after `grace_s`.

        The group is the one recorded at start, so this works after the child itself has exited
        and been reaped (its children live on in the group). SIGINT and SIGTERM are held while
        it runs: one arriving cuts the grace short (straight to SIGKILL) and is delivered once
        the group is gone. Safe to call again."""
        hurry = threading.Event()
        with signals_held(on_signal=hurry.set):
            pgid = self.pgid  # read once: another thread may be stopping it too
            if pgid is not None and _end_group(pgid, self.proc, grace_s, hurry):
                self.pgid = None  # gone: never signal that number again (pids are reused)
                _STARTED.discard(self)
            if self.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=5)
            log_file = getattr(self, "_log", None)  # absent if start() refused the port
            if log_file is not None and not log_file.closed:
                log_file.close()

    def __enter__(self) -> ManagedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _end_group(pgid: int, leader: subprocess.Popen, grace_s: float, hurry: threading.Event) -> bool:
    """SIGTERM, wait up to `grace_s` (less if `hurry` is set), SIGKILL, wait; True when no
    process of the group is left."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and not (sig == signal.SIGTERM and hurry.is_set()):
            leader.poll()  # reap the leader once it exits, or it lingers as a zombie
            if not _group_alive(pgid):
                return True
            time.sleep(0.1)
    leader.poll()
    return not _group_alive(pgid)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs (zombies, which only wait to be reaped,
    do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    members = group_members(pgid)
    return members is None or bool(members)


# Every server started and not yet seen gone: stopped when the interpreter exits, whatever way
# it exits (an exception that escaped a `with` block in the instant before its cleanup began).
_STARTED: set[ManagedServer] = set()


@atexit.register
def _stop_started_servers() -> None:
    for server in list(_STARTED):
        server.stop(grace_s=5.0)


def mem_available_gib(meminfo: str = "/proc/meminfo") -> float | None:
    """The kernel's MemAvailable in GiB, or None where there is no /proc/meminfo."""
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        return None
    return None


# What a small-model vLLM CPU server holds: its 2 GiB KV cache (vllm_env) and three Python
# processes (API server, engine core, model worker), with room to spare.
SERVER_GIB = 4.0


def servers_at_once(
    available_gib: float | None, per_server_gib: float = SERVER_GIB, most: int = 3
) -> int:
    """How many servers a study starts side by side: as many as fit in the available memory
    with one server's worth left for the rest of the machine, at most `most`; 1 when unknown.
    Only the start-ups overlap (each mostly imports Python on one core); the servers are
    measured one at a time, the others idle (vLLM's idle engine and worker sleep on their
    queues)."""
    if available_gib is None or not available_gib > 0:  # unknown, NaN, none free
        return 1
    if math.isinf(available_gib):
        return max(1, most)
    return max(1, min(most, int(available_gib // per_server_gib) - 1))


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
    """The variables vLLM's server gets: its CPU KV-cache size, no usage reports, its dev routes
    (the prefix-cache reset), and the hub's offline switches only when offline (True,
    HF_HUB_OFFLINE, or None and the hub unreachable)."""
    return {
        "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
        **hub_env(is_offline(offline, probe=hub_reachable)),
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        # its dev routes, /reset_prefix_cache among them: a benchmark resets the prefix cache
        # between runs (the server listens on 127.0.0.1 only)
        "VLLM_SERVER_DEV_MODE": "1",
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
