"""The seed's rate limits: per client, exact, unforgeable, with the headers REST clients use."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Iterable, Iterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from contacts.v1 import contacts_pb2 as pb
from contacts.v1 import contacts_pb2_grpc
from server.auth.tokens import Tokens
from server.data.store import Store
from server.limits.buckets import MAX_BUCKETS, WINDOW, MemoryBuckets, Verdict
from server.rpc.app import App, create_app
from server.settings import Settings
from tests.conftest import Rest, bearer, body
from tests.harness import Envoy, wait_for


class Clock:
    """A clock the tests move by hand, so that nothing waits for real time."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def limited(settings: Settings, store: Store, clock: Clock) -> Iterator[App]:
    limits_on = dataclasses.replace(settings, rate_limit_create=60, rate_limit_default=120)
    running = create_app(limits_on, store, host="127.0.0.1", buckets=MemoryBuckets(clock))
    running.start()
    yield running
    running.stop(grace=1)


@pytest.fixture(scope="module")
def limited_envoy(limited: App, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Envoy]:
    proxy = Envoy(limited.proxy_port, tmp_path_factory.mktemp("envoy-limited"))
    yield proxy
    proxy.stop()


@pytest.fixture
def api(limited_envoy: Envoy, clock: Clock) -> Rest:
    clock.advance(WINDOW)  # every bucket is full again
    client = Rest(limited_envoy.url)
    wait_for(lambda: client.get(f"/contacts/{uuid.uuid4()}").status_code == 404, what="envoy")
    clock.advance(WINDOW)
    return client


NEW = {"first_name": "R", "email": "r@x.io"}


def test_61_rapid_creates_the_61st_is_429(api: Rest, clock: Clock) -> None:
    replies = [api.post("/contacts", json=NEW) for _ in range(61)]
    assert [r.status_code for r in replies] == [201] * 60 + [429]
    first, last_ok, refused = replies[0], replies[59], replies[60]
    assert first.headers["ratelimit-limit"] == "60"
    assert first.headers["ratelimit-remaining"] == "59"
    assert last_ok.headers["ratelimit-remaining"] == "0"
    assert body(refused) == {"detail": "Rate limit exceeded"}
    assert "grpc-status-details-bin" not in refused.headers
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["ratelimit-remaining"] == "0"
    assert int(refused.headers["ratelimit-reset"]) == 60
    clock.advance(1)
    assert api.post("/contacts", json=NEW).status_code == 201
    assert api.post("/contacts", json=NEW).status_code == 429


def test_calls_with_refused_tokens_are_limited_too(api: Rest) -> None:
    bad = {"Authorization": "Bearer not.a.token"}
    codes = [api.get(f"/contacts/{uuid.uuid4()}", headers=bad).status_code for _ in range(121)]
    assert codes == [401] * 120 + [429]


def test_121_rapid_gets_the_121st_is_429(api: Rest) -> None:
    codes = [api.get(f"/contacts/{uuid.uuid4()}").status_code for _ in range(121)]
    assert codes == [404] * 120 + [429]


def test_limited_errors_still_carry_the_headers(api: Rest) -> None:
    r = api.get(f"/contacts/{uuid.uuid4()}")
    assert r.status_code == 404
    assert body(r) == {"detail": "Contact not found"}
    assert r.headers["ratelimit-limit"] == "120"
    assert r.headers["ratelimit-remaining"] == "119"


def test_create_and_general_buckets_are_separate(api: Rest) -> None:
    for _ in range(60):
        api.post("/contacts", json=NEW)
    assert api.post("/contacts", json=NEW).status_code == 429
    assert api.get(f"/contacts/{uuid.uuid4()}").status_code == 404


def test_each_token_subject_has_its_own_bucket(api: Rest, tokens: Tokens) -> None:
    alice, bob = tokens.issue(f"alice-{uuid.uuid4()}"), tokens.issue(f"bob-{uuid.uuid4()}")
    assert all(api.post("/contacts", token=alice, json=NEW).status_code == 201 for _ in range(60))
    assert api.post("/contacts", token=alice, json=NEW).status_code == 429
    assert api.post("/contacts", token=bob, json=NEW).status_code == 201
    assert api.post("/contacts", json=NEW).status_code == 201  # anonymous: the address


@pytest.mark.parametrize(
    "header", ["X-Forwarded-For", "X-Real-IP", "X-Contacts-Client-Address", "Forwarded"]
)
def test_rotating_address_headers_still_drains_one_bucket(api: Rest, header: str) -> None:
    codes = [
        api.post("/contacts", json=NEW, headers={header: f"203.0.113.{i % 250}"}).status_code
        for i in range(61)
    ]
    assert codes == [201] * 60 + [429]


def test_grpc_is_limited_the_same_way(limited: App, clock: Clock, tokens: Tokens) -> None:
    clock.advance(WINDOW)
    md = bearer(tokens.issue(f"svc-{uuid.uuid4()}"))
    with grpc.insecure_channel(f"127.0.0.1:{limited.port}") as channel:
        stub = contacts_pb2_grpc.ContactsServiceStub(channel)
        for _ in range(60):
            _, call = stub.CreateContact.with_call(
                pb.CreateContactRequest(first_name="G", email="g@x.io"), metadata=md
            )
        assert dict(call.trailing_metadata())["ratelimit-remaining"] == "0"
        with pytest.raises(grpc.RpcError) as refused:
            stub.CreateContact(pb.CreateContactRequest(first_name="G", email="g@x.io"), metadata=md)
        error = refused.value
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        assert error.details() == "Rate limit exceeded"  # type: ignore[attr-defined]
        assert dict(error.trailing_metadata())["retry-after"] == "1"  # type: ignore[attr-defined]
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        assert status is not None
        retry, info = error_details_pb2.RetryInfo(), error_details_pb2.ErrorInfo()
        assert status.details[0].Unpack(info) and info.reason == "RATE_LIMITED"
        assert status.details[1].Unpack(retry) and retry.retry_delay.seconds == 1


