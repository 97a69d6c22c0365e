"""Case folding for search, done by the service and not the database, so that it is
the same on SQLite and PostgreSQL.

SQLite's LOWER() folds ASCII only, and PostgreSQL's depends on the database's
locale; so the store keeps a folded copy of each searched column (written with
the row, indexed) and folds what a client searches for the same way. Full
case folding (Unicode's caseless matching: "Straße" and "STRASSE" match)
on the canonical decomposition, recomposed so that a prefix typed either way
compares equal.
"""

from __future__ import annotations

import sys
import unicodedata

# The first code point after the surrogates (which UTF-8 cannot carry).
_AFTER_SURROGATES = 0xE000


def fold(text: str) -> str:
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", text).casefold())


def prefix_end(prefix: str) -> str | None:
    """The least string greater than every string that starts with `prefix`, in code
    point order (SQLite's BINARY collation, PostgreSQL's "C"): `prefix` <= s < this
    for exactly those s. None: no such string (every s at or after `prefix` matches)."""
    while prefix:
        last = ord(prefix[-1]) + 1
        if 0xD800 <= last < _AFTER_SURROGATES:
            last = _AFTER_SURROGATES
        if last <= sys.maxunicode:
            return prefix[:-1] + chr(last)
        prefix = prefix[:-1]
    return None
