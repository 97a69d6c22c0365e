"""The interceptor chain: errors → REST paths → rate limits → auth. Each reads the proto."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from typing import Any, NamedTuple, NoReturn

import grpc
from grpc_interceptor import AsyncServerInterceptor
from grpc_interceptor.exceptions import GrpcException

from server.auth import Identity, Tokens, identify
from server.errors import InvalidField, InvalidToken, NotAuthenticated, RateLimited
from server.limits import Buckets
from server.policy import INFRASTRUCTURE_RULE, Access, Policies, RateClass
from server.rest import PATH_HEADER, PathBindings
from server.settings import Networks

log = logging.getLogger(__name__)


def metadata_values(context: grpc.aio.ServicerContext, key: str) -> list[str]:
    return [str(value) for name, value in context.invocation_metadata() or () if name == key]


async def proceed(method: Callable, request: Any, context: grpc.aio.ServicerContext) -> Any:
    """The next hop's reply: awaited when unary, passed on when a stream (health Watch,
    reflection), which grpc_interceptor then iterates."""
    reply = method(request, context)
    return reply if hasattr(reply, "__aiter__") else await reply


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


class _CallDetails(NamedTuple):
    method: str


# Marks an error reply whose message was written for clients (Envoy's Lua
# filter passes only those on as the REST detail, never gRPC core's own).
CLIENT_DETAIL = ("x-contacts-detail", "1")
# The codes REST clients see as 5xx: each such reply's cause goes to the log.
SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


class ErrorInterceptor(AsyncServerInterceptor):
    """The one place domain errors become gRPC status (and REST headers, through Envoy).

    Headers go out as trailing metadata of a trailers-only reply, which Envoy
    passes to REST clients as HTTP headers; so does CLIENT_DETAIL, which tells
    Envoy the message is ours to show. A request that cannot be decoded
    (a REST id with bytes that are not UTF-8, say) is INVALID_ARGUMENT here;
    grpcio alone would answer INTERNAL before any interceptor ran.

    It also bounds how long a call may take to send its request: grpc would
    wait for a unary call's message for ever, and a client that opens calls
    and never finishes them would hold them open. So a unary method is served
    as a client-streaming one whose single message is read with a deadline.
    """

    def __init__(self, read_timeout: float) -> None:
        self._read_timeout = read_timeout
        self._chains: dict[str, Any] = {}

    async def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        # grpc.aio runs every interceptor's intercept_service on every call; the
        # chain a method gets never changes, so it is built on its first call.
        # (Only methods that exist are remembered: the map stays bounded.)
        method_name = handler_call_details.method
        chain = self._chains.get(method_name)
        if chain is None:
            chain = await self._chain(await continuation(handler_call_details), method_name)
            if chain is not None:
                self._chains[method_name] = chain
        return chain

    async def _chain(self, handler: Any, method_name: str) -> Any:
        if handler is None or handler.unary_unary is None:
            return await self._wrap_other(handler, method_name)
        behaviour = handler.unary_unary

        async def read_then_serve(_: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async with asyncio.timeout(self._read_timeout):
                    request = await context.read()
            except TimeoutError:
                await context.abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"The request was not received within {self._read_timeout:g} s",
                    (CLIENT_DETAIL,),
                )
            if request is grpc.aio.EOF:
                request = UNDECODABLE
            return await self.intercept(behaviour, request, context, method_name)

        return grpc.stream_unary_rpc_method_handler(
            read_then_serve,
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    async def _wrap_other(self, handler: Any, method_name: str) -> Any:
        async def same(_: Any) -> Any:
            return handler

        return await super().intercept_service(same, _CallDetails(method_name))

    async def intercept(
        self, method: Callable, request: Any, context: grpc.aio.ServicerContext, method_name: str
    ) -> Any:
        try:
            if request is UNDECODABLE:
                raise InvalidField("request", "is not a valid message (text must be UTF-8)")
            return await proceed(method, request, context)
        except GrpcException as error:
            await self._abort(error, context, method_name)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("unexpected error in %s", method_name)
            await context.abort(grpc.StatusCode.INTERNAL, "Internal server error", (CLIENT_DETAIL,))

    async def _abort(
        self, error: GrpcException, context: grpc.aio.ServicerContext, method_name: str
    ) -> NoReturn:
        if error.status_code in SERVER_FAULTS:
            cause = error.__cause__ or error
            log.warning(
                "%s answered %s: %s: %s",
                method_name,
                error.status_code.name,
                type(cause).__name__,
                " ".join(str(cause).split()),
            )
        context.set_trailing_metadata((*getattr(error, "headers", ()), CLIENT_DETAIL))
        await context.abort(error.status_code, error.details)
        raise AssertionError("abort returned")  # pragma: no cover


class RestPathInterceptor(AsyncServerInterceptor):
    """Path variables of a REST request win over query and body fields of the same name."""

    def __init__(self, bindings: PathBindings) -> None:
        self._bindings = bindings

    async def intercept(
        self, method: Callable, request: Any, context: grpc.aio.ServicerContext, method_name: str
    ) -> Any:
        sent = metadata_values(context, PATH_HEADER)
        if len(sent) == 1:
            self._bindings.bind(method_name, sent[0], request)
        return await proceed(method, request, context)


def bearer_token(context: grpc.aio.ServicerContext) -> str | None:
    """The one `authorization` value sent, None if none; two are refused."""
    sent = metadata_values(context, "authorization")
    if len(sent) > 1:
        raise InvalidToken()
    return sent[0] if sent else None


def identity(context: grpc.aio.ServicerContext, tokens: Tokens) -> Identity:
    return identify(lambda: bearer_token(context), tokens)


class AuthInterceptor(AsyncServerInterceptor):
    """Enforces the RPC's declared access with the identity the call's token gives."""

    def __init__(self, tokens: Tokens, policies: Policies) -> None:
        self._tokens = tokens
        self._policies = policies

    async def intercept(
        self, method: Callable, request: Any, context: grpc.aio.ServicerContext, method_name: str
    ) -> Any:
        rule = self._policies[method_name]
        if rule is not INFRASTRUCTURE_RULE:
            who = identity(context, self._tokens)
            if who.refused:
                raise InvalidToken()
            if who.caller is None and rule.access is Access.REQUIRED:
                raise NotAuthenticated()
        return await proceed(method, request, context)


CLIENT_ADDRESS_HEADER = "x-contacts-client-address"  # written by Envoy (envoy.yaml.tmpl)


def peer_address(context: grpc.aio.ServicerContext) -> str:
    """The peer's IP from grpc's "ipv4:1.2.3.4:5678" / "ipv6:[::1]:5678"."""
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rpartition("]")[0].lstrip("[")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return peer


class RateLimitInterceptor(AsyncServerInterceptor):
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

    def client(self, context: grpc.aio.ServicerContext) -> str:
        who = identity(context, self._tokens).caller
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

    async def intercept(
        self, method: Callable, request: Any, context: grpc.aio.ServicerContext, method_name: str
    ) -> Any:
        rate = self._policies[method_name].rate
        limit = self._limits[rate] if rate is not None else 0
        if rate is None or not limit:  # infrastructure, or the limit is off
            return await proceed(method, request, context)
        verdict = await self._buckets.take(f"{rate.value}:{self.client(context)}", limit)
        if not verdict.allowed:
            raise RateLimited(verdict.headers())
        try:
            response = await proceed(method, request, context)
        except GrpcException as error:
            error.headers = (*getattr(error, "headers", ()), *verdict.headers())  # type: ignore[attr-defined]
            raise
        # Initial metadata, which Envoy turns into REST response headers.
        await context.send_initial_metadata(verdict.headers())
        return response
