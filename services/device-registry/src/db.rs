//! Every statement the service runs against PostgreSQL. Batches go in as arrays through
//! `UNNEST`, so a batch is one round trip whatever its size.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection as _, PgConnection, PgPool};
use uuid::Uuid;

/// The schema, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The device's usual interval between sightings, in an upsert that moves `last_seen` from
/// `d.last_seen` to `EXCLUDED.last_seen`: a moving average of the gaps (7/8 old, 1/8 new).
macro_rules! seen_interval {
    () => {
        "CASE WHEN d.seen_interval_ms IS NULL
              THEN (extract(epoch FROM EXCLUDED.last_seen - d.last_seen) * 1000)::bigint
              ELSE (d.seen_interval_ms * 7
                    + (extract(epoch FROM EXCLUDED.last_seen - d.last_seen) * 1000)::bigint) / 8
         END"
    };
}

/// A pool on `url`. One plain connection is made first, so an unreachable server fails at
/// once with its cause (the pool would retry it for its whole acquire timeout and only say it
/// timed out); a URL that does not parse is a `sqlx::Error::Configuration`.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let opts: PgConnectOptions = url.parse()?;
    let opts = opts.application_name(crate::SERVICE);
    PgConnection::connect_with(&opts).await?.close().await?;
    PgPoolOptions::new()
        .max_connections(max_connections.max(2))
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts)
        .await
}

/// Applies the embedded migrations. sqlx holds an advisory lock meanwhile, so replicas that
/// start together apply them once.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}

/// The lifecycle states of a device.
pub mod status {
    pub const PENDING: &str = "pending_attestation";
    pub const TRUSTED: &str = "trusted";
    pub const UNTRUSTED: &str = "untrusted";
    pub const TIMEOUT: &str = "attestation_timeout";
    pub const QUARANTINED: &str = "quarantined";
    /// Attestation policy `off` for its model: never challenged.
    pub const NOT_ATTESTED: &str = "not_attested";
    pub const ALL: [&str; 6] = [
        PENDING,
        TRUSTED,
        UNTRUSTED,
        TIMEOUT,
        QUARANTINED,
        NOT_ATTESTED,
    ];
}

// ---------------------------------------------------------------- registration

/// One device seen in a batch (several sightings of one device folded into one).
#[derive(Debug, Clone)]
pub struct Sighting {
    pub device_id: String,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// The first message, kept as the device's metadata when it is new.
    pub metadata: serde_json::Value,
    pub model: Option<String>,
    pub firmware_version: Option<String>,
    /// Taken only with trust on first use.
    pub public_key: Option<Vec<u8>>,
}

/// A row the upsert touched.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Upserted {
    pub device_id: String,
    pub id: Uuid,
    pub inserted: bool,
}

/// The sightings of a batch as the eight column arrays `$1`..`$8` of the statements below
/// (device_id, id, model, firmware_version, metadata, public_key, first_seen, last_seen); a
/// new device's UUID is drawn here.
struct SightingColumns<'a> {
    ids: Vec<&'a str>,
    uuids: Vec<Uuid>,
    models: Vec<Option<&'a str>>,
    versions: Vec<Option<&'a str>>,
    metadata: Vec<&'a serde_json::Value>,
    keys: Vec<Option<&'a [u8]>>,
    first: Vec<DateTime<Utc>>,
    last: Vec<DateTime<Utc>>,
}

impl<'a> SightingColumns<'a> {
    fn of(sightings: &'a [Sighting]) -> Self {
        Self {
            ids: sightings.iter().map(|s| s.device_id.as_str()).collect(),
            uuids: sightings.iter().map(|_| Uuid::new_v4()).collect(),
            models: sightings.iter().map(|s| s.model.as_deref()).collect(),
            versions: sightings
                .iter()
                .map(|s| s.firmware_version.as_deref())
                .collect(),
            metadata: sightings.iter().map(|s| &s.metadata).collect(),
            keys: sightings.iter().map(|s| s.public_key.as_deref()).collect(),
            first: sightings.iter().map(|s| s.first_seen).collect(),
            last: sightings.iter().map(|s| s.last_seen).collect(),
        }
    }

    /// Binds `$1`..`$8`.
    fn bind<'q, O>(
        &'q self,
        query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
        query
            .bind(&self.ids)
            .bind(&self.uuids)
            .bind(&self.models)
            .bind(&self.versions)
            .bind(&self.metadata)
            .bind(&self.keys)
            .bind(&self.first)
            .bind(&self.last)
    }
}

