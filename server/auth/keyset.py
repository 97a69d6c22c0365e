"""The identity provider's signing keys: found by OpenID Connect discovery, fetched on a
thread (never on the event loop), cached, and fetched again on a timer and when a token
names a key not yet known.

Two kinds of failed fetch are told apart, because a caller sees the difference: an
issuer that cannot be reached (no connection, a timeout, an HTTP error) leaves the
service unable to judge a token signed with a key it has not seen (503); an issuer
that answers with something unusable (not JSON, too large, another issuer's document)
has been heard, and has published no key for that token (401). Either way the keys
cached before stay in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

import jwt

from server.settings import SettingsError, check_identity_url

log = logging.getLogger(__name__)

# The only signatures accepted: never `none`, never HS256 (whose "secret" would be a
# public key anyone can read), never one this list does not name.
ALGORITHMS = ("RS256", "ES256", "EdDSA")
FETCH_TIMEOUT = 5.0  # seconds for one document, connecting and reading alike
# A discovery document or key set is a few KiB (Google's, Entra ID's); more is not one.
MAX_DOCUMENT_BYTES = 256 << 10
# A token naming an unknown key fetches the key set again at most this often, so that
# random `kid`s cannot make the service hammer the issuer (CONTRACT.md: 10 s).
REFETCH_COOLDOWN = 10.0
MAX_KID_LENGTH = 256
DISCOVERY_PATH = "/.well-known/openid-configuration"


class Unreachable(Exception):
    """The issuer could not be reached, or answered with an HTTP error."""


class Unusable(Exception):
    """The issuer answered, with something that is not a usable document."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A redirect could lead from https to http, or off to another host: the
    # documents are read where discovery says they are, nowhere else.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirects)


