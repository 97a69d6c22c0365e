"""REST calls as the proto declares them (see server/rest.py): the path matches its
route's template exactly, path variables win, and a reply says its REST kind.

The transcoder matches a path more loosely than its template (`/contacts/X/`
reaches GetContact), and fills a request from the path, the query and the
body, where a query or body field named like a path variable overwrites the
path's value (`DELETE /contacts/A/?contact_id=B` would delete B). So the path
Envoy was sent (rest.lua passes it on) is matched against the template here,
and its values are put back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote, urlencode

import grpc
from google.protobuf import json_format
from grpc_interceptor import AsyncServerInterceptor

from server import call as calls
from server.contract import CREATED, Contract
from server.errors import PathNotFound
from server.rest import (
    LINK_HEADER,
    LOCATION_HEADER,
    NEXT_PAGE_FIELD,
    PAGE_TOKEN_FIELD,
    PATH_HEADER,
    REPLY_HEADER,
    SKIP_FIELD,
)
from server.rpc.interceptors.admission import Unread
from server.rpc.metadata import metadata_values


class RestInterceptor(AsyncServerInterceptor):
    """For a call through Envoy's REST door (envoy/rest.lua.tmpl names its path): refuses a
    path its route's template does not match exactly, puts the path's variables back into
    the request, and tells rest.lua the reply's kind.

    It also refuses a request that could not be read (reading.Unread), after the
    rate limiter has counted it: every call draws from its client's bucket."""

    def __init__(self, contract: Contract, envoy_door: bool = True) -> None:
        self._contract = contract
        # REST reaches a server through Envoy's door alone: on the gRPC port,
        # a client's own x-contacts-* headers are not believed (nor answered).
        self._envoy_door = envoy_door

    async def intercept(
        self, method: Callable, request: Any, context: grpc.aio.ServicerContext, method_name: str
    ) -> Any:
        if isinstance(request, Unread):
            raise request.error
        sent = metadata_values(context, PATH_HEADER) if self._envoy_door else []
        declared = self._contract.get(method_name)
        if not sent or declared is None:
            return await super().intercept(method, request, context, method_name)
        template = declared.path_template
        found = template.fullmatch(sent[0]) if template is not None and len(sent) == 1 else None
        if found is None:
            raise PathNotFound()
        for name, value in found.groupdict().items():
            setattr(request, name, unquote(value))
        call = calls.current()
        if call is not None:
            call.rest_path = sent[0]
        response = await super().intercept(method, request, context, method_name)
        if declared.reply_kind is not None and call is not None:
            call.reply_with((REPLY_HEADER, declared.reply_kind))
            if declared.reply_kind == CREATED:
                # The new resource sits under the collection it was posted to.
                call.reply_with((LOCATION_HEADER, f"{sent[0]}/{response.id}"))
            next_page = getattr(response, NEXT_PAGE_FIELD, "")
            if next_page:
                link = next_page_link(sent[0], request, set(found.groupdict()), next_page)
                call.reply_with((LINK_HEADER, link))
        return response


def next_page_link(path: str, request: Any, in_path: set[str], token: str) -> str:
    """The Link header of a list's next page: the same query, as REST spells it, with
    the page token (RFC 8288)."""
    query = {
        name: value
        for name, value in json_format.MessageToDict(
            request, preserving_proto_field_name=True
        ).items()
        if name not in in_path
        and name not in (PAGE_TOKEN_FIELD, SKIP_FIELD)
        and not isinstance(value, dict)
    }
    query[PAGE_TOKEN_FIELD] = token
    pairs = [
        (name, str(value).lower() if isinstance(value, bool) else value)
        for name, value in query.items()
    ]
    return f'<{path}?{urlencode(pairs, doseq=True, quote_via=quote)}>; rel="next"'
