"""The compiled contract as the generator reads it: a descriptor pool plus the
proto's comments, which a pool does not keep (protoc's source info does)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    EnumValueDescriptor,
    FieldDescriptor,
    FileDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)

# Field numbers of FileDescriptorProto, DescriptorProto, ... that make up a
# source location's path (descriptor.proto, SourceCodeInfo.Location.path).
_MESSAGES, _ENUMS, _SERVICES = 4, 5, 6
_FIELDS, _NESTED_MESSAGES, _NESTED_ENUMS = 2, 3, 4
_VALUES, _METHODS = 2, 2
_SYNTAX = 12

Described: TypeAlias = (
    FileDescriptor
    | Descriptor
    | FieldDescriptor
    | EnumDescriptor
    | ServiceDescriptor
    | MethodDescriptor
)


def _clean(comment: str) -> str:
    """protoc keeps the space after `//` on every line; paragraphs stay apart."""
    lines = [line[1:] if line.startswith(" ") else line for line in comment.splitlines()]
    return "\n".join(lines).strip()


@dataclass
class Contract:
    pool: descriptor_pool.DescriptorPool
    files: Sequence[FileDescriptor]
    _comments: dict[str, str]

    @classmethod
    def load(cls, descriptor_set: bytes) -> Contract:
        """A pool of every file in a descriptor set made with --include_imports and
        --include_source_info (protoc writes a file after those it imports)."""
        files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set).file
        if not any(file.HasField("source_code_info") for file in files):
            raise ValueError(
                "the descriptor set has no comments: build it with --include_source_info"
            )
        pool = descriptor_pool.DescriptorPool()
        comments: dict[str, str] = {}
        for file in files:
            pool.Add(file)
            comments.update(_comments_of(file))
        return cls(pool, [pool.FindFileByName(file.name) for file in files], comments)

    def comment(self, item: Described) -> str:
        """The comment just above an element of the proto ("" if none)."""
        key = item.name if isinstance(item, FileDescriptor) else item.full_name
        return self._comments.get(key, "")

    def value_comment(self, value: EnumValueDescriptor) -> str:
        return self._comments.get(f"{value.type.full_name}.{value.name}", "")

    def services(self) -> Iterator[ServiceDescriptor]:
        for file in self.files:
            yield from file.services_by_name.values()


def _comments_of(file: descriptor_pb2.FileDescriptorProto) -> dict[str, str]:
    """Leading comments by full name (enum values by enum name + value name; the
    file's own comment, the one above `syntax`, by file name)."""
    by_path = {
        tuple(location.path): _clean(location.leading_comments)
        for location in file.source_code_info.location
        if location.leading_comments
    }
    names: dict[str, str] = {}

    def name(path: tuple[int, ...], full_name: str) -> None:
        if path in by_path:
            names[full_name] = by_path[path]

    def enums(
        path: tuple[int, ...], scope: str, found: Sequence[descriptor_pb2.EnumDescriptorProto]
    ) -> None:
        for i, enum in enumerate(found):
            enum_path, full = (*path, i), f"{scope}.{enum.name}"
            name(enum_path, full)
            for j, value in enumerate(enum.value):
                name((*enum_path, _VALUES, j), f"{full}.{value.name}")

    def messages(
        path: tuple[int, ...], scope: str, found: Sequence[descriptor_pb2.DescriptorProto]
    ) -> None:
        for i, message in enumerate(found):
            message_path, full = (*path, i), f"{scope}.{message.name}"
            name(message_path, full)
            for j, field in enumerate(message.field):
                name((*message_path, _FIELDS, j), f"{full}.{field.name}")
            messages((*message_path, _NESTED_MESSAGES), full, message.nested_type)
            enums((*message_path, _NESTED_ENUMS), full, message.enum_type)

    package = file.package
    name((_SYNTAX,), file.name)
    messages((_MESSAGES,), package, file.message_type)
    enums((_ENUMS,), package, file.enum_type)
    for i, service in enumerate(file.service):
        full = f"{package}.{service.name}"
        name((_SERVICES, i), full)
        for j, method in enumerate(service.method):
            name((_SERVICES, i, _METHODS, j), f"{full}.{method.name}")
    return names