def _download(url: str) -> Any:
    """The JSON document at url, read whole within FETCH_TIMEOUT and MAX_DOCUMENT_BYTES
    (blocking: run on a thread)."""
    deadline = time.monotonic() + FETCH_TIMEOUT
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with _opener.open(request, timeout=FETCH_TIMEOUT) as response:
            body = bytearray()
            # Read in pieces, each within the time left: a server that trickles
            # cannot hold the fetch past its deadline.
            while chunk := response.read1(64 << 10):  # what one receive brings
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise Unusable(f"{url}: larger than {MAX_DOCUMENT_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise Unreachable(f"{url}: not read within {FETCH_TIMEOUT:g} s")
    except urllib.error.HTTPError as error:
        raise Unreachable(f"{url}: HTTP {error.code}") from None
    except (OSError, ValueError, http.client.HTTPException) as error:
        # refused, reset, timed out, cut short, a bad URL
        raise Unreachable(f"{url}: {error}") from None
    try:
        return json.loads(body)
    except ValueError:
        raise Unusable(f"{url}: not JSON") from None


def _keys_of(document: Any) -> tuple[jwt.PyJWK, ...]:
    """The signing keys of a JWKS document that this service can use; others skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise Unusable("the key set has no `keys` list")
    usable = []
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") == "oct":  # a shared secret has no place in a public set
            continue
        kid = entry.get("kid")
        if kid is not None and (not isinstance(kid, str) or len(kid) > MAX_KID_LENGTH):
            continue
        try:
            key = jwt.PyJWK(entry)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue  # an unknown key type or curve, or a malformed key
        if key.algorithm_name in ALGORITHMS:
            usable.append(key)
    return tuple(usable)


class KeySet:
    """The issuer's current keys. `find` is a dictionary lookup on the loop; `refresh`
    and the timer fetch on a thread and swap the whole set at once."""

    def __init__(self, issuer: str, refresh_every: float) -> None:
        self.issuer = issuer.rstrip("/")
        self._refresh_every = refresh_every
        self._by_kid: Mapping[str, jwt.PyJWK] = {}
        self._all: tuple[jwt.PyJWK, ...] = ()
        # When a token's unknown kid last made it fetch: the cooldown counts from there
        # (the timer's fetches are not a caller's doing, and do not delay one).
        self._attempted = -REFETCH_COOLDOWN
        self._reachable = False  # whether the last fetch heard the issuer
        self._fetching: asyncio.Task[None] | None = None
        self._timer: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Fetches the keys now, in the background, and on the timer after: the service
        starts whether or not the issuer can be reached."""
        self._timer = asyncio.get_running_loop().create_task(self._refresh_on_timer())

    async def close(self) -> None:
        for task in (self._timer, self._fetching):
            if task is not None:
                task.cancel()

    def find(self, kid: object) -> jwt.PyJWK | None:
        """The key a token's `kid` names (None: not among those cached). A token without
        one may use the only key of a set of one; otherwise it names no key at all."""
        if kid is None:
            return self._all[0] if len(self._all) == 1 else None
        return self._by_kid.get(kid) if isinstance(kid, str) else None

    async def refresh(self) -> None:
        """Fetches the keys again for a token whose key is not cached, at most once per
        REFETCH_COOLDOWN; Unreachable if the issuer could not be heard, now or, within the
        cooldown, the last time."""
        if self._fetching is None:
            if time.monotonic() - self._attempted < REFETCH_COOLDOWN:
                if not self._reachable:
                    raise Unreachable("the issuer was not reachable at the last fetch")
                return
            self._attempted = time.monotonic()
            self._begin_fetch()
        assert self._fetching is not None
        # Every call waiting for keys shares the one fetch; one that gives up leaves
        # it running for the others. A fetch is bounded in time, and so is the wait.
        try:
            async with asyncio.timeout(3 * FETCH_TIMEOUT):
                await asyncio.shield(self._fetching)
        except TimeoutError:
            raise Unreachable("the key set was not fetched in time") from None
        except Unusable:
            pass  # heard, and nothing new published: the cached keys are the answer

    def _begin_fetch(self) -> asyncio.Task[None]:
        task = self._fetching = asyncio.get_running_loop().create_task(self._fetch())
        # Its failure is logged by the fetch and told to whoever waits; none may.
        task.add_done_callback(lambda done: done.cancelled() or done.exception())
        return task

    async def _refresh_on_timer(self) -> None:
        while True:
            fetching = self._fetching or self._begin_fetch()
            # A failure is logged by the fetch; the cached keys stay.
            with contextlib.suppress(Unreachable, Unusable):
                await asyncio.shield(fetching)
            await asyncio.sleep(self._refresh_every)

    async def _fetch(self) -> None:
        try:
            keys = await asyncio.to_thread(self._read)
        except Unreachable as error:
            self._reachable = False
            log.error("identity provider unreachable, cached keys kept: %s", error)
            raise
        except Unusable as error:
            self._reachable = True
            log.error("identity provider answered unusably, cached keys kept: %s", error)
            raise
        finally:
            self._fetching = None
        self._reachable = True
        named = [key.key_id or "(no kid)" for key in keys]
        if named != [key.key_id or "(no kid)" for key in self._all]:
            log.info("identity provider keys now: %s", ", ".join(named) or "none")
        self._all = keys
        self._by_kid = {key.key_id: key for key in keys if key.key_id is not None}

    def _read(self) -> tuple[jwt.PyJWK, ...]:
        """Discovery, then the key set it names (blocking: run on a thread)."""
        discovery = _download(self.issuer + DISCOVERY_PATH)
        if not isinstance(discovery, dict):
            raise Unusable("the discovery document is not an object")
        # OpenID Connect Discovery 1.0, 4.3: the issuer must be the one asked.
        issuer = discovery.get("issuer")
        if not isinstance(issuer, str) or issuer.rstrip("/") != self.issuer:
            raise Unusable(f"the discovery document names another issuer: {issuer!r:.200}")
        jwks_uri = discovery.get("jwks_uri")
        try:
            check_identity_url("jwks_uri", jwks_uri if isinstance(jwks_uri, str) else "")
        except SettingsError as error:
            raise Unusable(str(error)) from None
        assert isinstance(jwks_uri, str)
        return _keys_of(_download(jwks_uri))
