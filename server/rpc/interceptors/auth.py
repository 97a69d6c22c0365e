"""Authentication: the call's bearer token verified once, and each RPC's declared access
enforced with the identity it gives."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from grpc_interceptor import AsyncServerInterceptor

from server import call as calls
from server.auth.tokens import ANONYMOUS, REFUSED, Caller, Identity, Tokens
from server.contract import INFRASTRUCTURE_RULE, Access, Contract
from server.errors import InvalidToken, NotAuthenticated
from server.rpc.metadata import metadata_values


def bearer_token(context: grpc.aio.ServicerContext) -> str | None:
    """The one `authorization` value sent, None if none; two are refused."""
    sent = metadata_values(context, "authorization")
    if len(sent) > 1:
        raise InvalidToken()
    return sent[0] if sent else None


def identity(context: grpc.aio.ServicerContext, tokens: Tokens) -> Identity:
    """What the call's credentials say, verified on first use and kept on the call."""
    call = calls.current()
    if call is not None and call.identity is not None:
        return call.identity
    try:
        sent = bearer_token(context)
        known = ANONYMOUS if sent is None else Identity(tokens.verify(sent))
    except InvalidToken:
        known = REFUSED
    if call is not None:
        call.identity = known
    return known


def authenticated() -> Caller:
    """The verified caller of the RPC being served; NotAuthenticated if no token was sent."""
    call = calls.current()
    known = None if call is None else call.identity
    if known is None or known.caller is None:
        raise NotAuthenticated()
    return known.caller


class AuthInterceptor(AsyncServerInterceptor):
    """Enforces the RPC's declared access with the identity the call's token gives."""

    def __init__(self, tokens: Tokens, contract: Contract) -> None:
        self._tokens = tokens
        self._contract = contract

    async def intercept(
        self, method: Callable, request: Any, context: grpc.aio.ServicerContext, method_name: str
    ) -> Any:
        rule = self._contract.rule(method_name)
        if rule is not INFRASTRUCTURE_RULE:
            who = identity(context, self._tokens)
            if who.refused:
                raise InvalidToken()
            if who.caller is None and rule.access is Access.REQUIRED:
                raise NotAuthenticated()
        return await super().intercept(method, request, context, method_name)
