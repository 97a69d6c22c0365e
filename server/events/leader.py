"""Which process relays a database's events: one at a time, so that they go out in order.

PostgreSQL: whoever holds a session advisory lock, on a connection of its own,
for as long as that connection lives (a relay that dies, or loses its
connection, lets the lock go with it, and another worker or host takes
over). SQLite: the database is one file on one host, and the lock is an
flock() on a file beside it, which the kernel lets go when its process dies,
even by SIGKILL.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Any

import psycopg2

from server.data.database import postgres_parameters

# Any constant, the same in every process (migrations.py holds another).
ADVISORY_LOCK_KEY = 0x636F6E65  # "cone": contact events


class Leadership:
    """try_take() until it says True; then holding() says whether it is still held."""

    def try_take(self) -> bool:
        raise NotImplementedError

    def holding(self) -> bool:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError


class AdvisoryLock(Leadership):
    def __init__(self, url: str) -> None:
        self._url = url
        self._connection: Any = None

    def try_take(self) -> bool:
        # The connection is kept between tries: one idle connection per waiting
        # worker, rather than a new one every LEADER_RETRY_SECONDS.
        if self._connection is None or self._connection.closed:
            self._connection = psycopg2.connect(**postgres_parameters(self._url))
            self._connection.autocommit = True
        try:
            with self._connection.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
                return bool(cursor.fetchone()[0])
        except psycopg2.Error:
            self.release()
            raise

    def holding(self) -> bool:
        """Whether the lock's connection still answers (the lock lives as long as it)."""
        if self._connection is None:
            return False
        try:
            with self._connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            return True
        except psycopg2.Error:
            self.release()
            return False

    def release(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(psycopg2.Error):
                self._connection.close()
            self._connection = None


class FileLock(Leadership):
    def __init__(self, path: str) -> None:
        self._path = path
        self._fd: int | None = None

    def try_take(self) -> bool:
        if self._fd is None:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def holding(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # the flock goes with it
            self._fd = None


def leadership_for(database_url: str) -> Leadership:
    if database_url.startswith(("postgres://", "postgresql://")):
        return AdvisoryLock(database_url)
    path = database_url.removeprefix("sqlite:///")
    return FileLock(f"{path}.relay-lock")