def test_health_is_never_limited(limited: App, clock: Clock) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    clock.advance(WINDOW)
    with grpc.insecure_channel(f"127.0.0.1:{limited.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(300):
            stub.Check(health_pb2.HealthCheckRequest())


def test_the_address_header_is_believed_only_from_trusted_proxies(
    settings: Settings, store: Store, clock: Clock
) -> None:
    untrusting = dataclasses.replace(settings, rate_limit_default=5, trusted_proxies=())
    app = create_app(untrusting, store, host="127.0.0.1", buckets=MemoryBuckets(clock))
    app.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = contacts_pb2_grpc.ContactsServiceStub(channel)
            codes = []
            for i in range(6):
                md = (("x-contacts-client-address", f"198.51.100.{i}"),)
                try:
                    stub.GetContact(pb.GetContactRequest(contact_id=str(uuid.uuid4())), metadata=md)
                except grpc.RpcError as error:
                    codes.append(error.code())  # type: ignore[attr-defined]
        assert codes == [grpc.StatusCode.NOT_FOUND] * 5 + [grpc.StatusCode.RESOURCE_EXHAUSTED]
    finally:
        app.stop(grace=0)


# The bucket itself.


def test_a_bucket_refills_continuously() -> None:
    clock = Clock()
    buckets = MemoryBuckets(clock)

    async def scenario() -> None:
        assert all([(await buckets.take("k", 60)).allowed for _ in range(60)])
        refused = await buckets.take("k", 60)
        assert not refused.allowed and refused.retry_after == pytest.approx(1.0)
        clock.advance(0.5)
        assert not (await buckets.take("k", 60)).allowed
        clock.advance(0.5)
        assert (await buckets.take("k", 60)).allowed
        clock.advance(30)
        assert sum([(await buckets.take("k", 60)).allowed for _ in range(40)]) == 30

    asyncio.run(scenario())


def test_concurrent_calls_get_exactly_one_bucket() -> None:
    buckets = MemoryBuckets(Clock())

    async def scenario() -> list[Verdict]:
        return await asyncio.gather(*(buckets.take("shared", 60) for _ in range(1600)))

    assert sum(verdict.allowed for verdict in asyncio.run(scenario())) == 60


def take_all(buckets: MemoryBuckets, keys: Iterable[str], limit: int = 60) -> None:
    async def scenario() -> None:
        for key in keys:
            await buckets.take(key, limit)

    asyncio.run(scenario())


def test_idle_buckets_are_forgotten() -> None:
    clock = Clock()
    buckets = MemoryBuckets(clock)
    take_all(buckets, (f"client-{i}" for i in range(1000)))
    assert len(buckets) == 1000
    clock.advance(WINDOW + 1)
    take_all(buckets, ["someone-new"])
    assert len(buckets) == 1


def test_a_flood_of_clients_is_capped() -> None:
    buckets = MemoryBuckets(Clock())
    take_all(buckets, (f"ip:10.{i >> 16}.{(i >> 8) & 255}.{i & 255}" for i in range(100_000)))
    assert len(buckets) == MAX_BUCKETS
    # the newest clients are the ones kept
    assert asyncio.run(buckets.take("ip:10.1.134.159", 60)).remaining == 58


def test_refused_verdict_headers_are_whole_seconds() -> None:
    clock = Clock()
    buckets = MemoryBuckets(clock)
    take_all(buckets, ["k"] * 7, limit=7)
    refused = asyncio.run(buckets.take("k", 7))
    headers = dict(refused.headers())
    assert headers["retry-after"] == "9"  # 60/7 = 8.57 s, rounded up
    assert headers["ratelimit-remaining"] == "0"


def test_a_direct_grpc_client_cannot_speak_for_another(limited: App, clock: Clock) -> None:
    # From loopback, a trusted address: on the gRPC port the header is still
    # nobody's word. Only Envoy's door believes it.
    clock.advance(WINDOW)
    victim = "203.0.113.9"
    spoofed = (("x-contacts-client-address", victim),)

    def get(port: int) -> tuple[grpc.StatusCode, dict[str, str]]:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = contacts_pb2_grpc.ContactsServiceStub(channel)
            try:
                stub.GetContact(
                    pb.GetContactRequest(contact_id=str(uuid.uuid4())), metadata=spoofed
                )
            except grpc.RpcError as error:
                return error.code(), dict(error.trailing_metadata())  # type: ignore[attr-defined]
        raise AssertionError("found a contact that does not exist")

    codes = [get(limited.port)[0] for _ in range(121)]
    assert codes == [grpc.StatusCode.NOT_FOUND] * 120 + [grpc.StatusCode.RESOURCE_EXHAUSTED]
    # The victim's own bucket, as Envoy speaks for it, is untouched.
    code, headers = get(limited.proxy_port)
    assert code == grpc.StatusCode.NOT_FOUND
    assert headers["ratelimit-remaining"] == "119"
