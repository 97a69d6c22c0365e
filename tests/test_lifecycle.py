"""What Kubernetes does to a server pod in a rolling update, played against real
processes with the timings of the rendered manifests (deploy/kubernetes/base, read
here, never copied): a new pod starts and the kubelet's native gRPC readiness probe
finds it ready; the old pod gets its preStop pause, then SIGTERM, drains and stops
within its termination grace, while its readiness probe fails and its liveness probe
never does. All under load through `python -m server envoy`, which finds its servers
by DNS and health-checks each: no request may fail, and no create happen twice.

Load scenarios run once, in the PostgreSQL half, as tests/test_operations.py's do.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.settings import Settings
from tests.conftest import BACKEND
from tests.harness import ENVOY_ALONE, Server, Stack, free_port, wait_for
from tests.load import CREATED_DOMAIN, Load
from tests.test_deploy import BASE, config_map, container, kustomize, one
from tests.test_operations import contacts, report, stored

pytestmark = pytest.mark.skipif(
    BACKEND != "postgresql", reason="load scenarios run once, in the PostgreSQL half"
)


@dataclass(frozen=True)
class Probe:
    """A container's gRPC probe as the manifest declares it, sent as the kubelet sends
    it: grpc.health.v1 Check of `service` on the pod's port, within timeoutSeconds;
    only SERVING is a success."""

    service: str
    period: float
    timeout: float
    failures: int  # failureThreshold
    successes: int  # successThreshold

    @classmethod
    def of(cls, spec: dict[str, Any]) -> Probe:
        return cls(
            spec["grpc"].get("service", ""),
            spec.get("periodSeconds", 10),
            spec.get("timeoutSeconds", 1),
            spec.get("failureThreshold", 3),
            spec.get("successThreshold", 1),
        )

    def passes(self, port: int) -> bool:
        target = f"127.0.0.1:{port}"
        with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=self.service), timeout=self.timeout
                )
            except grpc.RpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def until_ready(self, port: int, limit: float = 60) -> None:
        """Probes every period until successThreshold successes in a row, as the kubelet
        does before it lists a pod as ready."""
        deadline, streak = time.monotonic() + limit, 0
        while streak < self.successes:
            assert time.monotonic() < deadline, "never ready"
            streak = streak + 1 if self.passes(port) else 0
            if streak < self.successes:
                time.sleep(self.period)


@dataclass(frozen=True)
class Pod:
    """The server pod's lifecycle settings, read from the rendered Deployment."""

    readiness: Probe
    liveness: Probe
    pause: float  # preStop sleep
    grace: float  # terminationGracePeriodSeconds
    env: dict[str, str]  # the ConfigMap's settings that shape the drain

    @classmethod
    def from_manifests(cls) -> Pod:
        objects = kustomize(BASE)
        deployment = one(objects, "Deployment", "contacts-server")
        server = container(deployment, "server")
        settings = config_map(objects, "contacts-config")
        return cls(
            Probe.of(server["readinessProbe"]),
            Probe.of(server["livenessProbe"]),
            server["lifecycle"]["preStop"]["sleep"]["seconds"],
            deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
            {"CONTACTS_DRAIN_SECONDS": settings["CONTACTS_DRAIN_SECONDS"]},
        )


@pytest.fixture
def env(settings: Settings, redis_url: str) -> Iterator[dict[str, str]]:
    yield {
        "CONTACTS_DATABASE_URL": settings.database_url,
        "CONTACTS_JWT_SECRET": settings.jwt_secret,
        "CONTACTS_REDIS_URL": redis_url,  # shared buckets, as the manifests' pods have
        "CONTACTS_RATE_LIMIT_CREATE": "10000000",
        "CONTACTS_RATE_LIMIT_DEFAULT": "10000000",
    }


def test_a_rolling_update_as_kubernetes_runs_it_fails_no_request(
    env: dict[str, str], tmp_path: Path
) -> None:
    pod = Pod.from_manifests()
    env = {**env, **pod.env}
    drain = float(pod.env["CONTACTS_DRAIN_SECONDS"])
    # Two pods' doors, as the headless Service's name resolves to them (every
    # address a server of its own, looked up again and health-checked each second).
    old_door, new_door = free_port(), free_port()
    old = Server(env, tmp_path, proxy_port=old_door)
    new: Server | None = None
    pod.readiness.until_ready(old.port)
    upstreams = f"localhost:{old_door},localhost:{new_door}"
    front = Stack({**env, "CONTACTS_UPSTREAMS": upstreams}, tmp_path, 0, ENVOY_ALONE)
    try:
        paths = contacts(front.url)
        with Load(front.url, paths, getters=4, creators=2) as load:
            load.wait_for_more(200)
            # maxSurge 1, maxUnavailable 0: the new pod first, until the kubelet finds it ready.
            new = Server(env, tmp_path, proxy_port=new_door)
            pod.readiness.until_ready(new.port)
            load.wait_for_more(200)

            # The old pod is deleted: preStop first (still serving), then SIGTERM.
            time.sleep(pod.pause)
            sigterm = time.monotonic()
            old.process.send_signal(signal.SIGTERM)
            # Draining: readiness fails (failureThreshold probes before the port
            # closes), liveness never does.
            wait_for(lambda: not pod.readiness.passes(old.port), drain, "readiness to fail")
            assert pod.liveness.passes(old.port), "liveness would restart a draining server"
            assert pod.readiness.failures * pod.readiness.period <= drain
            load.wait_for_more(200)
            old.process.wait(timeout=pod.grace)
            stopped = time.monotonic() - sigterm
            load.wait_for_more(300)
    finally:
        front.stop()
        old.stop()
        if new is not None:
            new.stop()
    report(
        f"a rolling update: preStop {pod.pause:g} s, drain {drain:g} s, stopped "
        f"{stopped:.1f} s after SIGTERM",
        load,
    )
    # Within the grace the kubelet gives after the pause, with no SIGKILL.
    assert old.process.returncode == 0
    assert pod.pause + stopped < pod.grace
    assert stopped >= drain  # it served through the whole drain
    assert load.failed("get") == []
    assert load.failed("create") == []
    emails = [o.email for o in load.of("create") if o.email]
    rows = stored(env["CONTACTS_DATABASE_URL"], emails)
    assert all(count == 1 for count in rows.values()), "a create was made twice"
    assert all(email.endswith(CREATED_DOMAIN) for email in rows)
    assert len(rows) == len(emails), "an answered create was lost"
