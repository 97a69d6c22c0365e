"""`make bench`'s identity and TLS rows: GetContact with an identity provider's RS256
token against the local HS256 one, and over TLS against plaintext, on both doors (gRPC
direct, REST through Envoy). Each configuration is a `python -m server run` stack of one
worker on one SQLite database, its token sent on every call; the configurations take
turns, round after round, so that the machine's drift hits each alike.
"""

from __future__ import annotations

import secrets
import statistics
from pathlib import Path
from typing import Any

import grpc
import psutil
import requests

from bench.calls import CheckFailed, get_contact
from bench.load import Load, h2load, wrk
from contacts.v1 import contacts_pb2 as pb
from contacts.v1 import contacts_pb2_grpc as pb_grpc
from server.auth.tokens import Tokens
from tests.certificates import Certificates, make_certificates
from tests.harness import Stack
from tests.identity import AUDIENCE, Issuer, Key

Row = dict[str, Any]
GRPC, REST = "gRPC direct", "REST via Envoy"
PLAIN, RS256, TLS = "HS256", "RS256 (OIDC)", "HS256 + TLS"
ROUNDS = 2


def _cpu(stack: Stack) -> tuple[float, float]:
    """CPU seconds so far of the stack's servers and of its Envoy."""
    servers = envoy = 0.0
    for process in stack.processes():
        try:
            times = process.cpu_times()
            used = times.user + times.system
            if "envoy" in process.name():
                envoy += used
            else:
                servers += used
        except psutil.Error:
            continue
    return servers, envoy


def _check(stack: Stack, contact: str, token: str, certificates: Certificates | None) -> None:
    """Both doors answer GetContact with this token: h2load and wrk would count a refused
    token as a success (gRPC) or measure the refusal (REST)."""
    metadata = (("authorization", f"Bearer {token}"),)
    target = f"127.0.0.1:{stack.port}"
    if certificates is None:
        channel = grpc.insecure_channel(target)
    else:
        trusted = grpc.ssl_channel_credentials(certificates.ca_file.read_bytes())
        channel = grpc.secure_channel(target, trusted)
    with channel:
        stub = pb_grpc.ContactsServiceStub(channel)
        reply = stub.GetContact(pb.GetContactRequest(contact_id=contact), metadata=metadata)
    verify = str(certificates.ca_file) if certificates else True
    rest = requests.get(
        f"{stack.url}/contacts/{contact}",
        headers={"authorization": f"Bearer {token}"},
        verify=verify,
        timeout=10,
    )
    if reply.id != contact or rest.status_code != 200:
        raise CheckFailed(f"GetContact with the bench's token: {rest.status_code} {rest.text}")


def _rows(
    stack: Stack, config: str, token: str, certificates: Certificates | None, load: Load, n: int
) -> list[Row]:
    verify = str(certificates.ca_file) if certificates else True
    made = requests.post(
        f"{stack.url}/contacts",
        json={"first_name": "Bench", "email": "bench@example.com"},
        verify=verify,
        timeout=10,
    )
    made.raise_for_status()
    contact = made.json()["id"]
    _check(stack, contact, token, certificates)
    call = get_contact(contact)
    headers = {"authorization": f"Bearer {token}"}
    stem = stack.log.parent / f"identity-{n}-{config.replace(' ', '')}"
    body = stem.with_suffix(".grpc")
    body.write_bytes(call.framed())
    scheme = "https" if certificates else "http"
    rows = []
    for door in (GRPC, REST):
        before = _cpu(stack)
        if door == GRPC:
            url = f"{scheme}://127.0.0.1:{stack.port}{call.grpc_path}"
            result = h2load(url, body, headers, load, stem.with_suffix(".log"))
        else:
            url = stack.url + call.path
            result = wrk(url, call.method, call.body, headers, load, stem.with_suffix(".lua"))
        after = _cpu(stack)
        replies = result.rps * (load.duration + load.warmup) or 1
        rows.append(
            {
                "config": config,
                "door": door,
                "round": n,
                "rps": result.rps,
                "p50_ms": result.p50_ms,
                "p99_ms": result.p99_ms,
                "requests": result.requests,
                "errors": result.errors,
                "server_us": (after[0] - before[0]) / replies * 1e6,
                "envoy_us": (after[1] - before[1]) / replies * 1e6,
            }
        )
        print(f"  {config:<13} {door:<15} {result.rps:9.1f} req/s", flush=True)
    _check(stack, contact, token, certificates)  # and it still succeeds after the load
    return rows


