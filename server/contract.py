"""What contacts.proto declares of each RPC, read from its descriptors in this one place:
who may call it and which rate limit it draws from (`(policy)`), its HTTP rule and
REST reply (`google.api.http`, `(rest)`), and its gRPC kind.

An RPC of ours that lacks a policy fails closed (auth required). The
servers' infrastructure (health, reflection) is public and never limited.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from google.api import annotations_pb2
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import FileDescriptor, MethodDescriptor

from contacts.options.v1 import options_pb2
from contacts.v1 import contacts_pb2

# Infrastructure every client needs without a token: grpcurl's reflection and
# the health checks of Envoy and orchestrators. Never authenticated or limited.
INFRASTRUCTURE = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
)


class Access(enum.Enum):
    REQUIRED = "required"
    PUBLIC = "public"


class RateClass(enum.Enum):
    GENERAL = "general"
    CREATE = "create"


@dataclass(frozen=True)
class Rule:
    access: Access
    rate: RateClass | None  # None: never limited


REQUIRED_GENERAL = Rule(Access.REQUIRED, RateClass.GENERAL)
INFRASTRUCTURE_RULE = Rule(Access.PUBLIC, None)

CREATED = "created"  # a reply kind: 201, with the new resource's Location
_REPLY_KINDS = {
    options_pb2.REPLY_CREATED: CREATED,
    options_pb2.REPLY_NO_CONTENT: "no-content",
    options_pb2.REPLY_LIST: "list",
}


def grpc_type(request_streaming: bool, response_streaming: bool) -> str:
    """The grpc_type label of go-grpc-prometheus."""
    if request_streaming:
        return "bidi_stream" if response_streaming else "client_stream"
    return "server_stream" if response_streaming else "unary"


def _template(path: str) -> re.Pattern[str]:
    """ "/contacts/{contact_id}" -> a pattern with a named group per variable."""
    return re.compile(re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(path)))


@dataclass(frozen=True)
class Method:
    """One RPC of ours as the proto declares it."""

    path: str  # "/contacts.v1.ContactsService/GetContact"
    descriptor: MethodDescriptor

    @cached_property
    def rule(self) -> Rule:
        policy = self.descriptor.GetOptions().Extensions[options_pb2.policy]
        access = Access.PUBLIC if policy.auth == options_pb2.AUTH_PUBLIC else Access.REQUIRED
        rate = (
            RateClass.CREATE if policy.rate == options_pb2.RATE_CLASS_CREATE else RateClass.GENERAL
        )
        return Rule(access, rate)

    @cached_property
    def kind(self) -> str:
        return grpc_type(self.descriptor.client_streaming, self.descriptor.server_streaming)

    @cached_property
    def http_verb(self) -> str | None:
        """ "get", "post", ... of its google.api.http rule (None: no rule, or custom)."""
        verb = self.descriptor.GetOptions().Extensions[annotations_pb2.http].WhichOneof("pattern")
        return None if verb in (None, "custom") else verb

    @cached_property
    def http_path(self) -> str:
        rule = self.descriptor.GetOptions().Extensions[annotations_pb2.http]
        return getattr(rule, self.http_verb) if self.http_verb else ""

    @cached_property
    def path_template(self) -> re.Pattern[str] | None:
        """A pattern of its REST path, a group per variable; None without an HTTP rule."""
        return _template(self.http_path) if self.http_path else None

    @cached_property
    def reply_kind(self) -> str | None:
        """How a REST reply differs from a plain 200: created, no-content or list."""
        return _REPLY_KINDS.get(self.descriptor.GetOptions().Extensions[options_pb2.rest].reply)

    @cached_property
    def idempotency_key(self) -> bool:
        """Whether an Idempotency-Key makes a retry answer the first response."""
        return bool(self.descriptor.GetOptions().Extensions[options_pb2.rest].idempotency_key)

    @cached_property
    def reply_class(self) -> type[Any]:
        return message_factory.GetMessageClass(self.descriptor.output_type)


class Contract:
    """Every RPC of the proto files, by gRPC method path."""

    def __init__(self, files: Iterable[FileDescriptor] = (contacts_pb2.DESCRIPTOR,)) -> None:
        self.methods: dict[str, Method] = {}
        for file in files:
            for service in file.services_by_name.values():
                for method in service.methods:
                    path = f"/{service.full_name}/{method.name}"
                    self.methods[path] = Method(path, method)

    def __iter__(self) -> Iterator[Method]:
        return iter(self.methods.values())

    def get(self, method_path: str) -> Method | None:
        return self.methods.get(method_path)

    def kind(self, method_path: str) -> str:
        """Its grpc_type; the servers' other services (health, reflection) are looked
        up in the default descriptor pool, where their generated code put them."""
        method = self.methods.get(method_path)
        if method is not None:
            return method.kind
        service, _, name = method_path.strip("/").partition("/")
        try:
            found = descriptor_pool.Default().FindServiceByName(service).methods_by_name[name]
        except KeyError:
            return "unary"
        return grpc_type(found.client_streaming, found.server_streaming)

    def rule(self, method_path: str) -> Rule:
        """Who may call it and its rate class; fails closed for an RPC not declared."""
        method = self.methods.get(method_path)
        if method is not None:
            return method.rule
        service = method_path.strip("/").partition("/")[0]
        return INFRASTRUCTURE_RULE if service in INFRASTRUCTURE else REQUIRED_GENERAL


def http_status(failure: int) -> int:
    """The HTTP status the proto gives a `Failure` value."""
    value = options_pb2.Failure.DESCRIPTOR.values_by_number[failure]
    return int(value.GetOptions().Extensions[options_pb2.failure].status)
