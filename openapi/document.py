"""The OpenAPI 3.1 document of the REST API, from the compiled contract alone.

Routes come from the google.api.http rules; who may call from
(contacts.options.v1.policy); success codes, list shapes and the failures of
each route from (contacts.options.v1.rest) and the Failure enum; texts from
the proto's comments. What is said here is only how the REST door (Envoy and
envoy/rest.lua) answers every route alike: the {"detail"} body of a failure,
and the rate-limit and authentication headers. The document's introduction
(introduction.md) and its request examples (examples.py) are written for
callers, apart from the proto, whose own comments speak to its maintainers.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from pathlib import Path
from typing import Any

from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor

from contacts.options.v1 import options_pb2
from openapi.descriptors import Contract
from openapi.examples import EXAMPLES
from openapi.schemas import WELL_KNOWN, Schema, Schemas, has_presence, is_required
from server.rpc.validation import PAGE_BOUNDS

ERROR = "Error"
# What the page says first, to someone calling the API.
INTRODUCTION = Path(__file__).with_name("introduction.md")
BEARER = "bearer"
RATE_LIMIT_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
REQUEST_ID = "x-request-id"  # on every reply (Envoy's, the server's)
# Headers the REST door adds to every route's replies alike (server/limits.py,
# server/errors.py): the first three on every reply the rate limiter saw.
HEADERS: dict[str, Schema] = {
    "RateLimit-Limit": {
        "description": "Calls per minute the client's bucket allows.",
        "schema": {"type": "integer", "minimum": 1},
    },
    "RateLimit-Remaining": {
        "description": "Calls left in the client's bucket.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "RateLimit-Reset": {
        "description": "Seconds until the bucket is full again.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "Retry-After": {
        "description": "Whole seconds to wait before the next call can pass.",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    },
    "ETag": {
        "description": "The contact's strong ETag; it changes whenever the contact does."
        " Send it back in If-Match to change or delete only what you read.",
        "required": True,
        "schema": {"type": "string"},
    },
    "Location": {
        "description": "Where the new resource is: its path on this service.",
        "required": True,
        "schema": {"type": "string", "format": "uri-reference"},
    },
    "x-request-id": {
        "description": "This call's id, also in the service's log line for it: quote it"
        " when reporting a problem.",
        "required": True,
        "schema": {"type": "string"},
    },
    "Link": {
        "description": 'The next page, as `<...>; rel="next"` (RFC 8288), its URL carrying'
        " the page_token; absent on the last page.",
        "schema": {"type": "string"},
    },
    "WWW-Authenticate": {
        "description": "The scheme to authenticate with: Bearer.",
        "required": True,
        "schema": {"type": "string", "pattern": "^Bearer"},
    },
}
# Failures whose replies carry a header of their own.
FAILURE_HEADERS = {
    options_pb2.FAILURE_RATE_LIMITED: "Retry-After",
    options_pb2.FAILURE_UNAUTHENTICATED: "WWW-Authenticate",
}
_VARIABLE = re.compile(r"\{([^}]*)\}")
# AIP-158's field of a paged reply: on REST, a Link header instead of a member
# (server/rest.py's NEXT_PAGE_FIELD).
NEXT_PAGE_FIELD = "next_page_token"


def document(contract: Contract) -> dict[str, Any]:
    schemas = Schemas(contract)
    failures = Failures(contract)
    paths: dict[str, dict[str, Any]] = {}
    tags = []
    operation_ids: set[str] = set()
    api_file = None
    for service in contract.services():
        routes = [
            (method, i, binding)
            for method in service.methods
            for i, binding in enumerate(
                _bindings(method.GetOptions().Extensions[annotations_pb2.http])
            )
        ]
        if not routes:
            continue
        api_file = api_file or service.file
        tags.append({"name": service.name, "description": contract.comment(service)})
        for method, i, binding in routes:
            verb, path = _route(method, binding)
            operation_id = method.name if i == 0 else f"{method.name}{i}"
            if operation_id in operation_ids:
                raise ValueError(f"two operations named {operation_id}")
            operation_ids.add(operation_id)
            paths.setdefault(path, {})[verb] = {
                "operationId": operation_id,
                **_operation(contract, schemas, failures, method, binding, path),
            }
    if api_file is None:
        raise ValueError("no RPC has a google.api.http rule: nothing to document")
    unused = set(EXAMPLES) - {
        method.full_name for service in contract.services() for method in service.methods
    }
    if unused:
        raise ValueError(f"examples for RPCs the contract does not have: {sorted(unused)}")
    title = contract.comment(api_file).partition("\n\n")[0]
    schemas.components[ERROR] = failures.schema
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title.replace("\n", " "),
            "version": api_file.package.rpartition(".")[2],
            "description": INTRODUCTION.read_text().strip(),
        },
        "tags": tags,
        "paths": paths,
        "components": {
            "schemas": schemas.components,
            "headers": HEADERS,
            "securitySchemes": {
                BEARER: {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


def _bindings(rule: http_pb2.HttpRule) -> list[http_pb2.HttpRule]:
    if not rule.WhichOneof("pattern"):
        return []
    return [rule, *rule.additional_bindings]


def _route(method: MethodDescriptor, rule: http_pb2.HttpRule) -> tuple[str, str]:
    kind = rule.WhichOneof("pattern")
    if kind == "custom":
        verb, path = rule.custom.kind.lower(), rule.custom.path
    else:
        verb, path = kind, getattr(rule, kind)
    for variable in _VARIABLE.findall(path):
        if not re.fullmatch(r"\w+", variable):
            raise ValueError(f"{method.full_name}: path variable {{{variable}}} is not supported")
    return verb, path


class Failures:
    """The Failure enum of the options proto: each value's status, text and reach."""

    def __init__(self, contract: Contract) -> None:
        failure = contract.pool.FindEnumTypeByName("contacts.options.v1.Failure")
        self.schema: Schema = {
            "type": "object",
            "description": contract.comment(failure),
            "properties": {"detail": {"type": "string", "description": "What went wrong."}},
            "required": ["detail"],
            "additionalProperties": False,
        }
        self._values = {
            value.number: (
                value.GetOptions().Extensions[options_pb2.failure],
                contract.value_comment(value),
            )
            for value in failure.values
            if value.number != options_pb2.FAILURE_UNSPECIFIED
        }
        for number, (info, _) in self._values.items():
            if not 400 <= info.status < 600:
                name = failure.values_by_number[number].name
                raise ValueError(f"{name} needs its (failure).status, an HTTP error status")

    def responses(self, rest: options_pb2.Rest) -> dict[str, Schema]:
        listed = set(rest.failures)
        found = sorted(
            (info.status, number, text)
            for number, (info, text) in self._values.items()
            if info.every_rpc or number in listed
        )
        responses = {}
        for status, number, text in found:
            names = [REQUEST_ID, *RATE_LIMIT_HEADERS]
            if number in FAILURE_HEADERS:
                names.insert(0, FAILURE_HEADERS[number])
            responses[str(status)] = {
                "description": text,
                "headers": _headers(names),
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR}"}}
                },
            }
        return responses


