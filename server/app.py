"""Builds the gRPC server: servicers, interceptor chain, health and reflection."""

from __future__ import annotations

from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from contacts.v1 import contacts_pb2, contacts_pb2_grpc
from server.auth import Tokens
from server.interceptors import AuthInterceptor, ErrorInterceptor, RateLimitInterceptor
from server.limits import Buckets, MemoryBuckets, RedisBuckets
from server.policy import Policies, RateClass
from server.services import Companies, Contacts
from server.settings import Settings
from server.store import Store

SERVICES = tuple(s.full_name for s in contacts_pb2.DESCRIPTOR.services_by_name.values())


@dataclass
class App:
    server: grpc.Server
    port: int
    health: health.HealthServicer

    def start(self) -> None:
        self.server.start()
        for name in ("", *SERVICES):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float = 5.0) -> None:
        # NOT_SERVING first, so Envoy stops sending before the port closes.
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


def create_app(
    settings: Settings, store: Store, host: str = "[::]", buckets: Buckets | None = None
) -> App:
    """The server bound to settings.grpc_port (0 picks a free port: see App.port)."""
    policies = Policies()
    if buckets is None:
        buckets = RedisBuckets(settings.redis_url) if settings.redis_url else MemoryBuckets()
    limits = {
        RateClass.CREATE: settings.rate_limit_create,
        RateClass.GENERAL: settings.rate_limit_default,
    }
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="rpc"),
        interceptors=[
            ErrorInterceptor(),
            AuthInterceptor(Tokens(settings.jwt_secret), policies),
            RateLimitInterceptor(buckets, policies, limits, settings.trusted_proxies),
        ],
        # grpcio sets SO_REUSEPORT by default, which would let a second server
        # silently share a busy port; fail loudly instead.
        options=[("grpc.so_reuseport", 0)],
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
    return App(server, port, health_servicer)
