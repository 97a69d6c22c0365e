"""Validation of client input: every failure names the field (InvalidField)."""

from __future__ import annotations

import re
import uuid
from typing import Any, Protocol

import peewee

from server.data.models import Company, Contact
from server.errors import InvalidField, echo

DEFAULT_PAGE = 100
MAX_PAGE = 1000
# The bounds of the paging fields, as page() enforces them (the OpenAPI
# document states them from here): name -> (minimum, maximum, absent or 0 means).
PAGE_BOUNDS = {
    "skip": (0, 2**31 - 1, 0),
    "limit": (0, MAX_PAGE, DEFAULT_PAGE),
    "page_size": (0, MAX_PAGE, DEFAULT_PAGE),
}

# Deliberately simple: one @, no spaces, a dot in the domain. Deliverability
# is the mail server's business, not ours.
_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# C0 and C1 controls; line and paragraph separators (a line break in a log or a
# terminal); the bidirectional embeddings, overrides and isolates, which make
# text display as something else than it is (U+202E turns "exe.txt" around).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# In an email also: zero-width characters and full-width forms (U+FF20 for "@"), with which
# two addresses that look alike differ. (Names keep the zero-width joiners that
# Persian and Indic scripts need.)
_EMAIL_LOOKALIKES = re.compile("[\u200b-\u200d\u2060\ufeff\uff01-\uff5e]")

# field -> (maximum length, required to be non-blank), as the columns declare them:
# a column that takes no NULL is a field a client must fill.
_TEXT_FIELDS = {
    field.name: (field.max_length, not field.null)
    for model in (Contact, Company)
    for field in model._meta.sorted_fields  # type: ignore[attr-defined]
    if isinstance(field, peewee.CharField) and field.name != "owner_id"
}


class Message(Protocol):
    def HasField(self, field_name: str) -> bool: ...


def parse_uuid(value: str, field: str, required: bool = True) -> uuid.UUID:
    if not value and required:
        raise InvalidField(field, "is required")
    # uuid.UUID alone also takes braces, urn: prefixes and stray dashes; the
    # contract speaks of canonical UUID strings.
    if not _UUID.fullmatch(value):
        raise InvalidField(field, "must be a UUID")
    return uuid.UUID(value)


def text(value: str, field: str) -> str:
    limit, required = _TEXT_FIELDS[field]
    if required and not value.strip():
        raise InvalidField(field, "is required")
    if len(value) > limit:
        raise InvalidField(field, f"must be at most {limit} characters")
    if _CONTROL.search(value):
        raise InvalidField(field, "must not contain control or bidirectional formatting characters")
    if field == "email" and _EMAIL_LOOKALIKES.search(value):
        raise InvalidField(field, "must not contain zero-width or full-width characters")
    if field == "email" and not _EMAIL.fullmatch(value):
        raise InvalidField(field, "must be a valid email address")
    return value


def page(skip: int, limit: int) -> tuple[int, int]:
    if skip < 0:
        raise InvalidField("skip", "must not be negative")
    if limit < 0 or limit > MAX_PAGE:
        raise InvalidField("limit", f"must be between 0 and {MAX_PAGE} (0 means {DEFAULT_PAGE})")
    return skip, limit or DEFAULT_PAGE


# Fields of an update that can be cleared, and the store column of each.
CLEARABLE = {
    "last_name": "last_name",
    "phone": "phone",
    "designation": "designation",
    "company_id": "company",
}
UPDATABLE = ("company_id", "first_name", "last_name", "email", "phone", "designation", "is_primary")


def update_changes(request: Any, mask: list[str] | None, sent: list[str] | None) -> dict[str, Any]:
    """The columns an UpdateContact request changes (None: cleared).

    `mask` is the request's update_mask (AIP-134): only its fields change, and
    one of them left unset is cleared. Without one, the set fields change, and
    `sent` (the members a REST body sent, nulls included) names those sent as
    null, which are cleared.
    """
    changes = contact_fields(request, partial=True)
    if mask is not None:
        unknown = [path for path in mask if path not in UPDATABLE]
        if unknown:
            more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
            raise InvalidField("update_mask", f"names no updatable field: {echo(unknown[0])}{more}")
        kept = {CLEARABLE.get(path, path) for path in mask}
        changes = {column: value for column, value in changes.items() if column in kept}
        unset = [path for path in mask if not request.HasField(path)]
    else:
        unset = [name for name in sent or () if name in UPDATABLE and not request.HasField(name)]
    bad = []
    for name in dict.fromkeys(unset):
        if name in CLEARABLE:
            changes[CLEARABLE[name]] = None
        elif name == "is_primary" and mask is not None:
            changes["is_primary"] = False
        else:
            bad.append(InvalidField(name, "must not be null"))
    if bad:
        raise InvalidField.of(bad)
    return changes


def contact_fields(request: Any, partial: bool) -> dict[str, Any]:
    """The store's columns from a Create (partial=False) or Update request.

    Optional fields that the request does not set are left out, so that an
    update changes only what the client sent. Every bad field is named (one
    InvalidField with a violation each).
    """
    fields: dict[str, Any] = {}
    bad: list[InvalidField] = []

    def check(column: str, parse: Any, *args: Any) -> None:
        try:
            fields[column] = parse(*args)
        except InvalidField as error:
            bad.append(error)

    for name in ("first_name", "email"):
        if not partial or request.HasField(name):
            check(name, text, getattr(request, name), name)
    for name in ("last_name", "phone", "designation"):
        if request.HasField(name):
            check(name, text, getattr(request, name), name)
    if request.HasField("company_id"):
        # Sent but empty is a malformed id, not a missing one: the field is optional.
        check("company", parse_uuid, request.company_id, "company_id", False)
    if not partial or request.HasField("is_primary"):
        fields["is_primary"] = request.is_primary
    if bad:
        raise InvalidField.of(bad)
    return fields
