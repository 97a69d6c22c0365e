"""REST requests as the proto's HTTP rules and `(rest)` options declare them.

Path variables win: the transcoder fills a request from the path, the query and the body, and a
query or body field named like a path variable overwrites the path's value
(`DELETE /contacts/A?contact_id=B` would delete B). Envoy passes the path it
was sent to in a header; the values bound from it are put back here.

What a REST reply looks like is the RPC's business, declared in the proto:
the server tells envoy/rest.lua in response metadata (REPLY_HEADER: created,
no-content or list, from `(rest).reply`; STATUS_HEADER: the HTTP status of
an error whose gRPC code the transcoder maps to another, from the `Failure`'s
`(failure).status`). The Lua filter needs no table of its own, and cannot
disagree with the RPC that actually answered.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

from google.api import annotations_pb2
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message import Message

from contacts.options.v1 import options_pb2
from contacts.v1 import contacts_pb2

PATH_HEADER = "x-contacts-rest-path"  # set by envoy/rest.lua, overwriting the client's
# The top-level JSON fields a REST body sent, nulls included (the transcoder
# drops nulls); set by envoy/rest.lua, overwriting the client's.
FIELDS_HEADER = "x-contacts-fields"
REPLY_HEADER = "x-contacts-reply"  # read (and removed) by envoy/rest.lua
STATUS_HEADER = "x-contacts-status"  # read (and removed) by envoy/rest.lua

_REPLY_KINDS = {
    options_pb2.REPLY_CREATED: "created",
    options_pb2.REPLY_NO_CONTENT: "no-content",
    options_pb2.REPLY_LIST: "list",
}


def _methods(files: Iterable[FileDescriptor]) -> Iterable[tuple[str, Any]]:
    for file in files:
        for service in file.services_by_name.values():
            for method in service.methods:
                yield f"/{service.full_name}/{method.name}", method


def http_status(failure: int) -> int:
    """The HTTP status the proto gives a `Failure` value."""
    value = options_pb2.Failure.DESCRIPTOR.values_by_number[failure]
    return int(value.GetOptions().Extensions[options_pb2.failure].status)


class Replies:
    """The REST reply kind of every RPC whose `(rest).reply` is not a plain 200."""

    def __init__(self, files: Iterable[FileDescriptor] = (contacts_pb2.DESCRIPTOR,)) -> None:
        self._kinds: dict[str, str] = {}
        for path, method in _methods(files):
            kind = _REPLY_KINDS.get(method.GetOptions().Extensions[options_pb2.rest].reply)
            if kind is not None:
                self._kinds[path] = kind

    def metadata(self, method_path: str) -> tuple[tuple[str, str], ...]:
        kind = self._kinds.get(method_path)
        return () if kind is None else ((REPLY_HEADER, kind),)


def _template(path: str) -> re.Pattern[str]:
    """ "/contacts/{contact_id}" -> a pattern with a named group per variable."""
    return re.compile(re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(path)))


class PathBindings:
    """The path template of every RPC whose HTTP rule has variables."""

    def __init__(self, files: Iterable[FileDescriptor] = (contacts_pb2.DESCRIPTOR,)) -> None:
        self._templates: dict[str, re.Pattern[str]] = {}
        for file in files:
            for service in file.services_by_name.values():
                for method in service.methods:
                    rule = method.GetOptions().Extensions[annotations_pb2.http]
                    kind = rule.WhichOneof("pattern")
                    path = getattr(rule, kind) if kind and kind != "custom" else ""
                    if "{" in path:
                        self._templates[f"/{service.full_name}/{method.name}"] = _template(path)

    def bind(self, method_path: str, rest_path: str, request: Message) -> None:
        """Sets the request's path-variable fields to the values in the REST path."""
        template = self._templates.get(method_path)
        found = template.fullmatch(rest_path) if template else None
        if found is None:
            return
        for name, value in found.groupdict().items():
            setattr(request, name, unquote(value))
