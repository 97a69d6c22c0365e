"""The interceptor chain: errors → auth (→ rate limits). Each reads RPC policy from the proto."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NoReturn

import grpc
from grpc_interceptor import ExceptionToStatusInterceptor, ServerInterceptor
from grpc_interceptor.exceptions import GrpcException

from server.auth import Tokens, serving
from server.errors import InvalidToken, NotAuthenticated
from server.policy import INFRASTRUCTURE_RULE, Access, Policies

log = logging.getLogger(__name__)


def metadata_values(context: grpc.ServicerContext, key: str) -> list[str]:
    return [str(value) for name, value in context.invocation_metadata() or () if name == key]


class ErrorInterceptor(ExceptionToStatusInterceptor):
    """The one place domain errors become gRPC status (and REST headers, through Envoy).

    Headers go out as trailing metadata of a trailers-only reply, which Envoy
    passes to REST clients as HTTP headers.
    """

    def handle_exception(
        self,
        ex: Exception,
        request_or_iterator: Any,
        context: grpc.ServicerContext,
        method_name: str,
    ) -> NoReturn:
        if isinstance(ex, GrpcException):
            headers = getattr(ex, "headers", ())
            if headers:
                context.set_trailing_metadata(headers)
            context.abort(ex.status_code, ex.details)
        if not context.code():  # not already aborted further in
            log.exception("unexpected error in %s", method_name)
            context.abort(grpc.StatusCode.INTERNAL, "Internal server error")
        raise ex


class AuthInterceptor(ServerInterceptor):
    """Verifies the bearer token, enforces the RPC's declared access, binds the caller."""

    def __init__(self, tokens: Tokens, policies: Policies) -> None:
        self._tokens = tokens
        self._policies = policies

    def intercept(
        self, method: Callable, request: Any, context: grpc.ServicerContext, method_name: str
    ) -> Any:
        rule = self._policies[method_name]
        if rule is INFRASTRUCTURE_RULE:
            return method(request, context)
        sent = metadata_values(context, "authorization")
        if len(sent) > 1:
            raise InvalidToken()
        who = self._tokens.verify(sent[0]) if sent else None
        if who is None and rule.access is Access.REQUIRED:
            raise NotAuthenticated()
        with serving(who):
            return method(request, context)
