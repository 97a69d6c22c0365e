"""Bearer tokens: the claims every token must hold, the local HS256 kind, and the
ownership rules built on the caller they name. Tokens from an identity provider
are verified by server/auth/oidc.py against the same claim rules."""

from __future__ import annotations

import functools
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jwt

from server.errors import InvalidToken, NotCompanyOwner, SuperuserRequired

ALGORITHM = "HS256"
# CONTRACT.md: "an exp in the past is refused". Tokens are signed and checked
# by this service alone, on one clock, so no skew needs forgiving.
LEEWAY_SECONDS = 0
MAX_SUB_LENGTH = 255  # companies.owner_id holds it
# A token that never expires is a password that cannot be changed: an exp
# further ahead than this is refused (1e300 would otherwise be accepted).
MAX_LIFETIME_SECONDS = 366 * 24 * 3600
# A sub is stored as an owner and keys a rate-limit bucket: control
# characters (NUL among them) and lone surrogates have no place there, and
# the database refuses the last two outright.
# Line separators and format characters (bidirectional overrides, zero-width
# ones) neither: a sub is written to the log, where they would forge or hide text.
_REFUSED_IN_SUB = ("Cc", "Cs", "Zl", "Zp", "Cf")


@dataclass(frozen=True)
class Caller:
    """Who is calling, as a verified token says."""

    sub: str
    is_superuser: bool = False


@dataclass(frozen=True)
class Identity:
    """What a call's credentials say: decided once per call, read by every later hop."""

    caller: Caller | None  # None: no token was sent, or it was refused
    refused: bool = False  # a token was sent and is not valid
    # A token was sent whose key could not be had: the identity provider is down.
    unavailable: bool = False


ANONYMOUS = Identity(None)
REFUSED = Identity(None, refused=True)
UNVERIFIABLE = Identity(None, refused=True, unavailable=True)

SUPERUSER_SCOPE = "contacts.admin"


class Verifier(Protocol):
    """What the auth hop needs of a kind of token."""

    async def caller(self, authorization: str) -> Caller:
        """The caller an `Authorization` value names; InvalidToken, or
        IdentityProviderUnavailable when the key to check it cannot be had."""
        ...

    async def close(self) -> None: ...


def bearer(authorization: str) -> str:
    """The token of an `Authorization: Bearer <JWT>` value; InvalidToken otherwise."""
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token or "," in token:
        raise InvalidToken()
    return token


def is_superuser(claims: Mapping[str, Any]) -> bool:
    """`is_superuser: true`, or contacts.admin among the space-separated `scope` (or
    the `scp` claim: an array at Okta, a space-separated string at Entra ID)."""
    if claims.get("is_superuser") is True:
        return True
    for name in ("scope", "scp"):
        granted = claims.get(name)
        if isinstance(granted, str):
            granted = granted.split()
        if isinstance(granted, list) and SUPERUSER_SCOPE in granted:
            return True
    return False


def caller_of(claims: Mapping[str, Any], now: float) -> tuple[Caller, float]:
    """The caller and expiry of claims whose signature held; InvalidToken if they do
    not make a usable caller (the rules of both modes)."""
    sub, expires = claims.get("sub"), claims.get("exp")
    if not isinstance(sub, str) or not sub or len(sub) > MAX_SUB_LENGTH:
        raise InvalidToken()
    if any(unicodedata.category(c) in _REFUSED_IN_SUB for c in sub):
        raise InvalidToken()
    if not isinstance(expires, int | float) or isinstance(expires, bool):
        raise InvalidToken()
    if expires > now + MAX_LIFETIME_SECONDS:
        raise InvalidToken()
    return Caller(sub=sub, is_superuser=is_superuser(claims)), float(expires)


class Owned(Protocol):
    @property
    def owner_id(self) -> str: ...


def require_owner(who: Caller, company: Owned | None) -> None:
    """A company's contacts are its owner's (and superusers'). A missing company
    is refused like a foreign one, so that ids cannot be probed."""
    if who.is_superuser:
        return
    if company is None or company.owner_id != who.sub:
        raise NotCompanyOwner()


def require_superuser(who: Caller) -> None:
    if not who.is_superuser:
        raise SuperuserRequired()


class Tokens:
    """Signs and verifies the local mode's bearer tokens (HS256, one shared secret).

    A client sends the same token with every call until it expires, so the
    signature check of a token is done once and remembered; expiry is still
    checked on every use.
    """

    def __init__(self, secret: str, remembered: int = 1024) -> None:
        self._secret = secret
        self._decode = functools.lru_cache(maxsize=remembered)(self._decode_once)

    def issue(self, sub: str, superuser: bool = False, lifetime: int = 3600) -> str:
        if not 0 < lifetime <= MAX_LIFETIME_SECONDS:
            raise ValueError(f"a token lives at most {MAX_LIFETIME_SECONDS} seconds")
        claims: dict[str, object] = {"sub": sub, "exp": int(time.time()) + lifetime}
        if superuser:
            claims["is_superuser"] = True
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, authorization: str) -> Caller:
        """The caller named by an `Authorization: Bearer <JWT>` value; InvalidToken otherwise."""
        who, expires = self._decode(bearer(authorization))
        if expires + LEEWAY_SECONDS < time.time():
            raise InvalidToken()
        return who

    async def caller(self, authorization: str) -> Caller:
        return self.verify(authorization)

    async def close(self) -> None:
        pass

    def _decode_once(self, token: str) -> tuple[Caller, float]:
        """The caller and expiry of a token whose signature and claims hold; raises otherwise
        (and a raised call is not remembered)."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={"require": ["exp", "sub"]},
                leeway=LEEWAY_SECONDS,
            )
        except jwt.PyJWTError:
            raise InvalidToken() from None
        return caller_of(claims, time.time())
