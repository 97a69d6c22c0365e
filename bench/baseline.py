"""The baseline: a bare grpcio server that answers GetContact from memory.

It is what the service would cost without interceptors, validation and a
database: the same grpcio, the same service and method name (so the same
h2load body and the same Envoy config work), and a reply of the same size.
Nothing else is implemented. The baseline the targets divide by is the sync
server with the 16 threads the service had before it moved to grpc.aio;
`--aio` serves the same on a grpc.aio server and uvloop, as the service now
runs: the most an aio server can do here, printed beside the targets.

    CONTACTS_GRPC_PORT=50052 python -m bench.baseline [--workers 16] [--aio]

It takes its port from CONTACTS_GRPC_PORT like `python -m server serve`, so the
harness starts both the same way, and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
import uuid
from concurrent import futures

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from bench.calls import baseline_contact
from contacts.v1 import contacts_pb2 as pb
from contacts.v1 import contacts_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ContactsService"].full_name


class Baseline(pb_grpc.ContactsServiceServicer):
    """GetContact returns one prebuilt contact, whatever the id; the rest are UNIMPLEMENTED."""

    def __init__(self, contact: pb.Contact) -> None:
        self._contact = contact

    def GetContact(
        self, request: pb.GetContactRequest, context: grpc.ServicerContext
    ) -> pb.Contact:
        return self._contact


class AioBaseline(pb_grpc.ContactsServiceServicer):
    def __init__(self, contact: pb.Contact) -> None:
        self._contact = contact

    async def GetContact(
        self, request: pb.GetContactRequest, context: grpc.aio.ServicerContext
    ) -> pb.Contact:
        return self._contact


def build_server(port: int, workers: int) -> tuple[grpc.Server, int]:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rpc"),
        # The same channel option as the real server, so that only the work differs.
        options=[("grpc.so_reuseport", 0)],
    )
    pb_grpc.add_ContactsServiceServicer_to_server(
        Baseline(baseline_contact(str(uuid.uuid4()))), server
    )
    # Envoy's cluster health-checks the upstream; without this it would be
    # marked unhealthy and Envoy would route to it only in panic mode.
    checks = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    for name in ("", SERVICE_NAME):
        checks.set(name, health_pb2.HealthCheckResponse.SERVING)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on port {port}")
    return server, bound


async def serve_aio(port: int) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_ContactsServiceServicer_to_server(
        AioBaseline(baseline_contact(str(uuid.uuid4()))), server
    )
    checks = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    for name in ("", SERVICE_NAME):
        await checks.set(name, health_pb2.HealthCheckResponse.SERVING)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"serving gRPC on :{bound}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__)
    parser.add_argument("--workers", type=int, default=16, help="thread pool size (default 16)")
    parser.add_argument("--aio", action="store_true", help="a grpc.aio server on uvloop")
    args = parser.parse_args(argv)
    port = int(os.environ.get("CONTACTS_GRPC_PORT", "0"))
    if args.aio:
        uvloop.run(serve_aio(port))
        return 0

    server, port = build_server(port, args.workers)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    print(f"serving gRPC on :{port}", file=sys.stderr, flush=True)
    stop.wait()
    server.stop(1).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
