"""Versioned schema migrations: numbered steps, applied in order, recorded in the database.

`migrate()` runs at every start (and from `python -m server migrate`). It
holds a lock for its whole transaction (an advisory lock on PostgreSQL, the
write lock on SQLite), so two processes starting at once apply each step once.
A step never changes after it has shipped; a change is a new step. The first
steps say IF NOT EXISTS so that a database made before migrations existed (by
peewee's create_tables) is adopted rather than refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import peewee

from server.data.folding import fold

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same in every process.
ADVISORY_LOCK_KEY = 0x636F6E74  # "cont"


def _uuid(db: peewee.Database) -> str:
    # TEXT on SQLite: a UUID-typed column there would get NUMERIC affinity,
    # which rewrites hex strings that happen to look like numbers.
    return "UUID" if isinstance(db, peewee.PostgresqlDatabase) else "TEXT"


def initial_schema(db: peewee.Database) -> None:
    uuid = _uuid(db)
    db.execute_sql(
        f"""CREATE TABLE IF NOT EXISTS companies (
            id {uuid} NOT NULL PRIMARY KEY,
            name VARCHAR(200) NOT NULL,
            owner_id VARCHAR(255) NOT NULL,
            created_at TIMESTAMP NOT NULL,
            updated_at TIMESTAMP NOT NULL)"""
    )
    # Serves ListCompanies for one owner, already in list order.
    db.execute_sql(
        "CREATE INDEX IF NOT EXISTS companies_owner_id_created_at_id"
        " ON companies (owner_id, created_at, id)"
    )
    db.execute_sql(
        f"""CREATE TABLE IF NOT EXISTS contacts (
            id {uuid} NOT NULL PRIMARY KEY,
            company_id {uuid} REFERENCES companies (id) ON DELETE CASCADE,
            first_name VARCHAR(100) NOT NULL,
            last_name VARCHAR(100),
            email VARCHAR(254) NOT NULL,
            phone VARCHAR(50),
            designation VARCHAR(100),
            is_primary BOOLEAN NOT NULL DEFAULT FALSE,
            created_at TIMESTAMP NOT NULL,
            updated_at TIMESTAMP NOT NULL)"""
    )
    # Serves ListContacts: one company's rows, already in list order.
    db.execute_sql(
        "CREATE INDEX IF NOT EXISTS contacts_company_id_created_at_id"
        " ON contacts (company_id, created_at, id)"
    )


def one_primary_per_company(db: peewee.Database) -> None:
    # Data written before this step may hold several primaries in one
    # company: the most recently updated one stays primary.
    db.execute_sql(
        """UPDATE contacts SET is_primary = FALSE
        WHERE is_primary AND company_id IS NOT NULL AND EXISTS (
            SELECT 1 FROM contacts AS newer
            WHERE newer.company_id = contacts.company_id AND newer.is_primary
              AND (newer.updated_at > contacts.updated_at
                   OR (newer.updated_at = contacts.updated_at AND newer.id > contacts.id)))"""
    )
    db.execute_sql(
        "CREATE UNIQUE INDEX IF NOT EXISTS contacts_one_primary_per_company"
        " ON contacts (company_id) WHERE is_primary"
    )


def contact_versions(db: peewee.Database) -> None:
    # Raised by every change to the row: the contact's ETag (server/rpc/etags.py).
    # (A database adopted from peewee's create_tables may have it already.)
    if "version" not in {column.name for column in db.get_columns("contacts")}:
        db.execute_sql("ALTER TABLE contacts ADD COLUMN version INTEGER NOT NULL DEFAULT 1")


def idempotency_keys(db: peewee.Database) -> None:
    # server/rpc/interceptors/idempotency.py: one row per client and Idempotency-Key, kept a day.
    blob = "BYTEA" if isinstance(db, peewee.PostgresqlDatabase) else "BLOB"
    db.execute_sql(
        f"""CREATE TABLE idempotency_keys (
            client VARCHAR(300) NOT NULL,
            idempotency_key VARCHAR(255) NOT NULL,
            fingerprint VARCHAR(64) NOT NULL,
            resource_id VARCHAR(36) NOT NULL,
            response {blob},
            metadata TEXT,
            created_at TIMESTAMP NOT NULL,
            expires_at TIMESTAMP NOT NULL,
            PRIMARY KEY (client, idempotency_key))"""
    )
    # Serves the purge of expired keys.
    db.execute_sql("CREATE INDEX idempotency_keys_expires_at ON idempotency_keys (expires_at)")


def contact_search(db: peewee.Database) -> None:
    # ListContacts' filters (server/data/pages.py) compare folded copies of the
    # searched columns, which the service writes (server/data/folding.py): the
    # same folding on both databases. Code point order ("C" on PostgreSQL, as
    # SQLite's BINARY), so that a prefix is one range of an index.
    postgres = isinstance(db, peewee.PostgresqlDatabase)
    folded_type = 'TEXT COLLATE "C"' if postgres else "TEXT"
    # (A database adopted from peewee's create_tables may have them already.)
    present = {column.name for column in db.get_columns("contacts")}
    for column in ("first_name_folded", "last_name_folded", "email_folded"):
        if column not in present:
            db.execute_sql(f"ALTER TABLE contacts ADD COLUMN {column} {folded_type}")
    rows = db.execute_sql("SELECT id, first_name, last_name, email FROM contacts").fetchall()
    p = db.param
    for contact_id, first_name, last_name, email in rows:
        db.execute_sql(
            f"UPDATE contacts SET first_name_folded = {p}, last_name_folded = {p},"
            f" email_folded = {p} WHERE id = {p}",
            (
                fold(first_name),
                None if last_name is None else fold(last_name),
                fold(email),
                contact_id,
            ),
        )
    # email: an exact match, its rows already in list order. q: a prefix range
    # of each column (the matches are then put in list order). updated_since:
    # a range of one company's rows (also then ordered).
    db.execute_sql(
        "CREATE INDEX IF NOT EXISTS contacts_company_id_email_folded"
        " ON contacts (company_id, email_folded, created_at, id)"
    )
    for column in ("first_name_folded", "last_name_folded"):
        db.execute_sql(
            f"CREATE INDEX contacts_company_id_{column} ON contacts (company_id, {column})"
        )
    db.execute_sql(
        "CREATE INDEX contacts_company_id_updated_at ON contacts (company_id, updated_at)"
    )


def contact_events(db: peewee.Database) -> None:
    # The outbox of change events (server/events/): one row per change, written
    # in the change's transaction, published in id order by the one relay.
    postgres = isinstance(db, peewee.PostgresqlDatabase)
    serial = "BIGSERIAL PRIMARY KEY" if postgres else "INTEGER PRIMARY KEY AUTOINCREMENT"
    db.execute_sql(
        f"""CREATE TABLE IF NOT EXISTS contact_events (
            id {serial},
            event_id {_uuid(db)} NOT NULL,
            type SMALLINT NOT NULL,
            contact TEXT NOT NULL,
            occurred_at TIMESTAMP NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            sent_at TIMESTAMP,
            skipped BOOLEAN NOT NULL DEFAULT FALSE)"""
    )
    # The relay's queue: what is still to publish, in order.
    db.execute_sql(
        "CREATE INDEX IF NOT EXISTS contact_events_unsent ON contact_events (id)"
        " WHERE sent_at IS NULL AND NOT skipped"
    )


MIGRATIONS: tuple[tuple[int, str, Callable[[peewee.Database], None]], ...] = (
    (1, "initial schema", initial_schema),
    (2, "one primary contact per company", one_primary_per_company),
    (3, "contact versions", contact_versions),
    (4, "idempotency keys", idempotency_keys),
    (5, "contact search", contact_search),
    (6, "contact events outbox", contact_events),
)
LATEST = MIGRATIONS[-1][0]


def applied_versions(db: peewee.Database) -> list[int]:
    if not db.table_exists("schema_migrations"):
        return []
    return [row[0] for row in db.execute_sql("SELECT version FROM schema_migrations ORDER BY 1")]


def migrate(db: peewee.Database, target: int = LATEST) -> list[int]:
    """Applies the steps up to `target` that are not applied yet; returns those it applied."""
    done: list[int] = []
    with db.atomic():
        if isinstance(db, peewee.PostgresqlDatabase):
            db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
        db.execute_sql(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                version INTEGER NOT NULL PRIMARY KEY,
                name VARCHAR(200) NOT NULL,
                applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)"""
        )
        applied = set(applied_versions(db))
        for version, name, step in MIGRATIONS:
            if version > target or version in applied:
                continue
            log.info("applying migration %d: %s", version, name)
            step(db)
            db.execute_sql(
                f"INSERT INTO schema_migrations (version, name) VALUES ({db.param}, {db.param})",
                (version, name),
            )
            done.append(version)
    return done
