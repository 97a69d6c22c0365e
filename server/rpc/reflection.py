"""Server reflection under both names clients ask for: `grpc.reflection.v1` (buf, and
grpcurl first) and `grpc.reflection.v1alpha` (older tools).

grpcio-reflection serves only v1alpha (grpc/grpc issue 38576). The two protocols
are the same messages under another package, field for field, so v1 is the
same servicer registered under v1's name, its messages read and written with
v1alpha's classes. v1's own descriptor is made from v1alpha's, so that
reflection can describe the reflection service too.
"""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE = f"{V1_PACKAGE}.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"


def _register_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    """v1's file descriptor, v1alpha's renamed, in the pool reflection answers from."""
    try:
        pool.FindFileByName(V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old = proto.package
    proto.name, proto.package = V1_FILE, V1_PACKAGE
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, V1_PACKAGE)
            method.output_type = method.output_type.replace(old, V1_PACKAGE)
    for message in proto.message_type:
        for field in message.field:
            if field.type_name:  # set, even to "", it would make a string a message
                field.type_name = field.type_name.replace(old, V1_PACKAGE)
    pool.Add(proto)


def enable(services: tuple[str, ...], server: grpc.aio.Server) -> None:
    """Reflection of `services` (and of itself, both versions) on `server`."""
    _register_v1_descriptor(descriptor_pool.Default())
    names = (*services, reflection.SERVICE_NAME, V1_SERVICE)
    servicer = reflection.aio.ReflectionServicer(names)
    reflection.enable_server_reflection(names, server)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE, {"ServerReflectionInfo": handler}),)
    )
