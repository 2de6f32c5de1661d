-- The transactional outbox: an event row written in the same transaction as the change it
-- describes, delivered to the webhook by one relay at a time (the lease row).
CREATE TABLE outbox (
    seq          BIGSERIAL PRIMARY KEY,
    event_id     TEXT NOT NULL UNIQUE,
    order_id     TEXT NOT NULL,
    type         TEXT NOT NULL,
    payload      TEXT NOT NULL,
    created_ms   BIGINT NOT NULL,
    attempts     BIGINT NOT NULL DEFAULT 0,
    last_error   TEXT,
    delivered_ms BIGINT,
    set_aside_ms BIGINT
);
CREATE INDEX outbox_pending ON outbox (seq) WHERE delivered_ms IS NULL AND set_aside_ms IS NULL;

CREATE TABLE outbox_lease (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_ms BIGINT NOT NULL
);
INSERT INTO outbox_lease (name, holder, expires_ms) VALUES ('relay', '', 0);
