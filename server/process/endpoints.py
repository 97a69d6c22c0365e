"""The servers Envoy sends to, in Envoy's shape: inline for `python -m server envoy`,
and for `run` a file that the supervisor rewrites as its workers come and go, which
Envoy reads again on every change (EDS from a file)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from server.settings import Upstreams

CLUSTER = "contacts_grpc"  # envoy/envoy.yaml.tmpl's cluster of servers


def lb_endpoints(upstreams: Upstreams) -> list[dict[str, Any]]:
    """Envoy's lb_endpoints for host:port pairs."""
    return [
        {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
        for host, port in upstreams
    ]


def discovery(servers: Upstreams | Path) -> str:
    """How the cluster of servers finds them (envoy.yaml.tmpl's ${discovery}), as YAML
    lines of the cluster: host:port pairs by DNS, health-checked; or the file `run`'s
    supervisor rewrites (EDS), which lists only workers that serve and do not drain."""
    form: dict[str, Any]
    if isinstance(servers, Path):
        # Nothing to check: a host leaves the list before it drains, and a
        # crash is seen by outlier detection. A host that leaves gets no new
        # call at once, and its calls in flight finish (tests/test_operations.py).
        form = {
            "type": "EDS",
            "eds_cluster_config": {
                "eds_config": {
                    "resource_api_version": "V3",
                    # Moved in whole (see write): Envoy watches the directory.
                    "path_config_source": {
                        "path": str(servers),
                        "watched_directory": {"path": str(servers.parent)},
                    },
                }
            },
        }
    else:
        form = {
            # Every address a name resolves to is a server of its own (a headless
            # service's name, say), and names are resolved again every few seconds.
            "cluster_type": {
                "name": "envoy.cluster.strict_dns",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.clusters.dns.v3.DnsCluster",
                    "dns_lookup_family": "V4_PREFERRED",
                    "dns_refresh_rate": "5s",
                    "respect_dns_ttl": True,
                },
            },
            "load_assignment": {
                "cluster_name": CLUSTER,
                "endpoints": [{"lb_endpoints": lb_endpoints(servers)}],
            },
            # A server that drains says NOT_SERVING for CONTACTS_DRAIN_SECONDS
            # (default 5) before it stops: checks every second see it in time.
            "health_checks": [
                {
                    "timeout": "1s",
                    "interval": "1s",
                    "no_traffic_interval": "1s",
                    "unhealthy_threshold": 2,
                    "healthy_threshold": 1,
                    "grpc_health_check": {},
                }
            ],
        }
    return "\n      ".join(f"{key}: {json.dumps(value)}" for key, value in form.items())


def write(path: Path, doors: Iterable[str]) -> None:
    """Lists the workers at these Unix sockets, and only them, as the cluster's
    endpoints. Envoy watches the file's directory for a file moved in: the list is
    written beside the file, then moved over it, so Envoy reads it whole."""
    pipes = [{"endpoint": {"address": {"pipe": {"path": door}}}} for door in doors]
    assignment = {
        "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        "cluster_name": CLUSTER,
        "endpoints": [{"lb_endpoints": pipes}],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, written = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump({"resources": [assignment]}, out)
        os.replace(written, path)
    except BaseException:
        Path(written).unlink(missing_ok=True)
        raise
