"""The interceptor chain after server.calls: errors → REST paths → rate limits → auth. Each reads
the proto."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple, NoReturn

import grpc
from grpc_interceptor import AsyncServerInterceptor
from grpc_interceptor.exceptions import GrpcException

from server import deadlines, reply
from server.auth.tokens import Identity, Tokens, identify
from server.errors import (
    InternalError,
    InvalidField,
    InvalidToken,
    NotAuthenticated,
    RateLimited,
    RequestNotReceived,
    StoreUnavailable,
)
from server.limits.buckets import Buckets
from server.observability import metrics
from server.rpc.contract import INFRASTRUCTURE_RULE, Access, Policies, RateClass
from server.rpc.interceptors import observe as calls
from server.rpc.rest import PATH_HEADER, STATUS_HEADER, PathBindings, Replies, http_status
from server.rpc.status import status_of
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
UNDECODABLE_PROBLEM = "is not a valid message (text must be UTF-8)"


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


class ErrorInterceptor(AsyncServerInterceptor):
    """The one place domain errors become gRPC status (and REST headers, through Envoy).

    An error's status carries google.rpc details (server/status.py). The
    call's reply metadata (server/reply.py) goes out once, as trailing
    metadata, which REST clients get as HTTP headers. A REST call also
    learns its reply kind, or its error's HTTP status, from the proto
    (server/rest.py). It records the call's deadline for the store
    (server/deadlines.py). Every error it sends carries CLIENT_DETAIL, which tells
    Envoy the message is ours to show. A request that cannot be decoded
    (a REST id with bytes that are not UTF-8, say) is INVALID_ARGUMENT here;
    grpcio alone would answer INTERNAL before any interceptor ran.

    It also bounds how long a call may take to send its request: grpc would
    wait for a unary call's message for ever, and a client that opens calls
    and never finishes them would hold them open. So a unary method is served
    as a client-streaming one whose single message is read with a deadline.
    """

    def __init__(self, read_timeout: float, replies: Replies | None = None) -> None:
        self._read_timeout = read_timeout
        self._replies = Replies() if replies is None else replies
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
                await self._abort(RequestNotReceived(self._read_timeout), context)
            if request is grpc.aio.EOF:
                request = UNDECODABLE
            return await self.intercept(behaviour, request, context, method_name)

        return grpc.stream_unary_rpc_method_handler(
            read_then_serve,
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    async def _wrap_other(self, handler: Any, method_name: str) -> Any:
        # Streams (health Watch, reflection) decode tolerantly too: grpc would log
        # a traceback for every undecodable message a client sends.
        if handler is not None:
            handler = handler._replace(request_deserializer=_tolerant(handler.request_deserializer))

        async def same(_: Any) -> Any:
            return handler

        return await super().intercept_service(same, _CallDetails(method_name))

    async def intercept(
        self, method: Callable, request: Any, context: grpc.aio.ServicerContext, method_name: str
    ) -> Any:
        reply.begin()
        deadlines.begin(context.time_remaining())
        try:
            if request is UNDECODABLE:
                raise InvalidField("request", UNDECODABLE_PROBLEM)
            if hasattr(request, "__aiter__"):
                request = _decoded(request, context)
            response = await proceed(method, request, context)
        except GrpcException as error:
            await self._abort(error, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as error:
            log.exception("unexpected error in %s", method_name)
            internal = InternalError()
            internal.__cause__ = error
            await self._abort(internal, context)
        metadata = reply.gathered()
        if _is_rest(context):
            metadata += self._replies.metadata(method_name)  # rest.lua reads the kind
        if metadata:
            # With the status, in the reply's one batch (rest.lua makes REST
            # headers of it). Initial metadata would go in a batch of its own:
            # ~15 % of a GetContact, and a worker killed between the two leaves
            # Envoy a reply begun, which it cannot send elsewhere.
            context.set_trailing_metadata((*(context.trailing_metadata() or ()), *metadata))
        return response

    async def _abort(self, error: GrpcException, context: grpc.aio.ServicerContext) -> NoReturn:
        if isinstance(error, StoreUnavailable):
            metrics.DATABASE_ERRORS.inc()
        if error.status_code in calls.SERVER_FAULTS:  # named on the call's log line
            calls.note_cause(error.__cause__ or error)
        # After what is there already (the request id).
        metadata = (
            *(context.trailing_metadata() or ()),
            *reply.gathered(),
            *getattr(error, "headers", ()),
            CLIENT_DETAIL,
        )
        failure = getattr(error, "failure", None)
        if failure is not None and _is_rest(context):
            # A code the transcoder maps to another status (412, 422): say which.
            metadata += ((STATUS_HEADER, str(http_status(failure))),)
        await context.abort_with_status(status_of(error, metadata))
        raise AssertionError("abort returned")  # pragma: no cover


def _is_rest(context: grpc.aio.ServicerContext) -> bool:
    """A call through Envoy's REST door (envoy/rest.lua names its path)."""
    return bool(metadata_values(context, PATH_HEADER))


async def _decoded(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
    """A request stream that ends the call with INVALID_ARGUMENT at an undecodable message."""
    async for request in requests:
        if request is UNDECODABLE:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request: {UNDECODABLE_PROBLEM}")
        yield request


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
        self._refused = {rate: metrics.RATE_LIMITED.labels(rate.value) for rate in RateClass}
        self._is_trusted = functools.lru_cache(maxsize=1024)(self._trusts)

    def client(self, context: grpc.aio.ServicerContext) -> str:
        """The call's client key, decided once per call (the call's log line names it)."""
        call = calls.current()
        if call is not None and call.client is not None:
            return call.client
        key = self._client(context)
        if call is not None:
            call.client = key
        return key

    def _client(self, context: grpc.aio.ServicerContext) -> str:
        who = identity(context, self._tokens).caller
        if who is not None:
            return f"sub:{who.sub}"
        address = peer_address(context)
        if self._is_trusted(address):
            forwarded = metadata_values(context, CLIENT_ADDRESS_HEADER)
            if len(forwarded) == 1 and forwarded[0]:
                return f"ip:{forwarded[0]}"
        return f"ip:{address}"

    def _trusts(self, address: str) -> bool:
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
            self._refused[rate].inc()
            raise RateLimited(verdict.headers(), verdict.retry_after)
        # Sent with the reply or the error (Envoy makes them REST response headers).
        reply.add(*verdict.headers())
        return await proceed(method, request, context)
