"""Configuration: read once from the CONTACTS_* environment into a frozen object."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT_ROOT / "data"
# How long a stopping worker gives the calls in flight to finish; the supervisor
# waits that long too (plus the drain) before it kills one.
STOP_GRACE_SECONDS = 10.0
MIN_SECRET_BYTES = 32
MAX_KEY_REFRESH_SECONDS = 600


class SettingsError(ValueError):
    """The environment holds a value the service cannot run with."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def _networks(raw: str) -> Networks:
    try:
        return tuple(ipaddress.ip_network(part.strip()) for part in raw.split(",") if part.strip())
    except ValueError as error:
        raise SettingsError(f"CONTACTS_TRUSTED_PROXIES: {error}") from None


Upstreams = tuple[tuple[str, int], ...]


def _upstreams(raw: str) -> Upstreams:
    """`host:port,host:port` ([v6]:port for an IPv6 address), read as URL authorities."""
    found = []
    for part in raw.split(","):
        if not part.strip():
            continue
        try:
            authority = urlsplit(f"//{part.strip()}")
            host, port = authority.hostname, authority.port
        except ValueError as error:
            raise SettingsError(f"CONTACTS_UPSTREAMS: {part.strip()!r}: {error}") from None
        if not host or port is None or authority.path or authority.username:
            raise SettingsError(f"CONTACTS_UPSTREAMS: {part.strip()!r} is not host:port")
        found.append((host, port))
    return tuple(found)


def _origins(raw: str) -> tuple[str, ...]:
    """CONTACTS_CORS_ORIGINS: `*`, or browser origins (`scheme://host[:port]`), comma-separated."""
    found = tuple(part.strip() for part in raw.split(",") if part.strip())
    for origin in found:
        if origin == "*":
            continue
        parts = urlsplit(origin)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or origin != (f"{parts.scheme}://{parts.netloc}")
        ):
            raise SettingsError(
                f"CONTACTS_CORS_ORIGINS: {origin!r} is not an origin like https://app.example.com"
            )
    return found


def local_secret(data_dir: Path = DATA_DIR) -> str:
    """The local-run JWT secret: made once, kept 0600 in the data folder."""
    path = data_dir / "jwt-secret"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(48))
        log.warning("CONTACTS_JWT_SECRET is not set: generated one for local runs in %s", path)
    return path.read_text().strip()


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, "").strip().lower() or default
    if value not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


# OTEL_TRACES_SAMPLER's values (the OpenTelemetry specification's names); the
# parent-based ones follow a caller's (Envoy's) decision and decide for new traces.
SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)


def _ratio(env: Mapping[str, str], name: str) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number from 0 to 1, got {raw!r}") from None
    if not 0.0 <= value <= 1.0:
        raise SettingsError(f"{name} must be a number from 0 to 1, got {raw!r}")
    return value


def _endpoint(raw: str) -> str:
    """OTEL_EXPORTER_OTLP_ENDPOINT: http(s)://host:port, OTLP over gRPC."""
    raw = raw.strip()
    if not raw:
        return ""
    try:
        parts = urlsplit(raw)
        _ = parts.port  # a port that is not a number raises here
    except ValueError as error:
        raise SettingsError(f"OTEL_EXPORTER_OTLP_ENDPOINT: {error}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(
            "OTEL_EXPORTER_OTLP_ENDPOINT must be http://host:port or https://host:port, "
            f"got {raw!r}"
        )
    return raw


LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")

LOOPBACK = "127.0.0.0/8,::1/128"
LOOPBACK_NETWORKS = _networks(LOOPBACK)


def is_loopback_url(url: str) -> bool:
    """Whether a URL's host is this machine (a loopback address, or localhost)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_identity_url(name: str, url: str) -> str:
    """An issuer or key-set URL: https, or http on loopback only (a local provider);
    anything else would let a network path forge the keys."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and is_loopback_url(url):
        return url
    raise SettingsError(f"{name} must be an https:// URL (http:// on loopback only), got {url!r}")