def measure(load: Load, workdir: Path, database_url: str) -> list[Row]:
    """Every configuration on both doors, ROUNDS times, alternated."""
    key = Key.make("RS256")
    issuer = Issuer([key])
    certificates = make_certificates(workdir / "identity-certificates")
    secret = secrets.token_urlsafe(48)
    hs256 = Tokens(secret).issue("bench", lifetime=3600)
    base = {
        "CONTACTS_DATABASE_URL": database_url,
        "CONTACTS_RATE_LIMIT_CREATE": "0",
        "CONTACTS_RATE_LIMIT_DEFAULT": "0",
    }
    tls = {"CONTACTS_TLS_CERT": str(certificates.cert), "CONTACTS_TLS_KEY": str(certificates.key)}
    oidc = {
        "CONTACTS_OIDC_ISSUER": issuer.url,
        "CONTACTS_OIDC_AUDIENCE": AUDIENCE,
        "CONTACTS_PAGE_TOKEN_SECRET": secrets.token_urlsafe(48),
    }
    configs: list[tuple[str, dict[str, str], str, Certificates | None]] = [
        (PLAIN, {"CONTACTS_JWT_SECRET": secret}, hs256, None),
        (RS256, oidc, issuer.token(key, sub="bench", lifetime=3600), None),
        (TLS, {"CONTACTS_JWT_SECRET": secret, **tls}, hs256, certificates),
    ]
    rows: list[Row] = []
    try:
        for n in range(1, ROUNDS + 1):
            print(f"== identity and TLS, round {n} of {ROUNDS}", flush=True)
            for config, env, token, certs in configs:
                ca = certs.ca_file if certs else None
                stack = Stack({**base, **env}, workdir, ca=ca)
                try:
                    rows += _rows(stack, config, token, certs, load, n)
                finally:
                    stack.stop()
    finally:
        issuer.stop()
    return rows


def lines(rows: list[Row]) -> list[str]:
    """The medians of each configuration's rounds, by door, and each against HS256 in
    plaintext; nothing for a run without these rows."""
    if not rows:
        return []
    out = [
        "identity and TLS (sqlite x1 GetContact, a token on every call, medians of "
        f"{ROUNDS} alternated rounds):",
        f"  {'configuration':<14}{'door':<16}{'req/s':>9}{'vs HS256':>9}{'p50 ms':>8}"
        f"{'server µs':>10}{'Envoy µs':>9}",
    ]
    for door in (GRPC, REST):
        median: dict[str, dict[str, float]] = {}
        for config in (PLAIN, RS256, TLS):
            got = [r for r in rows if r["config"] == config and r["door"] == door]
            if got:
                median[config] = {
                    k: statistics.median(r[k] for r in got)
                    for k in ("rps", "p50_ms", "server_us", "envoy_us")
                }
        for config, m in median.items():
            plain = median.get(PLAIN, {}).get("rps")
            ratio = f"{m['rps'] / plain:.2f}" if plain else "-"
            envoy = f"{m['envoy_us']:.0f}" if door == REST else "-"
            out.append(
                f"  {config:<14}{door:<16}{m['rps']:9,.0f}{ratio:>9}{m['p50_ms']:8.2f}"
                f"{m['server_us']:10.0f}{envoy:>9}"
            )
    return out
