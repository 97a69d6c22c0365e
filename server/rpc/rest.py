"""REST requests as the proto's HTTP rules and `(rest)` options declare them.

Path variables win: the transcoder fills a request from the path, the query and the body, and a
query or body field named like a path variable overwrites the path's value
(`DELETE /contacts/A?contact_id=B` would delete B). Envoy passes the path it
was sent to in a header; the values bound from it are put back here.

What a REST reply looks like is the RPC's business, declared in the proto:
the server tells envoy/rest.lua in response metadata (REPLY_HEADER: created,
no-content or list, from `(rest).reply`; STATUS_HEADER: the HTTP status of
an error whose gRPC code the transcoder maps to another, from the `Failure`'s
`(failure).status`). The Lua filter needs no table of its own, and cannot
disagree with the RPC that actually answered.
"""

from __future__ import annotations

# The header names envoy/rest.lua and the server share (the Lua filter is
# checked against these by tests/test_rest_lua.py).
PATH_HEADER = "x-contacts-rest-path"  # set by envoy/rest.lua, overwriting the client's
# The top-level JSON fields a REST body sent, nulls included (the transcoder
# drops nulls); set by envoy/rest.lua, overwriting the client's.
FIELDS_HEADER = "x-contacts-fields"
REPLY_HEADER = "x-contacts-reply"  # read (and removed) by envoy/rest.lua
STATUS_HEADER = "x-contacts-status"  # read (and removed) by envoy/rest.lua
