"""The interceptor chain: errors → REST paths → rate limits → auth. Each reads the proto."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import Any, NoReturn

import grpc
from grpc_interceptor import ExceptionToStatusInterceptor, ServerInterceptor
from grpc_interceptor.exceptions import GrpcException

from server.auth import Tokens, serving
from server.errors import InvalidField, InvalidToken, NotAuthenticated, RateLimited
from server.limits import Buckets
from server.policy import INFRASTRUCTURE_RULE, Access, Policies, RateClass
from server.rest import PATH_HEADER, PathBindings
from server.settings import Networks

log = logging.getLogger(__name__)


def metadata_values(context: grpc.ServicerContext, key: str) -> list[str]:
    return [str(value) for name, value in context.invocation_metadata() or () if name == key]


class _Undecodable:
    """Stands in for a request whose bytes are not a valid message."""


UNDECODABLE = _Undecodable()


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # protobuf's DecodeError, or text that is not UTF-8
            return UNDECODABLE

    return decode


class ErrorInterceptor(ExceptionToStatusInterceptor):
    """The one place domain errors become gRPC status (and REST headers, through Envoy).

    Headers go out as trailing metadata of a trailers-only reply, which Envoy
    passes to REST clients as HTTP headers. A request that cannot be decoded
    (a REST id with bytes that are not UTF-8, say) is INVALID_ARGUMENT here;
    grpcio alone would answer INTERNAL before any interceptor ran.
    """

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        def tolerant(details: Any) -> Any:
            handler = continuation(details)
            if handler is None or handler.request_deserializer is None:
                return handler
            return handler._replace(request_deserializer=_tolerant(handler.request_deserializer))

        return super().intercept_service(tolerant, handler_call_details)

    def intercept(
        self, method: Callable, request: Any, context: grpc.ServicerContext, method_name: str
    ) -> Any:
        if request is UNDECODABLE:
            error = InvalidField("request", "is not a valid message (text must be UTF-8)")
            self.handle_exception(error, None, context, method_name)
        return super().intercept(method, request, context, method_name)

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


class RestPathInterceptor(ServerInterceptor):
    """Path variables of a REST request win over query and body fields of the same name."""

    def __init__(self, bindings: PathBindings) -> None:
        self._bindings = bindings

    def intercept(
        self, method: Callable, request: Any, context: grpc.ServicerContext, method_name: str
    ) -> Any:
        sent = metadata_values(context, PATH_HEADER)
        if len(sent) == 1:
            self._bindings.bind(method_name, sent[0], request)
        return method(request, context)


def bearer_token(context: grpc.ServicerContext) -> str | None:
    """The one `authorization` value sent, None if none; two are refused."""
    sent = metadata_values(context, "authorization")
    if len(sent) > 1:
        raise InvalidToken()
    return sent[0] if sent else None


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
        authorization = bearer_token(context)
        who = self._tokens.verify(authorization) if authorization is not None else None
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

    It runs before authentication, so that calls with refused tokens are
    limited too. The caller is a valid token's `sub`, else the address Envoy
    saw, believed only from a trusted proxy, else the gRPC peer address.
    """

    def __init__(
        self,
        buckets: Buckets,
        policies: Policies,
        limits: dict[RateClass, int],
        trusted_proxies: Networks,
        tokens: Tokens,
    ) -> None:
        self._buckets = buckets
        self._policies = policies
        self._limits = limits
        self._trusted = trusted_proxies
        self._tokens = tokens

    def client(self, context: grpc.ServicerContext) -> str:
        try:
            authorization = bearer_token(context)
            if authorization is not None:
                return f"sub:{self._tokens.verify(authorization).sub}"
        except InvalidToken:
            pass  # refused later by the auth interceptor; counted by address here
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
