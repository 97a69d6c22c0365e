"""Rate limits: one token per call from the caller's bucket of the RPC's declared class."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import grpc
from grpc_interceptor import AsyncServerInterceptor

from server import call as calls
from server.contract import Contract, RateClass
from server.errors import RateLimited
from server.limits.buckets import Buckets
from server.observability import metrics
from server.rpc.credentials import peer_names
from server.rpc.interceptors.auth import identity
from server.rpc.metadata import metadata_values
from server.settings import Networks

CLIENT_ADDRESS_HEADER = "x-contacts-client-address"  # written by Envoy (envoy.yaml.tmpl)


def peer_address(peer: str) -> str:
    """The IP of grpc's peer string: "ipv4:1.2.3.4:5678", or "ipv6:%5B::1%5D:5678" (grpc
    percent-encodes the brackets, as a URI would); another kind of peer as it is."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        host = unquote(rest).rpartition(":")[0]  # "[::1]"
        return host.removeprefix("[").removesuffix("]")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return peer


class RateLimitInterceptor(AsyncServerInterceptor):
    """Draws one token per call from the caller's bucket of the RPC's declared rate class.

    It runs before authentication, so that calls with refused tokens are
    limited too. The caller is a valid token's `sub`, else the address Envoy
    saw, believed only from a trusted proxy (on a mutual-TLS door: a client
    certificate naming Envoy), else the gRPC peer address.
    """

    def __init__(
        self,
        buckets: Buckets,
        contract: Contract,
        limits: dict[RateClass, int],
        trusted_proxies: Networks,
        proxy_name: str | None = None,
    ) -> None:
        self._buckets = buckets
        self._contract = contract
        self._limits = limits
        self._trusted = trusted_proxies
        self._refused = {rate: metrics.RATE_LIMITED.labels(rate.value) for rate in RateClass}
        self._is_trusted = functools.lru_cache(maxsize=1024)(self._trusts)
        # On a mutual-TLS door, Envoy is known by its certificate's name, not its address.
        self._proxy_name = proxy_name

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
        who = identity(context).caller
        if who is not None:
            return f"sub:{who.sub}"
        address = peer_address(context.peer() or "")
        if self._proxy_name is not None:
            believed = self._proxy_name in peer_names(context)
        else:
            believed = self._is_trusted(address)
        if believed:
            forwarded = metadata_values(context, CLIENT_ADDRESS_HEADER)
            if len(forwarded) == 1 and forwarded[0]:
                return f"ip:{forwarded[0]}"
        return f"ip:{address}"

    def _trusts(self, address: str) -> bool:
        if address.startswith("unix:"):
            # A door on a Unix socket (`run`'s, for its Envoy) is open to the
            # service's own user alone: whoever connects is that Envoy.
            return bool(self._trusted)
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)

    async def intercept(
        self, method: Callable, request: Any, context: grpc.aio.ServicerContext, method_name: str
    ) -> Any:
        rate = self._contract.rule(method_name).rate
        limit = self._limits[rate] if rate is not None else 0
        if rate is not None and limit:  # else infrastructure, or the limit is off
            verdict = await self._buckets.take(f"{rate.value}:{self.client(context)}", limit)
            if not verdict.allowed:
                self._refused[rate].inc()
                raise RateLimited(verdict.headers(), verdict.retry_after)
            call = calls.current()
            if call is not None:  # sent with the reply or the error (REST: headers)
                call.reply_with(*verdict.headers())
        return await super().intercept(method, request, context, method_name)
