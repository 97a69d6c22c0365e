"""Authentication: the call's bearer token verified once, and each RPC's declared access
enforced with the identity it gives."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from grpc_interceptor import AsyncServerInterceptor

from server import call as calls
from server.auth.tokens import ANONYMOUS, REFUSED, UNVERIFIABLE, Caller, Identity, Verifier
from server.contract import INFRASTRUCTURE_RULE, Access, Contract
from server.errors import IdentityProviderUnavailable, InvalidToken, NotAuthenticated
from server.rpc.metadata import metadata_values


def bearer_token(context: grpc.aio.ServicerContext) -> str | None:
    """The one `authorization` value sent, None if none; two are refused."""
    sent = metadata_values(context, "authorization")
    if len(sent) > 1:
        raise InvalidToken()
    return sent[0] if sent else None


async def identify(context: grpc.aio.ServicerContext, verifier: Verifier) -> Identity:
    """What the call's credentials say, verified once as the call is admitted and kept
    on the call. Awaited: a token naming a key not yet known waits for the key set."""
    call = calls.current()
    if call is not None and call.identity is not None:
        return call.identity
    try:
        sent = bearer_token(context)
        known = ANONYMOUS if sent is None else Identity(await verifier.caller(sent))
    except InvalidToken:
        known = REFUSED
    except IdentityProviderUnavailable:
        known = UNVERIFIABLE
    if call is not None:
        call.identity = known
    return known


def identity(context: grpc.aio.ServicerContext) -> Identity:
    """The call's identity, as `identify` decided it; a call not identified is refused
    if it sent a token (fail closed)."""
    call = calls.current()
    if call is not None and call.identity is not None:
        return call.identity
    try:
        return ANONYMOUS if bearer_token(context) is None else REFUSED
    except InvalidToken:
        return REFUSED


def authenticated() -> Caller:
    """The verified caller of the RPC being served; NotAuthenticated if no token was sent."""
    call = calls.current()
    known = None if call is None else call.identity
    if known is None or known.caller is None:
        raise NotAuthenticated()
    return known.caller


class AuthInterceptor(AsyncServerInterceptor):
    """Enforces the RPC's declared access with the identity the call's token gives."""

    def __init__(self, contract: Contract) -> None:
        self._contract = contract

    async def intercept(
        self, method: Callable, request: Any, context: grpc.aio.ServicerContext, method_name: str
    ) -> Any:
        rule = self._contract.rule(method_name)
        if rule is not INFRASTRUCTURE_RULE:
            who = identity(context)
            if who.unavailable:
                raise IdentityProviderUnavailable()
            if who.refused:
                raise InvalidToken()
            if who.caller is None and rule.access is Access.REQUIRED:
                raise NotAuthenticated()
        return await super().intercept(method, request, context, method_name)
