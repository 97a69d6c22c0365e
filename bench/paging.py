"""`python -m bench.paging [--postgres DSN]`: ListContacts' pages and filters, and
CreateContact with and without events, on 100,000 contacts in one company.

Measured at the store (the SQL and the rows' conversion, no network), on
SQLite and, given a server, PostgreSQL: page 1, page 1,000 by token, the
same page by skip=99,900, filtered pages; each a median of repeated runs.
Prints the query plans (EXPLAIN) the numbers come from.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from server.data.models import Contact
from server.data.outbox import Outbox
from server.data.pages import ContactPage
from server.data.queries import Statements, key
from server.data.store import Store
from tests.harness import empty_database

CONTACTS = 100_000
PAGE = 100


def median_ms(call: Callable[[], Any], runs: int = 30) -> float:
    call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def explain(store: Store, page: ContactPage) -> str:
    postgres = store.pooled
    sql, params = Statements.for_peewee(store.db).contacts_page(
        page, lambda value: key(Contact.id, value)
    )
    prefix = "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF)" if postgres else "EXPLAIN QUERY PLAN"
    with store.connection():
        rows = store.db.execute_sql(f"{prefix} {sql}", params).fetchall()
    return "\n".join(str(row[0] if postgres else row[-1]) for row in rows)


def measure(url: str, label: str) -> None:
    store = Store.open(url, max_connections=2)
    company = uuid.UUID(store.create_company("Bench", owner_id="bench").id)
    started = time.monotonic()
    store.seed_contacts(company, CONTACTS)
    # A few who match the filters, and a spread of updated_at.
    for n in range(50):
        store.create_contact(
            {"company": company, "first_name": f"Zelda {n}", "email": f"Zelda{n}@Example.com"}
        )
    with store.connection():
        if store.pooled:
            store.db.execute_sql("ANALYZE contacts")
        else:
            store.db.execute_sql("ANALYZE")
    print(f"\n== {label}: seeded {CONTACTS} contacts in {time.monotonic() - started:.1f} s")
    rows = store.list_contacts(ContactPage(company, limit=PAGE * 1000))
    last = rows[PAGE * 999 - 1]
    after = (last.created_at, uuid.UUID(last.id))
    since = rows[-1].updated_at
    pages = {
        "page 1": ContactPage(company, limit=PAGE),
        "page 1,000 by token": ContactPage(company, limit=PAGE, after=after),
        "page 1,000 by skip=99,900": ContactPage(company, limit=PAGE, skip=PAGE * 999),
        "email=zelda7@example.com": ContactPage(company, limit=PAGE, email="zelda7@example.com"),
        "q=zel (50 match)": ContactPage(company, limit=PAGE, q="zel"),
        "q=seed 1 (11,111 match)": ContactPage(company, limit=PAGE, q="seed 1"),
        "updated_since=newest": ContactPage(company, limit=PAGE, updated_since=since),
    }
    for name, page in pages.items():
        ms = median_ms(functools.partial(store.list_contacts, page))
        print(f"{name:32} {ms:8.2f} ms")
    for name in (
        "page 1,000 by token",
        "page 1,000 by skip=99,900",
        "email=zelda7@example.com",
        "q=zel (50 match)",
        "updated_since=newest",
    ):
        print(f"-- plan of {name}:\n{explain(store, pages[name])}")
    for events in (False, True):
        store.events = events
        fields = {"company": company, "first_name": "New", "email": "new@example.com"}
        ms = median_ms(functools.partial(store.create_contact, fields), runs=300)
        print(f"CreateContact (store) events {'on ' if events else 'off'} {ms:8.3f} ms")
    Outbox(store.db, store.connection).purge()
    store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--postgres", help="a PostgreSQL server's DSN (a database is made)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        with empty_database(Path(folder), "sqlite") as url:
            measure(url, "SQLite")
        if args.postgres:
            with empty_database(Path(folder), "postgresql", args.postgres) as url:
                measure(url, "PostgreSQL")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
