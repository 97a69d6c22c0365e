"""Operating it under load, as an operator would: a worker killed, a rolling restart,
the supervisor killed, a host lost behind `python -m server envoy`.

Real processes on PostgreSQL with Redis (the rate limits on, set high enough
never to refuse), real clients counting every failure (tests/load.py). They
run once, in the PostgreSQL half of `make test`; each prints its counts.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg2
import pytest
import requests

from server.settings import Settings
from tests.conftest import BACKEND
from tests.harness import ENVOY_ALONE, Server, Stack, wait_for
from tests.load import CREATED_DOMAIN, Load

pytestmark = pytest.mark.skipif(
    BACKEND != "postgresql", reason="load scenarios run once, in the PostgreSQL half"
)


@pytest.fixture
def env(settings: Settings, redis_url: str) -> dict[str, str]:
    return {
        "CONTACTS_DATABASE_URL": settings.database_url,
        "CONTACTS_JWT_SECRET": settings.jwt_secret,
        "CONTACTS_REDIS_URL": redis_url,
        "CONTACTS_RATE_LIMIT_CREATE": "10000000",
        "CONTACTS_RATE_LIMIT_DEFAULT": "10000000",
        "CONTACTS_DRAIN_SECONDS": "2",
    }


@pytest.fixture
def stack(env: dict[str, str], tmp_path: Path) -> Iterator[Stack]:
    running = Stack(env, tmp_path, workers=2)
    yield running
    running.stop()


def contacts(url: str, count: int = 20) -> list[str]:
    """REST paths of `count` new contacts."""
    paths = []
    with requests.Session() as session:
        session.trust_env = False
        for n in range(count):
            fields = {"first_name": f"Seed {n}", "email": f"seed{n}@x.io"}
            reply = session.post(f"{url}/contacts", json=fields, timeout=10)
            assert reply.status_code == 201, reply.text
            paths.append(f"/contacts/{reply.json()['id']}")
    return paths


def report(name: str, load: Load, gone: bool = False) -> None:
    print(f"\n{name}: {load.summary()}")
    if gone:
        print("  (the failures are the requests sent after the service was gone)")
        return
    for outcome in (load.failed("get") + load.failed("create"))[:10]:
        print(f"  {outcome}")


def stored(database_url: str, emails: list[str]) -> dict[str, int]:
    """How many rows hold each of these emails."""
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT email, count(*) FROM contacts WHERE email = ANY(%s) GROUP BY email",
            (emails,),
        )
        return dict(cursor.fetchall())


def pids(processes: list[psutil.Process]) -> set[int]:
    return {process.pid for process in processes}


def test_a_killed_worker_is_replaced_and_no_get_fails(stack: Stack) -> None:
    paths = contacts(stack.url)
    with Load(stack.url, paths, getters=6) as load:
        load.wait_for_more(300)
        victim = stack.workers()[0]
        victim.send_signal(signal.SIGKILL)
        wait_for(
            lambda: len(pids(stack.workers()) - {victim.pid}) == 2,
            60,
            "a replacement worker",
        )
        load.wait_for_more(300)
    report("SIGKILL one of two workers", load)
    assert load.failed("get") == []
    assert f"worker {victim.pid} killed by SIGKILL" in stack.log.read_text()


def test_sighup_replaces_every_worker_and_no_request_fails(stack: Stack, env: dict) -> None:
    paths = contacts(stack.url)
    before = pids(stack.workers())
    # Creates without an Idempotency-Key, which Envoy never sends twice: none
    # may fail, because Envoy sends a worker nothing new before it drains.
    with Load(stack.url, paths, getters=4, creators=2, keyed=False) as load:
        load.wait_for_more(300)
        os.kill(stack.process.pid, signal.SIGHUP)
        # The old ones are gone once they stop listening (after their drain).
        wait_for(
            lambda: len(now := pids(stack.workers())) == 2 and not now & before,
            120,
            "every worker to be replaced",
        )
        load.wait_for_more(300)
    report("SIGHUP (rolling restart)", load)
    assert load.failed("get") == [] and load.failed("create") == []
    emails = [o.email for o in load.of("create") if o.email]
    assert stored(env["CONTACTS_DATABASE_URL"], emails) == dict.fromkeys(emails, 1)


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_killing_the_supervisor_leaves_nothing_running(stack: Stack) -> None:
    paths = contacts(stack.url)
    everyone = pids(stack.processes())
    assert len(everyone) == 4  # the supervisor, two workers, Envoy
    with Load(stack.url, paths, getters=4) as load:
        load.wait_for_more(200)
        stack.process.send_signal(signal.SIGKILL)
        stack.process.wait()
        wait_for(lambda: all(gone(pid) for pid in everyone), 60, "every process to go")
        wait_for(lambda: all(port_free(port) for port in stack.ports()), 30, "the ports")
    report("SIGKILL the supervisor", load, gone=True)


def test_a_host_lost_behind_envoy_costs_no_get_and_no_create_twice(
    env: dict[str, str], tmp_path: Path
) -> None:
    hosts = [Server(env, tmp_path), Server(env, tmp_path)]
    # A name resolves to all its addresses: "localhost" is one here.
    upstreams = f"127.0.0.1:{hosts[0].proxy_port},localhost:{hosts[1].proxy_port}"
    front = Stack({**env, "CONTACTS_UPSTREAMS": upstreams}, tmp_path, 0, ENVOY_ALONE)
    try:
        paths = contacts(front.url)
        with Load(front.url, paths, getters=4, creators=2) as load:
            load.wait_for_more(300)
            lost = hosts[0].processes()
            for process in lost:  # the supervisor first: no replacement
                process.send_signal(signal.SIGKILL)
            wait_for(lambda: all(gone(p.pid) for p in lost), 30, "the host to go")
            load.wait_for_more(300)
    finally:
        front.stop()
        for host in hosts:
            host.stop()
    report("two hosts behind `python -m server envoy`, one SIGKILLed", load)
    assert load.failed("get") == []
    emails = [o.email for o in load.of("create") if o.email]
    rows = stored(env["CONTACTS_DATABASE_URL"], emails)
    assert all(count == 1 for count in rows.values()), "a create was made twice"
    answered = [o.email for o in load.of("create") if o.ok and o.email]
    assert answered and all(email.endswith(CREATED_DOMAIN) for email in answered)
    assert all(rows.get(email) == 1 for email in answered), "an answered create was lost"
