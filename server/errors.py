"""Domain errors: raised where they happen, turned into gRPC status in one place.

Each carries the gRPC code, the client-facing text (the seed's exact words
where the seed has them), a stable `reason` for google.rpc.ErrorInfo (AIP-193)
and, where the gRPC code alone does not say it, the proto's `Failure` whose
HTTP status REST clients get. `interceptors.ErrorInterceptor` maps them, and
Envoy turns the text into the REST body {"detail": ...}.
"""

from __future__ import annotations

from collections.abc import Iterable

from grpc_interceptor import exceptions

from contacts.options.v1 import options_pb2
from server.rest import REASONS

# The most of a client's own text an error message repeats: a message travels
# in the reply's trailers, whose size a shared upstream connection bounds.
ECHOED_CHARACTERS = 40


def echo(sent: str) -> str:
    """A client's text as an error message may quote it: short, and printable."""
    text = sent if len(sent) <= ECHOED_CHARACTERS else sent[:ECHOED_CHARACTERS] + "…"
    return text if text.isprintable() and text.isascii() else ascii(text)[1:-1]


class InvalidField(exceptions.InvalidArgument):
    """A request field failed validation; the message names the field.

    `violations` holds every bad field of the request (google.rpc.BadRequest);
    the text is the first one's.
    """

    reason = "INVALID_FIELD"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.violations: list[tuple[str, str]] = [(field, problem)]

    @classmethod
    def of(cls, errors: Iterable[InvalidField]) -> InvalidField:
        """One error naming every field of `errors` (at least one)."""
        found = list(errors)
        first = found[0]
        first.violations = [v for error in found for v in error.violations]
        return first


class ContactNotFound(exceptions.NotFound):
    reason = "CONTACT_NOT_FOUND"
    details = "Contact not found"


class PathNotFound(exceptions.NotFound):
    """A REST path that no route's template matches exactly (`/contacts/{id}/`)."""

    reason = "NOT_FOUND"
    details = REASONS[404]


class CompanyNotFound(exceptions.NotFound):
    reason = "COMPANY_NOT_FOUND"
    details = "Company not found"


class UnknownCompany(exceptions.FailedPrecondition):
    """A contact names a company that does not exist (the seed's 400)."""

    reason = "UNKNOWN_COMPANY"
    details = "Company not found"


class NotAuthenticated(exceptions.Unauthenticated):
    """No usable bearer token; REST answers 401 with WWW-Authenticate."""

    reason = "NOT_AUTHENTICATED"
    details = "Not authenticated"
    headers = (("www-authenticate", "Bearer"),)


class InvalidToken(NotAuthenticated):
    reason = "INVALID_TOKEN"
    details = "Could not validate credentials"
    headers = (("www-authenticate", 'Bearer error="invalid_token"'),)


class IdentityProviderUnavailable(exceptions.Unavailable):
    """A token's key is not among those cached, and the issuer cannot be reached to
    fetch them again: the server cannot tell, so it does not say 401."""

    reason = "IDENTITY_PROVIDER_UNAVAILABLE"
    details = "Identity provider unavailable"


class NotCompanyOwner(exceptions.PermissionDenied):
    reason = "NOT_COMPANY_OWNER"
    details = "Not enough permissions to access this company\u2019s contacts"


class CompanyForbidden(exceptions.PermissionDenied):
    reason = "COMPANY_FORBIDDEN"
    details = "Not enough permissions to access this company"


class SuperuserRequired(exceptions.PermissionDenied):
    reason = "SUPERUSER_REQUIRED"
    details = "Not enough permissions"


class Conflict(exceptions.Aborted):
    """Concurrent writers kept colliding; REST 409. Safe to retry."""

    reason = "CONCURRENT_WRITE"
    details = "The contact was changed concurrently, try again"


class StoreUnavailable(exceptions.Unavailable):
    reason = "DATABASE_UNAVAILABLE"
    details = "The database is unavailable, try again shortly"


class RateLimited(exceptions.ResourceExhausted):
    """REST 429; the headers (and google.rpc.RetryInfo) say when to come back."""

    reason = "RATE_LIMITED"
    details = "Rate limit exceeded"

    def __init__(self, headers: tuple[tuple[str, str], ...], retry_after: float = 1.0) -> None:
        super().__init__()
        self.headers = headers
        self.retry_after = retry_after


class EtagMismatch(exceptions.FailedPrecondition):
    """If-Match names no current ETag of the contact: REST 412, and nothing changed."""

    reason = "ETAG_MISMATCH"
    failure = options_pb2.FAILURE_PRECONDITION_FAILED
    details = "The contact has changed since its ETag was read: If-Match does not match"


class IdempotencyKeyReused(exceptions.FailedPrecondition):
    """The key came before with another request: REST 422."""

    reason = "IDEMPOTENCY_KEY_REUSED"
    failure = options_pb2.FAILURE_IDEMPOTENCY_KEY_REUSED
    details = "Idempotency-Key was already used with a different request"


class IdempotencyKeyInUse(exceptions.Aborted):
    """The first request with this key is still running: REST 409; retry later."""

    reason = "IDEMPOTENCY_KEY_IN_USE"
    details = "A request with this Idempotency-Key is still being processed, try again"


class GaveUp(exceptions.DeadlineExceeded):
    """The call's deadline passed before its write committed; it was rolled back."""

    reason = "DEADLINE_EXCEEDED"
    details = "The deadline passed before the write was committed; nothing changed"


class TooManyCalls(exceptions.ResourceExhausted):
    """The client already holds its share of the server's call slots (REST 429)."""

    reason = "TOO_MANY_CALLS"
    details = "Too many calls in flight from this client"


class ServerBusy(exceptions.Unavailable):
    """Every call slot of the server is taken: overload, not the caller's doing (503)."""

    reason = "SERVER_BUSY"
    details = "The server is busy, try again shortly"


class StreamIdle(exceptions.DeadlineExceeded):
    """A stream that sent nothing for its idle time; ended, its slot freed."""

    reason = "STREAM_IDLE"

    def __init__(self, seconds: float) -> None:
        super().__init__(f"The stream was idle for {seconds:g} s")


class RequestNotReceived(exceptions.DeadlineExceeded):
    """The request message did not arrive within the server's read timeout."""

    reason = "REQUEST_NOT_RECEIVED"

    def __init__(self, seconds: float) -> None:
        super().__init__(f"The request was not received within {seconds:g} s")


class InternalError(exceptions.Internal):
    """A bug: logged with its traceback; the client learns nothing more."""

    reason = "INTERNAL"
    details = REASONS[500]
