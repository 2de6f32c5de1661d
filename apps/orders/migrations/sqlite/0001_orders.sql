CREATE TABLE orders (
    id           TEXT PRIMARY KEY NOT NULL,
    customer_id  TEXT NOT NULL,
    sku          TEXT NOT NULL,
    quantity     INTEGER NOT NULL CHECK (quantity BETWEEN 1 AND 1000),
    amount_cents INTEGER NOT NULL CHECK (amount_cents >= 0),
    status       TEXT NOT NULL,
    created_at   TEXT NOT NULL
);

CREATE TABLE idempotency_keys (
    key         TEXT PRIMARY KEY NOT NULL,
    fingerprint TEXT NOT NULL,
    order_id    TEXT NOT NULL REFERENCES orders (id),
    created_at  TEXT NOT NULL
);
