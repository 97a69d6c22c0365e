"""Bearer tokens (HS256 JWTs) and the ownership rules built on the caller they name."""

from __future__ import annotations

import functools
import time
import unicodedata
from dataclasses import dataclass
from typing import Protocol

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


ANONYMOUS = Identity(None)
REFUSED = Identity(None, refused=True)


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
    """Signs and verifies the service's bearer tokens.

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
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token or "," in token:
            raise InvalidToken()
        who, expires = self._decode(token)
        if expires + LEEWAY_SECONDS < time.time():
            raise InvalidToken()
        return who

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
        sub, expires = claims["sub"], claims["exp"]
        if not isinstance(sub, str) or not sub or len(sub) > MAX_SUB_LENGTH:
            raise InvalidToken()
        if any(unicodedata.category(c) in _REFUSED_IN_SUB for c in sub):
            raise InvalidToken()
        if not isinstance(expires, int | float) or isinstance(expires, bool):
            raise InvalidToken()
        if expires > time.time() + MAX_LIFETIME_SECONDS:
            raise InvalidToken()
        return Caller(sub=sub, is_superuser=claims.get("is_superuser") is True), float(expires)