/// Inserts new devices and moves `last_seen` of known ones forward, in one statement.
/// `sightings` must hold each device once; sorted by id, concurrent batches lock rows in one
/// order and cannot deadlock. Returns the new devices and the known ones whose `last_seen`
/// moved.
pub async fn upsert_devices(
    conn: &mut PgConnection,
    sightings: &[Sighting],
) -> Result<Vec<Upserted>, sqlx::Error> {
    let columns = SightingColumns::of(sightings);
    columns
        .bind(sqlx::query_as::<_, Upserted>(concat!(
            "INSERT INTO devices AS d
             (device_id, id, model, firmware_version, metadata, public_key, first_seen, last_seen,
              last_challenge_at)
         SELECT u.*, now()
         FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::text[], $5::jsonb[], $6::bytea[],
                     $7::timestamptz[], $8::timestamptz[]) AS u
         ON CONFLICT (device_id) DO UPDATE SET last_seen = EXCLUDED.last_seen,
             seen_interval_ms = ",
            seen_interval!(),
            "
             WHERE EXCLUDED.last_seen > d.last_seen
         RETURNING d.device_id, d.id, (d.xmax = 0) AS inserted",
        )))
        .fetch_all(conn)
        .await
}

/// A device the registration statement inserted, with its first challenge.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Registered {
    pub device_id: String,
    pub id: Uuid,
    pub nonce: String,
    pub command_id: Uuid,
    pub expires_at: DateTime<Utc>,
}

impl Registered {
    pub fn challenge(&self) -> Challenge {
        Challenge {
            nonce: self.nonce.clone(),
            device_id: self.device_id.clone(),
            command_id: self.command_id,
            expires_at: self.expires_at,
        }
    }
}

/// A registration batch in ONE statement (one round trip, one commit): the upsert of
/// [`upsert_devices`], a challenge for every device it inserted (except those of the models in
/// `not_challenged`: attestation policy `off`), and one
/// `registration_outbox` row `outbox` naming them. New devices and their challenges are stored
/// `announced`/`sent`: the outbox row stands for them until [`outbox_done`] deletes it.
/// `sightings` must hold each device once, sorted by id (lock order). Returns the new devices.
pub async fn register_batch(
    conn: impl sqlx::PgExecutor<'_>,
    sightings: &[Sighting],
    timeout: Duration,
    outbox: Uuid,
    not_challenged: &[String],
) -> Result<Vec<Registered>, sqlx::Error> {
    let columns = SightingColumns::of(sightings);
    // Drawn for every sighting, used only for the new devices: cheaper than a second round
    // trip to learn which ones are new.
    let nonces: Vec<String> = sightings.iter().map(|_| new_nonce()).collect();
    let commands: Vec<Uuid> = sightings.iter().map(|_| Uuid::new_v4()).collect();
    columns
        .bind(sqlx::query_as::<_, Registered>(concat!(
            "WITH u AS MATERIALIZED (
             SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::text[], $5::jsonb[],
                                  $6::bytea[], $7::timestamptz[], $8::timestamptz[],
                                  $9::text[], $10::uuid[])
                 AS u(device_id, id, model, firmware_version, metadata, public_key, first_seen,
                      last_seen, nonce, command_id)
         ), ups AS (
             INSERT INTO devices AS d
                 (device_id, id, model, firmware_version, metadata, public_key, first_seen,
                  last_seen, last_challenge_at, announced, status)
             SELECT device_id, id, model, firmware_version, metadata, public_key, first_seen,
                    last_seen, now(), true,
                    CASE WHEN COALESCE(model, '') = ANY($13::text[]) THEN 'not_attested'
                         ELSE 'pending_attestation' END
             FROM u
             ON CONFLICT (device_id) DO UPDATE SET last_seen = EXCLUDED.last_seen,
                 seen_interval_ms = ",
            seen_interval!(),
            "
                 WHERE EXCLUDED.last_seen > d.last_seen
             RETURNING d.device_id, d.id, (d.xmax = 0) AS inserted
         ), ch AS (
             INSERT INTO attestation_challenges (nonce, device_id, command_id, expires_at, sent)
             SELECT u.nonce, u.device_id, u.command_id,
                    now() + $11::bigint * interval '1 millisecond', true
             FROM ups JOIN u ON u.device_id = ups.device_id
             WHERE ups.inserted AND COALESCE(u.model, '') <> ALL($13::text[])
             RETURNING nonce, device_id, command_id, expires_at
         ), ob AS (
             INSERT INTO registration_outbox (id, device_ids, nonces)
             SELECT $12, array_agg(device_id), array_agg(nonce) FROM ch HAVING count(*) > 0
         )
         SELECT ch.device_id, ups.id, ch.nonce, ch.command_id, ch.expires_at
         FROM ch JOIN ups ON ups.device_id = ch.device_id",
        )))
        .bind(&nonces)
        .bind(&commands)
        .bind(millis(timeout))
        .bind(outbox)
        .bind(not_challenged)
        .fetch_all(conn)
        .await
}

