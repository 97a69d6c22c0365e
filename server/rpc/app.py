"""Builds the gRPC server (grpc.aio): servicers, interceptor chain, health and reflection."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import logging
import threading
from typing import TYPE_CHECKING

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from contacts.v1 import contacts_pb2, contacts_pb2_grpc
from server.auth.oidc import verifier_for
from server.auth.tokens import Verifier
from server.contract import Contract, RateClass
from server.data.keys import Keys
from server.data.offload import Offload
from server.data.store import Store
from server.errors import StoreUnavailable
from server.limits.buckets import Buckets, MemoryBuckets, RedisBuckets
from server.limits.slots import Slots
from server.observability import metrics
from server.rpc import reflection
from server.rpc.credentials import server_credentials
from server.rpc.interceptors.admission import AdmissionInterceptor
from server.rpc.interceptors.auth import AuthInterceptor, identify
from server.rpc.interceptors.errors import ErrorInterceptor
from server.rpc.interceptors.idempotency import IdempotencyInterceptor
from server.rpc.interceptors.limits import RateLimitInterceptor
from server.rpc.interceptors.observe import CallInterceptor
from server.rpc.interceptors.rest import RestInterceptor
from server.rpc.paging import PageTokens
from server.rpc.services import Companies, Contacts
from server.settings import Settings

if TYPE_CHECKING:
    from server.observability.traces import Tracing

log = logging.getLogger(__name__)

MAX_STREAMS_PER_CONNECTION = 128
MAX_REQUEST_BYTES = 1 << 20  # a gRPC message; no request of ours comes near it
MAX_METADATA_BYTES = 16 << 10

SERVICES = tuple(s.full_name for s in contacts_pb2.DESCRIPTOR.services_by_name.values())
# A grpc.health.v1 service name that says SERVING while this process answers at
# all, draining or not, database or not: what a liveness probe (Kubernetes')
# asks, so that it restarts a wedged server and never one that is merely
# draining or waiting for its database. "" and SERVICES say whether to send
# calls here (readiness).
LIVENESS = "liveness"


class App:
    """The gRPC server on an event loop (uvloop's) in a thread of its own.

    uvloop's loop, for less CPU per call than asyncio's own (docs/performance.md).

    `start()` returns once the server listens (App.port is then the bound
    port) and `stop()` once it has finished; callers need not be async.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        host: str = "[::]",
        buckets: Buckets | None = None,
        reuse_port: bool = False,
        probe_interval: float = 1.0,
        proxy_host: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.host = host
        self.proxy_host = host if proxy_host is None else proxy_host
        self.buckets = buckets
        self.reuse_port = reuse_port
        self.probe_interval = probe_interval
        self.port = 0
        self.proxy_port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._finished: asyncio.Event | None = None
        self._draining = False
        # OpenTelemetry, only with an endpoint: unset, its packages are not even loaded.
        self.tracing: Tracing | None = None
        if settings.otel_endpoint:
            from server.observability.traces import Tracing

            self.tracing = Tracing(settings)

    def start(self) -> None:
        ready: concurrent.futures.Future[tuple[int, int]] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=lambda: uvloop.run(self._serve(ready)), name="grpc-loop", daemon=True
        )
        self._thread.start()
        self.port, self.proxy_port = ready.result()

    def drain(self) -> None:
        """Health says NOT_SERVING from now on (whatever the database probe finds), and
        calls are still served: an Envoy that health-checks this server (`python -m
        server envoy`) sees it and sends elsewhere."""
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._drain(), self._loop).result()

    def stop(self, grace: float = 5.0) -> None:
        """Stops accepting calls, gives those in flight `grace` seconds, and returns
        when the server is gone."""
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(grace), self._loop).result()
        self._thread.join()

    async def _serve(self, ready: concurrent.futures.Future[tuple[int, int]]) -> None:
        self._loop = asyncio.get_running_loop()
        self._finished = asyncio.Event()
        try:
            offload = await self._offload()
            buckets = buckets_for(self.settings) if self.buckets is None else self.buckets
            # One per process: its key set (OIDC) is fetched once for both doors.
            verifier = verifier_for(self.settings)
            settings = self.settings
            credentials = server_credentials(settings, settings.tls_client_ca)
            # Envoy's door on a port (`serve`, for an Envoy on another host): mutual TLS,
            # and the client address believed from a certificate naming Envoy. `run`'s
            # doors are Unix sockets only the service's user can open.
            proxy_tls = (
                server_credentials(settings, settings.proxy_ca)
                if settings.proxy_ca and not self.proxy_host.startswith("unix:")
                else None
            )
            health_servicer = health_aio.HealthServicer()
            # Two doors to the same service: the gRPC port, where no peer may
            # speak for another client, and Envoy's, where trusted proxies may.
            servers = []
            proxy_name = settings.tls_proxy_name if proxy_tls is not None else None
            for host, port, trusted, secured, envoy_name, envoy_door in (
                (self.host, settings.grpc_port, (), credentials, None, False),
                (
                    self.proxy_host,
                    settings.proxy_port,
                    settings.trusted_proxies,
                    proxy_tls,
                    proxy_name,
                    True,
                ),
            ):
                servers.append(
                    build_server(
                        dataclasses.replace(self.settings, grpc_port=port, trusted_proxies=trusted),
                        self.store,
                        offload,
                        host,
                        buckets,
                        # A port the kernel picks (0) is this process's alone.
                        self.reuse_port and port != 0,
                        health_servicer,
                        verifier,
                        secured,
                        envoy_name,
                        metered=bool(self.settings.metrics_port),
                        envoy_door=envoy_door,
                        tracing=self.tracing,
                    )
                )
            if self.settings.health_port:
                servers.append(self._health_only(health_servicer))
            await self._report(health_servicer, health_pb2.HealthCheckResponse.SERVING)
            await health_servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
            for server, _ in servers:
                await server.start()
        except BaseException as error:
            ready.set_exception(error)
            return
        self._servers, self._health = [server for server, _ in servers], health_servicer
        ready.set_result((servers[0][1], servers[1][1]))
        probe = asyncio.create_task(self._watch_database(offload))
        await self._finished.wait()
        probe.cancel()
        await offload.close()
        await buckets.close()
        await verifier.close()
        if self.tracing is not None:  # the last spans, sent before the process goes
            await asyncio.to_thread(self.tracing.shutdown)

    def _health_only(
        self, health_servicer: health_aio.HealthServicer
    ) -> tuple[grpc.aio.Server, int]:
        """grpc.health.v1 alone, in plaintext, for probes that cannot speak TLS (the
        kubelet's): it tells whether the server serves, and nothing else."""
        server = grpc.aio.server(options=[("grpc.so_reuseport", int(self.reuse_port))])
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        address = f"{self.host}:{self.settings.health_port}"
        port = server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        return server, port

    async def _drain(self) -> None:
        """NOT_SERVING for good (the database probe no longer changes it), except
        LIVENESS: the process still answers."""
        self._draining = True
        await self._report(self._health, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def _offload(self) -> Offload:
        """The way to the database; with tracing on, one that makes spans of it."""
        threads, url = self.settings.threads, self.settings.database_url
        if self.tracing is None:
            return await Offload.open(self.store, threads, url)
        from server.data.traced import TracedOffload

        return await TracedOffload.open_traced(self.store, threads, url, self.tracing)

    async def _shutdown(self, grace: float) -> None:
        # NOT_SERVING first, so Envoy stops sending before the port closes.
        await self._drain()
        await asyncio.gather(*(server.stop(grace) for server in self._servers))
        assert self._finished is not None
        self._finished.set()

    async def _report(self, health_servicer: health_aio.HealthServicer, status: int) -> None:
        serving = status == health_pb2.HealthCheckResponse.SERVING
        for name in ("", *SERVICES):
            if serving and self._draining:  # a probe's report that a drain overtook
                return
            await health_servicer.set(name, status)
        metrics.HEALTH_SERVING.set(serving)

    async def _watch_database(self, offload: Offload) -> None:
        """Health follows the database: NOT_SERVING while it cannot be reached."""
        serving = True
        while True:
            await asyncio.sleep(self.probe_interval)
            try:
                await offload.ping()
                reachable, cause = True, None
            except StoreUnavailable as error:
                reachable, cause = False, error.__cause__ or error
                metrics.DATABASE_ERRORS.inc()
            except Exception as error:
                # Whatever went wrong, the probe goes on: health must keep
                # following the database.
                log.exception("the database probe failed")
                reachable, cause = False, error
            metrics.DATABASE_CONNECTIONS_IN_USE.set(self.store.connections_in_use())
            if reachable != serving and not self._draining:
                serving = reachable
                if reachable:
                    log.warning("database reachable again")
                else:
                    log.error("database unreachable: %s", " ".join(str(cause).split()))
                await self._report(
                    self._health,
                    health_pb2.HealthCheckResponse.SERVING
                    if reachable
                    else health_pb2.HealthCheckResponse.NOT_SERVING,
                )


def buckets_for(settings: Settings) -> Buckets:
    return RedisBuckets(settings.redis_url) if settings.redis_url else MemoryBuckets()


def build_server(
    settings: Settings,
    store: Store,
    offload: Offload,
    host: str,
    buckets: Buckets,
    reuse_port: bool,
    health_servicer: health_aio.HealthServicer,
    verifier: Verifier,
    credentials: grpc.ServerCredentials | None = None,
    proxy_name: str | None = None,
    metered: bool = False,
    envoy_door: bool = False,
    tracing: Tracing | None = None,
) -> tuple[grpc.aio.Server, int]:
    """The server bound to settings.grpc_port (0 picks a free port), not yet started.

    reuse_port lets several worker processes share the port (SO_REUSEPORT).
    The client-address header is believed from settings.trusted_proxies only, or with
    proxy_name, from a client certificate naming it alone. With credentials the port
    speaks TLS only. REST calls (the headers rest.lua adds) only on Envoy's door.
    """
    contract = Contract()
    limits = {
        RateClass.CREATE: settings.rate_limit_create,
        RateClass.GENERAL: settings.rate_limit_default,
    }
    limiter = RateLimitInterceptor(buckets, contract, limits, settings.trusted_proxies, proxy_name)
    # This port's call slots (Envoy's door has its own).
    slots = Slots(settings.max_calls, settings.max_calls_per_client)
    server = grpc.aio.server(
        # A call's way in, outermost first; each hop knows only the next.
        interceptors=[
            AdmissionInterceptor(
                settings.read_timeout,
                slots,
                limiter.client,
                settings.stream_idle,
                functools.partial(identify, verifier=verifier),
            ),
            CallInterceptor(limiter.client, metered, contract, tracing),
            ErrorInterceptor(),
            limiter,  # every call counts, whatever becomes of it
            RestInterceptor(contract, envoy_door),
            AuthInterceptor(contract),
            # Keys belong to the client the limiter counts (token sub, else address).
            IdempotencyInterceptor(Keys(store), offload, limiter.client, contract),
        ],
        # The slots above bound calls per client; grpc's own count, which
        # refuses anyone past it, only bounds the refusals in flight.
        maximum_concurrent_rpcs=2 * settings.max_calls,
        options=[
            # grpcio sets SO_REUSEPORT by default, which would let a stray second
            # server silently share a busy port; only workers may share it.
            ("grpc.so_reuseport", int(reuse_port)),
            ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
            ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
            # Whatever Envoy lets through (8 KiB of headers, a path copied
            # into two more) must fit, or gRPC core refuses the call itself.
            ("grpc.max_metadata_size", MAX_METADATA_BYTES),
        ],
    )
    contacts_pb2_grpc.add_ContactsServiceServicer_to_server(
        Contacts(store, offload, PageTokens(settings.page_token_key)), server
    )
    contacts_pb2_grpc.add_CompaniesServiceServicer_to_server(Companies(store, offload), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable((*SERVICES, health.SERVICE_NAME), server)
    # A Unix socket ("unix:/path": `run`'s door for its Envoy), or a host's port.
    address = host if host.startswith("unix:") else f"{host}:{settings.grpc_port}"
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return server, port


def create_app(
    settings: Settings,
    store: Store,
    host: str = "[::]",
    buckets: Buckets | None = None,
    reuse_port: bool = False,
    proxy_host: str | None = None,
) -> App:
    """The service, ready to start(); settings.grpc_port 0 picks a free port (see App.port),
    as settings.proxy_port 0 does for Envoy's door (App.proxy_port), on proxy_host if given."""
    return App(settings, store, host, buckets, reuse_port, proxy_host=proxy_host)
