-- Payments: the gateway's charge once paid, and the lease of the payment attempt in
-- progress (milliseconds since the epoch; a `paying` order whose lease has passed is
-- settled by whichever process claims it first).
ALTER TABLE orders ADD COLUMN charge_id TEXT;
ALTER TABLE orders ADD COLUMN pay_until_ms BIGINT;
CREATE INDEX orders_paying ON orders (pay_until_ms) WHERE status = 'paying';