/// The records of registration batch `outbox` are on the bus: its outbox row goes.
///
/// Committed with `synchronous_commit = off` (set for this one transaction): the row is not
/// critical. Losing this delete (a PostgreSQL crash within a fraction of a second) only makes
/// the sweeper send the batch's records again: at least once, nothing lost. Every row that
/// carries data is committed durably by [`register_batch`].
pub async fn outbox_done(pool: &PgPool, outbox: Uuid) -> Result<(), sqlx::Error> {
    // `set_config(..., true)` lasts for the statement's own (implicit) transaction, whose
    // commit reads it: one round trip, no transaction left open on a pooled connection.
    sqlx::query(
        "WITH s AS (SELECT set_config('synchronous_commit', 'off', true) AS v)
         DELETE FROM registration_outbox WHERE id = $1 AND EXISTS (SELECT 1 FROM s)",
    )
    .bind(outbox)
    .execute(pool)
    .await
    .map(|_| ())
}

/// Registration batches whose outbox row is older than `older_than` (their records may not
/// be on the bus), taken from the outbox in this transaction: their new devices, and their
/// challenges still outstanding, given a new expiry (they may never have been sent).
pub async fn take_outbox(
    conn: &mut PgConnection,
    older_than: Duration,
    timeout: Duration,
    limit: i64,
) -> Result<(Vec<Device>, Vec<Challenge>), sqlx::Error> {
    let rows: Vec<(Vec<String>, Vec<String>)> = sqlx::query_as(
        "WITH due AS (
             SELECT id FROM registration_outbox
             WHERE created_at < now() - $1::bigint * interval '1 millisecond'
             ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED
         )
         DELETE FROM registration_outbox o USING due WHERE o.id = due.id
         RETURNING o.device_ids, o.nonces",
    )
    .bind(millis(older_than))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    if rows.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let (mut device_ids, mut nonces) = (Vec::new(), Vec::new());
    for (d, n) in rows {
        device_ids.extend(d);
        nonces.extend(n);
    }
    let sql = format!(
        "SELECT {DEVICE_COLUMNS} FROM devices d WHERE d.device_id = ANY($1) ORDER BY d.device_id"
    );
    let devices = sqlx::query_as::<_, Device>(&sql)
        .bind(&device_ids)
        .fetch_all(&mut *conn)
        .await?;
    let challenges = sqlx::query_as::<_, Challenge>(
        "UPDATE attestation_challenges
         SET expires_at = now() + $2::bigint * interval '1 millisecond'
         WHERE nonce = ANY($1) AND state = 'outstanding'
         RETURNING nonce, device_id, command_id, expires_at",
    )
    .bind(&nonces)
    .bind(millis(timeout))
    .fetch_all(&mut *conn)
    .await?;
    Ok((devices, challenges))
}

// ---------------------------------------------------------------- challenges

/// An attestation challenge as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Challenge {
    pub nonce: String,
    pub device_id: String,
    pub command_id: Uuid,
    pub expires_at: DateTime<Utc>,
}

/// A fresh nonce: 32 random bytes, hex.
pub fn new_nonce() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// Stores one new outstanding challenge per device (not yet sent). `touch` also records the
/// time on the device (registration already did it in the upsert).
pub async fn insert_challenges(
    conn: &mut PgConnection,
    device_ids: &[String],
    timeout: Duration,
    touch: bool,
) -> Result<Vec<Challenge>, sqlx::Error> {
    let nonces: Vec<String> = device_ids.iter().map(|_| new_nonce()).collect();
    let commands: Vec<Uuid> = device_ids.iter().map(|_| Uuid::new_v4()).collect();
    let touch_cte = if touch {
        ", touch AS (UPDATE devices SET last_challenge_at = ins.issued_at
                     FROM ins WHERE devices.device_id = ins.device_id)"
    } else {
        ""
    };
    let sql = format!(
        "WITH ins AS (
             INSERT INTO attestation_challenges (nonce, device_id, command_id, expires_at)
             SELECT u.n, u.d, u.c, now() + $4::bigint * interval '1 millisecond'
             FROM UNNEST($1::text[], $2::text[], $3::uuid[]) AS u(n, d, c)
             RETURNING nonce, device_id, command_id, issued_at, expires_at){touch_cte}
         SELECT nonce, device_id, command_id, expires_at FROM ins"
    );
    sqlx::query_as::<_, Challenge>(&sql)
        .bind(&nonces)
        .bind(device_ids)
        .bind(&commands)
        .bind(millis(timeout))
        .fetch_all(conn)
        .await
}

/// Records that challenges and `device.registered` records are on the bus.
pub async fn mark_sent(
    pool: &PgPool,
    nonces: &[String],
    announced: &[String],
) -> Result<(), sqlx::Error> {
    if nonces.is_empty() && announced.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "WITH a AS (UPDATE devices SET announced = true WHERE device_id = ANY($2) AND NOT announced)
         UPDATE attestation_challenges SET sent = true WHERE nonce = ANY($1) AND NOT sent",
    )
    .bind(nonces)
    .bind(announced)
    .execute(pool)
    .await
    .map(|_| ())
}

