"""The request bodies the /docs page offers, by RPC: each one the service accepts as
it is, so that "Try it out" then "Execute" succeeds on the first click.

Without them Swagger UI makes a body from the schema ("string" for an email, a
made-up company id) that the service refuses. tests/test_openapi.py sends every
one of them to the live service, and the generator refuses an example that names
a field the body does not have, or a route with a body and no example.
"""

from __future__ import annotations

from typing import Any

EXAMPLES: dict[str, dict[str, Any]] = {
    # The seed's contact, without a company: a contact may have none, and any
    # company id written here would be unknown to the caller's database.
    "contacts.v1.ContactsService.CreateContact": {
        "first_name": "John",
        "last_name": "Doe",
        "email": "john@acme.com",
        "phone": "+91-9876543210",
        "designation": "Sales Manager",
        "is_primary": False,
    },
    # The seed's update, and a field cleared with null.
    "contacts.v1.ContactsService.UpdateContact": {
        "designation": "Head of Sales",
        "is_primary": True,
        "phone": None,
    },
    "contacts.v1.CompaniesService.CreateCompany": {"name": "Acme"},
}
