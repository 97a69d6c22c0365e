"""Setting up the scale scenarios: a database seeded before the server starts, and the
deep-page query examined in SQLite directly.

`python -m server seed` bulk-inserts N contacts into one company (a million
take some 30-60 s); the server started on that database afterwards finds the
schema migrated already. The deep page is the list query with a large OFFSET:
its query plan and its time, run once by Python's sqlite3 without the server,
say how much of the server's latency is SQLite's own.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
import uuid
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import peewee

from bench.processes import clean_env
from bench.workload import PAGE_SIZE
from server.settings import PROJECT_ROOT
from server.store import Contact

# Tokens must be issued for this user: it owns the seeded company, and only
# the owner may list its contacts.
OWNER = "bench-user"


class SeedError(RuntimeError):
    """`python -m server seed` failed; the message carries its output."""


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def deep_skip(contacts: int) -> int:
    """Where the deep page starts: 99% down the list, and at least a page from its end
    (990,000 of 1,000,000; 900 of 1,000)."""
    return contacts - max(PAGE_SIZE, contacts // 100)


def seed_database(database: Path, contacts: int, secret: str) -> tuple[str, float]:
    """Seeds `contacts` contacts owned by OWNER; returns the company id and the seconds taken."""
    env = {
        **clean_env(),
        "CONTACTS_DATABASE_URL": sqlite_url(database),
        # Without it, the command would make a secret file in the project's data/.
        "CONTACTS_JWT_SECRET": secret,
    }
    command = [sys.executable, "-m", "server", "seed"]
    command += ["--contacts", str(contacts), "--owner", OWNER]
    started = time.monotonic()
    # subprocess.run kills it if we are interrupted; a session of its own
    # keeps a terminal's Ctrl-C from printing its traceback too.
    done = subprocess.run(
        command,
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120 + contacts / 2000,  # far slower than it ever is: something is wrong
        start_new_session=True,
    )
    took = time.monotonic() - started
    words = done.stdout.split()
    company = words[-1] if words else ""
    if done.returncode != 0 or not _is_uuid(company):
        raise SeedError(
            f"seed exited with {done.returncode} (it prints the company id):\n"
            f"{done.stdout}\n{done.stderr[-3000:]}"
        )
    return company, took


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class QueryPlan:
    """EXPLAIN QUERY PLAN of the list query for one page, and that query's time, run once."""

    sql: str
    params: list[Any]
    plan: list[str]  # one line per step, indented by depth like the sqlite3 shell
    rows: int
    ms: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_query_sql() -> str:
    """The SQL the server runs for ListContacts, compiled from its model as the store does."""
    probe = uuid.UUID(int=1)
    # A database with no file: compiling SQL needs only its dialect. (A
    # query keeps the database its model had when it was made: make it here.)
    with peewee.SqliteDatabase(None).bind_ctx([Contact]):
        query = (
            Contact.select()
            .where(Contact.company == probe)
            .order_by(Contact.created_at, Contact.id)
            .limit(1)
            .offset(1)
        )
        sql, _ = query.sql()
    return str(sql)


def explain_page(database: Path, company_id: str, skip: int) -> QueryPlan:
    """The plan and the time of the page at `skip`, straight from SQLite (no server)."""
    sql = list_query_sql()
    # Parameters as the store binds them: the id as 32 hex digits, limit, offset.
    params: list[Any] = [uuid.UUID(company_id).hex, PAGE_SIZE, skip]
    with closing(sqlite3.connect(database)) as db:
        steps = db.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
        started = time.perf_counter()
        rows = db.execute(sql, params).fetchall()
        ms = (time.perf_counter() - started) * 1000
    return QueryPlan(sql, params, _plan_tree(steps), len(rows), ms)


def _plan_tree(steps: list[tuple[int, int, int, str]]) -> list[str]:
    # Each step is (id, parent id, unused, detail); the shell draws the tree
    # by depth, which is enough here too.
    depth = {0: -1}
    lines = []
    for step, parent, _, detail in steps:
        depth[step] = depth.get(parent, -1) + 1
        lines.append("  " * depth[step] + detail)
    return lines
