"""Children die with their parent: a child that outlives its supervisor keeps the
ports, answers (or half-answers) traffic nobody watches, and silently shares
an SO_REUSEPORT port with the next run.

On Linux the kernel does it: a process asks (prctl PR_SET_PDEATHSIG) to be
sent a signal when the thread that started it ends, even by SIGKILL. The
supervisor starts every child from its main thread. A worker asks for itself
at start; a program that cannot ask (Envoy) is started through
`python -m server.lifeline PARENT PROGRAM ARGS...`, which asks and then
becomes the program (the request survives exec).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with(parent: int, signum: int = signal.SIGTERM) -> None:
    """From now on this process gets `signum` when `parent` (its parent's pid as the
    parent knew it) dies; if it has died already, gets it now."""
    if not sys.platform.startswith("linux"):
        log.warning("no parent-death signal on %s: children may outlive the server", sys.platform)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_PDEATHSIG): {os.strerror(error)}")
    # The parent may have died before the request was made: then it was
    # never going to be signalled, and this process was re-parented.
    if os.getppid() != parent:
        os.kill(os.getpid(), signum)


def command(parent: int, argv: list[str]) -> list[str]:
    """The command line that runs `argv` dying with `parent`."""
    return [sys.executable, "-m", "server.process.lifeline", str(parent), *argv]


def main(args: list[str]) -> None:
    parent, program = int(args[0]), args[1:]
    die_with(parent)
    os.execv(program[0], program)


if __name__ == "__main__":
    main(sys.argv[1:])
