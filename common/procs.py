"""Processes, the ports they listen on, and the signals that stop them.

/proc/net/tcp and /proc/net/tcp6 list every TCP socket of this network namespace with its local
address and port, its state (0A = LISTEN) and its inode; a process holds a socket when a link in
/proc/<pid>/fd points to `socket:[<inode>]`; /proc/<pid>/stat gives its state and process group.
common.server uses these facts to refuse a port that is already taken, to accept as ready only a
server whose listening socket belongs to its own process group, and to tell when every process
of that group is gone. Where there is no /proc (not Linux) the readers answer None: "cannot tell".

Signals: `sigterm_as_interrupt` turns SIGTERM into an exception so `with` blocks clean up, and
`signals_held` keeps SIGINT/SIGTERM from cutting a step (starting or stopping a server) in half.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

PROC = Path("/proc")
LISTEN = "0A"  # the TCP state code /proc/net/tcp prints for a listening socket
# Listening addresses that a connection to 127.0.0.1 (where our servers bind) can reach.
REACHES_LOOPBACK = {"127.0.0.1", "0.0.0.0", "::", "::ffff:127.0.0.1"}
HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def decode_address(hex_addr: str) -> str:
    """'0100007F' -> '127.0.0.1': /proc prints the address as 32-bit words in host byte order."""
    words = [int(hex_addr[i : i + 8], 16) for i in range(0, len(hex_addr), 8)]
    raw = b"".join(struct.pack("=I", w) for w in words)
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def listening_inodes(port: int) -> set[int] | None:
    """Inodes of the sockets listening on `port` at an address 127.0.0.1 reaches (None: no
    /proc/net/tcp to read)."""
    found: set[int] = set()
    readable = False
    for table in ("tcp", "tcp6"):
        try:
            rows = (PROC / "net" / table).read_text().splitlines()[1:]  # row 0 is a header
        except OSError:
            continue
        readable = True
        for row in rows:
            fields = row.split()  # sl local_address rem_address st ... inode (index 9)
            addr, hex_port = fields[1].split(":")
            if (
                fields[3] == LISTEN
                and int(hex_port, 16) == port
                and decode_address(addr) in REACHES_LOOPBACK
            ):
                found.add(int(fields[9]))
    return found if readable else None


def _link(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:  # the descriptor was closed while we looked
        return ""


def socket_holders(inodes: set[int]) -> dict[int, set[int]]:
    """For each socket inode, the pids holding a descriptor on it (a forked child shares its
    parent's). Processes that end while we look, or that we may not read, are skipped."""
    holders: dict[int, set[int]] = {inode: set() for inode in inodes}
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    if not wanted:
        return holders
    for entry in os.scandir(PROC):
        if not entry.name.isdigit():
            continue
        try:
            with os.scandir(f"{entry.path}/fd") as fds:
                for fd in fds:
                    inode = wanted.get(_link(fd.path))
                    if inode is not None:
                        holders[inode].add(int(entry.name))
        except OSError:
            continue
    return holders


def listener_pids(port: int) -> set[int] | None:
    """Every pid holding a socket that listens on `port` (None: cannot tell on this system)."""
    inodes = listening_inodes(port)
    if inodes is None:
        return None
    return set().union(*socket_holders(inodes).values())


def process_group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def listener_groups(port: int) -> list[set[int]] | None:
    """For each socket listening on `port`, the process groups of the processes that hold it."""
    inodes = listening_inodes(port)
    if inodes is None:
        return None
    return [
        {g for pid in pids if (g := process_group(pid)) is not None}
        for pids in socket_holders(inodes).values()
    ]


def listener_owner(groups: list[set[int]] | None, pgid: int) -> str:
    """Whose is the port, from `listener_groups` facts, for a server whose group is `pgid`:

    "ours"     every listening socket is held by a process of the group;
    "foreign"  some listening socket is held only by processes of other groups;
    "unseen"   nothing listens yet, or a socket's holders cannot be seen (wait and look again);
    "unknown"  there are no facts (no /proc): the caller decides what to trust.
    """
    if groups is None:
        return "unknown"
    if any(held and pgid not in held for held in groups):
        return "foreign"
    if groups and all(pgid in held for held in groups):
        return "ours"
    return "unseen"


def _stat(pid: str) -> tuple[str, int] | None:
    """(state, process group) of a pid from /proc/<pid>/stat, None if it is gone."""
    try:
        text = (PROC / pid / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...
    return fields[0], int(fields[2])


def group_members(pgid: int) -> list[int] | None:
    """Pids of the processes of group `pgid` that still run (zombies, which hold no memory or
    port and only wait to be reaped, are left out); None where there is no /proc."""
    if not (PROC / "self" / "stat").exists():
        return None
    members = []
    for entry in os.scandir(PROC):
        if entry.name.isdigit():
            stat = _stat(entry.name)
            if stat is not None and stat[1] == pgid and stat[0] not in ("Z", "X"):
                members.append(int(entry.name))
    return sorted(members)


def describe(pid: int) -> str:
    """'pid 123 (python -m http.server 8000)', the command cut to 100 characters."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
        cmd = raw.replace(b"\0", b" ").decode(errors="replace").strip() or "?"
    except OSError:
        cmd = "?"
    return f"pid {pid} ({cmd[:100]})"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt (see `sigterm_as_interrupt`)."""


@contextlib.contextmanager
def signals_held(on_signal: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold SIGINT and SIGTERM while the block runs, then deliver the first that came.

    Some steps must not be cut in half: a Ctrl-C between fork and the line that records the
    child would lose the child; one in the middle of stop() would leave part of the group
    running. `on_signal` runs at each held signal (stop() uses it to cut the grace period
    short). Only the main thread may set handlers; elsewhere the block runs as it is (Python
    delivers signals to the main thread anyway).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: object) -> None:
        held.append(signum)
        if on_signal is not None:
            on_signal()

    previous = {sig: signal.signal(sig, hold) for sig in HELD_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        if held:
            signal.raise_signal(held[0])  # now handled as it would have been


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM raises Terminated (a KeyboardInterrupt) in the main thread.

    Python's default for SIGTERM is to end at once: no `finally`, no `__exit__`, so a server
    started in a `with` block would run on, holding its port and memory. Raised as an exception
    it unwinds every `with` block as Ctrl-C does. Entry points (launch, sweep) wrap their work
    in it; call it from the main thread.
    """

    def terminate(signum: int, frame: object) -> None:
        raise Terminated(f"signal {signum} (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
