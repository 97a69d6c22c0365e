"""The baseline: a bare grpcio server that answers GetContact from memory.

It is what the contacts service would cost without interceptors, validation
and a database: the same grpcio, the same thread pool size, the same service
and method name (so the same h2load body and the same Envoy config work), and
a reply of the same size. Nothing else is implemented.

    CONTACTS_GRPC_PORT=50052 python -m bench.baseline [--workers 16]

It takes its port from CONTACTS_GRPC_PORT like `python -m server serve`, so the
harness starts both the same way, and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import uuid
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bench.calls import baseline_contact
from contacts.v1 import contacts_pb2 as pb
from contacts.v1 import contacts_pb2_grpc as pb_grpc
from server.settings import Settings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ContactsService"].full_name


class Baseline(pb_grpc.ContactsServiceServicer):
    """GetContact returns one prebuilt contact, whatever the id; the rest are UNIMPLEMENTED."""

    def __init__(self, contact: pb.Contact) -> None:
        self._contact = contact

    def GetContact(
        self, request: pb.GetContactRequest, context: grpc.ServicerContext
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__)
    parser.add_argument(
        "--workers", type=int, default=Settings.threads, help="thread pool size (the server's)"
    )
    args = parser.parse_args(argv)

    server, port = build_server(int(os.environ.get("CONTACTS_GRPC_PORT", "0")), args.workers)
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
