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
import psycopg2.extensions
from playhouse.db_url import connect
from playhouse.pool import PooledPostgresqlDatabase

# The timeouts of every way to the database (peewee's pool and asyncpg's alike).
CONNECT_SECONDS = 3
QUERY_SECONDS = 5.0  # a read that takes longer: the database is not answering
# A call that finds every pooled connection busy waits this long for one, then
# answers UNAVAILABLE (whole seconds: peewee's pool takes no fraction).
POOL_WAIT_SECONDS = 2


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
        parameters = postgres_parameters(url)
        return PooledPostgresqlDatabase(
            parameters.pop("dbname", ""),
            max_connections=max_connections,
            stale_timeout=300,
            timeout=POOL_WAIT_SECONDS,  # peewee would refuse at once
            **parameters,
        )
    return connect(url)


def postgres_parameters(url: str) -> dict[str, str]:
    """libpq's own reading of a PostgreSQL URL: every part percent-decoded, and every
    query option (sslmode, options, target_session_attrs...) kept. (playhouse's
    db_url leaves a percent-encoded password encoded unless told, and guesses
    types for the query options.)"""
    parameters: dict[str, str] = psycopg2.extensions.parse_dsn(url)
    parameters.setdefault("connect_timeout", str(CONNECT_SECONDS))
    return parameters
