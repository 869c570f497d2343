//! The approval workflow: `pending` moves once to `approved`, `rejected` or `expired`, across
//! every replica and every concurrent click.
//!
//! The gateway learns approvals by reading the approvals stream (it tails it for its clients
//! anyway). Each pending approval gets a state hash in Redis (`status`, `doc`) that lives until
//! some time after its `expires_at`, and an entry in a sorted set of pending approvals by
//! expiry. A transition is one Lua script: it checks that the state is still `pending`, sets
//! the new state and appends the decided document to the approvals stream, atomically, so it
//! happens once whichever replica runs it first; the others get a conflict.
//!
//! When tracing is on, the state hash also keeps the trace context the pending approval's entry
//! carried, and a transition is a `<approvals stream> publish` span (producer), the child of
//! that context: the decided entry carries the span's context, so a decision continues the
//! trace of the request that asked for it.

use std::time::Duration;

use aurora_core::approval::{DeviceAction, PROOF_FIELD};
use aurora_core::bus::{self, Conn, Entry};
use aurora_core::model::{self, Approval, ApprovalStatus};
use aurora_core::trace::{self, TraceContext, TRACEPARENT_FIELD, TRACESTATE_FIELD};
use aurora_core::Names;
use chrono::Utc;
use redis::Script;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::{DecideError, StoreError};
use crate::frame::STREAM_ID_FIELD;
use crate::{telemetry, SERVICE};

/// Entries read per round trip while catching up with the approvals stream.
const CATCH_UP_BATCH: usize = 500;
/// Approvals expired per sweep round trip.
const SWEEP_BATCH: isize = 100;
/// Longest comment a decision may carry, in characters.
pub const MAX_COMMENT_CHARS: usize = 4000;

const DECIDE: &str = concat!(
    aurora_core::ledger_lua!(),
    r"
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', ''} end
if status ~= 'pending' then return {'conflict', status} end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'doc', ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[4])
local id
if ARGV[5] == '' then
  id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'data', ARGV[2])
elseif ARGV[6] == '' then
  id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'data', ARGV[2], 'traceparent', ARGV[5])
else
  id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'data', ARGV[2], 'traceparent', ARGV[5], 'tracestate', ARGV[6])
end
local written = {}
ledger_add(written, KEYS[2], id, 1)
ledger_flush(written, 'in')
return {'done', id}
"
);

const REGISTER: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'status', 'pending', 'doc', ARGV[1])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'traceparent', ARGV[5]) end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'tracestate', ARGV[6]) end
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
return 1
";

const ADVANCE_CURSOR: &str = r"
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local cur = redis.call('GET', KEYS[1])
if cur then
  local cm, cs = parse(cur)
  local nm, ns = parse(ARGV[1])
  if cm and nm and (nm < cm or (nm == cm and ns <= cs)) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
";

fn store_err(what: &'static str) -> impl FnOnce(redis::RedisError) -> StoreError {
    move |source| StoreError { what, source }
}

/// What an analyst decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Approve,
    Reject,
}

impl Verdict {
    pub fn status(self) -> ApprovalStatus {
        match self {
            Self::Approve => ApprovalStatus::Approved,
            Self::Reject => ApprovalStatus::Rejected,
        }
    }
}

/// The approval state shared by every replica.
#[derive(Clone)]
pub struct ApprovalStore {
    names: Names,
    conn: Conn,
    maxlen: usize,
    retention: Duration,
    /// Signs approved device actions (`--approval-signing-key`).
    signer: Option<aurora_core::approval::SigningKey>,
    /// How long an approved device action stays valid.
    action_ttl: Duration,
}

impl ApprovalStore {
    pub fn new(names: Names, conn: Conn, maxlen: usize, retention: Duration) -> Self {
        Self {
            names,
            conn,
            maxlen,
            retention,
            signer: None,
            action_ttl: Duration::from_secs(600),
        }
    }

    /// Signs approved device actions with `signer`, valid for `action_ttl`.
    pub fn with_signer(
        mut self,
        signer: Option<aurora_core::approval::SigningKey>,
        action_ttl: Duration,
    ) -> Self {
        self.signer = signer;
        self.action_ttl = action_ttl;
        self
    }