def _headers(names: list[str]) -> dict[str, Schema]:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}


def _operation(
    contract: Contract,
    schemas: Schemas,
    failures: Failures,
    method: MethodDescriptor,
    rule: http_pb2.HttpRule,
    path: str,
) -> dict[str, Any]:
    options = method.GetOptions()
    policy = options.Extensions[options_pb2.policy]
    rest = options.Extensions[options_pb2.rest]
    public = policy.auth == options_pb2.AUTH_PUBLIC
    auth = contract.pool.FindEnumTypeByName("contacts.options.v1.Auth")
    summary, _, description = contract.comment(method).partition("\n\n")
    access = contract.value_comment(
        auth.values_by_number[options_pb2.AUTH_PUBLIC if public else options_pb2.AUTH_REQUIRED]
    )
    operation: dict[str, Any] = {
        "tags": [method.containing_service.name],
        "summary": summary.replace("\n", " "),
        "description": "\n\n".join(part for part in (description, f"Auth: {access}") if part),
    }
    request = method.input_type
    in_path = tuple(_VARIABLE.findall(path))
    parameters = [_parameter(schemas, request.fields_by_name[name], "path") for name in in_path]
    if rule.body == "*":
        operation["requestBody"] = _body(schemas, method, in_path)
    else:
        if rule.body:
            field = request.fields_by_name[rule.body]
            operation["requestBody"] = {
                "required": is_required(field),
                "content": {"application/json": {"schema": schemas.field(field, reply=False)}},
            }
        parameters += [
            _parameter(schemas, field, "query")
            for field in request.fields
            if field.name not in in_path and field.name != rule.body
        ]
    parameters += _header_parameters(rest)
    if parameters:
        operation["parameters"] = parameters
    operation["responses"] = {**_success(schemas, method, rest), **failures.responses(rest)}
    # Public routes take a token too (and refuse a bad one): security is optional there.
    operation["security"] = [{}, {BEARER: []}] if public else [{BEARER: []}]
    return operation


