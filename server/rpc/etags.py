"""Strong ETags of contacts, and the If-Match header that makes a write conditional
(RFC 9110 sections 8.8.3 and 13.1.1).

A contact's ETag is its version, a counter every change to the row raises
(updated_at has whole seconds only: two changes within a second would share
it). REST clients send If-Match as a header, gRPC clients as `if-match`
metadata; the ETag goes back as `etag` (a header for REST).
"""

from __future__ import annotations

import re

HEADER = "etag"
IF_MATCH = "if-match"
_TAG = re.compile(r'\s*(W/)?"([^"]*)"\s*')
# The tags this service issues: a version, in ASCII digits, within the column's
# range (a 32-bit integer on PostgreSQL); any other tag can match nothing.
_VERSION = re.compile(r"[0-9]{1,10}", re.ASCII)
MAX_VERSION = 2**31 - 1


def etag(version: int) -> str:
    return f'"{version}"'


def expected_versions(values: list[str]) -> frozenset[int] | None:
    """The versions an If-Match accepts; None when any is (no header, or `*`).

    Weak tags never match (a conditional write compares strongly), nor do
    tags this service did not issue: both leave only what cannot match.
    """
    if not values or any(value.strip() == "*" for value in values):
        return None
    versions = set()
    for value in values:
        for item in value.split(","):
            found = _TAG.fullmatch(item)
            if found and not found.group(1) and _VERSION.fullmatch(found.group(2)):
                version = int(found.group(2))
                if version <= MAX_VERSION:
                    versions.add(version)
    return frozenset(versions)
