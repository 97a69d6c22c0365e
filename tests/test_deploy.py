"""What can be checked of the deployment without a cluster or a container daemon:
the kustomize base and overlay build and validate (strict schemas of Kubernetes
1.37, offline), the rendered objects keep the probe, drain, Envoy and security
settings the service needs, Envoy's ConfigMap is what `envoy-config` renders
today, and the Dockerfile is hadolint-clean, copies files that exist and starts
commands that exist."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.process import endpoints, stack
from server.process.supervisor import ENVOY_STOP_SECONDS, STOP_MARGIN_SECONDS
from server.rpc.app import LIVENESS
from server.settings import PROJECT_ROOT, STOP_GRACE_SECONDS, Settings
from tests.conftest import database_independent
from tests.harness import tool

pytestmark = database_independent

KUBERNETES = PROJECT_ROOT / "deploy" / "kubernetes"
BASE = KUBERNETES / "base"
OVERLAYS = [KUBERNETES / "overlays" / "example", KUBERNETES / "overlays" / "example-tls"]
TLS = KUBERNETES / "components" / "tls"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"
IMAGE_ROOT = Path("/app")  # where the Dockerfile puts the project
RENDER_SECRET = "a-secret-for-rendering-only-never-used-to-sign"


def kustomize(directory: Path) -> list[dict[str, Any]]:
    built = subprocess.run(
        [tool("kubectl"), "kustomize", str(directory)], check=True, capture_output=True, text=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(built) if doc]


@pytest.fixture(scope="module", params=[BASE, *OVERLAYS], ids=lambda path: path.name)
def objects(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return kustomize(request.param)


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name)]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def config_map(objects: list[dict[str, Any]], name: str) -> dict[str, str]:
    # Generated ConfigMaps carry a hash suffix: contacts-config-<hash>.
    found = [
        o
        for o in objects
        if o["kind"] == "ConfigMap" and re.fullmatch(f"{name}-[a-z0-9]+", o["metadata"]["name"])
    ]
    assert len(found) == 1, name
    return dict(found[0]["data"])


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name
    ]
    return dict(found)


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for o in objects:
        if o["kind"] in ("Deployment", "Job"):
            yield f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"]


def env_file(path: Path) -> dict[str, str]:
    """A kustomize `envs:` file: NAME=value lines, # comments."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


# Building and validating


@pytest.mark.parametrize("directory", [BASE, *OVERLAYS], ids=lambda path: path.name)
def test_kubernetes_validate_strict_accepts_it(directory: Path, tmp_path: Path) -> None:
    built = tmp_path / "built.yaml"
    built.write_text(yaml.safe_dump_all(kustomize(directory)))
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--quiet", str(built)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_strict_validation_refuses_an_unknown_field(tmp_path: Path) -> None:
    """So that a passing run means something: a misspelt field is caught offline."""
    server = one(kustomize(BASE), "Deployment", "contacts-server")
    container(server, "server")  # exists
    server["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcc"] = {}
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump(server))
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--quiet", str(wrong)],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0


# The servers: probes, drain, settings


def test_readiness_asks_overall_health_and_liveness_asks_liveness(
    objects: list[dict[str, Any]],
) -> None:
    """Readiness turns NOT_SERVING on drain and database outages (health ""); liveness
    asks the name that stays SERVING then (tests/test_lifecycle.py shows both)."""
    deployment = one(objects, "Deployment", "contacts-server")
    server = container(deployment, "server")
    settings = config_map(objects, "contacts-config")
    grpc_port = int(settings["CONTACTS_GRPC_PORT"])
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports["grpc"] == grpc_port
    # The kubelet speaks no TLS: with TLS on (its certificates mounted), the probes
    # ask the plaintext health port the settings name.
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    tls = any(v.get("secret", {}).get("secretName") == "contacts-tls" for v in volumes)
    port = ports["health"] if tls else grpc_port
    if tls:
        assert str(port) in settings.values()
    readiness, liveness, startup = (
        server["readinessProbe"],
        server["livenessProbe"],
        server["startupProbe"],
    )
    assert readiness["grpc"]["port"] == port
    assert readiness["grpc"].get("service", "") == ""
    for probe in (liveness, startup):
        assert probe["grpc"] == {"port": port, "service": LIVENESS}
    # A restart only after half a minute of silence, never on one slow answer.
    assert liveness["failureThreshold"] * liveness["periodSeconds"] >= 30


