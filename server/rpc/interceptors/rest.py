"""REST calls as the proto declares them (see server/rpc/rest.py): path variables win,
and a reply says its REST kind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import grpc
from grpc_interceptor import AsyncServerInterceptor

from server import call as calls
from server.contract import Contract
from server.rest import PATH_HEADER, REPLY_HEADER
from server.rpc.metadata import metadata_values


class RestInterceptor(AsyncServerInterceptor):
    """For a call through Envoy's REST door (envoy/rest.lua names its path): puts the
    path's variables back into the request, and tells rest.lua the reply's kind."""

    def __init__(self, contract: Contract) -> None:
        self._contract = contract

    async def intercept(
        self, method: Callable, request: Any, context: grpc.aio.ServicerContext, method_name: str
    ) -> Any:
        sent = metadata_values(context, PATH_HEADER)
        declared = self._contract.get(method_name)
        if len(sent) != 1 or declared is None:
            return await super().intercept(method, request, context, method_name)
        template = declared.path_template
        found = template.fullmatch(sent[0]) if template is not None else None
        if found is not None:
            for name, value in found.groupdict().items():
                setattr(request, name, unquote(value))
        response = await super().intercept(method, request, context, method_name)
        if declared.reply_kind is not None:
            call = calls.current()
            if call is not None:
                call.reply_with((REPLY_HEADER, declared.reply_kind))
        return response
