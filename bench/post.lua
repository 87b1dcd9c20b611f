-- wrk script: POST a ~1 KB JSON order, a distinct order id on every request.
-- Used against both nginx (the ceiling) and patchbay's ingest path.
local counter = 0
local nthreads = 0
local template
thread_id = 0 -- a global: setup() gives each thread its own value

function setup(thread)
  nthreads = nthreads + 1
  thread:set("thread_id", nthreads)
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
  return wrk.format("POST", nil, nil, body)
end
