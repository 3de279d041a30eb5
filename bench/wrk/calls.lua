-- wrk script for the benchmark: sends the requests the bench prepared and
-- counts every answer that is not a good one, then prints one JSON line.
--
-- Environment (set by bench/loadgen.py):
--   BENCH_REQUESTS  file with one request per line: METHOD PATH BODY
--                   (BODY may be empty; a body never holds a newline);
--                   each wrk thread sends them in turn, from its own
--                   starting point.  "{ID}" in a body becomes a unique id.
--   BENCH_AUTH      the Authorization header value ("" for none)
--   BENCH_CTYPE     the Content-Type of bodies
--   BENCH_EXPECT    a string every good body contains
--   BENCH_FAULT     a string no good body contains ("" to skip the check)
--   BENCH_PREFIX    prefix of unique ids
-- A status other than 2xx is counted by wrk itself (errors.status).

local counter = 0
local threads = {}

function setup(thread)
   thread:set("tid", #threads + 1)
   table.insert(threads, thread)
end

local function env(name, default)
   local v = os.getenv(name)
   if v == nil then return default end
   return v
end

function init(args)
   faults = 0
   unexpected = 0
   local headers = {}
   local auth = env("BENCH_AUTH", "")
   if auth ~= "" then headers["Authorization"] = auth end
   headers["Content-Type"] = env("BENCH_CTYPE", "text/xml")
   expect = env("BENCH_EXPECT", "")
   fault = env("BENCH_FAULT", "")
   prefix = env("BENCH_PREFIX", "u") .. "-" .. tostring(tid) .. "-"
   templates = {}
   for line in io.lines(env("BENCH_REQUESTS", "")) do
      local method, path, body = line:match("^(%S+) (%S+) ?(.*)$")
      if body == "" then body = nil end
      table.insert(templates, {method = method, path = path, body = body,
                               unique = body ~= nil and body:find("{ID}", 1, true) ~= nil})
   end
   prepared = {}
   for i, t in ipairs(templates) do
      if not t.unique then
         prepared[i] = wrk.format(t.method, t.path, headers, t.body)
      end
   end
   hdrs = headers
   position = tid % #templates
end

function request()
   position = position % #templates + 1
   local ready = prepared[position]
   if ready ~= nil then return ready end
   local t = templates[position]
   counter = counter + 1
   local body = t.body:gsub("{ID}", prefix .. tostring(counter))
   return wrk.format(t.method, t.path, hdrs, body)
end

function response(status, headers, body)
   if status >= 200 and status < 300 then
      if fault ~= "" and body:find(fault, 1, true) then
         faults = faults + 1
      elseif expect ~= "" and not body:find(expect, 1, true) then
         unexpected = unexpected + 1
      end
   end
end

function done(summary, latency, requests)
   local f, u = 0, 0
   for _, thread in ipairs(threads) do
      f = f + thread:get("faults")
      u = u + thread:get("unexpected")
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH-RESULT {"duration_us": %d, "requests": %d, "bytes": %d, ' ..
      '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, ' ..
      '"faults": %d, "unexpected": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
      '"max_us": %d, "mean_us": %.1f}\n',
      summary.duration, summary.requests, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout, f, u,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean))
end
