"""Tokens from an OpenID Connect identity provider: signed with one of the issuer's
published keys, for this service's audience; and the choice of mode at start.

A client sends the same token with every call until it expires, so a token whose
signature and claims held is remembered with the key that checked it; a remembered
token is believed only while that key is still the issuer's (a withdrawn key stops
its tokens at the next fetch of the key set), and only until it expires.
"""

from __future__ import annotations

import time

import jwt

from server.auth.keyset import ALGORITHMS, MAX_KID_LENGTH, KeySet, Unreachable
from server.auth.tokens import Caller, Tokens, Verifier, bearer, caller_of
from server.errors import IdentityProviderUnavailable, InvalidToken
from server.settings import Settings

# CONTRACT.md: exp, nbf and iat allow 30 s of clock skew in OIDC mode (the
# provider's clock is not ours).
LEEWAY_SECONDS = 30
REMEMBERED_TOKENS = 4096


class KeyUnknown(Exception):
    """The token names a key that is not among those cached."""


class OidcTokens:
    """Verifies an identity provider's tokens against its key set."""

    def __init__(self, issuer: str, audience: str, keys: KeySet) -> None:
        self._issuer = issuer.rstrip("/")
        self._audience = audience
        self._keys = keys
        self._verified: dict[str, tuple[Caller, float, object, jwt.PyJWK]] = {}

    async def caller(self, authorization: str) -> Caller:
        try:
            return self.verify(authorization)
        except KeyUnknown:
            pass
        try:
            await self._keys.refresh()
        except Unreachable:
            raise IdentityProviderUnavailable() from None
        try:
            return self.verify(authorization)
        except KeyUnknown:  # the issuer, heard, does not list it
            raise InvalidToken() from None

    async def close(self) -> None:
        await self._keys.close()

    def verify(self, authorization: str) -> Caller:
        """The caller a token names, checked with the cached keys alone; InvalidToken, or
        KeyUnknown when the key it names is not cached."""
        token = bearer(authorization)
        now = time.time()
        known = self._verified.get(token)
        if known is not None:
            who, expires, checked_by, checked_with = known
            if expires + LEEWAY_SECONDS >= now and self._keys.find(checked_by) is checked_with:
                return who
            del self._verified[token]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken() from None
        if header.get("alg") not in ALGORITHMS:
            raise InvalidToken()
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or len(kid) > MAX_KID_LENGTH):
            raise InvalidToken()
        key = self._keys.find(kid)
        if key is None:
            if kid is None:  # without a kid only a set of one key will do
                raise InvalidToken()
            raise KeyUnknown()
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[key.algorithm_name],
                audience=self._audience,
                options={"require": ["exp", "sub", "iss", "aud"]},
                leeway=LEEWAY_SECONDS,
            )
        except jwt.PyJWTError:
            raise InvalidToken() from None
        issuer = claims["iss"]
        # The issuer exactly, a trailing slash on either side ignored (Auth0's has one).
        if not isinstance(issuer, str) or issuer.rstrip("/") != self._issuer:
            raise InvalidToken()
        who, expires = caller_of(claims, now)
        if len(self._verified) >= REMEMBERED_TOKENS:
            del self._verified[next(iter(self._verified))]  # the oldest
        self._verified[token] = (who, expires, kid, key)
        return who


def verifier_for(settings: Settings) -> Verifier:
    """The kind of token this service takes: the issuer's when one is configured, else
    the local HS256 ones. Call on the loop that will serve (the key set's timer runs there)."""
    if not settings.oidc:
        return Tokens(settings.jwt_secret)
    keys = KeySet(settings.oidc_issuer, settings.oidc_refresh_seconds)
    keys.start()
    return OidcTokens(settings.oidc_issuer, settings.oidc_audience, keys)
