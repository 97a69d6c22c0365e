"""Signals as the main loop's input: a handler only records that one came.

A Python signal handler runs between two bytecodes of the main thread,
wherever that thread is, even inside a lock it holds: a handler that takes a
lock (`threading.Event.set()` does) deadlocks when it lands there, or when a
second signal lands inside the first handler. So the handlers here do
nothing; the interpreter's C-level handler writes each signal's number to a
pipe (`signal.set_wakeup_fd`), and the main loop reads the numbers when it
waits, together with any other descriptors it waits on.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections.abc import Iterable
from types import FrameType


def _recorded(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler: the number is already in the pipe."""


class Signals:
    """Catches `signums` from now on; `wait` returns the ones that came, in order.

    Made in the main thread (set_wakeup_fd is main-thread only), once per process.
    """

    def __init__(self, *signums: signal.Signals) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        for signum in signums:
            signal.signal(signum, _recorded)

    def wait(
        self, timeout: float | None, fds: Iterable[int] = ()
    ) -> tuple[list[signal.Signals], list[int]]:
        """Blocks until a signal comes, one of `fds` is readable, or `timeout` seconds
        pass; returns the signals that came and the readable descriptors."""
        watched = [self._read, *fds]
        readable, _, _ = select.select(watched, [], [], timeout)
        came: list[signal.Signals] = []
        if self._read in readable:
            with contextlib.suppress(BlockingIOError):
                came = [signal.Signals(number) for number in os.read(self._read, 4096)]
        return came, [fd for fd in readable if fd != self._read]