def test_termination_grace_outlasts_pause_drain_and_stop(objects: list[dict[str, Any]]) -> None:
    deployment = one(objects, "Deployment", "contacts-server")
    pod = deployment["spec"]["template"]["spec"]
    server = container(deployment, "server")
    pause = server["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = int(config_map(objects, "contacts-config")["CONTACTS_DRAIN_SECONDS"])
    assert pause >= 2, "endpoints and kube-proxy need a moment to stop sending here"
    assert pod["terminationGracePeriodSeconds"] > (
        pause + drain + STOP_GRACE_SECONDS + STOP_MARGIN_SECONDS
    )
    # Envoy's health checks see a drain before the port closes.
    (check,) = render_settings_envoy_health_checks()
    seen_within = check["unhealthy_threshold"] * seconds(check["interval"]) + seconds(
        check["timeout"]
    )
    assert seen_within < drain
    # A rolling update never has fewer servers serving than asked for.
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def render_settings_envoy_health_checks() -> list[dict[str, Any]]:
    form = endpoints.discovery((("contacts-headless", 50052),))
    checks = next(line for line in form.splitlines() if line.strip().startswith("health_checks:"))
    return list(json.loads(checks.split(":", 1)[1]))


def seconds(duration: str) -> float:
    assert duration.endswith("s")
    return float(duration[:-1])


def test_settings_of_the_servers(objects: list[dict[str, Any]]) -> None:
    settings = config_map(objects, "contacts-config")
    pod = one(objects, "Deployment", "contacts-server")["spec"]["template"]
    assert settings["CONTACTS_METRICS_HOST"] == "0.0.0.0"  # Prometheus scrapes from elsewhere
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == settings["CONTACTS_METRICS_PORT"]
    assert pod["spec"]["enableServiceLinks"] is False  # no CONTACTS_GRPC_PORT=tcp://...
    # The settings a ConfigMap gives are read by Settings, as they would be in a pod;
    # the files they name (certificates) are mounted there, not here.
    files = {name: value for name, value in settings.items() if value.startswith("/etc/")}
    mounted = {m["mountPath"] for c in pod["spec"]["containers"] for m in c.get("volumeMounts", [])}
    for name, value in files.items():
        assert str(Path(value).parent) in mounted, f"{name}: {value} is not mounted"
    given = {k: v for k, v in settings.items() if k not in files}
    Settings.from_env({**given, "CONTACTS_JWT_SECRET": RENDER_SECRET})


def test_secrets_only_by_reference(objects: list[dict[str, Any]]) -> None:
    secret_names = ("CONTACTS_JWT_SECRET", "CONTACTS_DATABASE_URL", "CONTACTS_REDIS_URL")
    assert not [o for o in objects if o["kind"] == "Secret"], "secrets are the operator's"
    for o in objects:
        if o["kind"] == "ConfigMap":
            assert not set(secret_names) & set(o.get("data", {})), o["metadata"]["name"]
    for where, pod in pod_specs(objects):
        for c in pod["containers"]:
            for variable in c.get("env", []):
                if variable["name"] in secret_names:
                    assert "secretKeyRef" in variable["valueFrom"], (where, variable["name"])


def test_databases_are_external_services(objects: list[dict[str, Any]]) -> None:
    images = {c["image"] for _, pod in pod_specs(objects) for c in pod["containers"]}
    assert len(images) == 1, images  # the one image: no home-made PostgreSQL, Redis or NATS
    urls = config_map(objects, "contacts-config").values()
    assert any(url.startswith("nats://") for url in urls)  # NATS, by its URL


def test_every_pod_is_locked_down(objects: list[dict[str, Any]]) -> None:
    pods = dict(pod_specs(objects))
    assert set(pods) >= {
        "Deployment/contacts-server",
        "Deployment/contacts-envoy",
        "Job/contacts-migrate",
    }
    for where, pod in pods.items():
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        for volume in pod.get("volumes", []):  # certificates by reference, never inline
            assert set(volume) & {"emptyDir", "configMap", "secret"}, (where, volume)
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert pod["automountServiceAccountToken"] is False, where
        for c in pod["containers"]:
            security = c["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), where
            assert "memory" in c["resources"]["limits"], where


def test_where_the_servers_write_is_writable(objects: list[dict[str, Any]]) -> None:
    """`serve` writes its workers' metrics files in a temporary directory (Python's
    tempfile: /tmp); nothing else, given its secret and a remote database."""
    pod = one(objects, "Deployment", "contacts-server")["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in container_of(pod, "server")["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def container_of(pod: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in pod["containers"] if c["name"] == name]
    return dict(found)


def test_disruptions_and_scaling_aim_at_the_servers(objects: list[dict[str, Any]]) -> None:
    server = one(objects, "Deployment", "contacts-server")
    labels = server["spec"]["template"]["metadata"]["labels"]
    pdb = one(objects, "PodDisruptionBudget", "contacts-server")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = one(objects, "HorizontalPodAutoscaler", "contacts-server")
    assert hpa["spec"]["scaleTargetRef"]["name"] == server["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2  # the PDB's one-at-a-time needs a second


def test_migrations_job_runs_migrate(objects: list[dict[str, Any]]) -> None:
    job = one(objects, "Job", "contacts-migrate")
    (migrate,) = job["spec"]["template"]["spec"]["containers"]
    assert migrate["args"] == ["migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")


# Envoy


def test_envoy_sends_to_every_server_through_the_headless_service(
    objects: list[dict[str, Any]],
) -> None:
    headless = one(objects, "Service", "contacts-headless")
    assert headless["spec"]["clusterIP"] == "None"
    server = one(objects, "Deployment", "contacts-server")
    assert headless["spec"]["selector"].items() <= (
        server["spec"]["template"]["metadata"]["labels"].items()
    )
    env = config_map(objects, "contacts-envoy-env")
    # Certificates (TLS) are files mounted in the pod, not here.
    given = {k: v for k, v in env.items() if not v.startswith("/etc/")}
    settings = Settings.from_env({**given, "CONTACTS_JWT_SECRET": RENDER_SECRET})
    ((host, port),) = settings.upstreams
    assert host == headless["metadata"]["name"]
    (door,) = headless["spec"]["ports"]
    assert (
        door["port"] == port == int(config_map(objects, "contacts-config")["CONTACTS_PROXY_PORT"])
    )
    rendered = yaml.safe_load(config_map(objects, "contacts-envoy")["envoy.yaml"])
    (cluster,) = [
        c for c in rendered["static_resources"]["clusters"] if c["name"] == "contacts_grpc"
    ]
    assert cluster["cluster_type"]["name"] == "envoy.cluster.strict_dns"
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert address["address"]["socket_address"] == {"address": host, "port_value": port}


def test_envoy_runs_the_config_map(objects: list[dict[str, Any]]) -> None:
    deployment = one(objects, "Deployment", "contacts-envoy")
    pod = deployment["spec"]["template"]["spec"]
    envoy = container(deployment, "envoy")
    args = envoy["args"]
    mounts = {m["mountPath"]: m["name"] for m in envoy["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    if "/etc/contacts/tls-public" in mounts:
        # TLS: it renders its own config, and writes its certificates' SDS files.
        assert args == ["envoy"]
        assert "emptyDir" in volumes[mounts["/app/data"]]
        return
    assert args[:2] == ["envoy", "--config"]
    config = Path(args[2])
    mounts = {m["mountPath"]: m["name"] for m in envoy["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts[str(config.parent)]]["configMap"]["name"].startswith("contacts-envoy-")
    env = config_map(objects, "contacts-envoy-env")
    service = one(objects, "Service", "contacts-envoy")
    (http,) = service["spec"]["ports"]
    assert {"name": http["targetPort"], "containerPort": int(env["CONTACTS_HTTP_PORT"])} in envoy[
        "ports"
    ]
    pause = envoy["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pause + ENVOY_STOP_SECONDS


RENDERED = {  # Envoy's config: from the settings of these env files, in order
    BASE / "envoy" / "envoy.yaml": [BASE / "envoy" / "envoy.env"],
}


@pytest.mark.parametrize("rendered", list(RENDERED), ids=lambda path: path.parent.name)
def test_envoy_config_map_is_what_envoy_config_renders_today(rendered: Path) -> None:
    """The ConfigMap's file is rendered (`make deploy-config`), never edited: a change to
    the template, the contract or the settings must be rendered again."""
    env = {k: v for path in RENDERED[rendered] for k, v in env_file(path).items()}
    settings = Settings.from_env({**env, "CONTACTS_JWT_SECRET": RENDER_SECRET})
    expected = stack.render_envoy_config(
        stack.upstreams_of(settings),
        settings.http_port,
        settings.envoy_admin_port,
        log_format=settings.log_format,
        root=IMAGE_ROOT,
        settings=settings,
    )
    assert rendered.read_text() == expected, f"{rendered} is stale: run `make deploy-config`"


@pytest.mark.parametrize("rendered", list(RENDERED), ids=lambda path: path.parent.name)
def test_envoy_config_map_is_valid_for_envoy(rendered: Path, tmp_path: Path) -> None:
    """The same config with this checkout's paths for the image's: Envoy accepts it."""
    text = rendered.read_text().replace(f"{IMAGE_ROOT}/", f"{PROJECT_ROOT}/")
    config = tmp_path / "envoy.yaml"
    config.write_text(text)
    stack.validate_envoy_config(config)


# The image


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, (KEYWORD, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def test_hadolint_accepts_the_dockerfile() -> None:
    result = subprocess.run(
        [tool("hadolint"), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_what_the_dockerfile_copies_exists_and_is_sent() -> None:
    ignored = (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignored if line.startswith("!")}
    copies = [rest for keyword, rest in dockerfile() if keyword == "COPY" and "--from" not in rest]
    assert copies
    for rest in copies:
        *sources, _ = shlex.split(rest)
        for source in sources:
            assert (PROJECT_ROOT / source).exists(), source
            assert source.rstrip("/") in allowed, f"{source} is left out by .dockerignore"
    lock = json.loads((PROJECT_ROOT / "package-lock.json").read_text())
    assert "node_modules/swagger-ui-dist" in lock["packages"]  # what the docs stage copies


def test_the_commands_the_image_and_the_manifests_start_exist(
    objects: list[dict[str, Any]],
) -> None:
    instructions = dict(dockerfile())
    entrypoint = json.loads(instructions["ENTRYPOINT"])
    assert entrypoint == ["python", "-m", "server"]
    assert json.loads(instructions["CMD"]) == ["serve"]
    # The image's `python` is the virtualenv's (PATH), as here.
    commands = {tuple(json.loads(instructions["CMD"]))}
    commands |= {tuple(c["args"]) for _, pod in pod_specs(objects) for c in pod["containers"]}
    assert {command[0] for command in commands} >= {"serve", "envoy", "migrate"}
    for command in commands:
        result = subprocess.run(
            [sys.executable, "-m", "server", *command, "--help"],
            capture_output=True,
            text=True,
            cwd=PROJECT_ROOT,
            env={**os.environ, "CONTACTS_JWT_SECRET": RENDER_SECRET},
        )
        assert result.returncode == 0, (command, result.stderr)