/// What an attestation answer is checked against.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttestationContext {
    /// Index of the report in the batch.
    pub idx: i32,
    pub device_uuid: Option<Uuid>,
    pub model: Option<String>,
    pub public_key: Option<Vec<u8>>,
    pub device_status: Option<String>,
    /// `None`: no such nonce for this device.
    pub challenge_state: Option<String>,
    pub challenge_expired: Option<bool>,
    pub answered_by: Option<String>,
    /// The reported (model, version, sha256) is on the allow-list.
    pub allowed: bool,
}

/// One report to look up: (device id, nonce, firmware version, firmware sha256).
pub struct ReportKey<'a> {
    pub device_id: &'a str,
    pub nonce: &'a str,
    pub version: &'a str,
    pub sha256: &'a str,
}

/// Looks up device, challenge and allow-list of every report of a batch in one statement.
pub async fn attestation_context(
    conn: impl sqlx::PgExecutor<'_>,
    reports: &[ReportKey<'_>],
) -> Result<Vec<AttestationContext>, sqlx::Error> {
    let idx: Vec<i32> = (0..reports.len() as i32).collect();
    let devices: Vec<&str> = reports.iter().map(|r| r.device_id).collect();
    let nonces: Vec<&str> = reports.iter().map(|r| r.nonce).collect();
    let versions: Vec<&str> = reports.iter().map(|r| r.version).collect();
    let hashes: Vec<String> = reports
        .iter()
        .map(|r| r.sha256.to_ascii_lowercase())
        .collect();
    sqlx::query_as::<_, AttestationContext>(
        "SELECT r.idx, d.id AS device_uuid, d.model, d.public_key, d.status AS device_status,
                c.state AS challenge_state, (c.expires_at <= now()) AS challenge_expired,
                c.answered_by,
                EXISTS (SELECT 1 FROM firmware f
                        WHERE f.model = d.model AND f.version = r.version AND f.sha256 = r.sha256)
                    AS allowed
         FROM UNNEST($1::int[], $2::text[], $3::text[], $4::text[], $5::text[])
              AS r(idx, device_id, nonce, version, sha256)
         LEFT JOIN devices d ON d.device_id = r.device_id
         LEFT JOIN attestation_challenges c ON c.nonce = r.nonce AND c.device_id = r.device_id",
    )
    .bind(&idx)
    .bind(&devices)
    .bind(&nonces)
    .bind(&versions)
    .bind(&hashes)
    .fetch_all(conn)
    .await
}

/// For the rest of this transaction, joins of a batch (`UNNEST` of up to a batch's keys) with
/// `devices` or `attestation_challenges` run as index lookups (nested loops), never as hash
/// or merge joins. Left to itself, PostgreSQL's default costs pick a hash join over a full
/// scan of the table for a 1,000-key batch: the attestation batch then cost time in
/// proportion to the FLEET (four scans of 100,000 rows per batch in the benchmark), not to
/// the batch. Only the planner's choice changes, never a result.
pub async fn plan_key_lookups(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT set_config('enable_hashjoin', 'off', true),
                set_config('enable_mergejoin', 'off', true)",
    )
    .execute(conn)
    .await
    .map(|_| ())
}

/// Marks answered challenges `passed` or `failed`, only while they are outstanding and not
/// expired; returns the nonces it marked (a nonce missing was taken by a concurrent answer).
pub async fn consume_challenges(
    conn: &mut PgConnection,
    nonces: &[String],
    states: &[&str],
    entries: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    if nonces.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "UPDATE attestation_challenges c
         SET state = u.state, answered_by = u.entry, answered_at = now()
         FROM UNNEST($1::text[], $2::text[], $3::text[]) AS u(nonce, state, entry)
         WHERE c.nonce = u.nonce AND c.state = 'outstanding' AND c.expires_at > now()
         RETURNING c.nonce",
    )
    .bind(nonces)
    .bind(states)
    .bind(entries)
    .fetch_all(conn)
    .await
}

/// The outcome of attestation for one device.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub device_id: String,
    pub status: &'static str,
    pub reason: Option<String>,
    pub firmware_version: String,
}

/// Applies attestation outcomes in one statement. A quarantined device stays quarantined.
pub async fn apply_verdicts(
    conn: &mut PgConnection,
    verdicts: &[Verdict],
) -> Result<(), sqlx::Error> {
    if verdicts.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = verdicts.iter().map(|v| v.device_id.as_str()).collect();
    let states: Vec<&str> = verdicts.iter().map(|v| v.status).collect();
    let reasons: Vec<Option<&str>> = verdicts.iter().map(|v| v.reason.as_deref()).collect();
    let versions: Vec<&str> = verdicts
        .iter()
        .map(|v| v.firmware_version.as_str())
        .collect();
    sqlx::query(
        "UPDATE devices d
         SET status = CASE WHEN d.status = 'quarantined' THEN d.status ELSE u.status END,
             status_reason = CASE WHEN d.status = 'quarantined' THEN d.status_reason ELSE u.reason END,
             attested_at = CASE WHEN u.status = 'trusted' THEN now() ELSE d.attested_at END,
             firmware_version = CASE WHEN u.status = 'trusted' THEN u.version ELSE d.firmware_version END,
             updated_at = now()
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) AS u(device_id, status, reason, version)
         WHERE d.device_id = u.device_id",
    )
    .bind(&ids)
    .bind(&states)
    .bind(&reasons)
    .bind(&versions)
    .execute(conn)
    .await
    .map(|_| ())
}

