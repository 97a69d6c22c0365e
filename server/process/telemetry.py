"""Envoy's part of OpenTelemetry (OTEL_* settings): its tracer, which starts a trace or
continues a client's W3C traceparent and hands its span to the server as the
parent of the server's, and the cluster it exports spans to. Rendered into
envoy/envoy.yaml.tmpl's ${tracing} and ${tracing_cluster}: empty without an endpoint."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from server.settings import Settings

CLUSTER = "opentelemetry"
TYPES = "type.googleapis.com/envoy.extensions"
OTLP_GRPC_PORT = 4317  # OTLP/gRPC's port when the endpoint names none


def sampling_percent(sampler: str, ratio: float) -> float:
    """Envoy's random_sampling for OTEL_TRACES_SAMPLER's new traces (a client's sampled
    traceparent is followed whatever this says, as the parent-based samplers do)."""
    root = sampler.removeprefix("parentbased_")
    return {"always_on": 100.0, "always_off": 0.0}.get(root, round(ratio * 100, 6))


def tracing(settings: Settings) -> str:
    """The connection manager's `tracing:` line, or nothing."""
    if not settings.otel_endpoint:
        return ""
    config = {
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {"envoy_grpc": {"cluster_name": CLUSTER}, "timeout": "1s"},
                # Envoy's spans apart from the servers' in a trace's view.
                "service_name": f"{settings.otel_service_name}-envoy",
            },
        },
        "random_sampling": {
            "value": sampling_percent(settings.otel_sampler, settings.otel_sampler_arg)
        },
    }
    return f"tracing: {json.dumps(config)}"


def tracing_cluster(settings: Settings) -> str:
    """The collector as a cluster (a list item of `clusters:`), or nothing."""
    if not settings.otel_endpoint:
        return ""
    endpoint = urlsplit(settings.otel_endpoint)
    host, port = endpoint.hostname or "", endpoint.port or OTLP_GRPC_PORT
    cluster: dict[str, object] = {
        "name": CLUSTER,
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": host, "port_value": port}}
                            }
                        }
                    ]
                }
            ],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": f"{TYPES}.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
    }
    if endpoint.scheme == "https":
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": f"{TYPES}.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": host,
            },
        }
    return f"- {json.dumps(cluster)}"
