"""REST requests as the proto's HTTP rules declare them: path variables win.

The transcoder fills a request from the path, the query and the body, and a
query or body field named like a path variable overwrites the path's value
(`DELETE /contacts/A?contact_id=B` would delete B). Envoy passes the path it
was sent to in a header; the values bound from it are put back here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

from google.api import annotations_pb2
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message import Message

from contacts.v1 import contacts_pb2

PATH_HEADER = "x-contacts-rest-path"  # set by envoy/rest.lua, overwriting the client's


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
