"""The supervisor: the foreground process of `run`, `serve` and `envoy`.

It starts the worker processes (server/process/worker.py), which share the gRPC port
through SO_REUSEPORT, and Envoy when asked. Envoy's door is shared the same
way (`serve`), or, when Envoy is its own child (`run`), each worker has a port
of its own and the supervisor lists those of the workers that serve and are
not draining in a file Envoy watches (endpoints.py); then:

- a worker that dies is replaced at once; while workers keep dying soon after
  they start, each next start waits longer (1 s, 2 s, 4 s ... 30 s). The
  other workers keep serving meanwhile. Envoy is looked after the same way.
- SIGHUP replaces the workers one at a time, as gunicorn does: a new one
  starts, and only once it serves is an old one told to drain, after Envoy
  was told to send it nothing new. New code is picked up (the environment is
  the supervisor's, unchanged).
- SIGTERM or SIGINT drains and stops every worker, then stops Envoy, and the
  supervisor exits 0. Envoy's list stays as it was: there is nowhere else to
  send calls meanwhile.

Its signal handlers only record (signals.py); this loop does the work. Every
child dies with the supervisor, even when it is killed with SIGKILL
(lifeline.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.multiprocess import mark_process_dead

from server.observability.metrics import MULTIPROC_DIR
from server.process import endpoints, lifeline
from server.process.signals import Signals
from server.settings import STOP_GRACE_SECONDS, Settings

log = logging.getLogger(__name__)

STABLE_SECONDS = 10.0  # a child that dies sooner than this after starting "keeps dying"
BACKOFF_MAX_SECONDS = 30.0
ENVOY_STOP_SECONDS = 10.0
# Past a worker's drain and its STOP_GRACE_SECONDS, how long a stop waits for it
# before killing it: a stop takes at most drain + grace + this (and Envoy's stop).
STOP_MARGIN_SECONDS = 5.0
STOP = (signal.SIGTERM, signal.SIGINT)


def backoff(streak: int) -> float:
    """Seconds before the next start after `streak` quick deaths in a row: none after
    the first, then 1, 2, 4 ... up to BACKOFF_MAX_SECONDS."""
    return 0.0 if streak <= 1 else min(BACKOFF_MAX_SECONDS, 2.0 ** (streak - 2))


def how_it_ended(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exited with {returncode}"


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    started: float
    ready_fd: int | None = None  # a worker's "serving" pipe, until it reports or dies
    serving: bool = False
    door: str = ""  # Envoy's door, as the worker reported it (`run`: its socket)

    def __str__(self) -> str:
        return f"{self.name} {self.process.pid}"


class Restarts:
    """When the next child of one kind may start."""

    def __init__(self) -> None:
        self.streak = 0
        self.not_before = 0.0

    def died(self, child: Child, now: float) -> float:
        """Records a death; the seconds to wait before starting another."""
        quick = not child.serving or now - child.started < STABLE_SECONDS
        self.streak = self.streak + 1 if quick else 0
        delay = backoff(self.streak)
        self.not_before = now + delay
        return delay


class Supervisor:
    """`workers` server processes and, given its command line, Envoy; given `endpoints`
    (the file that Envoy's config names), each worker gets a door of its own, and
    the file lists the workers Envoy is to send to."""

    def __init__(
        self,
        settings: Settings,
        workers: int,
        envoy: list[str] | None,
        metrics_dir: Path | None = None,
        endpoints: Path | None = None,
    ) -> None:
        self.settings = settings
        self.metrics_dir = metrics_dir  # where the workers write their metrics
        self.endpoints = endpoints
        self.listed: list[str] | None = None  # the doors the file lists; None: not written yet
        # `run`'s workers' doors: Unix sockets in a directory of the service's user alone.
        self.doors = (
            None
            if endpoints is None
            else endpoints.parent.with_name(endpoints.parent.name.replace("endpoints", "doors"))
        )
        self.started_workers = 0
        self.unlisted = False  # the last write of the file failed
        self.workers = workers
        self.envoy_command = envoy
        self.live: list[Child] = []  # workers starting or serving
        self.draining: list[Child] = []  # workers told to stop
        self.to_replace: list[Child] = []  # what a rolling restart has still to replace
        self.envoy: Child | None = None
        self.worker_restarts = Restarts()
        self.envoy_restarts = Restarts()

    def run(self) -> int:
        signals = Signals(signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD)
        if self.doors is not None:
            self.doors.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.doors.chmod(0o700)  # one made before (by an older version) too
            for left in self.doors.glob("*.sock"):  # an earlier run's
                left.unlink(missing_ok=True)
        self._list_serving()  # none yet: a file left from an earlier run lists nobody
        try:
            while True:
                self._start_missing(time.monotonic())
                if self.unlisted:
                    self._list_serving()
                came, readable = signals.wait(1.0, self._ready_fds())
                for fd in readable:
                    self._reported(fd)
                self._reap()
                stop = [signum for signum in came if signum in STOP]
                if stop:
                    return self._stop(signals, stop[0])
                if signal.SIGHUP in came:
                    self._replace_all()
        finally:
            self._kill_all()

    # Starting

    def _start_missing(self, now: float) -> None:
        envoy_missing = self.envoy_command is not None and self.envoy is None
        if envoy_missing and now >= self.envoy_restarts.not_before:
            self._start_envoy(now)
        if self.to_replace and any(not child.serving for child in self.live):
            return  # a rolling restart starts one worker at a time
        wanted = self.workers + (1 if self.to_replace else 0)
        while len(self.live) < wanted and now >= self.worker_restarts.not_before:
            self._start_worker(now)
            if self.to_replace:
                break

    def _start_worker(self, now: float) -> None:
        read, write = os.pipe()
        command = [
            sys.executable,
            "-m",
            "server",
            "serve",
            "--worker",
            f"--parent={os.getpid()}",
            f"--ready-fd={write}",
            *([f"--proxy-socket={self._new_door()}"] if self.doors else []),
        ]
        # prometheus_client reads the variable when the worker first imports it.
        env = (
            None
            if self.metrics_dir is None
            else {**os.environ, MULTIPROC_DIR: str(self.metrics_dir)}
        )
        try:
            process = subprocess.Popen(command, pass_fds=(write,), start_new_session=True, env=env)
        finally:
            os.close(write)
        self.live.append(Child("worker", process, now, ready_fd=read))

    def _new_door(self) -> Path:
        assert self.doors is not None
        self.started_workers += 1
        return self.doors / f"worker-{self.started_workers}.sock"

    def _start_envoy(self, now: float) -> None:
        assert self.envoy_command is not None
        # Its own session: a terminal's Ctrl-C reaches only the supervisor,
        # which stops the workers first and Envoy last.
        command = lifeline.command(os.getpid(), self.envoy_command)
        self.envoy = Child("envoy", subprocess.Popen(command, start_new_session=True), now)
        self.envoy.serving = True

    def _ready_fds(self) -> list[int]:
        return [c.ready_fd for c in (*self.live, *self.draining) if c.ready_fd is not None]

    def _reported(self, fd: int) -> None:
        child = next(c for c in (*self.live, *self.draining) if c.ready_fd == fd)
        said = os.read(fd, 64)
        os.close(fd)
        child.ready_fd = None
        if not said:
            return  # it died before serving: _reap tells
        child.serving, child.door = True, said.decode()
        log.info("%s serving", child)
        if child in self.live:  # not one that a stop has told to drain already
            self._list_serving()
        if self.to_replace and len(self.live) > self.workers:
            self._drain(self.to_replace.pop(0))

    # Replacing

    def _replace_all(self) -> None:
        if not self.live:
            log.info("SIGHUP: no worker to replace")
            return
        self.to_replace = list(self.live)
        log.info("SIGHUP: replacing %d worker(s) one at a time", len(self.to_replace))

    def _drain(self, child: Child, unlist: bool = True) -> None:
        self.live.remove(child)
        self.draining.append(child)
        if unlist:  # before the SIGTERM: Envoy sends it nothing new from now on
            self._list_serving()
        with contextlib.suppress(ProcessLookupError):
            child.process.send_signal(signal.SIGTERM)
        log.info("%s draining", child)

    def _reap(self) -> None:
        now = time.monotonic()
        for child in [c for c in self.live if c.process.poll() is not None]:
            self.live.remove(child)
            if child in self.to_replace:
                self.to_replace.remove(child)
            self._forget(child)
            delay = self.worker_restarts.died(child, now)
            self._say_died(child, now, delay)
            self._list_serving()
        for child in [c for c in self.draining if c.process.poll() is not None]:
            self.draining.remove(child)
            self._forget(child)
            log.info("%s stopped (%s)", child, how_it_ended(child.process.returncode))
        if self.envoy is not None and self.envoy.process.poll() is not None:
            delay = self.envoy_restarts.died(self.envoy, now)
            self._say_died(self.envoy, now, delay)
            self.envoy = None

    def _forget(self, child: Child) -> None:
        """A worker that exited: its pipe closed, its door removed, its live gauges out of
        the sums."""
        self._close_pipe(child)
        if child.door.startswith("/"):
            Path(child.door).unlink(missing_ok=True)
        if self.metrics_dir is not None:
            mark_process_dead(child.process.pid, str(self.metrics_dir))

    def _say_died(self, child: Child, now: float, delay: float) -> None:
        ended = how_it_ended(child.process.returncode)
        uptime = now - child.started
        if delay:
            log.error(
                "%s %s after %.1f s; it keeps dying soon after it starts: another in %g s",
                child,
                ended,
                uptime,
                delay,
            )
        else:
            log.error("%s %s after %.1f s; starting another", child, ended, uptime)

    def _list_serving(self) -> None:
        """Envoy's endpoints (`run`): the workers serving and not draining, when that changed."""
        doors = sorted(c.door for c in self.live if c.serving)
        if self.endpoints is None or doors == self.listed:
            return
        try:
            endpoints.write(self.endpoints, doors)
        except OSError as error:  # a full disk, say: Envoy keeps the last list
            if not self.unlisted:
                log.error("cannot write Envoy's endpoints (%s); trying again each second", error)
            self.unlisted = True
            return
        self.listed, self.unlisted = doors, False
        names = [Path(door).name for door in doors]
        log.info("Envoy sends to %s", ", ".join(names) or "no worker")

    @staticmethod
    def _close_pipe(child: Child) -> None:
        if child.ready_fd is not None:
            os.close(child.ready_fd)
            child.ready_fd = None

    # Stopping

    def _stop(self, signals: Signals, signum: signal.Signals) -> int:
        drain = self.settings.drain_seconds
        log.info("%s: stopping; the workers drain for %g s, then finish", signum.name, drain)
        self.to_replace = []
        for child in list(self.live):
            self._drain(child, unlist=False)
        deadline = time.monotonic() + drain + STOP_GRACE_SECONDS + STOP_MARGIN_SECONDS
        while self.draining and time.monotonic() < deadline:
            came, readable = signals.wait(0.5, self._ready_fds())
            for fd in readable:
                self._reported(fd)
            if any(signum in STOP for signum in came):
                log.info("already stopping")
            self._reap()
        for child in self.draining:
            log.error("%s did not stop in time: killing it", child)
        self._kill_all(workers_only=True)
        if self.envoy is not None:  # last: it forwarded calls to the draining workers
            self.envoy.process.terminate()
            try:
                self.envoy.process.wait(ENVOY_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                log.error("%s did not stop in time: killing it", self.envoy)
        self._kill_all()
        return 0

    def _kill_all(self, workers_only: bool = False) -> None:
        """SIGKILL for whatever is still running, so that nothing outlives this call."""
        children = [*self.live, *self.draining]
        if self.envoy is not None and not workers_only:
            children.append(self.envoy)
        for child in children:
            if child.process.poll() is None:
                child.process.kill()
            child.process.wait()
            self._close_pipe(child)
        self.live, self.draining = [], []
        if not workers_only:
            self.envoy = None
