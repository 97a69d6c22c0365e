"""The interceptor chain: errors → auth → rate limits. Each reads RPC policy from the proto."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import Any, NoReturn

import grpc
from grpc_interceptor import ExceptionToStatusInterceptor, ServerInterceptor
from grpc_interceptor.exceptions import GrpcException

from server.auth import Tokens, caller, serving
from server.errors import InvalidToken, NotAuthenticated, RateLimited
from server.limits import Buckets
from server.policy import INFRASTRUCTURE_RULE, Access, Policies, RateClass
from server.settings import Networks

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


CLIENT_ADDRESS_HEADER = "x-contacts-client-address"  # written by Envoy (envoy.yaml.tmpl)


def peer_address(context: grpc.ServicerContext) -> str:
    """The peer's IP from grpc's "ipv4:1.2.3.4:5678" / "ipv6:[::1]:5678"."""
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rpartition("]")[0].lstrip("[")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return peer


class RateLimitInterceptor(ServerInterceptor):
    """Draws one token per call from the caller's bucket of the RPC's declared rate class.

    The caller is the token's `sub`, else the address Envoy saw, believed
    only from a trusted proxy, else the gRPC peer address.
    """

    def __init__(
        self,
        buckets: Buckets,
        policies: Policies,
        limits: dict[RateClass, int],
        trusted_proxies: Networks,
    ) -> None:
        self._buckets = buckets
        self._policies = policies
        self._limits = limits
        self._trusted = trusted_proxies

    def client(self, context: grpc.ServicerContext) -> str:
        who = caller()
        if who is not None:
            return f"sub:{who.sub}"
        address = peer_address(context)
        if self._is_trusted(address):
            forwarded = metadata_values(context, CLIENT_ADDRESS_HEADER)
            if len(forwarded) == 1 and forwarded[0]:
                return f"ip:{forwarded[0]}"
        return f"ip:{address}"

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)

    def intercept(
        self, method: Callable, request: Any, context: grpc.ServicerContext, method_name: str
    ) -> Any:
        rate = self._policies[method_name].rate
        limit = self._limits[rate] if rate is not None else 0
        if rate is None or not limit:  # infrastructure, or the limit is off
            return method(request, context)
        verdict = self._buckets.take(f"{rate.value}:{self.client(context)}", limit)
        if not verdict.allowed:
            raise RateLimited(verdict.headers())
        try:
            response = method(request, context)
        except GrpcException as error:
            error.headers = (*getattr(error, "headers", ()), *verdict.headers())  # type: ignore[attr-defined]
            raise
        # Initial metadata, which Envoy turns into REST response headers.
        context.send_initial_metadata(verdict.headers())
        return response
