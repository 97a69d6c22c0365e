// @grpc/grpc-js calling the service with the shipped protos (protos/), and
// decoding the google.rpc.Status details of its errors with protobufjs.
// Run by tests/test_generated_clients.py: `node grpc_js_flow.mjs HOST:PORT PROTOS`.
import * as grpc from "@grpc/grpc-js";
import * as loader from "@grpc/proto-loader";
import protobuf from "protobufjs";
import path from "node:path";

const [target, protos] = process.argv.slice(2);
const definition = loader.loadSync(path.join(protos, "contacts/v1/contacts.proto"), {
  includeDirs: [protos],
  keepCase: true,
});
const v1 = grpc.loadPackageDefinition(definition).contacts.v1;
const contacts = new v1.ContactsService(target, grpc.credentials.createInsecure());

const rpc = new protobuf.Root();
rpc.resolvePath = (_, file) => path.join(protos, file);
rpc.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"]);
const Status = rpc.lookupType("google.rpc.Status");

// What the error's google.rpc.Status holds, each detail decoded by its type.
function details(error) {
  const [raw] = error.metadata.get("grpc-status-details-bin");
  const status = Status.decode(raw);
  return {
    code: status.code,
    message: status.message,
    details: status.details.map((any) => {
      const type = rpc.lookupType(any.type_url.split("/").pop());
      return { type: type.fullName.slice(1), ...type.toObject(type.decode(any.value)) };
    }),
  };
}

function get(contactId) {
  return new Promise((resolve) =>
    contacts.GetContact({ contact_id: contactId }, { deadline: Date.now() + 10000 }, (error, reply) =>
      resolve(error ? { error: details(error), keys: error.metadata.getMap() } : { reply }),
    ),
  );
}

const seen = {
  missing: await get("00000000-0000-7000-8000-000000000000"),
  invalid: await get("not-a-uuid"),
};
for (const value of Object.values(seen)) {
  value.keys = Object.keys(value.keys);
}
contacts.close();
console.log(JSON.stringify(seen));
