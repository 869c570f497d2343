-- Devices, their attestation challenges and the firmware allow-list.

CREATE TABLE devices (
    device_id         TEXT PRIMARY KEY,
    id                UUID NOT NULL UNIQUE,
    model             TEXT,
    firmware_version  TEXT,
    metadata          JSONB NOT NULL DEFAULT '{}'::jsonb,
    status            TEXT NOT NULL DEFAULT 'pending_attestation'
        CHECK (status IN ('pending_attestation', 'trusted', 'untrusted', 'attestation_timeout', 'quarantined')),
    status_reason     TEXT,
    public_key        BYTEA CHECK (public_key IS NULL OR length(public_key) = 32),
    first_seen        TIMESTAMPTZ NOT NULL,
    last_seen         TIMESTAMPTZ NOT NULL,
    attested_at       TIMESTAMPTZ,
    last_challenge_at TIMESTAMPTZ,
    -- false until the device.registered record is on the bus (outbox: a sweeper resends).
    announced         BOOLEAN NOT NULL DEFAULT false,
    registered_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX devices_status_idx ON devices (status, device_id);
CREATE INDEX devices_model_idx ON devices (model, device_id);
CREATE INDEX devices_unannounced_idx ON devices (registered_at) WHERE NOT announced;
CREATE INDEX devices_last_challenge_idx ON devices (last_challenge_at);

CREATE TABLE attestation_challenges (
    nonce         TEXT PRIMARY KEY,
    device_id     TEXT NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    command_id    UUID NOT NULL,
    issued_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at    TIMESTAMPTZ NOT NULL,
    -- outstanding -> passed | failed (answered) | expired
    state         TEXT NOT NULL DEFAULT 'outstanding'
        CHECK (state IN ('outstanding', 'passed', 'failed', 'expired')),
    -- false until the attest command is on the bus (outbox: a sweeper resends).
    sent          BOOLEAN NOT NULL DEFAULT false,
    -- The stream entry that answered it: a redelivery of that entry is not a replay.
    answered_by   TEXT,
    answered_at   TIMESTAMPTZ
);

CREATE INDEX challenges_device_idx ON attestation_challenges (device_id, issued_at DESC);
CREATE INDEX challenges_outstanding_idx ON attestation_challenges (expires_at)
    WHERE state = 'outstanding' AND sent;
CREATE INDEX challenges_unsent_idx ON attestation_challenges (issued_at)
    WHERE state = 'outstanding' AND NOT sent;

CREATE TABLE firmware (
    model     TEXT NOT NULL,
    version   TEXT NOT NULL,
    sha256    TEXT NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    added_by  TEXT,
    added_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (model, version, sha256)
);
