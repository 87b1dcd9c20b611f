-- wrk script: POST a ~1 KB JSON order, a distinct order id on every request.
-- Used against both nginx (the ceiling) and patchbay's ingest path.
-- At the end it prints "post.lua: N bodies, B bytes, mean M bytes": the bodies it built
-- (bench/run.sh reads the mean to compare disk bytes per message with the body size).
local counter = 0
local nthreads = 0
local template
local threads = {}
thread_id = 0 -- globals: setup() gives each thread its own thread_id,
body_bytes = 0 -- and done() reads each thread's body_bytes and body_count
body_count = 0

function setup(thread)
  nthreads = nthreads + 1
  thread:set("thread_id", nthreads)
  table.insert(threads, thread)
end

function init(args)
  local head = '{"id":"ord-%d-%d","created_at":"2024-05-01T10:00:00Z","status":"paid",'
    .. '"currency":"eur","total_cents":%d,'
    .. '"customer":{"id":"cus-%d","name":"Ada Lovelace","email":"ada@example.com"},'
    .. '"shipping_address":{"line1":"10 Main Street","city":"Berlin","postal_code":"10115","country":"DE"},'
    .. '"items":[{"sku":"mug-blue","name":"Blue mug","qty":2,"unit_cents":1450},'
    .. '{"sku":"tee-l","name":"T-shirt L","qty":1,"unit_cents":2200}],'
    .. '"note":"'
  -- Pad the note so a formatted body is about 1024 bytes.
  local sample = string.format(head, 1, 1000000, 123456, 1000) .. '"}'
  template = head .. string.rep("x", math.max(0, 1024 - #sample)) .. '"}'
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local body = string.format(template, thread_id, counter, 100 + counter % 100000, counter % 1000)
  body_bytes = body_bytes + #body
  body_count = body_count + 1
  return wrk.format("POST", nil, nil, body)
end

function done(summary, latency, requests)
  local n, b = 0, 0
  for _, t in ipairs(threads) do
    n = n + t:get("body_count")
    b = b + t:get("body_bytes")
  end
  io.write(string.format("post.lua: %d bodies, %d bytes, mean %.1f bytes\n", n, b,
    n > 0 and b / n or 0))
end
