"""Processes: a server never outlives what started it, never takes a busy port, and is ready
only when our own child answers. Signals are sent to real subprocesses; every wait is bounded."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest

from common import procs
from common.procs import Terminated, signals_held, sigterm_as_interrupt
from common.server import ManagedServer, ServerError, free_port

REPO = Path(__file__).resolve().parent.parent

# A stand-in for a slow server such as vLLM: it starts a grandchild that shares its listening
# socket (so the port stays taken while any process of the group lives), writes who is who to
# RECORD, waits DELAY seconds (loading a model), then answers HTTP. TERM_MODE "ignore" makes
# the grandchild ignore SIGTERM, so only SIGKILL ends it.
FAKE_SERVER = textwrap.dedent(
    """
    import http.server, json, os, signal, socket, subprocess, sys, time
    port, delay, record, term_mode = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
    time.sleep(0.3)  # binds late, as a real server does after loading
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(16)
    sleeper = "import signal, time\\n"
    if term_mode == "ignore":
        sleeper += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
    sleeper += "time.sleep(600)"
    child = subprocess.Popen([sys.executable, "-c", sleeper], pass_fds=[sock.fileno()])
    facts = {"pid": os.getpid(), "pgid": os.getpgid(0), "grandchild": child.pid}
    with open(record + ".tmp", "w") as f:
        json.dump(facts, f)
    os.replace(record + ".tmp", record)
    time.sleep(delay)
    server = http.server.HTTPServer(("127.0.0.1", port), http.server.SimpleHTTPRequestHandler,
                                    bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    server.serve_forever()
    """
)


def fake_server(tmp_path: Path, port: int, delay: float, term_mode: str = "default") -> list[str]:
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    return [
        sys.executable,
        str(script),
        str(port),
        str(delay),
        str(tmp_path / "record.json"),
        term_mode,
    ]


def wait_for(what: str, check: Callable[[], object], timeout_s: float) -> object:
    """Poll `check` until it returns something true; fail the test, naming `what`, at timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"{what}: not seen within {timeout_s:.0f}s")


def read_record(tmp_path: Path) -> dict | None:
    path = tmp_path / "record.json"
    return json.loads(path.read_text()) if path.exists() else None


