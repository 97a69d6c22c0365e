"""Builds the gRPC server: servicers, interceptor chain, health and reflection."""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from contacts.v1 import contacts_pb2, contacts_pb2_grpc
from server.auth import Tokens
from server.errors import StoreUnavailable
from server.interceptors import (
    AuthInterceptor,
    ErrorInterceptor,
    RateLimitInterceptor,
    RestPathInterceptor,
)
from server.limits import Buckets, MemoryBuckets, RedisBuckets
from server.policy import Policies, RateClass
from server.rest import PathBindings
from server.services import Companies, Contacts
from server.settings import Settings
from server.store import Store

log = logging.getLogger(__name__)

SERVICES = tuple(s.full_name for s in contacts_pb2.DESCRIPTOR.services_by_name.values())


@dataclass
class App:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    store: Store
    probe_interval: float = 1.0
    _stopping: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self._report(health_pb2.HealthCheckResponse.SERVING)
        self.server.start()
        threading.Thread(target=self._watch_database, name="db-probe", daemon=True).start()

    def stop(self, grace: float = 5.0) -> None:
        # NOT_SERVING first, so Envoy stops sending before the port closes.
        self._stopping.set()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()

    def _report(self, status: int) -> None:
        for name in ("", *SERVICES):
            self.health.set(name, status)

    def _watch_database(self) -> None:
        """Health follows the database: NOT_SERVING while it cannot be reached."""
        serving = True
        while not self._stopping.wait(self.probe_interval):
            try:
                self.store.ping()
                reachable = True
            except StoreUnavailable:
                reachable = False
            if reachable != serving:
                serving = reachable
                log.warning("database %s", "reachable again" if reachable else "unreachable")
                self._report(
                    health_pb2.HealthCheckResponse.SERVING
                    if reachable
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )


def create_app(
    settings: Settings,
    store: Store,
    host: str = "[::]",
    buckets: Buckets | None = None,
    reuse_port: bool = False,
) -> App:
    """The server bound to settings.grpc_port (0 picks a free port: see App.port).

    reuse_port lets several worker processes share the port (SO_REUSEPORT).
    """
    policies = Policies()
    tokens = Tokens(settings.jwt_secret)
    if buckets is None:
        buckets = RedisBuckets(settings.redis_url) if settings.redis_url else MemoryBuckets()
    limits = {
        RateClass.CREATE: settings.rate_limit_create,
        RateClass.GENERAL: settings.rate_limit_default,
    }
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="rpc"),
        interceptors=[
            ErrorInterceptor(),
            RestPathInterceptor(PathBindings()),
            RateLimitInterceptor(buckets, policies, limits, settings.trusted_proxies, tokens),
            AuthInterceptor(tokens, policies),
        ],
        # grpcio sets SO_REUSEPORT by default, which would let a stray second
        # server silently share a busy port; only workers may share it.
        options=[("grpc.so_reuseport", int(reuse_port))],
    )
    contacts_pb2_grpc.add_ContactsServiceServicer_to_server(Contacts(store), server)
    contacts_pb2_grpc.add_CompaniesServiceServicer_to_server(Companies(store), server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(f"{host}:{settings.grpc_port}")
    if port == 0:
        raise OSError(f"cannot listen on gRPC port {settings.grpc_port}")
    return App(server, port, health_servicer, store)