def _header_parameters(rest: options_pb2.Rest) -> list[Schema]:
    """The request headers the route's `(rest)` option says it takes."""
    found = []
    if rest.idempotency_key:
        found.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "Makes the request safe to retry: for 24 hours, the same key"
                " from the same client with the same body answers the first response again"
                " (and creates nothing more); with another body, 422; while the first is"
                " still running, 409.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            }
        )
    if rest.if_match:
        found.append(
            {
                "name": "If-Match",
                "in": "header",
                "required": False,
                "description": "ETags the contact must still have (or *); otherwise 412 and"
                " nothing changes.",
                "schema": {"type": "string"},
            }
        )
    return found


def _clearable(method: MethodDescriptor) -> frozenset[str]:
    """The body fields that null clears: in a PATCH (AIP-134's update), each field that
    the resource it answers may be without (a proto3 `optional` field there, left out
    of a reply when unset), as the service clears them."""
    rule = method.GetOptions().Extensions[annotations_pb2.http]
    if rule.WhichOneof("pattern") != "patch":
        return frozenset()
    resource = method.output_type.fields_by_name
    return frozenset(
        field.name
        for field in method.input_type.fields
        if has_presence(field) and field.name in resource and has_presence(resource[field.name])
    )


def _bounded(name: str, schema: Schema) -> Schema:
    """A paging parameter's schema with the bounds the service enforces."""
    if name not in PAGE_BOUNDS:
        return schema
    low, high, default = PAGE_BOUNDS[name]
    return {**schema, "minimum": low, "maximum": high, "default": default}


def _parameter(schemas: Schemas, field: FieldDescriptor, where: str) -> Schema:
    message = field.message_type
    if message is not None and message.full_name not in WELL_KNOWN:
        raise ValueError(f"{field.full_name}: a message as a {where} parameter is not supported")
    schema = schemas.field(field, reply=False)
    description = schema.pop("description", "")
    parameter: Schema = {
        "name": field.name,
        "in": where,
        "required": where == "path" or is_required(field),
    }
    if description:
        parameter["description"] = description
    parameter["schema"] = _bounded(field.name, schema) if where == "query" else schema
    return parameter


def _body(schemas: Schemas, method: MethodDescriptor, in_path: tuple[str, ...]) -> Schema:
    """A whole-message body, with the example the docs page offers for it."""
    request = method.input_type
    schema = schemas.request(request, leave_out=in_path, clearable=_clearable(method))
    required = any(is_required(field) for field in request.fields if field.name not in in_path)
    example = EXAMPLES.get(method.full_name)
    if example is None:
        raise ValueError(f"{method.full_name}: no request example in openapi/examples.py")
    unknown = set(example) - set(schema["properties"])
    if unknown:
        raise ValueError(f"{method.full_name}: the example sets {sorted(unknown)}, not in its body")
    media = {"schema": schema, "example": example}
    return {"required": required, "content": {"application/json": media}}


def _success(
    schemas: Schemas, method: MethodDescriptor, rest: options_pb2.Rest
) -> dict[str, Schema]:
    created = rest.reply == options_pb2.REPLY_CREATED
    headers = _headers(
        [
            *(["Location"] if created else []),
            *(["ETag"] if rest.etag else []),
            REQUEST_ID,
            *RATE_LIMIT_HEADERS,
        ]
    )
    if rest.reply == options_pb2.REPLY_NO_CONTENT:
        return {"204": {"description": HTTPStatus.NO_CONTENT.phrase, "headers": headers}}
    response = method.output_type
    description = schemas.contract.comment(response)
    if rest.reply == options_pb2.REPLY_LIST:
        fields = [field for field in response.fields if field.name != NEXT_PAGE_FIELD]
        if len(fields) != 1 or not fields[0].is_repeated:
            raise ValueError(
                f"{method.full_name}: REPLY_LIST needs a response of one repeated field"
                f" (and {NEXT_PAGE_FIELD}, at most)"
            )
        if NEXT_PAGE_FIELD in response.fields_by_name:
            headers = {"Link": {"$ref": "#/components/headers/Link"}, **headers}
        schema = schemas.field(fields[0], reply=True)
        schema.pop("description", None)
    else:
        schema = schemas.reply(response)
    status = "201" if rest.reply == options_pb2.REPLY_CREATED else "200"
    return {
        status: {
            "description": description or HTTPStatus(int(status)).phrase,
            "headers": headers,
            "content": {"application/json": {"schema": schema}},
        }
    }
