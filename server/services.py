"""The gRPC servicers: each method parses, authorises, delegates to the store and converts."""

from __future__ import annotations

from datetime import datetime, timedelta

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from contacts.v1 import contacts_pb2 as pb
from contacts.v1 import contacts_pb2_grpc as pb_grpc
from server import store as db
from server.auth import Caller, authenticated, require_owner, require_superuser
from server.errors import CompanyForbidden, CompanyNotFound, Conflict
from server.store import ATTEMPTS, Store
from server.validation import contact_fields, page, parse_uuid, text

EPOCH = datetime(1970, 1, 1)  # the store's datetimes are naive UTC
SECOND = timedelta(seconds=1)


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=(value - EPOCH) // SECOND)


def contact_message(row: db.Contact) -> pb.Contact:
    return pb.Contact(
        id=str(row.id),
        company_id=str(row.company_id) if row.company_id else None,
        first_name=row.first_name,
        last_name=row.last_name,
        email=row.email,
        phone=row.phone,
        designation=row.designation,
        is_primary=row.is_primary,
        created_at=timestamp(row.created_at),
        updated_at=timestamp(row.updated_at),
    )


def company_message(row: db.Company) -> pb.Company:
    return pb.Company(
        id=str(row.id),
        name=row.name,
        owner_id=row.owner_id,
        created_at=timestamp(row.created_at),
        updated_at=timestamp(row.updated_at),
    )


class Contacts(pb_grpc.ContactsServiceServicer):
    def __init__(self, store: Store) -> None:
        self.store = store

    def ListContacts(
        self, request: pb.ListContactsRequest, context: grpc.ServicerContext
    ) -> pb.ListContactsResponse:
        company_id = parse_uuid(request.company_id, "company_id")
        skip, limit = page(request.skip, request.limit)
        require_owner(authenticated(), self.store.find_company(company_id))
        rows = self.store.list_contacts(company_id, skip, limit)
        return pb.ListContactsResponse(contacts=[contact_message(row) for row in rows])

    def GetContact(
        self, request: pb.GetContactRequest, context: grpc.ServicerContext
    ) -> pb.Contact:
        contact_id = parse_uuid(request.contact_id, "contact_id")
        return contact_message(self.store.get_contact(contact_id))

    def CreateContact(
        self, request: pb.CreateContactRequest, context: grpc.ServicerContext
    ) -> pb.Contact:
        return contact_message(self.store.create_contact(contact_fields(request, partial=False)))

    def UpdateContact(
        self, request: pb.UpdateContactRequest, context: grpc.ServicerContext
    ) -> pb.Contact:
        contact_id = parse_uuid(request.contact_id, "contact_id")
        changes = contact_fields(request, partial=True)
        if "company" in changes:
            # Updating is public, but moving a contact between companies would
            # hand it to another owner: that takes owning both ends.
            who = authenticated()
            self._require_contact_owner(who, self.store.get_contact(contact_id))
            if not who.is_superuser:
                require_owner(who, self.store.find_company(changes["company"]))
        return contact_message(self.store.update_contact(contact_id, changes))

    def DeleteContact(
        self, request: pb.DeleteContactRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        contact_id = parse_uuid(request.contact_id, "contact_id")
        who = authenticated()
        for _ in range(ATTEMPTS):
            contact = self.store.get_contact(contact_id)
            self._require_contact_owner(who, contact)
            # Deleted only if it did not move since the check above.
            if self.store.delete_contact(contact_id, contact.company_id):
                return empty_pb2.Empty()
        raise Conflict()

    def _require_contact_owner(self, who: Caller, contact: db.Contact) -> None:
        """A contact is its company's owner's; one with no company, superusers' only."""
        if contact.company_id is None:
            require_superuser(who)
        else:
            require_owner(who, self.store.find_company(contact.company_id))


class Companies(pb_grpc.CompaniesServiceServicer):
    def __init__(self, store: Store) -> None:
        self.store = store

    def CreateCompany(
        self, request: pb.CreateCompanyRequest, context: grpc.ServicerContext
    ) -> pb.Company:
        name = text(request.name, "name")
        return company_message(self.store.create_company(name, owner_id=authenticated().sub))

    def GetCompany(
        self, request: pb.GetCompanyRequest, context: grpc.ServicerContext
    ) -> pb.Company:
        company_id = parse_uuid(request.company_id, "company_id")
        who = authenticated()
        company = self.store.find_company(company_id)
        if who.is_superuser:
            if company is None:
                raise CompanyNotFound()
        elif company is None or company.owner_id != who.sub:
            raise CompanyForbidden()
        return company_message(company)

    def ListCompanies(
        self, request: pb.ListCompaniesRequest, context: grpc.ServicerContext
    ) -> pb.ListCompaniesResponse:
        skip, limit = page(request.skip, request.limit)
        who = authenticated()
        owner = None if who.is_superuser else who.sub
        rows = self.store.list_companies(owner, skip, limit)
        return pb.ListCompaniesResponse(companies=[company_message(row) for row in rows])
