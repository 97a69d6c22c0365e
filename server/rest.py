"""REST requests as the proto's HTTP rules and `(rest)` options declare them.

Path variables win: the transcoder fills a request from the path, the query and the body, and a
query or body field named like a path variable overwrites the path's value
(`DELETE /contacts/A?contact_id=B` would delete B). Envoy passes the path it
was sent to in a header; the values bound from it are put back here.

What a REST reply looks like is the RPC's business, declared in the proto:
the server tells envoy/rest.lua.tmpl in response metadata (REPLY_HEADER: created,
no-content or list, from `(rest).reply`; STATUS_HEADER: the HTTP status of
an error whose gRPC code the transcoder maps to another, from the `Failure`'s
`(failure).status`). The Lua filter needs no table of its own, and cannot
disagree with the RPC that actually answered.
"""

from __future__ import annotations

# The headers the server and envoy/rest.lua.tmpl share: declared here, and
# rendered into the Lua filter with Envoy's config (server/process/stack.py).
PATH_HEADER = "x-contacts-rest-path"  # set by envoy/rest.lua, overwriting the client's
# The top-level JSON fields a REST body sent, nulls included (the transcoder
# drops nulls); set by envoy/rest.lua, overwriting the client's.
FIELDS_HEADER = "x-contacts-fields"
REPLY_HEADER = "x-contacts-reply"  # read (and removed) by envoy/rest.lua
STATUS_HEADER = "x-contacts-status"  # read (and removed) by envoy/rest.lua
# A 201's header naming what it made (REST only: gRPC clients get the message).
LOCATION_HEADER = "location"
# An error whose message is written for clients carries google.rpc details
# (server/rpc/status.py: every error the server raises has an ErrorInfo), and
# rest.lua passes only those on as the REST detail, never gRPC core's own
# ("received metadata size..."), which have none. (A marker header of our own
# would reach gRPC clients in the trailers.)
DETAILS_HEADER = "grpc-status-details-bin"
# The strong ETag of a reply, kept by rest.lua under this name while Envoy's
# compressor runs (which drops a strong ETag from what it compresses) and put
# back after it: a compressed reply keeps the ETag If-Match compares with.
KEPT_ETAG_HEADER = "x-contacts-etag"

# What browsers on CONTACTS_CORS_ORIGINS may send and read (CONTRACT.md,
# "Every client can reach it"), rendered into Envoy's CORS policy.
CORS_METHODS = ("GET", "POST", "PATCH", "DELETE")
CORS_ALLOW_HEADERS = (
    "authorization",
    "content-type",
    "idempotency-key",
    "if-match",
    "x-request-id",
    # gRPC-Web's and Connect's own
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "connect-protocol-version",
    "connect-timeout-ms",
)
CORS_EXPOSE_HEADERS: tuple[str, ...] = (
    "etag",
    "location",
    "x-request-id",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "retry-after",
    "www-authenticate",
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
)
# Connect's unary replies carry the call's trailing metadata as trailer-* headers
# (Envoy's Connect bridge): a page reads them only if they are exposed too.
CORS_EXPOSE_HEADERS += tuple(
    f"trailer-{name}"
    for name in CORS_EXPOSE_HEADERS
    if name in ("etag", "x-request-id", "retry-after") or name.startswith("ratelimit-")
)
# How long a browser may reuse a preflight's answer, in seconds.
CORS_MAX_AGE = 600

# AIP-158's fields of a paged list: a REST reply announces the next page in a
# Link header (RFC 8288) to the same query with PAGE_TOKEN_FIELD set, and its
# body stays the bare array (envoy/rest.lua drops NEXT_PAGE_FIELD).
NEXT_PAGE_FIELD = "next_page_token"
PAGE_TOKEN_FIELD = "page_token"
# The seed's offset: left out of a next-page link, whose token says where the
# page starts (and `skip` with `page_token` is refused).
SKIP_FIELD = "skip"
LINK_HEADER = "link"

# The REST `detail` of an error whose message is not for clients, and of
# Envoy's own replies (no route, no upstream), by HTTP status.
REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    409: "Conflict",
    412: "Precondition Failed",
    413: "Content Too Large",
    429: "Too Many Requests",
    500: "Internal server error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service unavailable",
    504: "Gateway Timeout",
}
# The statuses Envoy makes itself, each with its own text (any other 5xx of
# Envoy's says 503's: its own text would name upstream internals).
ENVOY_STATUSES = (404, 413, 500, 501, 502, 504)
