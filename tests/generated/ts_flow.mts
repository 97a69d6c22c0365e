// The seed's flow with openapi-fetch, typed by openapi-typescript from the live
// /openapi.json (schema.d.ts), compiled by tsc --strict before it runs. Run by
// tests/test_generated_clients.py: `node ts_flow.mjs BASE_URL TOKEN`.
import createClient from "openapi-fetch";
import type { paths } from "./schema.js";

const [baseUrl, token] = process.argv.slice(2);
const client = createClient<paths>({ baseUrl, headers: { Authorization: `Bearer ${token}` } });
const seen: Record<string, unknown> = {};

const company = await client.POST("/companies", { body: { name: "Acme" } });
if (!company.data) throw new Error(`company: ${company.response.status}`);
const made = await client.POST("/contacts", {
  params: { header: { "Idempotency-Key": "ts-flow" } },
  body: {
    company_id: company.data.id,
    first_name: "John",
    last_name: "Doe",
    email: "john@acme.com",
    phone: "+91-9876543210",
    designation: "Sales Manager",
  },
});
if (!made.data) throw new Error(`create: ${made.response.status}`);
seen.created = [made.response.status, made.response.headers.get("location")];
const id = made.data.id;
const path = { contact_id: id };

const read = await client.GET("/contacts/{contact_id}", { params: { path } });
const etag = read.response.headers.get("etag") ?? "";
const changed = await client.PATCH("/contacts/{contact_id}", {
  params: { path, header: { "If-Match": etag } },
  body: { designation: "Head of Sales", is_primary: true, phone: null },
});
seen.changed = [changed.data?.designation, changed.data?.phone === undefined];
const stale = await client.PATCH("/contacts/{contact_id}", {
  params: { path, header: { "If-Match": etag } },
  body: { designation: "CEO" },
});
seen.stale = [stale.response.status, stale.error?.detail];

// The types refuse what the service refuses: first_name cannot be cleared.
// @ts-expect-error null is not a first_name
const refused = await client.PATCH("/contacts/{contact_id}", { params: { path }, body: { first_name: null } });
seen.refused = refused.response.status;

const listed = await client.GET("/contacts", {
  params: { query: { company_id: company.data.id, skip: 0, limit: 1000 } },
});
seen.listed = listed.data?.map((contact) => contact.first_name);
const gone = await client.DELETE("/contacts/{contact_id}", { params: { path } });
seen.deleted = gone.response.status;
const missing = await client.GET("/contacts/{contact_id}", { params: { path } });
seen.missing = [missing.response.status, missing.error?.detail];
console.log(JSON.stringify(seen));
