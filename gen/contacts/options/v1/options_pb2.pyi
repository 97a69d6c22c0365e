from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Auth(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUTH_UNSPECIFIED: _ClassVar[Auth]
    AUTH_REQUIRED: _ClassVar[Auth]
    AUTH_PUBLIC: _ClassVar[Auth]

class RateClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RATE_CLASS_UNSPECIFIED: _ClassVar[RateClass]
    RATE_CLASS_GENERAL: _ClassVar[RateClass]
    RATE_CLASS_CREATE: _ClassVar[RateClass]

class Reply(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPLY_UNSPECIFIED: _ClassVar[Reply]
    REPLY_CREATED: _ClassVar[Reply]
    REPLY_NO_CONTENT: _ClassVar[Reply]
    REPLY_LIST: _ClassVar[Reply]

class Failure(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILURE_UNSPECIFIED: _ClassVar[Failure]
    FAILURE_INVALID_ARGUMENT: _ClassVar[Failure]
    FAILURE_UNAUTHENTICATED: _ClassVar[Failure]
    FAILURE_PERMISSION_DENIED: _ClassVar[Failure]
    FAILURE_NOT_FOUND: _ClassVar[Failure]
    FAILURE_CONFLICT: _ClassVar[Failure]
    FAILURE_PRECONDITION_FAILED: _ClassVar[Failure]
    FAILURE_PAYLOAD_TOO_LARGE: _ClassVar[Failure]
    FAILURE_IDEMPOTENCY_KEY_REUSED: _ClassVar[Failure]
    FAILURE_RATE_LIMITED: _ClassVar[Failure]
    FAILURE_URI_TOO_LONG: _ClassVar[Failure]
    FAILURE_REQUEST_TIMEOUT: _ClassVar[Failure]
    FAILURE_HEADERS_TOO_LARGE: _ClassVar[Failure]
    FAILURE_UNAVAILABLE: _ClassVar[Failure]

class Format(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FORMAT_UNSPECIFIED: _ClassVar[Format]
    FORMAT_UUID: _ClassVar[Format]
AUTH_UNSPECIFIED: Auth
AUTH_REQUIRED: Auth
AUTH_PUBLIC: Auth
RATE_CLASS_UNSPECIFIED: RateClass
RATE_CLASS_GENERAL: RateClass
RATE_CLASS_CREATE: RateClass
REPLY_UNSPECIFIED: Reply
REPLY_CREATED: Reply
REPLY_NO_CONTENT: Reply
REPLY_LIST: Reply
FAILURE_UNSPECIFIED: Failure
FAILURE_INVALID_ARGUMENT: Failure
FAILURE_UNAUTHENTICATED: Failure
FAILURE_PERMISSION_DENIED: Failure
FAILURE_NOT_FOUND: Failure
FAILURE_CONFLICT: Failure
FAILURE_PRECONDITION_FAILED: Failure
FAILURE_PAYLOAD_TOO_LARGE: Failure
FAILURE_IDEMPOTENCY_KEY_REUSED: Failure
FAILURE_RATE_LIMITED: Failure
FAILURE_URI_TOO_LONG: Failure
FAILURE_REQUEST_TIMEOUT: Failure
FAILURE_HEADERS_TOO_LARGE: Failure
FAILURE_UNAVAILABLE: Failure
FORMAT_UNSPECIFIED: Format
FORMAT_UUID: Format
POLICY_FIELD_NUMBER: _ClassVar[int]
policy: _descriptor.FieldDescriptor
REST_FIELD_NUMBER: _ClassVar[int]
rest: _descriptor.FieldDescriptor
FORMAT_FIELD_NUMBER: _ClassVar[int]
format: _descriptor.FieldDescriptor
FAILURE_FIELD_NUMBER: _ClassVar[int]
failure: _descriptor.FieldDescriptor

class Policy(_message.Message):
    __slots__ = ("auth", "rate")
    AUTH_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    auth: Auth
    rate: RateClass
    def __init__(self, auth: _Optional[_Union[Auth, str]] = ..., rate: _Optional[_Union[RateClass, str]] = ...) -> None: ...

class FailureInfo(_message.Message):
    __slots__ = ("status", "every_rpc")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EVERY_RPC_FIELD_NUMBER: _ClassVar[int]
    status: int
    every_rpc: bool
    def __init__(self, status: _Optional[int] = ..., every_rpc: _Optional[bool] = ...) -> None: ...

class Rest(_message.Message):
    __slots__ = ("reply", "failures", "idempotency_key", "etag", "if_match")
    REPLY_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    IF_MATCH_FIELD_NUMBER: _ClassVar[int]
    reply: Reply
    failures: _containers.RepeatedScalarFieldContainer[Failure]
    idempotency_key: bool
    etag: bool
    if_match: bool
    def __init__(self, reply: _Optional[_Union[Reply, str]] = ..., failures: _Optional[_Iterable[_Union[Failure, str]]] = ..., idempotency_key: _Optional[bool] = ..., etag: _Optional[bool] = ..., if_match: _Optional[bool] = ...) -> None: ...
