"""Domain errors: raised where they happen, turned into gRPC status in one place.

Each carries the gRPC code and the client-facing text (the seed's exact words
where the seed has them); `interceptors.ErrorInterceptor` maps them, and Envoy
turns the text into the REST body {"detail": ...}.
"""

from __future__ import annotations

from grpc_interceptor import exceptions


class InvalidField(exceptions.InvalidArgument):
    """A request field failed validation; the message names the field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class ContactNotFound(exceptions.NotFound):
    details = "Contact not found"


class CompanyNotFound(exceptions.NotFound):
    details = "Company not found"


class UnknownCompany(exceptions.FailedPrecondition):
    """A contact names a company that does not exist (the seed's 400)."""

    details = "Company not found"


class NotAuthenticated(exceptions.Unauthenticated):
    """No usable bearer token; REST answers 401 with WWW-Authenticate."""

    details = "Not authenticated"
    headers = (("www-authenticate", "Bearer"),)


class InvalidToken(NotAuthenticated):
    details = "Could not validate credentials"
    headers = (("www-authenticate", 'Bearer error="invalid_token"'),)


class NotCompanyOwner(exceptions.PermissionDenied):
    details = "Not enough permissions to access this company\u2019s contacts"


class CompanyForbidden(exceptions.PermissionDenied):
    details = "Not enough permissions to access this company"


class SuperuserRequired(exceptions.PermissionDenied):
    details = "Not enough permissions"


class Conflict(exceptions.Aborted):
    """Concurrent writers kept colliding; REST 409. Safe to retry."""

    details = "The contact was changed concurrently, try again"


class StoreUnavailable(exceptions.Unavailable):
    details = "The database is unavailable, try again shortly"


class RateLimited(exceptions.ResourceExhausted):
    """REST 429; the headers say when to come back."""

    details = "Rate limit exceeded"

    def __init__(self, headers: tuple[tuple[str, str], ...]) -> None:
        super().__init__()
        self.headers = headers
