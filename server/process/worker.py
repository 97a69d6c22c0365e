"""One server process under the supervisor (`serve --worker`): serves on the shared
gRPC port and on Envoy's door, tells the supervisor when it is serving (and
where Envoy's door is), dies with it, and stops gracefully.

Envoy's door is CONTACTS_PROXY_PORT, shared by every worker, for an Envoy
elsewhere (`serve`); or (`run`) a Unix socket of this worker's own, which the
supervisor lists for its Envoy while the worker serves. Only the service's
user may open that socket (its directory is the user's alone), so no other
local process can pass for Envoy there and name another client's address.

Stopping (SIGTERM or SIGINT): health turns NOT_SERVING while calls are still
served for CONTACTS_DRAIN_SECONDS, long enough for Envoy to send new calls
elsewhere (an Envoy elsewhere sees it by health checks; `run`'s Envoy, in a
rolling restart, was told before the SIGTERM, and in a full stop has nowhere
else to send); then the server stops accepting, gives the calls in flight
STOP_GRACE_SECONDS to finish, and the process exits 0. A worker whose
supervisor is gone skips the drain: nobody is steering traffic around it, and
its ports must come free for the next run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time

from server.data.store import Store
from server.process import lifeline
from server.process.signals import Signals
from server.rpc.app import create_app
from server.settings import STOP_GRACE_SECONDS, Settings

log = logging.getLogger(__name__)


def serve(settings: Settings, parent: int, ready_fd: int, proxy_socket: str | None) -> int:
    # Caught first: a SIGTERM from now on is a graceful stop, even one that
    # comes while the server is starting (it is acted on once started).
    signals = Signals(signal.SIGTERM, signal.SIGINT)
    lifeline.die_with(parent, signal.SIGTERM)
    events = bool(settings.nats_url)
    store = Store.open(settings.database_url, max_connections=settings.threads, events=events)
    if proxy_socket is not None:  # one a crashed worker of the same pid left
        with contextlib.suppress(FileNotFoundError):
            os.unlink(proxy_socket)
    app = create_app(
        settings,
        store,
        reuse_port=True,
        proxy_host=None if proxy_socket is None else f"unix:{proxy_socket}",
    )
    app.start()
    relay = None
    if events:
        # Only here: the relay imports NATS's client, which a server without events never loads.
        from server.events.relay import Relay

        relay = Relay.for_store(settings, store)
        relay.start()
    with contextlib.suppress(BrokenPipeError):  # the supervisor is gone: SIGTERM is on its way
        os.write(ready_fd, (proxy_socket or str(app.proxy_port)).encode())
    os.close(ready_fd)
    came: list[signal.Signals] = []
    while not came:
        came, _ = signals.wait(None)
    orphaned = os.getppid() != parent
    drain = 0.0 if orphaned else settings.drain_seconds
    log.info(
        "worker %d: %s; NOT_SERVING, draining for %g s",
        os.getpid(),
        "the supervisor is gone" if orphaned else came[0].name,
        drain,
    )
    app.drain()
    deadline = time.monotonic() + drain
    while (left := deadline - time.monotonic()) > 0:
        signals.wait(left)  # a second signal changes nothing: the stop is under way
    app.stop(STOP_GRACE_SECONDS)
    if relay is not None:
        relay.stop()
    store.close()
    log.info("worker %d: stopped", os.getpid())
    return 0
