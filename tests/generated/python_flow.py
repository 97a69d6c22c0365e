"""The seed's flow with a client openapi-python-client generated from the live
/openapi.json (package contacts_api), checked with mypy --strict before it runs.
Run by tests/test_generated_clients.py: `python python_flow.py BASE_URL TOKEN`."""

from __future__ import annotations

import json
import sys

from contacts_api.api.companies_service import create_company
from contacts_api.api.contacts_service import (
    create_contact,
    delete_contact,
    get_contact,
    list_contacts,
    update_contact,
)
from contacts_api.client import AuthenticatedClient
from contacts_api.models import (
    Company,
    Contact,
    CreateCompanyBody,
    CreateContactBody,
    Error,
    UpdateContactBody,
)
from contacts_api.types import Unset


def main(base_url: str, token: str) -> dict[str, object]:
    seen: dict[str, object] = {}
    client = AuthenticatedClient(base_url=base_url, token=token)
    company = create_company.sync(client=client, body=CreateCompanyBody(name="Acme"))
    assert isinstance(company, Company), company
    made = create_contact.sync_detailed(
        client=client,
        body=CreateContactBody(
            company_id=company.id,
            first_name="John",
            last_name="Doe",
            email="john@acme.com",
            phone="+91-9876543210",
            designation="Sales Manager",
        ),
        idempotency_key="python-flow",
    )
    contact = made.parsed
    assert isinstance(contact, Contact), made.content
    seen["created"] = [int(made.status_code), made.headers["location"]]
    read = get_contact.sync_detailed(contact.id, client=client)
    etag = read.headers["etag"]
    changed = update_contact.sync_detailed(
        contact.id,
        client=client,
        body=UpdateContactBody(designation="Head of Sales", is_primary=True, phone=None),
        if_match=etag,
    )
    assert isinstance(changed.parsed, Contact), changed.content
    seen["changed"] = [changed.parsed.designation, isinstance(changed.parsed.phone, Unset)]
    stale = update_contact.sync(
        contact.id, client=client, body=UpdateContactBody(designation="CEO"), if_match=etag
    )
    assert isinstance(stale, Error)
    seen["stale"] = stale.detail
    listed = list_contacts.sync(client=client, company_id=company.id, skip=0, limit=1000)
    assert isinstance(listed, list)
    seen["listed"] = [c.first_name for c in listed]
    gone = delete_contact.sync_detailed(contact.id, client=client)
    seen["deleted"] = int(gone.status_code)
    missing = get_contact.sync(contact.id, client=client)
    assert isinstance(missing, Error)
    seen["missing"] = missing.detail
    return seen


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
