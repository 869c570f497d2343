-- The outbox of registration batches: ONE row per batch, written by the same statement that
-- inserts the batch's devices and challenges (which are then stored `announced`/`sent`), and
-- deleted once its records are on the bus. A row older than --resend-after is a batch whose
-- records may not have reached the bus: the sweeper sends them again (at least once). This
-- replaces two UPDATEs of every new row per batch (the `announced`/`sent` marks), which cost
-- more than the upsert itself.
CREATE TABLE registration_outbox (
    id          UUID PRIMARY KEY,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    device_ids  TEXT[] NOT NULL,
    nonces      TEXT[] NOT NULL
);

CREATE INDEX registration_outbox_created_idx ON registration_outbox (created_at);
