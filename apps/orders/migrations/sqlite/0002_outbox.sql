-- The transactional outbox: an event row written in the same transaction as the change it
-- describes, delivered to the webhook by one relay at a time (the lease row).
CREATE TABLE outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT NOT NULL UNIQUE,
    order_id     TEXT NOT NULL,
    type         TEXT NOT NULL,
    payload      TEXT NOT NULL,
    created_ms   INTEGER NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    delivered_ms INTEGER,
    set_aside_ms INTEGER
);
CREATE INDEX outbox_pending ON outbox (seq) WHERE delivered_ms IS NULL AND set_aside_ms IS NULL;

CREATE TABLE outbox_lease (
    name       TEXT PRIMARY KEY NOT NULL,
    holder     TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
);
INSERT INTO outbox_lease (name, holder, expires_ms) VALUES ('relay', '', 0);
