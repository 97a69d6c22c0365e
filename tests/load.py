"""A load of real REST clients, for tests that break things while it runs.

Threads, each with its own keep-alive session, send requests one after the
other until stopped, and every request is kept with what came of it: a
status, or the exception the client got. Tests wait for progress (so many
more requests done), never for time.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from typing import Any

import requests

from tests.harness import wait_for

CREATED_DOMAIN = "load.example"  # every create's email: <its own uuid>@CREATED_DOMAIN


@dataclass(frozen=True)
class Outcome:
    kind: str  # "get" or "create"
    status: int | None  # None: no reply at all
    error: str | None = None
    email: str | None = None  # a create's, unique to it

    @property
    def ok(self) -> bool:
        return self.status == (201 if self.kind == "create" else 200)


class Load:
    """`getters` threads GETting `paths` round-robin and `creators` threads creating
    contacts, against `url`, from entering the context until leaving it."""

    def __init__(
        self,
        url: str,
        paths: list[str],
        getters: int = 4,
        creators: int = 0,
        keyed: bool = True,
    ) -> None:
        self.url = url
        self.keyed = keyed
        self.paths = paths
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._get, args=(n,), daemon=True) for n in range(getters)
        ] + [threading.Thread(target=self._create, daemon=True) for _ in range(creators)]

    def _session(self) -> requests.Session:
        session = requests.Session()
        session.trust_env = False  # loopback only
        return session

    def _record(self, kind: str, send: Any, email: str | None = None) -> None:
        try:
            outcome = Outcome(kind, send().status_code, email=email)
        except requests.RequestException as error:
            outcome = Outcome(kind, None, f"{type(error).__name__}: {error}", email)
        self.outcomes.append(outcome)  # list.append is atomic

    def _get(self, offset: int) -> None:
        with self._session() as session:
            n = offset
            while not self._stop.is_set():
                url = self.url + self.paths[n % len(self.paths)]
                self._record("get", lambda url=url: session.get(url, timeout=30))
                n += 1

    def _create(self) -> None:
        with self._session() as session:
            while not self._stop.is_set():
                email = f"{uuid.uuid4().hex}@{CREATED_DOMAIN}"
                fields = {"first_name": "Load", "email": email}
                url = f"{self.url}/contacts"
                # As clients are told to: a key per create makes it safe for
                # Envoy to send again when a stopping server cancels it.
                key = {"Idempotency-Key": str(uuid.uuid4())} if self.keyed else {}
                send = lambda url=url, fields=fields, key=key: session.post(  # noqa: E731
                    url, json=fields, headers=key, timeout=30
                )
                self._record("create", send, email)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def done(self) -> int:
        return len(self.outcomes)

    def wait_for_more(self, count: int, timeout: float = 120) -> None:
        """Until `count` more requests have been answered (or failed) than now."""
        target = self.done() + count
        wait_for(lambda: self.done() >= target, timeout, f"{count} more requests")

    def of(self, kind: str) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.kind == kind]

    def failed(self, kind: str) -> list[Outcome]:
        return [outcome for outcome in self.of(kind) if not outcome.ok]

    def summary(self) -> str:
        return "; ".join(
            f"{kind}: {len(self.of(kind))} sent, {len(self.failed(kind))} failed"
            for kind in ("get", "create")
            if self.of(kind)
        )
