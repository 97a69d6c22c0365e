"""A client of the Contacts API over gRPC (package `contacts.v1`).

The generated stubs are `contacts.v1.contacts_pb2` and `contacts_pb2_grpc`;
`Client` is a small typed layer over them: a token, TLS, deadlines, retries
of what is safe to send twice, an Idempotency-Key on every create, and
iterators over every page of a list.
"""

from contacts.v1.contacts_pb2 import Company, Contact
from contacts_client.client import Client, Versioned
from contacts_client.details import ErrorDetails, details_of

__all__ = ["Client", "Company", "Contact", "ErrorDetails", "Versioned", "details_of"]