def _path(env: Mapping[str, str], name: str) -> str:
    """A file the service must read: refused at start if it cannot be."""
    raw = env.get(name, "").strip()
    if raw and not os.access(raw, os.R_OK):
        raise SettingsError(f"{name}: cannot read {raw!r}")
    return raw


@dataclass(frozen=True)
class Settings:
    grpc_port: int = 50051
    # Envoy's door into the server: the client-address header is believed
    # only on this port, and only from trusted_proxies. Shared by `serve`'s
    # workers; `run`'s each open a Unix socket of their own instead.
    proxy_port: int = 50052
    http_port: int = 8080
    envoy_admin_port: int = 9901
    database_url: str = f"sqlite:///{DATA_DIR / 'contacts.db'}"
    jwt_secret: str = field(default="", repr=False)
    rate_limit_create: int = 60
    rate_limit_default: int = 120
    trusted_proxies: Networks = LOOPBACK_NETWORKS
    redis_url: str = ""  # empty: buckets live in this process's memory
    # Per server process: database threads, and PostgreSQL connections.
    threads: int = 4
    read_timeout: float = 15.0  # seconds a call may take to send its request
    stream_idle: float = 60.0  # seconds a stream may send nothing either way, then it ends
    max_calls: int = 1000  # calls in flight at once, waiting ones included
    # Of those, what one client (a token's sub, else an address) may hold: the
    # rest stay free for the others whatever one client does.
    max_calls_per_client: int = 100
    log_format: str = "text"  # or "json": one object per line (the server's and Envoy's)
    log_level: str = "info"  # "warning" drops the line per call
    metrics_port: int = 9464  # Prometheus /metrics; 0: no metrics at all
    # Where /metrics listens: loopback, unless a Prometheus elsewhere must scrape it
    # ("0.0.0.0", or "::" for every address).
    metrics_host: str = "127.0.0.1"
    # After SIGTERM: seconds a server keeps serving while its health says
    # NOT_SERVING, so that an Envoy's health checks see it before it goes, and
    # `run`'s Envoy has read the endpoints the worker left.
    drain_seconds: float = 5.0
    # The servers `python -m server envoy` sends to; empty: this host's proxy port.
    upstreams: Upstreams = ()
    # What ListContacts' page tokens are signed with (a key derived from it:
    # page_token_key); empty: the JWT secret's. Every worker and host must
    # hold the same, or a token from one is refused by another.
    page_token_secret: str = field(default="", repr=False)
    # NATS JetStream for change events (server/events/); empty: no events.
    nats_url: str = ""
    events_max_age: int = 7 * 24 * 3600  # seconds the CONTACTS stream keeps an event

    @property
    def page_token_key(self) -> bytes:
        """The key of page tokens: derived, so that the secret it comes from (the JWT
        secret, unless CONTACTS_PAGE_TOKEN_SECRET is set, as OIDC mode requires) is
        never used as it is for a second purpose."""
        secret = (self.page_token_secret or self.jwt_secret).encode()
        return hmac.new(secret, b"contacts.v1 ListContacts page tokens", hashlib.sha256).digest()

    # Browser origins whose pages may call the service (CORS, answered by Envoy);
    # empty: no CORS headers at all, so browsers keep other origins' pages out.
    cors_origins: tuple[str, ...] = ()
    # OpenID Connect: tokens from this issuer's published keys, for this audience.
    # Empty: HS256 tokens signed with jwt_secret (the local mode).
    oidc_issuer: str = ""
    oidc_audience: str = ""
    # Seconds between fetches of the issuer's key set: a key it withdrew stops
    # working within this (CONTRACT.md: at least every 10 minutes).
    oidc_refresh_seconds: int = 300
    # TLS on Envoy's port and the gRPC port (PEM files; both or neither), and the CA
    # whose client certificates the gRPC port then requires (mutual TLS).
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # The CA that signed tls_cert: what `python -m server envoy` trusts the servers by,
    # and what the servers check Envoy's certificate against without tls_client_ca.
    tls_ca: str = ""
    # What Envoy presents to servers on other hosts (default: tls_cert and tls_key),
    # and the name that certificate must carry for a server to believe the client
    # address Envoy writes.
    tls_proxy_cert: str = ""
    tls_proxy_key: str = ""
    tls_proxy_name: str = "contacts-envoy"
    # Plaintext grpc.health.v1 alone on this port, for probes that cannot speak TLS;
    # 0: none (health is on the gRPC port, as every service is).
    health_port: int = 0

    @property
    def oidc(self) -> bool:
        return bool(self.oidc_issuer)

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    @property
    def proxy_ca(self) -> str:
        """The CA Envoy's certificate is checked against on the proxy port."""
        return self.tls_client_ca or self.tls_ca

    # OpenTelemetry, by its standard variables: where Envoy and the servers send
    # spans (OTLP over gRPC); empty: no tracing at all, nothing of it loaded.
    otel_endpoint: str = ""
    otel_service_name: str = "contacts"
    otel_sampler: str = "parentbased_always_on"
    otel_sampler_arg: float = 1.0  # the ratio of the *traceidratio samplers

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise SettingsError(
                "CONTACTS_TLS_CERT and CONTACTS_TLS_KEY go together: both or neither"
            )
        if bool(self.tls_proxy_cert) != bool(self.tls_proxy_key):
            raise SettingsError(
                "CONTACTS_TLS_PROXY_CERT and CONTACTS_TLS_PROXY_KEY go together: both or neither"
            )
        for name, value in (
            ("CONTACTS_TLS_CLIENT_CA", self.tls_client_ca),
            ("CONTACTS_TLS_CA", self.tls_ca),
            ("CONTACTS_TLS_PROXY_CERT", self.tls_proxy_cert),
        ):
            if value and not self.tls_cert:
                raise SettingsError(f"{name} needs CONTACTS_TLS_CERT and CONTACTS_TLS_KEY")
        if self.oidc_issuer:
            check_identity_url("CONTACTS_OIDC_ISSUER", self.oidc_issuer)
            if not self.oidc_audience:
                # A provider's tokens for its other applications must not pass here.
                raise SettingsError("CONTACTS_OIDC_AUDIENCE is required with CONTACTS_OIDC_ISSUER")
            if not self.page_token_secret:
                # No local secret exists in this mode to derive page tokens' key from,
                # and one made up per process would make every host refuse the others'.
                raise SettingsError(
                    "CONTACTS_PAGE_TOKEN_SECRET is required with CONTACTS_OIDC_ISSUER"
                )
            if self.oidc_refresh_seconds > MAX_KEY_REFRESH_SECONDS:
                raise SettingsError(
                    f"CONTACTS_OIDC_REFRESH_SECONDS is at most {MAX_KEY_REFRESH_SECONDS}"
                )
        # In OIDC mode HS256 and its secret are not used at all.
        elif len(self.jwt_secret.encode()) < MIN_SECRET_BYTES:
            raise SettingsError(
                f"CONTACTS_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes long"
            )
        if self.page_token_secret and len(self.page_token_secret.encode()) < MIN_SECRET_BYTES:
            raise SettingsError(
                f"CONTACTS_PAGE_TOKEN_SECRET must be at least {MIN_SECRET_BYTES} bytes long"
            )
        if self.nats_url and urlsplit(self.nats_url).scheme not in ("nats", "tls"):
            raise SettingsError(
                f"CONTACTS_NATS_URL must be nats://host:port, got {self.nats_url!r}"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        return cls(
            grpc_port=_int(env, "CONTACTS_GRPC_PORT", cls.grpc_port),
            proxy_port=_int(env, "CONTACTS_PROXY_PORT", cls.proxy_port),
            http_port=_int(env, "CONTACTS_HTTP_PORT", cls.http_port),
            envoy_admin_port=_int(env, "CONTACTS_ENVOY_ADMIN_PORT", cls.envoy_admin_port),
            database_url=env.get("CONTACTS_DATABASE_URL") or cls.database_url,
            # OIDC mode uses no secret, so none is made for it.
            jwt_secret=env.get("CONTACTS_JWT_SECRET")
            or ("" if env.get("CONTACTS_OIDC_ISSUER", "").strip() else local_secret()),
            rate_limit_create=_int(env, "CONTACTS_RATE_LIMIT_CREATE", cls.rate_limit_create),
            rate_limit_default=_int(env, "CONTACTS_RATE_LIMIT_DEFAULT", cls.rate_limit_default),
            trusted_proxies=_networks(env.get("CONTACTS_TRUSTED_PROXIES", LOOPBACK)),
            redis_url=env.get("CONTACTS_REDIS_URL", ""),
            threads=_int(env, "CONTACTS_DB_THREADS", cls.threads, minimum=1),
            read_timeout=_int(env, "CONTACTS_READ_TIMEOUT", int(cls.read_timeout), minimum=1),
            stream_idle=_int(env, "CONTACTS_STREAM_IDLE", int(cls.stream_idle), minimum=1),
            max_calls=_int(env, "CONTACTS_MAX_CALLS", cls.max_calls, minimum=1),
            max_calls_per_client=_int(
                env, "CONTACTS_MAX_CALLS_PER_CLIENT", cls.max_calls_per_client, minimum=1
            ),
            log_format=_choice(env, "CONTACTS_LOG_FORMAT", cls.log_format, LOG_FORMATS),
            log_level=_choice(env, "CONTACTS_LOG_LEVEL", cls.log_level, LOG_LEVELS),
            metrics_port=_int(env, "CONTACTS_METRICS_PORT", cls.metrics_port),
            metrics_host=env.get("CONTACTS_METRICS_HOST", "").strip() or cls.metrics_host,
            drain_seconds=_int(env, "CONTACTS_DRAIN_SECONDS", int(cls.drain_seconds)),
            upstreams=_upstreams(env.get("CONTACTS_UPSTREAMS", "")),
            page_token_secret=env.get("CONTACTS_PAGE_TOKEN_SECRET", ""),
            nats_url=env.get("CONTACTS_NATS_URL", "").strip(),
            events_max_age=_int(env, "CONTACTS_EVENTS_MAX_AGE", cls.events_max_age, minimum=1),
            cors_origins=_origins(env.get("CONTACTS_CORS_ORIGINS", "")),
            oidc_issuer=env.get("CONTACTS_OIDC_ISSUER", "").strip(),
            oidc_audience=env.get("CONTACTS_OIDC_AUDIENCE", "").strip(),
            oidc_refresh_seconds=_int(
                env, "CONTACTS_OIDC_REFRESH_SECONDS", cls.oidc_refresh_seconds, minimum=1
            ),
            tls_cert=_path(env, "CONTACTS_TLS_CERT"),
            tls_key=_path(env, "CONTACTS_TLS_KEY"),
            tls_client_ca=_path(env, "CONTACTS_TLS_CLIENT_CA"),
            tls_ca=_path(env, "CONTACTS_TLS_CA"),
            tls_proxy_cert=_path(env, "CONTACTS_TLS_PROXY_CERT"),
            tls_proxy_key=_path(env, "CONTACTS_TLS_PROXY_KEY"),
            tls_proxy_name=env.get("CONTACTS_TLS_PROXY_NAME", "").strip() or cls.tls_proxy_name,
            health_port=_int(env, "CONTACTS_HEALTH_PORT", cls.health_port),
            otel_endpoint=_endpoint(env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")),
            otel_service_name=env.get("OTEL_SERVICE_NAME", "").strip() or cls.otel_service_name,
            otel_sampler=_choice(env, "OTEL_TRACES_SAMPLER", cls.otel_sampler, SAMPLERS),
            otel_sampler_arg=_ratio(env, "OTEL_TRACES_SAMPLER_ARG"),
        )
