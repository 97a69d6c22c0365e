"""One page of a company's contacts: keyset paging on (created_at, id), and the filters.

Page n after a token costs what page 1 costs: the page starts where the last
one ended, `(created_at, id) > (last seen)`, one range of the index on
(company_id, created_at, id), not OFFSET's walk over every row before it.
The filters compare the folded copies of the searched columns (folding.py)
and each has an index (migrations.py's contact_search); `q`'s prefix is a
range in code point order, so `%` and `_` are only characters there.

The page asks for one row more than it returns: that row says whether there
is a next page, so the last page carries no token.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from server.data.folding import prefix_end
from server.data.models import EPOCH


@dataclass(frozen=True)
class ContactPage:
    """What one ListContacts page asks for; text filters already folded."""

    company_id: uuid.UUID
    limit: int
    skip: int = 0
    after: tuple[int, uuid.UUID] | None = None  # the last row seen: (created_at, id)
    email: str | None = None
    q: str | None = None
    updated_since: int | None = None  # seconds since the epoch

    @property
    def filtered(self) -> bool:
        """Whether a filter may make the page read rows it does not return."""
        return self.email is not None or self.q is not None or self.updated_since is not None


def stamp(seconds: int) -> datetime:
    """Epoch seconds as the columns hold them (naive UTC)."""
    return EPOCH + timedelta(seconds=seconds)


def page_query(
    page: ContactPage,
    columns: str,
    table: str,
    param: Callable[[int], str],
    key: Callable[[uuid.UUID], Any],
    postgres: bool = False,
) -> tuple[str, list[Any]]:
    """The SQL of `page` (at most limit + 1 rows) and its parameters; `param(n)` writes
    the n-th parameter, `key` turns a UUID into one."""
    values: list[Any] = []

    def p(value: Any) -> str:
        values.append(value)
        return param(len(values))

    where = [f"company_id = {p(key(page.company_id))}"]
    if page.email is not None:
        where.append(f"email_folded = {p(page.email)}")
    if page.q is not None:
        ranges = []
        end = prefix_end(page.q)
        for column in ("first_name_folded", "last_name_folded", "email_folded"):
            # Parameters in the order they appear: SQLite's are positional.
            lower = f"{column} >= {p(page.q)}"
            ranges.append(f"({lower})" if end is None else f"({lower} AND {column} < {p(end)})")
        where.append(f"({' OR '.join(ranges)})")
    if page.updated_since is not None:
        where.append(f"updated_at >= {p(stamp(page.updated_since))}")
    if page.after is not None:
        seconds, last_id = page.after
        where.append(f"(created_at, id) > ({p(stamp(seconds))}, {p(key(last_id))})")
    # The table's columns by name: a bare `id` would be the selected `id::text`
    # on PostgreSQL, which no index is in the order of (a sort of every row).
    source = table
    if page.updated_since is not None and page.email is None and page.q is None and not postgres:
        # SQLite's planner walks the list-order index and filters, every row of
        # the company when few changed (36 ms at 100,000); a sync asks for the
        # few recent changes, so their range is read and sorted instead.
        # (PostgreSQL chooses by its statistics.)
        source = f"{table} INDEXED BY {table}_company_id_updated_at"
    sql = (
        f"SELECT {columns} FROM {source} WHERE {' AND '.join(where)}"
        f" ORDER BY {table}.created_at, {table}.id LIMIT {p(page.limit + 1)}"
    )
    if page.skip:
        sql += f" OFFSET {p(page.skip)}"
    return sql, values
