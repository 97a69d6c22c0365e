// A browser client of the service, from another origin than the service's own:
// REST with fetch, and gRPC-Web with @connectrpc/connect-web, the service read
// from its descriptor set at run time (no generated code). What each call gave
// is written into the page as JSON, for the test to read.
// Bundled for the browser by esbuild in tests/test_browser_clients.py.
import { createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

const { api, token } = JSON.parse(decodeURIComponent(location.hash.slice(1)));
const auth = { authorization: `Bearer ${token}` };
const seen = {};

async function rest() {
  const created = await fetch(`${api}/contacts`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ first_name: "Web", email: "web@example.com", phone: "+1 555" }),
  });
  const contact = await created.json();
  seen.created = { status: created.status, location: created.headers.get("location") };
  const read = await fetch(`${api}/contacts/${contact.id}`);
  const etag = read.headers.get("etag");
  seen.read = { status: read.status, etag, requestId: read.headers.get("x-request-id") };
  const patched = await fetch(`${api}/contacts/${contact.id}`, {
    method: "PATCH",
    headers: { "content-type": "application/json", "if-match": etag },
    body: JSON.stringify({ designation: "Browser", phone: null }),
  });
  seen.patched = {
    status: patched.status,
    etag: patched.headers.get("etag"),
    body: await patched.json(),
  };
  const stale = await fetch(`${api}/contacts/${contact.id}`, {
    method: "PATCH",
    headers: { "content-type": "application/json", "if-match": etag },
    body: JSON.stringify({ designation: "Stale" }),
  });
  seen.stale = { status: stale.status, body: await stale.json() };
  const companies = await fetch(`${api}/companies`, { headers: auth });
  seen.companies = { status: companies.status, remaining: companies.headers.get("ratelimit-remaining") };
  return contact;
}

async function grpcWeb(contact) {
  const bytes = new Uint8Array(await (await fetch("contacts.pb")).arrayBuffer());
  const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, bytes));
  const transport = createGrpcWebTransport({ baseUrl: api });
  const contacts = createClient(registry.getService("contacts.v1.ContactsService"), transport);
  const companies = createClient(registry.getService("contacts.v1.CompaniesService"), transport);
  let etag = null;
  const got = await contacts.getContact(
    { contactId: contact.id },
    { onTrailer: (trailers) => (etag = trailers.get("etag")) },
  );
  seen.grpcWeb = { firstName: got.firstName, designation: got.designation, etag };
  try {
    await contacts.getContact({ contactId: crypto.randomUUID() });
  } catch (error) {
    const found = ConnectError.from(error);
    seen.grpcWebMissing = { code: found.code, message: found.rawMessage };
  }
  try {
    await companies.listCompanies({});
  } catch (error) {
    seen.grpcWebAnonymous = { code: ConnectError.from(error).code };
  }
  const listed = await companies.listCompanies({}, { headers: auth });
  seen.grpcWebCompanies = listed.companies.map((company) => company.name);
}

async function main() {
  try {
    const contact = await rest();
    await grpcWeb(contact);
  } catch (error) {
    seen.error = `${error.name}: ${error.message}`;
  }
  document.getElementById("result").textContent = JSON.stringify(seen);
  document.title = "done";
}

main();
