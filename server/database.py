"""The database connection and statements compiled once: the store's plumbing.

SQLite (the default) or PostgreSQL, chosen by URL.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar
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


M = TypeVar("M", bound=peewee.Model)


def stand_in(field: peewee.Field, key: uuid.UUID, stamp: datetime) -> object:
    """A non-null value of the field's type: peewee binds a parameter for it (NULL it inlines)."""
    if isinstance(field, peewee.DateTimeField):
        return stamp
    if isinstance(field, peewee.UUIDField | peewee.ForeignKeyField):
        return key
    if isinstance(field, peewee.BooleanField):
        return True
    return "x"


class Prepared(Generic[M]):
    """SQL that peewee compiles once; each run only binds fresh parameters.

    Compiling a query costs peewee ~150 µs, some 25 times what SQLite takes to
    run it, so the hot statements are compiled when the store opens.
    Parameters are passed as the database wants them (UUIDs as `.hex`).
    """

    def __init__(self, query: Any, arity: int) -> None:
        self.sql, probe = query.sql()
        if len(probe) != arity:
            raise ValueError(f"{self.sql!r} binds {len(probe)} parameters, not {arity}")
        self.model: type[M] = query.model
        self.fields = self.model._meta.sorted_fields

    def execute(self, db: peewee.Database, *params: Any) -> Any:
        return db.execute_sql(self.sql, params)

    def one(self, db: peewee.Database, *params: Any) -> M | None:
        """The first selected row, or None (for lookups by key: no list is built)."""
        row = db.execute_sql(self.sql, params).fetchone()
        return None if row is None else self._instance(row)

    def rows(self, db: peewee.Database, *params: Any) -> list[M]:
        return [self._instance(row) for row in db.execute_sql(self.sql, params)]

    def _instance(self, row: tuple[Any, ...]) -> M:
        # The SELECT lists every field of the model, in order.
        return self.model(
            **{f.name: f.python_value(value) for f, value in zip(self.fields, row, strict=True)}
        )
