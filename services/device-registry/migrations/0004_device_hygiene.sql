-- Silent devices: each device's usual interval between sightings (a moving average of the
-- gaps, in milliseconds) and since when it is silent (NULL: it talks). See
-- docs/contract.md#device-hygiene.
ALTER TABLE devices ADD COLUMN seen_interval_ms BIGINT;
ALTER TABLE devices ADD COLUMN silent_since TIMESTAMPTZ;

CREATE INDEX devices_silent_idx ON devices (silent_since) WHERE silent_since IS NOT NULL;

-- Attestation policy `off` for a model: its devices are never challenged.
ALTER TABLE devices DROP CONSTRAINT devices_status_check;
ALTER TABLE devices ADD CONSTRAINT devices_status_check CHECK (status IN (
    'pending_attestation', 'trusted', 'untrusted', 'attestation_timeout', 'quarantined',
    'not_attested'));