// ---------------------------------------------------------------- sweeper

/// A device whose latest challenge expired unanswered.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TimedOut {
    pub device_id: String,
    pub id: Uuid,
    pub model: Option<String>,
    pub nonce: String,
    pub status: String,
    /// The status before this timeout (`attestation_timeout` again: the condition did not
    /// change, no new alert).
    pub previous_status: String,
}

/// Expires sent challenges past their time; a device whose latest challenge it was becomes
/// `attestation_timeout` (unless quarantined). Returns those devices.
pub async fn expire_challenges(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<TimedOut>, sqlx::Error> {
    sqlx::query_as::<_, TimedOut>(
        "WITH due AS (
             SELECT nonce FROM attestation_challenges
             WHERE state = 'outstanding' AND sent AND expires_at <= now()
             ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED
         ), expired AS (
             UPDATE attestation_challenges c SET state = 'expired'
             FROM due WHERE c.nonce = due.nonce
             RETURNING c.nonce, c.device_id, c.issued_at
         ), latest AS (
             SELECT e.* FROM expired e
             WHERE NOT EXISTS (SELECT 1 FROM attestation_challenges o
                               WHERE o.device_id = e.device_id AND o.issued_at > e.issued_at)
         )
         , before AS (
             SELECT latest.device_id, latest.nonce, d0.status AS previous_status
             FROM latest JOIN devices d0 ON d0.device_id = latest.device_id
         )
         UPDATE devices d
         SET status = CASE WHEN d.status = 'quarantined' THEN d.status ELSE 'attestation_timeout' END,
             status_reason = CASE WHEN d.status = 'quarantined' THEN d.status_reason
                                  ELSE 'no answer to the attestation challenge before it expired' END,
             updated_at = now()
         FROM before WHERE d.device_id = before.device_id
         RETURNING d.device_id, d.id, d.model, before.nonce, d.status, before.previous_status",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Challenges committed but not on the bus after `older_than`: locked for this transaction,
/// given a new expiry (they were never sent) and returned to be sent again.
pub async fn unsent_challenges(
    conn: &mut PgConnection,
    older_than: Duration,
    timeout: Duration,
    limit: i64,
) -> Result<Vec<Challenge>, sqlx::Error> {
    sqlx::query_as::<_, Challenge>(
        "WITH due AS (
             SELECT nonce FROM attestation_challenges
             WHERE state = 'outstanding' AND NOT sent
               AND issued_at < now() - $1::bigint * interval '1 millisecond'
             ORDER BY issued_at LIMIT $3 FOR UPDATE SKIP LOCKED
         )
         UPDATE attestation_challenges c
         SET sent = true, expires_at = now() + $2::bigint * interval '1 millisecond'
         FROM due WHERE c.nonce = due.nonce
         RETURNING c.nonce, c.device_id, c.command_id, c.expires_at",
    )
    .bind(millis(older_than))
    .bind(millis(timeout))
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Devices whose `device.registered` record is not on the bus after `older_than`: marked
/// announced in this transaction and returned to be announced.
pub async fn unannounced_devices(
    conn: &mut PgConnection,
    older_than: Duration,
    limit: i64,
) -> Result<Vec<Device>, sqlx::Error> {
    let sql = format!(
        "WITH due AS (
             SELECT device_id FROM devices
             WHERE NOT announced AND registered_at < now() - $1::bigint * interval '1 millisecond'
             ORDER BY registered_at LIMIT $2 FOR UPDATE SKIP LOCKED
         )
         UPDATE devices d SET announced = true FROM due WHERE d.device_id = due.device_id
         RETURNING {DEVICE_COLUMNS}"
    );
    sqlx::query_as::<_, Device>(&sql)
        .bind(millis(older_than))
        .bind(limit)
        .fetch_all(conn)
        .await
}

/// Devices due for scheduled re-attestation, locked for this transaction.
pub async fn due_for_reattestation(
    conn: &mut PgConnection,
    interval: Duration,
    limit: i64,
    not_challenged: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT device_id FROM devices
         WHERE status IN ('trusted', 'untrusted', 'attestation_timeout')
           AND (last_challenge_at IS NULL
                OR last_challenge_at < now() - $1::bigint * interval '1 millisecond')
           AND COALESCE(model, '') <> ALL($3::text[])
         ORDER BY last_challenge_at NULLS FIRST LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(millis(interval))
    .bind(limit)
    .bind(not_challenged)
    .fetch_all(conn)
    .await
}

// ---------------------------------------------------------------- devices (API, enrichment)

const DEVICE_COLUMNS: &str =
    "d.id, d.device_id, d.model, d.firmware_version, d.metadata, d.status, \
     d.status_reason, (d.public_key IS NOT NULL) AS has_public_key, d.first_seen, d.last_seen, \
     d.attested_at, d.last_challenge_at, d.updated_at, (d.silent_since IS NOT NULL) AS silent, \
     d.silent_since, d.seen_interval_ms";

/// A device as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Device {
    pub id: Uuid,
    pub device_id: String,
    pub model: Option<String>,
    pub firmware_version: Option<String>,
    pub metadata: serde_json::Value,
    pub status: String,
    pub status_reason: Option<String>,
    pub has_public_key: bool,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub attested_at: Option<DateTime<Utc>>,
    pub last_challenge_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// Not heard from for `--silent-after` times its usual interval.
    pub silent: bool,
    pub silent_since: Option<DateTime<Utc>>,
    /// Its usual interval between sightings (a moving average), milliseconds.
    pub seen_interval_ms: Option<i64>,
}

