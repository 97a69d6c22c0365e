"""Who may call each RPC and which rate limit it draws from, read from contacts.proto.

The `(contacts.options.v1.policy)` method option is the only place this is
written down; an RPC of ours that lacks it fails closed (auth required).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.descriptor import FileDescriptor

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


def rule_of(options: options_pb2.Policy) -> Rule:
    access = Access.PUBLIC if options.auth == options_pb2.AUTH_PUBLIC else Access.REQUIRED
    rate = RateClass.CREATE if options.rate == options_pb2.RATE_CLASS_CREATE else RateClass.GENERAL
    return Rule(access, rate)


class Policies:
    """The rule of every RPC, by gRPC method path ("/package.Service/Method")."""

    def __init__(self, files: Iterable[FileDescriptor] = (contacts_pb2.DESCRIPTOR,)) -> None:
        self._rules: dict[str, Rule] = {}
        for file in files:
            for service in file.services_by_name.values():
                for method in service.methods:
                    options = method.GetOptions().Extensions[options_pb2.policy]
                    self._rules[f"/{service.full_name}/{method.name}"] = rule_of(options)

    def __getitem__(self, method_path: str) -> Rule:
        rule = self._rules.get(method_path)
        if rule is not None:
            return rule
        service = method_path.strip("/").partition("/")[0]
        return INFRASTRUCTURE_RULE if service in INFRASTRUCTURE else REQUIRED_GENERAL
