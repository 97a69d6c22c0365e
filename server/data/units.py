"""One store call as a unit: a connection for its duration, a write that lost a race
tried again, and database failures turned into domain errors, never a driver's.

What counts as a race and what as "the database cannot be reached" is decided
here, once, from the drivers' error codes (peewee keeps the driver's error as
`orig`).
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Concatenate, ParamSpec, Protocol, TypeVar

import asyncpg
import peewee
import psycopg2
from playhouse.pool import MaxConnectionsExceeded

from server import call as calls
from server.errors import Conflict, StoreUnavailable

P = ParamSpec("P")
R = TypeVar("R")


ATTEMPTS = 3


def _sqlstate(error: peewee.DatabaseError) -> str | None:
    """PostgreSQL's error code (peewee keeps the driver's error as `orig`)."""
    return getattr(getattr(error, "orig", None), "pgcode", None)


def names_no_row(error: peewee.IntegrityError) -> bool:
    """A foreign key violation: the row refers to a company that does not exist."""
    return _sqlstate(error) == "23503" or "FOREIGN KEY constraint failed" in str(error)


ONE_PRIMARY_INDEX = "contacts_one_primary_per_company"  # migrations.py


def _retryable(error: peewee.DatabaseError) -> bool:
    """A write that lost a race and was rolled back: another attempt will see the winner.

    On PostgreSQL: a deadlock, a serialization failure, or two promotions
    that read before either wrote colliding on the one-primary index. Any
    other integrity error is a bug or a bad reference, not a race; and
    SQLite's writers take turns (IMMEDIATE), so they never race.
    """
    code = _sqlstate(error)
    if code in ("40P01", "40001"):
        return True
    diagnostics = getattr(getattr(error, "orig", None), "diag", None)
    constraint = getattr(diagnostics, "constraint_name", None) or ""
    if code == "23505" and constraint == ONE_PRIMARY_INDEX:
        return True
    # A create under an Idempotency-Key whose id an earlier run of the same call
    # made meanwhile: the next attempt finds that row and answers with it.
    reserved_taken = constraint.endswith("_pkey") or str(error).endswith(".id")
    call = calls.current()
    return (
        call is not None
        and call.reserved_id is not None
        and reserved_taken
        and (code == "23505" or "UNIQUE constraint failed" in str(error))
    )


# SQLite's primary result codes that mean "cannot get at the file now", not a bug.
_SQLITE_UNAVAILABLE = {
    sqlite3.SQLITE_BUSY,
    sqlite3.SQLITE_LOCKED,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_PROTOCOL,
}
# PostgreSQL's SQLSTATE classes of the same kind: connection exception,
# insufficient resources, operator intervention (shutdown, restart), system error.
_POSTGRES_UNAVAILABLE = ("08", "53", "57", "58")


# Failures with no SQLSTATE that still mean "the connection failed": the
# socket broke, the answer did not come in time, or the driver's connection
# is unusable (psycopg2 and asyncpg alike).
_CONNECTION_FAILURES = (
    peewee.OperationalError,  # peewee's own, with no driver error behind it
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)


def unreachable(error: BaseException) -> bool:
    """The database could not be reached or could not serve, as opposed to refusing
    a statement ("no such table" is a bug, and must not read "try again"). Any
    driver's error, or peewee's wrapping of one."""
    driver_error = getattr(error, "orig", None) or error
    if isinstance(driver_error, sqlite3.Error):
        return (getattr(driver_error, "sqlite_errorcode", 0) & 0xFF) in _SQLITE_UNAVAILABLE
    # psycopg2 names it pgcode, asyncpg sqlstate.
    code = getattr(driver_error, "pgcode", None) or getattr(driver_error, "sqlstate", None)
    if code:
        return str(code).startswith(_POSTGRES_UNAVAILABLE)
    return isinstance(driver_error, _CONNECTION_FAILURES)


class Connected(Protocol):
    """What `_unit` needs of the object whose method it wraps (the store, the key table)."""

    def connection(self) -> AbstractContextManager[object]: ...


S = TypeVar("S", bound=Connected)


def unit(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """One store call: a connection for its duration, a lost race tried again, and
    database failures turned into domain errors. Anything else (a bug) goes up as
    it is, for the error interceptor to log and answer INTERNAL."""

    @functools.wraps(method)
    def wrapper(store: S, *args: P.args, **kwargs: P.kwargs) -> R:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                with store.connection():
                    return method(store, *args, **kwargs)
            except peewee.DatabaseError as error:
                if _retryable(error):
                    if attempt == ATTEMPTS:
                        raise Conflict() from error
                    continue
                if isinstance(error, peewee.OperationalError) and unreachable(error):
                    raise StoreUnavailable() from error
                raise
            except (peewee.InterfaceError, MaxConnectionsExceeded) as error:
                # A connection that broke, or none came free in time.
                raise StoreUnavailable() from error
        raise AssertionError("unreachable")

    return wrapper