/// How the API names a device: its UUID or its device id.
#[derive(Debug, Clone)]
pub enum DeviceRef {
    Uuid(Uuid),
    DeviceId(String),
}

impl DeviceRef {
    fn clause(&self) -> &'static str {
        match self {
            Self::Uuid(_) => "d.id = $1::uuid",
            Self::DeviceId(_) => "d.device_id = $1",
        }
    }
    fn text(&self) -> String {
        match self {
            Self::Uuid(u) => u.to_string(),
            Self::DeviceId(d) => d.clone(),
        }
    }
}

pub async fn get_device(pool: &PgPool, device: &DeviceRef) -> Result<Option<Device>, sqlx::Error> {
    let sql = format!(
        "SELECT {DEVICE_COLUMNS} FROM devices d WHERE {}",
        device.clause()
    );
    sqlx::query_as::<_, Device>(&sql)
        .bind(device.text())
        .fetch_optional(pool)
        .await
}

/// Filters of the device list.
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    pub status: Option<String>,
    pub model: Option<String>,
    pub seen_after: Option<DateTime<Utc>>,
    pub seen_before: Option<DateTime<Utc>>,
    /// Only devices whose device id sorts after this one (the cursor).
    pub after: Option<String>,
    pub limit: i64,
}

/// Devices in device-id order.
pub async fn list_devices(pool: &PgPool, f: &DeviceFilter) -> Result<Vec<Device>, sqlx::Error> {
    let sql = format!(
        "SELECT {DEVICE_COLUMNS} FROM devices d
         WHERE ($1::text IS NULL OR d.status = $1)
           AND ($2::text IS NULL OR d.model = $2)
           AND ($3::timestamptz IS NULL OR d.last_seen >= $3)
           AND ($4::timestamptz IS NULL OR d.last_seen < $4)
           AND ($5::text IS NULL OR d.device_id > $5)
         ORDER BY d.device_id LIMIT $6"
    );
    sqlx::query_as::<_, Device>(&sql)
        .bind(&f.status)
        .bind(&f.model)
        .bind(f.seen_after)
        .bind(f.seen_before)
        .bind(&f.after)
        .bind(f.limit)
        .fetch_all(pool)
        .await
}

/// The identity and trust of devices, for alert enrichment.
pub async fn devices_by_id(
    pool: &PgPool,
    device_ids: &[String],
) -> Result<Vec<Device>, sqlx::Error> {
    let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices d WHERE d.device_id = ANY($1)");
    sqlx::query_as::<_, Device>(&sql)
        .bind(device_ids)
        .fetch_all(pool)
        .await
}

/// Sets the device's Ed25519 public key; `None` when there is no such device.
pub async fn set_public_key(
    pool: &PgPool,
    device: &DeviceRef,
    key: &[u8],
) -> Result<Option<Device>, sqlx::Error> {
    let sql = format!(
        "UPDATE devices d SET public_key = $2, updated_at = now() WHERE {} RETURNING {DEVICE_COLUMNS}",
        device.clause()
    );
    sqlx::query_as::<_, Device>(&sql)
        .bind(device.text())
        .bind(key)
        .fetch_optional(pool)
        .await
}

/// Quarantines a device; `None` when there is no such device.
pub async fn quarantine(
    conn: &mut PgConnection,
    device: &DeviceRef,
    reason: &str,
) -> Result<Option<Device>, sqlx::Error> {
    let sql = format!(
        "UPDATE devices d SET status = 'quarantined', status_reason = $2, updated_at = now()
         WHERE {} RETURNING {DEVICE_COLUMNS}",
        device.clause()
    );
    sqlx::query_as::<_, Device>(&sql)
        .bind(device.text())
        .bind(reason)
        .fetch_optional(conn)
        .await
}

