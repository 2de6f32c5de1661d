-- wrk script: POST /orders with a fresh Idempotency-Key per request.
-- The run id keeps keys unique across runs against the same database.
local run = os.time() .. "-" .. math.random(1, 1000000)
local n = 0
local body = '{"customer_id":"bench","sku":"sku-1","quantity":1,"amount_cents":1250}'

request = function()
  n = n + 1
  return wrk.format("POST", "/orders", {
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = run .. "-" .. n,
  }, body)
end

done = function(summary, latency, requests)
  local non2xx = summary.errors.status or 0
  io.write(string.format("non2xx %d\n", non2xx))
end
