"""ListContacts' query: its page (size, token, skip) and filters, checked, and the page
tokens (AIP-158) that carry a walk from one page to the next.

A token says where the last page ended, (created_at, id) of its last row, so
that the next page is a keyset page (server/data/pages.py). It is signed
(HMAC-SHA256, 128 bits kept) with Settings.page_token_key over what it says
and over the query it belongs to (the company and the filters), which it does
not carry: an altered token, or one sent with another company or other
filters, fails the check. URL-safe base64 of 45 bytes, opaque to clients.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Any

from server.data.folding import fold
from server.data.pages import ContactPage
from server.errors import InvalidField
from server.rpc.validation import DEFAULT_PAGE, MAX_PAGE, page, text

# How long a token is honoured: a client paging slowly (a sync job that
# pauses) must not have to start over. The contract promises an hour at least.
TOKEN_SECONDS = 24 * 3600
_VERSION = 1
_BODY = struct.Struct(">BIq16s")  # version, issued at, created_at of the last row, its id
_MAC_BYTES = 16
MAX_Q = 254
# The instants a Timestamp may name (0001-01-01 to 9999-12-31, as RFC 3339), from 1970 on.
_LAST_SECOND = 253402300799


@dataclass(frozen=True)
class ContactQuery:
    page: ContactPage
    scope: bytes  # what a token of this query is bound to


class PageTokens:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def issue(self, scope: bytes, created_at: int, last_id: uuid.UUID) -> str:
        body = _BODY.pack(_VERSION, int(time.time()), created_at, last_id.bytes)
        return base64.urlsafe_b64encode(body + self._mac(body, scope)).rstrip(b"=").decode()

    def read(self, token: str, scope: bytes) -> tuple[int, uuid.UUID]:
        """(created_at, id) of the row the token's page ended with."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != _BODY.size + _MAC_BYTES or raw[0] != _VERSION:
            raise InvalidField("page_token", "is not a page token of this API")
        body, mac = raw[: _BODY.size], raw[_BODY.size :]
        if not hmac.compare_digest(mac, self._mac(body, scope)):
            raise InvalidField(
                "page_token",
                "does not belong to this company and these filters, or was altered",
            )
        _, issued, created_at, last_id = _BODY.unpack(body)
        if time.time() - issued > TOKEN_SECONDS:
            raise InvalidField("page_token", "has expired: start again from the first page")
        return created_at, uuid.UUID(bytes=last_id)

    def _mac(self, body: bytes, scope: bytes) -> bytes:
        return hmac.new(self._key, body + scope, hashlib.sha256).digest()[:_MAC_BYTES]


def contact_query(request: Any, company_id: uuid.UUID, tokens: PageTokens) -> ContactQuery:
    """The page a ListContactsRequest asks for; InvalidField names a bad field."""
    if request.skip and request.page_token:
        raise InvalidField("skip", "cannot be combined with page_token")
    skip, limit = page(request.skip, request.limit)
    if request.page_size < 0 or request.page_size > MAX_PAGE:
        raise InvalidField(
            "page_size", f"must be between 0 and {MAX_PAGE} (0 means {DEFAULT_PAGE})"
        )
    email = fold(text(request.email, "email")) if request.email else None
    q = None
    if request.q:
        if len(request.q) > MAX_Q:
            raise InvalidField("q", f"must be at most {MAX_Q} characters")
        if any(ord(c) < 0x20 or c == "\x7f" for c in request.q):
            raise InvalidField("q", "must not contain control characters")
        q = fold(request.q)
    since = None
    if request.HasField("updated_since"):
        stamp = request.updated_since
        if not 0 <= stamp.seconds <= _LAST_SECOND or not 0 <= stamp.nanos < 10**9:
            raise InvalidField("updated_since", "must be between 1970 and 9999")
        # updated_at holds whole seconds: "at or after" a fraction is the next one.
        since = stamp.seconds + (1 if stamp.nanos else 0)
    scope = json.dumps([str(company_id), email, q, since]).encode()
    after = tokens.read(request.page_token, scope) if request.page_token else None
    contact_page = ContactPage(
        company_id=company_id,
        limit=request.page_size or limit,
        skip=skip,
        after=after,
        email=email,
        q=q,
        updated_since=since,
    )
    return ContactQuery(contact_page, scope)
