//! What the bridge checks before it sends a privileged action to a device: that analysts
//! approved this very command (the approving service's signature over it,
//! `aurora_core::approval`), and that the approval was not used before.
//!
//! Writing to the commands stream is not enough to command a device: a command whose action
//! is privileged (`--privileged-actions`) carries a proof, checked with the approvers' public
//! keys (`--approval-public-keys`; none configured: every privileged command is refused). An
//! approval is used once: its id is recorded in Redis with the entry that used it before the
//! command is published; another entry carrying the same proof is a replay. The same entry
//! read again (a crash between the broker's PUBACK and the XACK) is not.

use std::time::Duration;

use aurora_core::approval::{is_privileged, ActionProof, ApproverKeys, ProofError};
use aurora_core::bus::{self, BusError, Conn};
use aurora_core::model::DeviceCommand;
use aurora_core::Names;
use chrono::{DateTime, Utc};
use redis::Value;
use uuid::Uuid;

use crate::SERVICE;

/// How long after a proof is void its approval id is remembered: a replay is refused by the
/// proof's expiry from then on, the day covers clocks that disagree.
pub const USED_MARGIN: Duration = Duration::from_secs(24 * 3600);

/// Records the approval (KEYS[1]) as used by the entry ARGV[1] until ARGV[2] (Unix ms), unless
/// it is recorded already; returns the entry that used it.
const CLAIM: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PXAT', ARGV[2]) then
  return ARGV[1]
end
return redis.call('GET', KEYS[1])
";

/// Why a command is not sent; its text is the dead letter's reason and the status's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Proof(#[from] ProofError),
    #[error("approval {approval_id} was already used by entry {entry}")]
    Replayed { approval_id: Uuid, entry: String },
}

impl Refusal {
    /// The `reason` label of `aurora_mqtt_bridge_commands_refused_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Proof(e) => e.label(),
            Self::Replayed { .. } => "replayed",
        }
    }
}

/// The privileged actions and the keys that prove an approval of one.
#[derive(Debug, Clone)]
pub struct Guard {
    pub privileged: Vec<String>,
    pub keys: ApproverKeys,
}

impl Guard {
    /// The proof of `command`, when its action is privileged: `Ok(None)` for an action that
    /// needs none, the refusal when the proof does not hold at `now`.
    pub fn verify(
        &self,
        command: &DeviceCommand,
        now: DateTime<Utc>,
    ) -> Result<Option<ActionProof>, Refusal> {
        if !is_privileged(&self.privileged, &command.action) {
            return Ok(None);
        }
        Ok(Some(self.keys.verify_command(command, now)?))
    }
}

/// The record of used approvals, in Redis.
#[derive(Clone)]
pub struct UsedApprovals {
    conn: Conn,
    names: Names,
}

impl UsedApprovals {
    pub fn new(conn: Conn, names: Names) -> Self {
        Self { conn, names }
    }

    /// The key that records the use of an approval.
    pub fn key(&self, approval_id: &Uuid) -> String {
        self.names
            .state_key(SERVICE, &format!("approval-used:{approval_id}"))
    }

    /// Records that `entry_id` uses the approval of `proof` (kept until a day after the proof
    /// is void); a replay when another entry used it already. With `--redis-wait-replicas`
    /// the record is on the replicas before the command is sent, so a failover does not
    /// forget it.
    pub async fn claim(
        &self,
        proof: &ActionProof,
        entry_id: &str,
    ) -> Result<Result<(), Refusal>, BusError> {
        let key = self.key(&proof.approval_id);
        let margin = chrono::Duration::from_std(USED_MARGIN).unwrap_or_default();
        let keep_until = (proof.not_after + margin).timestamp_millis();
        let script = redis::Script::new(CLAIM);
        let mut invocation = script.prepare_invoke();
        invocation.key(&key).arg(entry_id).arg(keep_until);
        let mut pipe = redis::pipe();
        pipe.load_script(&script).ignore();
        pipe.invoke_script(&invocation);
        let mut replies = bus::query_replicated(&self.conn, pipe, "SET NX", &key).await?;
        let holder = match replies.pop() {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
            Some(Value::SimpleString(s)) => s,
            other => {
                let unexpected = redis::RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "unexpected reply recording an approval's use",
                    format!("{other:?}"),
                ));
                return Err(BusError::command("SET NX", &key)(unexpected));
            }
        };
        if holder == entry_id {
            Ok(Ok(()))
        } else {
            Ok(Err(Refusal::Replayed {
                approval_id: proof.approval_id,
                entry: holder,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aurora_core::approval::{DeviceAction, SigningKey};
    use aurora_core::model::Extra;

    fn command(action: &str) -> DeviceCommand {
        DeviceCommand {
            id: Uuid::new_v4(),
            device_id: "dev-1".into(),
            action: action.into(),
            params: serde_json::json!({"a": 1}),
            issued_at: Utc::now(),
            expires_at: None,
            extra: Extra::new(),
        }
    }

    #[test]
    fn only_privileged_actions_need_a_proof_and_refusals_are_named() {
        let key = SigningKey::generate();
        let guard = Guard {
            privileged: vec!["reboot".into()],
            keys: ApproverKeys::parse(&[key.public_base64()]).expect("key"),
        };
        let now = Utc::now();
        assert_eq!(guard.verify(&command("attest"), now), Ok(None));
        let refusal = guard.verify(&command("reboot"), now).expect_err("no proof");
        assert_eq!(refusal.label(), "missing");
        assert_eq!(
            refusal.to_string(),
            "a privileged action without an approval proof"
        );
        let mut signed = command("reboot");
        let proof = key.sign(
            &DeviceAction::of_command(&signed),
            Uuid::new_v4(),
            "bob",
            now + chrono::Duration::minutes(1),
        );
        proof.attach(&mut signed);
        assert_eq!(guard.verify(&signed, now), Ok(Some(proof.clone())));
        let replay = Refusal::Replayed {
            approval_id: proof.approval_id,
            entry: "1-0".into(),
        };
        assert_eq!(replay.label(), "replayed");
        assert_eq!(
            replay.to_string(),
            format!(
                "approval {} was already used by entry 1-0",
                proof.approval_id
            )
        );
    }
}
