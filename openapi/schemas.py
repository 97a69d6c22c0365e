"""JSON Schemas of proto messages as Envoy's transcoder prints and parses them.

Field names are the proto's (envoy.yaml.tmpl: preserve_proto_field_names),
64-bit integers are strings and Timestamps RFC 3339 strings (proto3 JSON).
A reply prints every field that has no presence (always_print_primitive_fields);
of the others the contract's file comment says which are always set. Here: a
field in a oneof (which a proto3 `optional` field is) may be absent, every
other is required in a reply. In a request, required is what
google.api.field_behavior says.
"""

from __future__ import annotations

from typing import Any

from google.api import field_behavior_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from contacts.options.v1 import options_pb2
from openapi.descriptors import Contract

Schema = dict[str, Any]

_INT32 = {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
_UINT32 = {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}
_SCALARS: dict[int, Schema] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_INT32: _INT32,
    FieldDescriptor.TYPE_SINT32: _INT32,
    FieldDescriptor.TYPE_SFIXED32: _INT32,
    FieldDescriptor.TYPE_UINT32: _UINT32,
    FieldDescriptor.TYPE_FIXED32: _UINT32,
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_SINT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_UINT64: {"type": "string"},
    FieldDescriptor.TYPE_FIXED64: {"type": "string"},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}
# Well-known types with a JSON form of their own (proto3 JSON mapping).
WELL_KNOWN: dict[str, Schema] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?s$"},
    "google.protobuf.FieldMask": {"type": "string"},
}
_FORMATS = {options_pb2.FORMAT_UUID: "uuid"}


def nullable(schema: Schema) -> Schema:
    """`schema` that also takes null (OpenAPI 3.1: a JSON Schema type list)."""
    found = dict(schema)
    if "type" in found:
        found["type"] = [found["type"], "null"]
        return found
    return {"anyOf": [found, {"type": "null"}]}


def has_presence(field: FieldDescriptor) -> bool:
    """A field that can be absent (a proto3 `optional` field is in a oneof)."""
    return field.containing_oneof is not None


def behaviors(field: FieldDescriptor) -> set[int]:
    return set(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def is_required(field: FieldDescriptor) -> bool:
    return field_behavior_pb2.REQUIRED in behaviors(field)


def is_output_only(field: FieldDescriptor) -> bool:
    return field_behavior_pb2.OUTPUT_ONLY in behaviors(field)


class Schemas:
    """Builds schemas; reply messages become named components, built once."""

    def __init__(self, contract: Contract) -> None:
        self.contract = contract
        self.components: dict[str, Schema] = {}
        self._names: dict[str, str] = {}  # component name -> full name

    def reply(self, message: Descriptor) -> Schema:
        """A $ref to the component of a reply message."""
        if message.full_name in WELL_KNOWN:
            return dict(WELL_KNOWN[message.full_name])
        name = message.name
        if self._names.setdefault(name, message.full_name) != message.full_name:
            raise ValueError(
                f"two reply messages named {name}: {message.full_name}, {self._names[name]}"
            )
        if name not in self.components:
            self.components[name] = {}  # placeholder: a message may contain itself
            self.components[name] = self._object(message, reply=True, leave_out=())
        return {"$ref": f"#/components/schemas/{name}"}

    def request(
        self,
        message: Descriptor,
        leave_out: tuple[str, ...] = (),
        clearable: frozenset[str] = frozenset(),
    ) -> Schema:
        """The inline schema of a request body: output-only fields and those bound
        elsewhere (path variables) left out; `clearable` fields also take null."""
        schema = self._object(message, reply=False, leave_out=leave_out)
        for name in clearable:
            if name in schema["properties"]:
                schema["properties"][name] = nullable(schema["properties"][name])
        return schema

    def field(self, field: FieldDescriptor, reply: bool) -> Schema:
        """A field's schema, described by its comment."""
        schema = self._value(field, reply)
        if field.is_repeated and not _is_map(field):
            schema = {"type": "array", "items": schema}
        comment = self.contract.comment(field)
        if comment:
            schema["description"] = comment
        if reply and is_output_only(field):
            schema["readOnly"] = True
        return schema

    def _object(self, message: Descriptor, reply: bool, leave_out: tuple[str, ...]) -> Schema:
        if message.full_name in WELL_KNOWN:
            return dict(WELL_KNOWN[message.full_name])
        fields = [
            field
            for field in message.fields
            if field.name not in leave_out and (reply or not is_output_only(field))
        ]
        schema: Schema = {"type": "object"}
        comment = self.contract.comment(message)
        if comment:
            schema["description"] = comment
        schema["properties"] = {field.name: self.field(field, reply) for field in fields}
        required = [
            field.name
            for field in fields
            if (field.containing_oneof is None if reply else is_required(field))
        ]
        if required:
            schema["required"] = required
        if reply:
            # Envoy prints the fields of the message and nothing else. A request
            # may carry others: the transcoder ignores unknown fields.
            schema["additionalProperties"] = False
        return schema

    def _value(self, field: FieldDescriptor, reply: bool) -> Schema:
        if _is_map(field):
            value = field.message_type.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self._value(value, reply)}
        if field.type == FieldDescriptor.TYPE_ENUM:
            return {"type": "string", "enum": [value.name for value in field.enum_type.values]}
        if field.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
            message = field.message_type
            if (
                message.full_name.startswith("google.protobuf.")
                and message.full_name not in WELL_KNOWN
            ):
                raise ValueError(
                    f"{field.full_name}: no JSON Schema here for {message.full_name} yet"
                )
            return self.reply(message) if reply else self.request(message)
        schema = dict(_SCALARS[field.type])
        found = _FORMATS.get(field.GetOptions().Extensions[options_pb2.format])
        if found:
            schema["format"] = found
        return schema


def _is_map(field: FieldDescriptor) -> bool:
    message = field.message_type
    return message is not None and message.GetOptions().map_entry
