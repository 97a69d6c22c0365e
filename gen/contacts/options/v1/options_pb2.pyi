from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
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
AUTH_UNSPECIFIED: Auth
AUTH_REQUIRED: Auth
AUTH_PUBLIC: Auth
RATE_CLASS_UNSPECIFIED: RateClass
RATE_CLASS_GENERAL: RateClass
RATE_CLASS_CREATE: RateClass
POLICY_FIELD_NUMBER: _ClassVar[int]
policy: _descriptor.FieldDescriptor

class Policy(_message.Message):
    __slots__ = ("auth", "rate")
    AUTH_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    auth: Auth
    rate: RateClass
    def __init__(self, auth: _Optional[_Union[Auth, str]] = ..., rate: _Optional[_Union[RateClass, str]] = ...) -> None: ...
