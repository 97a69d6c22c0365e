-- Gives REST clients the seed's replies where the gRPC-JSON transcoder alone
-- cannot (see ../shared/ENVOY-NOTES.md; unlike what it advises, replies carry
-- their metadata in the trailers, and this filter makes headers of them, so
-- that a reply is one batch). What each reply needs is decided by
-- the RPC that answered, as the proto declares it: the server reads the RPC's
-- (contacts.options.v1.rest) option and says so in response metadata, so
-- this filter holds no table of RPCs and never guesses from a body's shape:
--   * x-contacts-reply: created -> 201; no-content -> 204 with no body;
--     list -> the reply's one repeated field as the bare JSON array;
--   * a gRPC error becomes {"detail": "<grpc-message>"} when the server wrote
--     the message for clients (x-contacts-detail), else {"detail": "<what the
--     status means>"}, with the HTTP status in x-contacts-status when the
--     transcoder's mapping of the gRPC code is not the one the proto gives
--     (412, 422); google.rpc details (grpc-status-details-bin) are for gRPC
--     clients only;
--   * a path too long to pass on is refused with 414.
-- On the way in, it tells the server the REST path and which top-level JSON
-- fields the body sent: the transcoder drops null members, and a PATCH with
-- {"phone": null} must clear the phone.
-- Native gRPC requests (content-type application/grpc...) pass untouched.

local REST = "contacts.rest"
-- The path a REST request was sent to, for the server to bind path variables
-- from (a body or query field of the same name must not override them).
local PATH_HEADER = "x-contacts-rest-path"
-- The top-level member names of a JSON body, comma-separated (server/rest.py).
local FIELDS_HEADER = "x-contacts-fields"
local REPLY_HEADER = "x-contacts-reply"
local STATUS_HEADER = "x-contacts-status"
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

-- The names of a JSON object's top-level members (those a field can have), or
-- nil when the text is not a JSON object. Strings are skipped whole, so a
-- brace or comma inside one counts for nothing; the transcoder judges the rest.
local function member_names(text)
  local start = text:find("%S")
  if start == nil or text:sub(start, start) ~= "{" then
    return nil
  end
  local names, depth, expect_name, pos = {}, 0, false, start
  while true do
    pos = text:find('[\"{}%[%],]', pos)
    if pos == nil then
      return names
    end
    local c = text:sub(pos, pos)
    if c == '"' then
      local close = pos + 1
      while true do
        close = text:find('[\"]', close)
        if close == nil then
          return nil
        end
        if text:sub(close, close) == '"' then
          break
        end
        close = close + 2 -- an escaped character
      end
      local name = text:sub(pos + 1, close - 1)
      if depth == 1 and expect_name and name:find("^[%w_]+$") then
        names[#names + 1] = name
      end
      expect_name = false
      pos = close + 1
    else
      if c == "{" or c == "[" then
        depth = depth + 1
        expect_name = c == "{" and depth == 1
      elseif c == "}" or c == "]" then
        depth = depth - 1
      elseif depth == 1 then
        expect_name = true -- a comma between members
      end
      pos = pos + 1
    end
  end
end

function envoy_on_request(handle)
  local headers = handle:headers()
  if is_grpc(headers:get("content-type") or "") then
    headers:remove(PATH_HEADER)
    headers:remove(FIELDS_HEADER)
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
  headers:remove(FIELDS_HEADER)
  local method = headers:get(":method")
  handle:streamInfo():dynamicMetadata():set(REST, "rest", true)
  if method ~= "GET" and method ~= "HEAD" and method ~= "DELETE" then
    local body = handle:body()
    local names = body and member_names(body:getBytes(0, body:length()))
    if names ~= nil then
      -- body() invalidates the header handle taken before it.
      handle:headers():replace(FIELDS_HEADER, table.concat(names, ","))
    end
  end
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
  local http_status = headers:get(STATUS_HEADER)
  local for_clients = headers:get(DETAIL_HEADER) ~= nil
  -- gRPC framing details, and what the server said for this filter alone,
  -- mean nothing to a REST client.
  for _, name in ipairs({
    "grpc-status",
    "grpc-message",
    "grpc-accept-encoding",
    "grpc-status-details-bin",
    REPLY_HEADER,
    STATUS_HEADER,
    DETAIL_HEADER,
  }) do
    headers:remove(name)
  end

  if grpc_status ~= nil and grpc_status ~= "0" then
    if http_status ~= nil then
      headers:replace(":status", http_status)
    end
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
  if status == "400" and grpc_status == nil then
    -- Envoy's own reply (the transcoder refused the body; no RPC answered).
    -- Its message names the field path before ": "; an empty path
    -- (": Root element must be a message.") means the body as a whole.
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
  -- A reply's metadata (its kind, ETag, RateLimit-*) comes with its status,
  -- as trailers, which a REST client never sees: here they become headers.
  handle:body()
  local trailers = handle:trailers()
  local sent = {}
  if trailers ~= nil then
    for name, value in pairs(trailers) do
      sent[#sent + 1] = { name, value }
    end
  end
  -- body() invalidates the header handle taken before it.
  headers = handle:headers()
  local reply = nil
  local copied = {}
  for _, pair in ipairs(sent) do
    local name, value = pair[1], pair[2]
    trailers:remove(name)
    if name == REPLY_HEADER then
      reply = value
    elseif name:sub(1, 5) ~= "grpc-" then
      -- The first of a name replaces what Envoy set (x-request-id, the same
      -- id); a name sent again is one more header of that name.
      if copied[name] then
        headers:add(name, value)
      else
        headers:replace(name, value)
        copied[name] = true
      end
    end
  end
  if reply == "created" then
    headers:replace(":status", "201")
  elseif reply == "no-content" then
    headers:replace(":status", "204")
    headers:remove("content-type")
    handle:body(true):setBytes("")
    handle:headers():remove("content-length")
  elseif reply == "list" then
    -- The RPC's reply is one repeated field (the proto's REPLY_LIST says so).
    local body = handle:body()
    if body ~= nil then
      local array = body:getBytes(0, body:length()):match('^{"[%w_]+":(%[.*%])}$')
      if array ~= nil then
        replace_body(handle, array)
      end
    end
  end
end
