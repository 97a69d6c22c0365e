"""Reading a call's request metadata (a REST request's headers, through Envoy)."""

from __future__ import annotations

import grpc


def metadata_values(context: grpc.aio.ServicerContext, key: str) -> list[str]:
    """Every value sent under `key` (lower case), in the order sent."""
    return [str(value) for name, value in context.invocation_metadata() or () if name == key]
