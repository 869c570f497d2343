-- Device commands asked through the API, from the request (and its approval, for a privileged
-- action) to the device's receipt. See docs/contract.md#device-actions.
CREATE TABLE device_commands (
    id             UUID PRIMARY KEY,
    device_id      TEXT NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    action         TEXT NOT NULL,
    -- The parameters in canonical JSON (sorted keys), kept as text: the approval proof signs
    -- their hash, and jsonb would not give the same bytes back.
    params         TEXT NOT NULL,
    privileged     BOOLEAN NOT NULL,
    status         TEXT NOT NULL CHECK (status IN (
        'awaiting_approval', 'rejected', 'approval_expired', 'refused',
        'queued', 'sent', 'not_reached', 'expired', 'failed', 'done', 'unconfirmed')),
    status_reason  TEXT,
    requested_by   TEXT NOT NULL,
    approval_id    UUID UNIQUE,
    decided_by     TEXT,
    -- Awaiting approval: when the approval expires; afterwards: the command's own expiry
    -- (the device never gets it later; no receipt by then plus the grace is `unconfirmed`).
    expires_at     TIMESTAMPTZ NOT NULL,
    requested_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX device_commands_device_idx ON device_commands (device_id, requested_at DESC);
CREATE INDEX device_commands_open_idx ON device_commands (expires_at)
    WHERE status IN ('queued', 'sent');

-- Receipts for attest commands are recognised, not dead-lettered.
CREATE INDEX challenges_command_idx ON attestation_challenges (command_id);