def running_in_group(pgid: int) -> list[int]:
    """Pids of group `pgid` that still run, seen by psutil (independently of common.procs)."""
    found = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def bind_succeeds(port: int) -> bool:
    """What a new server does: bind with SO_REUSEADDR (TIME_WAIT leftovers don't block it)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def kill_group(pgid: int | None) -> None:
    """Test cleanup: whatever a failed assertion left behind."""
    if pgid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def assert_group_gone_and_port_free(pgid: int, port: int) -> None:
    left = wait_for_none(lambda: running_in_group(pgid), timeout_s=10)
    assert left == [], f"processes of the server's group {pgid} left: {left}"
    assert wait_for_none(lambda: not bind_succeeds(port), timeout_s=10) is False, port


def wait_for_none(check: Callable[[], object], timeout_s: float) -> object:
    """Poll until `check` returns something false (a process may take a moment to be reaped by
    its new parent); return its last value."""
    deadline = time.monotonic() + timeout_s
    value = check()
    while value and time.monotonic() < deadline:
        time.sleep(0.1)
        value = check()
    return value


# -- the facts: who listens, whose group ------------------------------------------------------


def test_decode_address_reads_procs_host_order_words():
    little = sys.byteorder == "little"
    assert procs.decode_address("0100007F" if little else "7F000001") == "127.0.0.1"
    assert procs.decode_address("00000000") == "0.0.0.0"
    assert procs.decode_address("0" * 32) == "::"


@pytest.mark.parametrize(
    "groups,owner",
    [
        (None, "unknown"),  # no /proc: nothing to go on
        ([], "unseen"),  # nothing listens yet
        ([{42}], "ours"),
        ([{42, 7}], "ours"),  # our socket, also inherited by someone else
        ([{7}], "foreign"),  # a leftover server of another group
        ([{42}, {7}], "foreign"),  # ours and a stranger's (SO_REUSEPORT)
        ([set()], "unseen"),  # a socket whose holders we may not see
        ([{42}, set()], "unseen"),
    ],
)
def test_listener_owner_from_facts(groups, owner):
    assert procs.listener_owner(groups, pgid=42) == owner


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_proc_readers_see_our_own_listening_socket(host):
    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
        assert procs.listener_pids(port) == set()  # bound, not listening yet
        s.listen()
        assert os.getpid() in procs.listener_pids(port)
        assert procs.listener_groups(port) == [{os.getpgid(0)}]
        assert procs.listener_owner(procs.listener_groups(port), os.getpgid(0)) == "ours"
    assert procs.listener_pids(port) == set()


def test_group_members_lists_running_processes_only(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], process_group=0)
    try:
        assert procs.group_members(proc.pid) == [proc.pid]
        proc.kill()  # a zombie until reaped: not a running member
        assert wait_for_none(lambda: procs.group_members(proc.pid), timeout_s=10) == []
        assert psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE
    finally:
        proc.kill()
        proc.wait()


def test_sigterm_as_interrupt_raises_and_restores_the_old_handler():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated), sigterm_as_interrupt():
        signal.raise_signal(signal.SIGTERM)
        time.sleep(1)  # not reached: the handler raises at once
    assert signal.getsignal(signal.SIGTERM) is before


def test_signals_held_delivers_the_signal_after_the_block():
    seen, done = [], []
    with pytest.raises(KeyboardInterrupt), signals_held(on_signal=lambda: seen.append(1)):
        signal.raise_signal(signal.SIGINT)
        time.sleep(0.1)  # the held signal does not interrupt the block
        done.append(True)
    assert seen == [1] and done == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# -- a busy port, a port answered by someone else ---------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_busy_port_is_refused_before_any_child_starts(tmp_path, host):
    marker = tmp_path / "spawned"
    with socket.socket() as s:
        s.bind((host, 0))
        s.listen()
        port = s.getsockname()[1]
        srv = ManagedServer(
            [sys.executable, "-c", f"open({str(marker)!r}, 'w')"], port, tmp_path / "s.log"
        )
        with pytest.raises(ServerError) as err:
            srv.start()
    msg = str(err.value)
    assert f"port {port} is already in use" in msg and f"pid {os.getpid()}" in msg
    assert "another port" in msg
    assert srv.proc is None and not marker.exists()


class _Answer200(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_another_process_answering_is_not_taken_for_our_server(tmp_path, monkeypatch):
    """Someone takes the port after the check (or the check could not tell): their 200 is not
    our readiness (the old mistake: a leftover server taken for the new one)."""
    foreign = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer200)
    port = foreign.server_address[1]
    threading.Thread(target=foreign.serve_forever, daemon=True).start()
    monkeypatch.setattr("common.server.check_port_free", lambda port: None)
    srv = ManagedServer(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        port,
        tmp_path / "s.log",
        ready_path="/",
        timeout_s=30,
    )
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 200
        with pytest.raises(ServerError) as err:
            srv.start()
        assert f"port {port} answered" in str(err.value) and f"pid {os.getpid()}" in str(err.value)
        assert not srv.alive() and running_in_group(srv.proc.pid) == []  # start() stopped it
    finally:
        foreign.shutdown()
        foreign.server_close()


# -- stop() --------------------------------------------------------------------------------


@pytest.mark.slow
def test_stop_after_the_leader_was_reaped_still_ends_its_children(tmp_path):
    port = free_port()
    srv = ManagedServer(
        fake_server(tmp_path, port, delay=0), port, tmp_path / "s.log", ready_path="/", timeout_s=60
    ).start()
    facts = read_record(tmp_path)
    try:
        os.kill(facts["pid"], signal.SIGKILL)
        srv.proc.wait(timeout=10)  # the leader is reaped: os.getpgid(leader) fails from now on
        assert psutil.Process(facts["grandchild"]).status() != psutil.STATUS_ZOMBIE
        assert not bind_succeeds(port)  # the grandchild still holds the socket
        srv.stop(grace_s=5)
        assert_group_gone_and_port_free(facts["pgid"], port)
    finally:
        kill_group(facts["pgid"])


def test_spawned_server_returns_at_once_and_start_only_waits(tmp_path):
    """spawn() starts the child without waiting (servers spawned together start side by side);
    start() on a spawned server waits for it and starts no second child."""
    port = free_port()
    srv = ManagedServer(
        fake_server(tmp_path, port, delay=2.0),
        port,
        tmp_path / "s.log",
        ready_path="/",
        timeout_s=60,
    )
    try:
        t0 = time.monotonic()
        srv.spawn()
        assert time.monotonic() - t0 < 1.5  # the fake waits 2.3 s before it answers
        assert not srv.is_ready()
        first = srv.proc
        srv.start()
        assert srv.proc is first and srv.is_ready()
    finally:
        srv.stop(grace_s=5)
    assert not srv.alive()