// ---------------------------------------------------------------- firmware allow-list

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Firmware {
    pub model: String,
    pub version: String,
    pub sha256: String,
    pub added_by: Option<String>,
    pub added_at: DateTime<Utc>,
}

pub async fn list_firmware(
    pool: &PgPool,
    model: Option<&str>,
) -> Result<Vec<Firmware>, sqlx::Error> {
    sqlx::query_as::<_, Firmware>(
        "SELECT model, version, sha256, added_by, added_at FROM firmware
         WHERE ($1::text IS NULL OR model = $1) ORDER BY model, version, sha256",
    )
    .bind(model)
    .fetch_all(pool)
    .await
}

/// Adds an allow-list entry; `false` when it was already there.
pub async fn add_firmware(
    pool: &PgPool,
    model: &str,
    version: &str,
    sha256: &str,
    added_by: &str,
) -> Result<bool, sqlx::Error> {
    let res = sqlx::query(
        "INSERT INTO firmware (model, version, sha256, added_by) VALUES ($1, $2, $3, $4)
         ON CONFLICT DO NOTHING",
    )
    .bind(model)
    .bind(version)
    .bind(sha256)
    .bind(added_by)
    .execute(pool)
    .await?;
    Ok(res.rows_affected() == 1)
}

/// Removes an allow-list entry; `false` when there was none.
pub async fn delete_firmware(
    pool: &PgPool,
    model: &str,
    version: &str,
    sha256: &str,
) -> Result<bool, sqlx::Error> {
    let res = sqlx::query("DELETE FROM firmware WHERE model = $1 AND version = $2 AND sha256 = $3")
        .bind(model)
        .bind(version)
        .bind(sha256)
        .execute(pool)
        .await?;
    Ok(res.rows_affected() == 1)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

// ---------------------------------------------------------------- device commands

/// The statuses of a device command (docs/contract.md#device-actions).
pub mod command_status {
    pub const AWAITING_APPROVAL: &str = "awaiting_approval";
    pub const REJECTED: &str = "rejected";
    pub const APPROVAL_EXPIRED: &str = "approval_expired";
    /// Approved, but the approval's proof did not hold (forged, unknown key, too late).
    pub const REFUSED: &str = "refused";
    pub const QUEUED: &str = "queued";
    pub const SENT: &str = "sent";
    pub const NOT_REACHED: &str = "not_reached";
    pub const EXPIRED: &str = "expired";
    pub const FAILED: &str = "failed";
    pub const DONE: &str = "done";
    pub const UNCONFIRMED: &str = "unconfirmed";
}

const COMMAND_COLUMNS: &str = "c.id, c.device_id, c.action, c.params, c.privileged, c.status, \
     c.status_reason, c.requested_by, c.approval_id, c.decided_by, c.expires_at, \
     c.requested_at, c.updated_at";

/// A device command as the API shows it (`params` is the canonical JSON text).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CommandRow {
    pub id: Uuid,
    pub device_id: String,
    pub action: String,
    pub params: String,
    pub privileged: bool,
    pub status: String,
    pub status_reason: Option<String>,
    pub requested_by: String,
    pub approval_id: Option<Uuid>,
    pub decided_by: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub requested_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl CommandRow {
    /// The parameters as JSON.
    pub fn params_value(&self) -> serde_json::Value {
        serde_json::from_str(&self.params).unwrap_or(serde_json::Value::Null)
    }

    /// The row as the API shows it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "command_id": self.id,
            "device_id": self.device_id,
            "action": self.action,
            "params": self.params_value(),
            "privileged": self.privileged,
            "status": self.status,
            "status_reason": self.status_reason,
            "requested_by": self.requested_by,
            "approval_id": self.approval_id,
            "decided_by": self.decided_by,
            "expires_at": self.expires_at,
            "requested_at": self.requested_at,
            "updated_at": self.updated_at,
        })
    }
}

/// A new command row.
pub struct NewCommand<'a> {
    pub id: Uuid,
    pub device_id: &'a str,
    pub action: &'a str,
    pub params: &'a str,
    pub privileged: bool,
    pub status: &'a str,
    pub requested_by: &'a str,
    pub approval_id: Option<Uuid>,
    pub expires_at: DateTime<Utc>,
}

pub async fn insert_command(
    conn: &mut PgConnection,
    c: &NewCommand<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO device_commands
           (id, device_id, action, params, privileged, status, requested_by, approval_id, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(c.id)
    .bind(c.device_id)
    .bind(c.action)
    .bind(c.params)
    .bind(c.privileged)
    .bind(c.status)
    .bind(c.requested_by)
    .bind(c.approval_id)
    .bind(c.expires_at)
    .execute(conn)
    .await
    .map(|_| ())
}

pub async fn get_command(
    conn: &mut PgConnection,
    id: Uuid,
    lock: bool,
) -> Result<Option<CommandRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {COMMAND_COLUMNS} FROM device_commands c WHERE c.id = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    sqlx::query_as::<_, CommandRow>(&sql)
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// The command an approval is about, locked for the transaction.
pub async fn command_of_approval(
    conn: &mut PgConnection,
    approval_id: Uuid,
) -> Result<Option<CommandRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {COMMAND_COLUMNS} FROM device_commands c WHERE c.approval_id = $1 FOR UPDATE"
    );
    sqlx::query_as::<_, CommandRow>(&sql)
        .bind(approval_id)
        .fetch_optional(conn)
        .await
}

