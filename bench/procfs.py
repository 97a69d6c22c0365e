"""What /proc tells about a server: its worker processes, their memory, CPU time and sockets.

A server started with `--workers N` is a parent process and N children (each
in a session of its own, so they are not in the parent's process group).
The harness finds them here by parent pid, sums their memory, checks that
each one listens on the shared port, and makes sure none outlives the run.
Linux only, like the rest of the harness; psutil is not needed.
"""

from __future__ import annotations

import os
import re
import signal
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_LISTEN = "0A"  # the TCP state column of /proc/net/tcp*: 0A is LISTEN
_SOCKET = re.compile(r"socket:\[(\d+)\]")


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat split into fields, field 3 (state) first; None if the process is gone.

    The command name (field 2) is in parentheses and may hold spaces or
    parentheses itself, so the split starts after its last ')'.
    """
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def parent_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def children(pid: int) -> list[int]:
    """The live processes whose parent is `pid`."""
    found = []
    for entry in PROC.iterdir():
        if entry.name.isdigit() and parent_of(int(entry.name)) == pid:
            found.append(int(entry.name))
    return sorted(found)


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants, parents first."""
    pids, index = [pid], 0
    while index < len(pids):
        pids.extend(children(pids[index]))
        index += 1
    return pids


@dataclass(frozen=True)
class Identity:
    """A process by pid and start time, so that a reused pid is never mistaken for it."""

    pid: int
    started: int  # clock ticks after boot (field 22 of /proc/<pid>/stat)

    @classmethod
    def of(cls, pid: int) -> Identity | None:
        fields = _stat_fields(pid)
        return cls(pid, int(fields[19])) if fields else None

    def alive(self) -> bool:
        fields = _stat_fields(self.pid)
        # A zombie has exited; only its parent's wait() is missing.
        return fields is not None and int(fields[19]) == self.started and fields[0] != "Z"

    def kill(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it is still there after `timeout` seconds."""
        for signum in (signal.SIGTERM, signal.SIGKILL):
            if not self.alive():
                return
            with suppress(ProcessLookupError):
                os.kill(self.pid, signum)
            deadline = time.monotonic() + timeout
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)


def rss_kb(pid: int) -> int | None:
    """The resident set size of one process (VmRSS, kB), None if it is gone."""
    try:
        status = (PROC / str(pid) / "status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(found[1]) if found else None


def rss_by_process(pid: int) -> dict[int, int]:
    """VmRSS (kB) of `pid` and each of its descendants.

    Summing these counts the pages the processes share (the interpreter and
    libraries, mapped from the same files) once per process: a sum is an
    upper bound of what the processes hold together.
    """
    sizes = {p: rss_kb(p) for p in tree(pid)}
    return {p: kb for p, kb in sizes.items() if kb is not None}


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far; 0 if it is gone."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS if fields else 0.0


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets a process holds open."""
    inodes = set()
    with suppress(OSError):  # the process is gone, or its fds are not ours to read
        for fd in (PROC / str(pid) / "fd").iterdir():
            with suppress(OSError):  # the fd was closed meanwhile
                found = _SOCKET.fullmatch(os.readlink(fd))
                if found:
                    inodes.add(int(found[1]))
    return inodes


def listening_inodes(port: int) -> set[int]:
    """The inodes of every TCP socket (IPv4 and IPv6) listening on `port`, any address."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        with suppress(OSError):  # no IPv6 in this kernel
            for line in (PROC / "net" / table).read_text().splitlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == _LISTEN:
                    inodes.add(int(fields[9]))
    return inodes
