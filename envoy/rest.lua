-- Gives REST clients the seed's replies where the gRPC-JSON transcoder alone
-- cannot (see ../shared/ENVOY-NOTES.md):
--   * a successful POST answers 201, a successful DELETE 204 with no body;
--   * a reply message made of one repeated field (ListContactsResponse,
--     ListCompaniesResponse) reaches the client as the bare JSON array;
--   * a gRPC error becomes {"detail": "<grpc-message>"} when the server wrote
--     the message for clients, else {"detail": "<what the status means>"};
--   * a path too long to pass on is refused with 414.
-- Native gRPC requests (content-type application/grpc...) pass untouched.

local REST = "contacts.rest"
-- The path a REST request was sent to, for the server to bind path variables
-- from (a body or query field of the same name must not override them).
local PATH_HEADER = "x-contacts-rest-path"
-- The path reaches the server three times (as itself, in PATH_HEADER and in
-- the transcoder's x-envoy-original-path), on top of up to 8 KiB of headers:
-- past this length the server's metadata limit would refuse the call.
local MAX_PATH = 2048
-- Set by the server (server/interceptors.py) on an error whose grpc-message
-- is written for clients. Any other message (gRPC core's own, say "received
-- metadata size exceeds limit") is not passed on.
local DETAIL_HEADER = "x-contacts-detail"
-- What a status means, for errors whose message is not for clients; the
-- texts of Envoy's own replies (envoy.yaml.tmpl) where it has them.
local REASONS = {
  ["400"] = "Bad Request",
  ["401"] = "Unauthorized",
  ["403"] = "Forbidden",
  ["404"] = "Not Found",
  ["408"] = "Request Timeout",
  ["409"] = "Conflict",
  ["412"] = "Precondition Failed",
  ["413"] = "Content Too Large",
  ["429"] = "Too Many Requests",
  ["500"] = "Internal server error",
  ["501"] = "Not Implemented",
  ["503"] = "Service unavailable",
  ["504"] = "Gateway Timeout",
}

-- The transcoder's own rule for what is native gRPC.
local function is_grpc(content_type)
  return content_type == "application/grpc"
    or content_type:sub(1, 17) == "application/grpc+"
    or content_type:sub(1, 17) == "application/grpc;"
end

function envoy_on_request(handle)
  local headers = handle:headers()
  if is_grpc(headers:get("content-type") or "") then
    headers:remove(PATH_HEADER)
    return
  end
  -- gRPC control headers (grpc-timeout, grpc-encoding, ...) are not part of
  -- the REST API; passed on, they would make the upstream call fail. So would
  -- a header whose name gRPC metadata cannot carry (only 0-9 a-z _ - .): the
  -- server would refuse the whole call with a 500.
  local dropped = {}
  for name, _ in pairs(headers) do
    if name:sub(1, 5) == "grpc-" or (name:sub(1, 1) ~= ":" and name:find("[^0-9a-z_.-]")) then
      dropped[#dropped + 1] = name
    end
  end
  for _, name in ipairs(dropped) do
    headers:remove(name)
  end
  local path = headers:get(":path") or ""
  if #path > MAX_PATH then
    -- The local reply mapping (envoy.yaml.tmpl) makes it {"detail": ...}.
    handle:respond({ [":status"] = "414" }, "URI Too Long")
    return
  end
  headers:replace(PATH_HEADER, (path:gsub("%?.*$", "")))
  handle:streamInfo():dynamicMetadata():set(REST, "method", headers:get(":method"))
end

-- grpc-message is percent-encoded UTF-8 (gRPC over HTTP/2 spec).
local function percent_decode(s)
  return (s:gsub("%%(%x%x)", function(hex)
    return string.char(tonumber(hex, 16))
  end))
end

local JSON_ESCAPES = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }

local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return JSON_ESCAPES[c] or string.format("\\u%04x", c:byte())
  end) .. '"'
end

local function replace_body(handle, bytes)
  handle:body(true):setBytes(bytes)
  handle:headers():replace("content-length", tostring(#bytes))
end

function envoy_on_response(handle)
  local rest = handle:streamInfo():dynamicMetadata():get(REST)
  if rest == nil then
    return
  end
  local headers = handle:headers()
  local grpc_status = headers:get("grpc-status")
  local grpc_message = headers:get("grpc-message")
  local for_clients = headers:get(DETAIL_HEADER) ~= nil
  -- gRPC framing details mean nothing to a REST client.
  headers:remove("grpc-status")
  headers:remove("grpc-message")
  headers:remove("grpc-accept-encoding")
  headers:remove(DETAIL_HEADER)

  if grpc_status ~= nil and grpc_status ~= "0" then
    local status = headers:get(":status") or "500"
    local message = REASONS[status] or "Error"
    if for_clients then
      message = percent_decode(grpc_message or "")
    end
    headers:replace("content-type", "application/json")
    replace_body(handle, '{"detail":' .. json_string(message) .. "}")
    return
  end

  local status = headers:get(":status")
  if status == "400" then
    -- The transcoder's message for a body that is not a JSON object names no
    -- field (": Root element must be a message."): it is about the body.
    local body = handle:body()
    local bytes = body and body:getBytes(0, body:length()) or ""
    if bytes:sub(1, 13) == '{"detail":": ' then
      replace_body(handle, '{"detail":"body: ' .. bytes:sub(14))
    end
    return
  end
  if status ~= "200" then
    return
  end
  local method = rest["method"]
  if method == "POST" then
    headers:replace(":status", "201")
  elseif method == "DELETE" then
    headers:replace(":status", "204")
    headers:remove("content-type")
    handle:body(true):setBytes("")
    -- body() invalidates the header handle taken before it.
    handle:headers():remove("content-length")
  elseif method == "GET" then
    local body = handle:body()
    if body ~= nil then
      local array = body:getBytes(0, body:length()):match('^{"[%w_]+":(%[.*%])}$')
      if array ~= nil then
        replace_body(handle, array)
      end
    end
  end
end
