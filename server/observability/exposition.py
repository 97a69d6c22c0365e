"""GET /metrics: the page prometheus_client makes (generate_latest), with the sums of the
worker processes' files (MultiProcessCollector), served from one thread running an
asyncio loop.

A connection costs a coroutine, not a thread, and is dropped once it has taken
READ_SECONDS to send its request (or as long to read the answer), or sends more
than MAX_HEAD_BYTES of it: clients that send half a request (or nothing) hold no
thread and do not stay. A scrape is answered and the connection closed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from pathlib import Path
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

log = logging.getLogger(__name__)

READ_SECONDS = 5.0  # a scraper sends its request at once; Prometheus times out at 10 s
MAX_HEAD_BYTES = 8192  # a request's line and headers
MAX_CONNECTIONS = 256  # past it, a new connection is closed at once (file descriptors)
PATH = "/metrics"


def _reply(status: str, content_type: str, body: bytes, head_only: bool = False) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + (b"" if head_only else body)


def _plain(status: str, text: str) -> bytes:
    return _reply(status, "text/plain; charset=utf-8", text.encode())


class Exposition:
    """The metrics page on `host`:`port` (0 picks a free port: see `port`), served from a
    thread of its own until stop()."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.registry = registry
        self.port = 0
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._loop = asyncio.new_event_loop()
        self._stopped: asyncio.Event | None = None
        ready: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._loop.run_until_complete,
            args=(self._serve(host, port, ready),),
            name="metrics",
            daemon=True,
        )
        self._thread.start()
        try:
            self.port = ready.result()
        except OSError as error:
            self._thread.join()
            self._loop.close()
            raise OSError(f"cannot serve metrics on port {port}: {error.strerror}") from None

    async def _serve(self, host: str, port: int, ready: concurrent.futures.Future[int]) -> None:
        self._stopped = asyncio.Event()
        try:
            server = await asyncio.start_server(
                self._connected, host, port, limit=MAX_HEAD_BYTES, reuse_address=True
            )
        except OSError as error:
            ready.set_exception(error)
            return
        ready.set_result(server.sockets[0].getsockname()[1])
        await self._stopped.wait()
        server.close()
        for writer in self._connections.values():
            writer.transport.abort()  # its reads end, and its task with them
        await asyncio.gather(*self._connections, return_exceptions=True)
        await asyncio.sleep(0)  # a turn of the loop, which closes the sockets aborted

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            if len(self._connections) <= MAX_CONNECTIONS:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_SECONDS)
                writer.write(self._answer(head))
                writer.close()  # once the answer is sent
                await asyncio.wait_for(writer.wait_closed(), READ_SECONDS)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # too slow, cut short or too long: dropped
        except Exception:
            log.exception("cannot answer a metrics request")
        finally:
            writer.transport.abort()  # what a client did not read in time is dropped
            del self._connections[task]

    def _answer(self, head: bytes) -> bytes:
        method, _, rest = head.partition(b"\r\n")[0].decode("latin-1").partition(" ")
        target = rest.rpartition(" ")[0]
        if urlsplit(target).path != PATH:
            return _plain("404 Not Found", f"Not Found: metrics are at {PATH}\n")
        if method not in ("GET", "HEAD"):
            return _plain("405 Method Not Allowed", "Method Not Allowed\n")
        page = generate_latest(self.registry)
        return _reply("200 OK", CONTENT_TYPE_LATEST, page, head_only=method == "HEAD")

    def stop(self) -> None:
        if self._stopped is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join()
        self._loop.close()


def serve(host: str, port: int, multiprocess_dir: Path | None = None) -> Exposition:
    """GET /metrics on `host`:`port` (404 elsewhere); stop with `.stop()`.

    With `multiprocess_dir`, the sums of the worker processes writing there;
    otherwise this process's figures (and its process_* and python_* metrics).
    """
    registry: CollectorRegistry = REGISTRY
    if multiprocess_dir is not None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(multiprocess_dir))
    return Exposition(registry, host, port)