    /// The state hash of one approval.
    pub fn state_key(&self, id: &Uuid) -> String {
        self.names.state_key(SERVICE, &format!("approval:{id}"))
    }

    fn pending_key(&self) -> String {
        self.names.state_key(SERVICE, "approvals:pending")
    }

    fn cursor_key(&self) -> String {
        self.names.state_key(SERVICE, "approvals:cursor")
    }

    /// The current status of an approval, when the gateway knows it.
    pub async fn status(&self, id: &Uuid) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("HGET")
            .arg(self.state_key(id))
            .arg("status")
            .query_async(&mut conn)
            .await
            .map_err(store_err("HGET status"))
    }

    /// Registers every pending approval of the stream that no replica has seen yet, up to
    /// `until` (an entry id), from where the replicas got to before.
    pub async fn catch_up(&self, conn: &mut Conn, until: &str) -> Result<(), bus::BusError> {
        let stream = self.names.approvals();
        let mut cursor: String = redis::cmd("GET")
            .arg(self.cursor_key())
            .query_async::<Option<String>>(conn)
            .await
            .map_err(store_err("GET cursor"))?
            .unwrap_or_else(|| "0-0".to_string());
        loop {
            if bus::compare_ids(&cursor, until) != Some(std::cmp::Ordering::Less) {
                return Ok(());
            }
            let mut entries = bus::range(conn, &stream, &cursor, CATCH_UP_BATCH).await?;
            let full = entries.len() == CATCH_UP_BATCH;
            entries.retain(|e| bus::compare_ids(&e.id, until) != Some(std::cmp::Ordering::Greater));
            let Some(last) = entries.last().map(|e| e.id.clone()) else {
                return Ok(());
            };
            self.register_entries(&entries).await?;
            cursor = last;
            if !full {
                return Ok(());
            }
        }
    }

    /// Registers the pending approvals among these entries (idempotent), then records how far
    /// the replicas got.
    pub async fn register_entries(&self, entries: &[Entry]) -> Result<(), StoreError> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        for entry in entries {
            let Some(data) = entry.data.as_deref() else {
                continue;
            };
            match model::parse::<Approval>(data) {
                Ok(approval) if approval.status == ApprovalStatus::Pending => {
                    self.register(&approval, data, entry.trace.as_ref()).await?;
                }
                Ok(_) => {}
                Err(e) => {
                    telemetry::invalid_approval();
                    tracing::warn!(entry = %entry.id, error = %e, "an approvals entry is not an approval: it cannot be decided");
                }
            }
        }
        let mut conn = self.conn.clone();
        Script::new(ADVANCE_CURSOR)
            .key(self.cursor_key())
            .arg(&last.id)
            .invoke_async::<i64>(&mut conn)
            .await
            .map_err(store_err("advance cursor"))?;
        Ok(())
    }

    /// Keeps a pending approval's state, with the trace context its entry carried.
    async fn register(
        &self,
        approval: &Approval,
        raw: &[u8],
        trace: Option<&TraceContext>,
    ) -> Result<(), StoreError> {
        let keep_until = approval.expires_at
            + chrono::Duration::from_std(self.retention).unwrap_or(chrono::Duration::days(7));
        if keep_until <= Utc::now() {
            // Older than its state would be kept: deciding it now would be meaningless.
            return Ok(());
        }
        let mut conn = self.conn.clone();
        Script::new(REGISTER)
            .key(self.state_key(&approval.id))
            .key(self.pending_key())
            .arg(raw)
            .arg(keep_until.timestamp_millis())
            .arg(approval.expires_at.timestamp_millis())
            .arg(approval.id.to_string())
            .arg(trace.map_or("", |t| t.traceparent.as_str()))
            .arg(
                trace
                    .and_then(|t| t.tracestate.as_deref())
                    .unwrap_or_default(),
            )
            .invoke_async::<i64>(&mut conn)
            .await
            .map_err(store_err("register approval"))?;
        Ok(())
    }

    /// Moves a pending approval to the verdict's status, once. An approval already past its
    /// `expires_at` is expired instead, and the caller gets a conflict. Its requester cannot
    /// approve it (the token's `sub` against `requested_by`); an approved device action
    /// carries this gateway's signature over what was approved
    /// ([`aurora_core::approval`]), or is refused when the gateway has no key.
    pub async fn decide(
        &self,
        id: &Uuid,
        verdict: Verdict,
        decided_by: &str,
        comment: Option<String>,
    ) -> Result<Approval, DecideError> {
        let (pending, trace) = self.pending(id).await?;
        if pending.expires_at <= Utc::now() {
            self.transition(pending, trace.as_ref(), ApprovalStatus::Expired, None, None)
                .await?;
            return Err(DecideError::Conflict(
                ApprovalStatus::Expired.as_str().into(),
            ));
        }
        let mut pending = pending;
        // Only this gateway's own signature is ever carried.
        pending.extra.remove(PROOF_FIELD);
        if verdict == Verdict::Approve {
            if pending.requested_by == decided_by {
                telemetry::approval_decision("own_request");
                return Err(DecideError::OwnRequest);
            }
            if let Some(action) = DeviceAction::from_context(&pending.context) {
                let action = action.map_err(DecideError::BadAction)?;
                let signer = self.signer.as_ref().ok_or(DecideError::NoSigningKey)?;
                let not_after = Utc::now()
                    + chrono::Duration::from_std(self.action_ttl)
                        .unwrap_or(chrono::Duration::minutes(10));
                let proof = signer.sign(&action, pending.id, decided_by, not_after);
                pending.extra.insert(
                    PROOF_FIELD.to_string(),
                    serde_json::to_value(&proof).unwrap_or_default(),
                );
            }
        }
        self.transition(
            pending,
            trace.as_ref(),
            verdict.status(),
            Some(decided_by.to_string()),
            comment,
        )
        .await
    }

    /// Expires a pending approval, once.
    pub async fn expire(&self, id: &Uuid) -> Result<Approval, DecideError> {
        let (pending, trace) = self.pending(id).await?;
        self.transition(pending, trace.as_ref(), ApprovalStatus::Expired, None, None)
            .await
    }

    /// The stored document of an approval that is still pending, and the trace context its
    /// entry carried (read when tracing is on).
    async fn pending(&self, id: &Uuid) -> Result<(Approval, Option<TraceContext>), DecideError> {
        let mut conn = self.conn.clone();
        type State = (
            Option<String>,
            Option<Vec<u8>>,
            Option<String>,
            Option<String>,
        );
        let (status, doc, traceparent, tracestate): State = redis::cmd("HMGET")
            .arg(self.state_key(id))
            .arg("status")
            .arg("doc")
            .arg(TRACEPARENT_FIELD)
            .arg(TRACESTATE_FIELD)
            .query_async(&mut conn)
            .await
            .map_err(store_err("HMGET approval"))?;
        match (status, doc) {
            (Some(status), _) if status != ApprovalStatus::Pending.as_str() => {
                Err(DecideError::Conflict(status))
            }
            (Some(_), Some(doc)) => {
                let approval = model::parse::<Approval>(&doc)
                    .map_err(|e| DecideError::Corrupt(e.to_string()))?;
                let trace = traceparent
                    .filter(|_| trace::enabled())
                    .and_then(|parent| TraceContext::parse(&parent, tracestate.as_deref()));
                Ok((approval, trace))
            }
            _ => Err(DecideError::NotFound),
        }
    }

    /// Moves `approval` to `status` (once), inside its `<approvals stream> publish` hop (when
    /// tracing is on; the child of `parent`, the context its pending entry carried), whose
    /// context the decided entry carries.
    async fn transition(
        &self,
        approval: Approval,
        parent: Option<&TraceContext>,
        status: ApprovalStatus,
        decided_by: Option<String>,
        comment: Option<String>,
    ) -> Result<Approval, DecideError> {
        let stream = self.names.approvals();
        let hop = trace::message_hop("redis", &stream, "publish", "producer", parent);
        hop.scope(self.write_transition(approval, hop.context(), status, decided_by, comment))
            .await
    }

    async fn write_transition(
        &self,
        mut approval: Approval,
        trace: Option<&TraceContext>,
        status: ApprovalStatus,
        decided_by: Option<String>,
        comment: Option<String>,
    ) -> Result<Approval, DecideError> {
        approval.status = status;
        approval.decided_by = decided_by;
        approval.decided_at = Some(Utc::now());
        approval.comment = comment;
        approval.extra.remove(STREAM_ID_FIELD);
        let doc = model::to_bytes(&approval);
        let mut conn = self.conn.clone();
        let (outcome, detail): (String, String) = Script::new(DECIDE)
            .key(self.state_key(&approval.id))
            .key(self.names.approvals())
            .key(self.pending_key())
            .arg(status.as_str())
            .arg(doc)
            .arg(self.maxlen)
            .arg(approval.id.to_string())
            .arg(trace.map_or("", |t| t.traceparent.as_str()))
            .arg(
                trace
                    .and_then(|t| t.tracestate.as_deref())
                    .unwrap_or_default(),
            )
            .invoke_async(&mut conn)
            .await
            .map_err(store_err("decide approval"))?;
        let label = match outcome.as_str() {
            "done" => status.as_str(),
            "conflict" => "conflict",
            _ => "not_found",
        };
        telemetry::approval_decision(label);
        match outcome.as_str() {
            "done" => {
                tracing::Span::current().record("messaging.message.id", detail.as_str());
                tracing::info!(approval = %approval.id, status = status.as_str(), decided_by = ?approval.decided_by, entry = %detail, "approval decided");
                self.replicated(&mut conn).await?;
                Ok(approval)
            }
            "conflict" => Err(DecideError::Conflict(detail)),
            _ => Err(DecideError::NotFound),
        }
    }

    /// With `--redis-wait-replicas`, waits until the replicas hold the decision just written
    /// on this connection before the analyst is answered; fewer in time is an error (503):
    /// the decision stands on the primary, and a failover could lose it.
    async fn replicated(&self, conn: &mut aurora_core::bus::Conn) -> Result<(), StoreError> {
        let Some(wait) = conn.replica_wait() else {
            return Ok(());
        };
        let acknowledged: i64 = redis::cmd("WAIT")
            .arg(wait.replicas)
            .arg(wait.timeout.as_millis().max(1) as u64)
            .query_async(conn)
            .await
            .map_err(store_err("WAIT after an approval decision"))?;
        if acknowledged >= i64::from(wait.replicas) {
            return Ok(());
        }
        Err(StoreError {
            what: "WAIT after an approval decision",
            source: redis::RedisError::from((
                redis::ErrorKind::Io,
                "the decision is on the primary but not on enough replicas yet",
                format!(
                    "{acknowledged} of {} within {:?}",
                    wait.replicas, wait.timeout
                ),
            )),
        })
    }

    /// Ids of pending approvals past their `expires_at`.
    async fn due(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("ZRANGEBYSCORE")
            .arg(self.pending_key())
            .arg("-inf")
            .arg(Utc::now().timestamp_millis())
            .arg("LIMIT")
            .arg(0)
            .arg(SWEEP_BATCH)
            .query_async(&mut conn)
            .await
            .map_err(store_err("ZRANGEBYSCORE pending"))
    }

    async fn forget_pending(&self, id: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("ZREM")
            .arg(self.pending_key())
            .arg(id)
            .query_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(store_err("ZREM pending"))
    }

    /// One sweep: expires every due approval; returns how many this replica expired.
    pub async fn sweep(&self) -> Result<usize, StoreError> {
        let mut expired = 0;
        for id in self.due().await? {
            let Ok(uuid) = Uuid::parse_str(&id) else {
                self.forget_pending(&id).await?;
                continue;
            };
            match self.expire(&uuid).await {
                Ok(_) => expired += 1,
                // Another replica or a click was first: nothing to do.
                Err(DecideError::Conflict(_)) => {}
                // Expiry neither approves nor signs.
                Err(DecideError::OwnRequest)
                | Err(DecideError::NoSigningKey)
                | Err(DecideError::BadAction(_)) => {}
                Err(DecideError::NotFound) | Err(DecideError::Corrupt(_)) => {
                    self.forget_pending(&id).await?;
                }
                Err(DecideError::Store(e)) => return Err(e),
            }
        }
        Ok(expired)
    }
}

/// Expires due approvals every `interval` until `shutdown`; every replica runs one, and the
/// transition script makes each expiry happen once.
pub async fn run_sweeper(store: ApprovalStore, interval: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(50)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if let Err(e) = store.sweep().await {
            tracing::warn!(error = %e, "approval expiry sweep failed; retrying next round");
        }
    }
}
