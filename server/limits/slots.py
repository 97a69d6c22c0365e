"""Call slots: how many calls a server holds at once, and how many of them one client.

A call takes a slot when it arrives, before its request is read, and gives it
back when it ends, however it ends. A client at its share is refused at once
(its own doing: RESOURCE_EXHAUSTED), so that calls it holds open never keep
another client out; a server whose slots are all taken refuses anyone
(overload: UNAVAILABLE).
"""

from __future__ import annotations

import enum


class Refusal(enum.Enum):
    CLIENT_AT_SHARE = "client"
    SERVER_FULL = "server"


class Slots:
    """Counts of calls in flight, in all and by client (one event loop: no lock)."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self._held = 0
        self._by_client: dict[str, int] = {}

    def take(self, client: str) -> Refusal | None:
        """A slot for `client`'s call; else why not (and nothing is taken)."""
        held = self._by_client.get(client, 0)
        if held >= self.per_client:
            return Refusal.CLIENT_AT_SHARE
        if self._held >= self.total:
            return Refusal.SERVER_FULL
        self._held += 1
        self._by_client[client] = held + 1
        return None

    def give_back(self, client: str) -> None:
        self._held -= 1
        held = self._by_client[client] - 1
        if held:
            self._by_client[client] = held
        else:  # the map holds only clients with calls in flight: it stays bounded
            del self._by_client[client]

    def held(self, client: str | None = None) -> int:
        return self._held if client is None else self._by_client.get(client, 0)