/// The newest commands of a device.
pub async fn commands_of_device(
    pool: &PgPool,
    device_id: &str,
    limit: i64,
) -> Result<Vec<CommandRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {COMMAND_COLUMNS} FROM device_commands c WHERE c.device_id = $1
         ORDER BY c.requested_at DESC, c.id LIMIT $2"
    );
    sqlx::query_as::<_, CommandRow>(&sql)
        .bind(device_id)
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// Moves a command to `status` (with the decider and the command's expiry when given).
pub async fn set_command_status(
    conn: &mut PgConnection,
    id: Uuid,
    status: &str,
    reason: Option<&str>,
    decided_by: Option<&str>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE device_commands SET status = $2, status_reason = $3,
           decided_by = COALESCE($4, decided_by), expires_at = COALESCE($5, expires_at),
           updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(status)
    .bind(reason)
    .bind(decided_by)
    .bind(expires_at)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Commands queued or sent whose expiry passed more than `grace` ago without a receipt,
/// locked for the transaction (other replicas skip them).
pub async fn unconfirmed_commands(
    conn: &mut PgConnection,
    grace: std::time::Duration,
    limit: i64,
) -> Result<Vec<CommandRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {COMMAND_COLUMNS} FROM device_commands c
         WHERE c.status IN ('queued', 'sent') AND c.expires_at < now() - $1::interval
         ORDER BY c.expires_at LIMIT $2 FOR UPDATE SKIP LOCKED"
    );
    sqlx::query_as::<_, CommandRow>(&sql)
        .bind(format!("{} milliseconds", grace.as_millis()))
        .bind(limit)
        .fetch_all(conn)
        .await
}

/// Whether `command_id` is an attestation challenge's command.
pub async fn is_challenge_command(pool: &PgPool, command_id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM attestation_challenges WHERE command_id = $1)")
        .bind(command_id)
        .fetch_one(pool)
        .await
}

/// Sets a device's key inside a transaction (an approved key change).
pub async fn set_public_key_in(
    conn: &mut PgConnection,
    device_id: &str,
    key: &[u8],
) -> Result<bool, sqlx::Error> {
    sqlx::query("UPDATE devices SET public_key = $2, updated_at = now() WHERE device_id = $1")
        .bind(device_id)
        .bind(key)
        .execute(conn)
        .await
        .map(|r| r.rows_affected() > 0)
}

// ---------------------------------------------------------------- silent devices

/// A device that fell silent, or talks again.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SilenceChange {
    pub device_id: String,
    pub id: Uuid,
    pub model: Option<String>,
    pub last_seen: DateTime<Utc>,
    pub seen_interval_ms: Option<i64>,
    /// When the silence began: the last message before it (for a device that talks again:
    /// the silence that ended).
    pub silent_since: DateTime<Utc>,
}

/// Devices not seen for `factor` times their usual interval (at least `floor`), not yet
/// silent: marked silent now, locked by this transaction. A device without a usual interval
/// yet (seen once) is not judged.
pub async fn mark_silent(
    conn: &mut PgConnection,
    factor: u32,
    floor: Duration,
    limit: i64,
) -> Result<Vec<SilenceChange>, sqlx::Error> {
    sqlx::query_as::<_, SilenceChange>(
        "WITH due AS (
             SELECT device_id FROM devices
             WHERE silent_since IS NULL AND seen_interval_ms IS NOT NULL
               AND last_seen < now() - GREATEST(seen_interval_ms * $1::bigint, $2::bigint)
                                       * interval '1 millisecond'
             ORDER BY last_seen LIMIT $3 FOR UPDATE SKIP LOCKED
         )
         UPDATE devices d SET silent_since = d.last_seen FROM due WHERE d.device_id = due.device_id
         RETURNING d.device_id, d.id, d.model, d.last_seen, d.seen_interval_ms, d.silent_since",
    )
    .bind(i64::from(factor))
    .bind(millis(floor))
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Silent devices seen again: no longer silent.
pub async fn clear_silent(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<SilenceChange>, sqlx::Error> {
    sqlx::query_as::<_, SilenceChange>(
        "WITH due AS (
             SELECT device_id, silent_since FROM devices
             WHERE silent_since IS NOT NULL AND last_seen > silent_since
             LIMIT $1 FOR UPDATE SKIP LOCKED
         )
         UPDATE devices d SET silent_since = NULL FROM due WHERE d.device_id = due.device_id
         RETURNING d.device_id, d.id, d.model, d.last_seen, d.seen_interval_ms, due.silent_since",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}
