"""The database connection: the store's plumbing.

SQLite (the default) or PostgreSQL, chosen by URL.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from urllib.parse import urlparse

import peewee
from playhouse.db_url import connect
from playhouse.pool import PooledPostgresqlDatabase


def use_wal(path: str, attempts: int = 100) -> None:
    """Puts the SQLite file in WAL mode (a property of the file, kept across opens).

    Switching takes an exclusive lock, and SQLite refuses at once, without
    waiting, when another process is mid-write (two servers or migrations
    starting together on a new file): so wait and try again.
    """
    for attempt in range(attempts):
        try:
            with contextlib.closing(sqlite3.connect(path, timeout=10)) as connection:
                connection.execute("PRAGMA journal_mode=wal")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or attempt == attempts - 1:
                raise
            time.sleep(0.05)


def open_database(url: str, max_connections: int) -> peewee.Database:
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        path = url.removeprefix("sqlite:///")
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            use_wal(path)
        # WAL lets readers run beside the writer; IMMEDIATE takes the write
        # lock at BEGIN so that two writers queue on busy_timeout instead of
        # one failing with "database is locked" on upgrade.
        return peewee.SqliteDatabase(
            path,
            lock_type="IMMEDIATE",
            pragmas={"busy_timeout": 10_000, "foreign_keys": 1, "synchronous": "normal"},
        )
    if scheme in ("postgres", "postgresql"):
        parsed = urlparse(url)
        return PooledPostgresqlDatabase(
            parsed.path.lstrip("/"),
            host=parsed.hostname,
            port=parsed.port,
            user=parsed.username,
            password=parsed.password,
            max_connections=max_connections,
            stale_timeout=300,
            connect_timeout=3,
        )
    return connect(url)
