//! Signed origin (docs/contract.md#jetstream): each site signs what it publishes with its
//! Ed25519 key, and a site imports only what one of its peers' keys signed.
//!
//! Keys follow the device attestation's conventions (`aurora_core::approval`): a key file
//! holds the 32-byte seed in base64 (`aurora approval-key` writes one and prints its public
//! key), a key is named by its id (the first 8 bytes of the SHA-256 of its public key, hex),
//! and a site may have two keys valid at once while one replaces the other.
//!
//! One signature covers a batch of messages (an Ed25519 signature costs more than the rest of
//! a message's carry): each message is a leaf, the SHA-256 of the domain tag
//! `aurora-federation-leaf-v1`, its subject, message id and origin site (one per line) and its
//! payload; the leaves make a Merkle tree (SHA-256, leaves and nodes domain-separated, an odd
//! node carried up), and the site signs `aurora-federation-v1`, the origin site, the key id,
//! the signing instant (Unix ms) and the root. A message carries the signature and its path to
//! the root: [`KEY_ID_HEADER`], [`SIGNED_AT_HEADER`], [`SIGNATURE_HEADER`] (base64) and
//! [`PROOF_HEADER`] (base64 of 33 bytes per level: the side, then the sibling's hash; absent
//! for a batch of one). The importer checks each message's path and the root's signature once
//! per batch (the roots it verified are remembered). A message stored much later than it was
//! signed (more than `max_age`) is a replay: the exporter signs again when it publishes a
//! message again, so a real one is stored within seconds of its signature.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aurora_core::approval::{key_id, SigningKey};
use base64::Engine;
use ed25519_dalek::Verifier;
use sha2::{Digest, Sha256};

pub const KEY_ID_HEADER: &str = "Aurora-Key-Id";
pub const SIGNED_AT_HEADER: &str = "Aurora-Signed-At";
pub const SIGNATURE_HEADER: &str = "Aurora-Signature";
pub const PROOF_HEADER: &str = "Aurora-Signature-Proof";

const DOMAIN: &str = "aurora-federation-v1";
const LEAF_DOMAIN: &str = "aurora-federation-leaf-v1";

/// The deepest path a message may carry (2^32 messages in one batch).
const MAX_PROOF_LEVELS: usize = 32;

/// Roots a verifier remembers as verified.
const VERIFIED_ROOTS: usize = 4_096;

/// Most keys one site may have valid at once.
pub const KEYS_PER_SITE: usize = 2;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// A key that cannot be used.
pub use aurora_core::approval::KeyError;

/// One message's leaf: what its batch's signature covers of it.
pub fn leaf(subject: &str, msg_id: &str, origin: &str, payload: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(format!("{LEAF_DOMAIN}\n{subject}\n{msg_id}\n{origin}\n").as_bytes());
    h.update(payload);
    h.finalize().into()
}

fn node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// A leaf's path to its root, a step per level: (the sibling is on the right, its hash).
type MerklePath = Vec<(bool, [u8; 32])>;

/// The root of `leaves` and each leaf's path to it.
fn tree(leaves: &[[u8; 32]]) -> ([u8; 32], Vec<MerklePath>) {
    let mut paths = vec![Vec::new(); leaves.len()];
    let mut positions: Vec<usize> = (0..leaves.len()).collect();
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        for (path, pos) in paths.iter_mut().zip(positions.iter_mut()) {
            let sibling = *pos ^ 1;
            if let Some(hash) = level.get(sibling) {
                path.push((sibling > *pos, *hash));
            }
            *pos /= 2;
        }
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [l, r] => node(l, r),
                [one] => *one,
                _ => [0; 32],
            })
            .collect();
    }
    (level.first().copied().unwrap_or([0; 32]), paths)
}

fn root_of(leaf: [u8; 32], path: &[(bool, [u8; 32])]) -> [u8; 32] {
    path.iter().fold(leaf, |acc, (right, sibling)| {
        if *right {
            node(&acc, sibling)
        } else {
            node(sibling, &acc)
        }
    })
}

fn encode_path(path: &[(bool, [u8; 32])]) -> String {
    let mut bytes = Vec::with_capacity(path.len() * 33);
    for (right, hash) in path {
        bytes.push(u8::from(*right));
        bytes.extend_from_slice(hash);
    }
    b64().encode(bytes)
}

fn decode_path(text: &str) -> Option<MerklePath> {
    let bytes = b64().decode(text.trim()).ok()?;
    if bytes.len() % 33 != 0 || bytes.len() / 33 > MAX_PROOF_LEVELS {
        return None;
    }
    bytes
        .chunks(33)
        .map(|c| {
            let right = match c[0] {
                0 => false,
                1 => true,
                _ => return None,
            };
            Some((right, c[1..].try_into().ok()?))
        })
        .collect()
}

fn signed_root(origin: &str, key_id: &str, signed_at_ms: i64, root: &[u8; 32]) -> Vec<u8> {
    let mut out = format!("{DOMAIN}\n{origin}\n{key_id}\n{signed_at_ms}\n").into_bytes();
    out.extend_from_slice(root);
    out
}

/// What one message carries of its batch's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    pub key_id: String,
    pub signed_at_ms: i64,
    /// The batch root's signature, base64.
    pub signature: String,
    /// The message's path to the root, base64; empty for a batch of one.
    pub proof: String,
}

/// This site's signing key (a base64 seed file, as `aurora approval-key` writes).
#[derive(Clone, Debug)]
pub struct SiteKey(SigningKey);

impl SiteKey {
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_seed(seed))
    }

    /// A key from its seed in base64.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        SigningKey::from_base64(text).map(Self)
    }

    /// The key in a file (base64 seed, white space around it ignored).
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        SigningKey::read(path).map(Self)
    }

    pub fn id(&self) -> &str {
        self.0.id()
    }

    pub fn public_base64(&self) -> String {
        self.0.public_base64()
    }

    /// Signs a batch of messages of `origin` (their [`leaf`]s, in order) once; returns each
    /// message's seal.
    pub fn seal(&self, origin: &str, signed_at_ms: i64, leaves: &[[u8; 32]]) -> Vec<Seal> {
        if leaves.is_empty() {
            return Vec::new();
        }
        let (root, paths) = tree(leaves);
        let signature = b64().encode(
            self.0
                .sign_bytes(&signed_root(origin, self.id(), signed_at_ms, &root))
                .to_bytes(),
        );
        paths
            .iter()
            .map(|path| Seal {
                key_id: self.id().to_string(),
                signed_at_ms,
                signature: signature.clone(),
                proof: encode_path(path),
            })
            .collect()
    }
}

fn read(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Why a message's origin is not proven.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Unsigned,
    UnknownSite(String),
    UnknownKey { site: String, key: String },
    BadSignature { site: String, key: String },
    Malformed(String),
    Replayed { site: String, late: Duration },
}

impl Refusal {
    /// The `reason` label of the dead-letter metric.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Unsigned => "unsigned",
            Self::UnknownSite(_) => "unknown_site",
            Self::UnknownKey { .. } => "unknown_key",
            Self::BadSignature { .. } => "bad_signature",
            Self::Malformed(_) => "malformed_signature",
            Self::Replayed { .. } => "replayed",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsigned => write!(f, "unsigned: no {SIGNATURE_HEADER} header"),
            Self::UnknownSite(site) => write!(f, "unknown site {site:?}: no key of it is configured"),
            Self::UnknownKey { site, key } => {
                write!(f, "key {key:?} is not a key of site {site:?}")
            }
            Self::BadSignature { site, key } => write!(
                f,
                "signature does not match its claimed origin: not signed by site {site:?} with key {key:?}"
            ),
            Self::Malformed(what) => write!(f, "malformed signature: {what}"),
            Self::Replayed { site, late } => write!(
                f,
                "replayed: site {site:?} signed it {}s before it was stored",
                late.as_secs()
            ),
        }
    }
}

/// A message's claim of origin, as its headers make it.
pub struct Claim<'a> {
    pub subject: &'a str,
    pub msg_id: &'a str,
    pub origin: &'a str,
    pub key_id: Option<&'a str>,
    pub signed_at: Option<&'a str>,
    pub signature: Option<&'a str>,
    /// The path to the batch's root (absent: a batch of one).
    pub proof: Option<&'a str>,
    pub payload: &'a [u8],
    /// When the stream stored it (Unix ms).
    pub stored_at_ms: i64,
}

/// The public keys of the peer sites, and the batch roots they were seen to sign.
#[derive(Debug, Clone, Default)]
pub struct PeerKeys {
    sites: HashMap<String, Vec<(String, ed25519_dalek::VerifyingKey)>>,
    verified: Arc<Mutex<Verified>>,
}

/// The last [`VERIFIED_ROOTS`] signed roots verified: what was signed, hashed.
#[derive(Debug, Default)]
struct Verified {
    set: HashSet<[u8; 32]>,
    order: VecDeque<[u8; 32]>,
}

impl Verified {
    fn insert(&mut self, signed: [u8; 32]) {
        if self.set.insert(signed) {
            self.order.push_back(signed);
            while self.order.len() > VERIFIED_ROOTS {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

impl PeerKeys {
    /// From a file of lines `<site> <public key base64>` (`#` comments), or a directory with
    /// a file per site (named after the site, `.pub` optional) holding its keys one per line:
    /// a Kubernetes Secret mounted as a volume.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let mut keys = Self::default();
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|source| KeyError::Read {
                path: path.display().to_string(),
                source,
            })?;
            for entry in entries.flatten() {
                let file = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                // Secret volumes hold `..data` links and dot files beside the keys.
                if name.starts_with('.') || !file.is_file() {
                    continue;
                }
                let site = name.strip_suffix(".pub").unwrap_or(&name).to_string();
                for line in lines(&read(&file)?) {
                    keys.add(&site, line)?;
                }
            }
        } else {
            for line in lines(&read(path)?) {
                let (site, key) = line.split_once(char::is_whitespace).ok_or_else(|| {
                    KeyError::Invalid(format!("peer key line {line:?}: `<site> <public key>`"))
                })?;
                keys.add(site, key.trim())?;
            }
        }
        Ok(keys)
    }

    /// Adds a site's public key (base64).
    pub fn add(&mut self, site: &str, public: &str) -> Result<(), KeyError> {
        let bytes = b64()
            .decode(public.trim())
            .map_err(|_| KeyError::Invalid(format!("public key of site {site:?} is not base64")))?;
        let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            KeyError::Invalid(format!(
                "public key of site {site:?} must be 32 bytes, got {}",
                bytes.len()
            ))
        })?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&arr).map_err(|_| {
            KeyError::Invalid(format!("public key of site {site:?} is not an Ed25519 key"))
        })?;
        let keys = self.sites.entry(site.to_string()).or_default();
        if keys.len() >= KEYS_PER_SITE {
            return Err(KeyError::Invalid(format!(
                "site {site:?} has more than {KEYS_PER_SITE} keys: at most two are valid at once"
            )));
        }
        keys.push((key_id(&key), key));
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }

    /// `site:key id` of every key, for logs.
    pub fn describe(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .sites
            .iter()
            .flat_map(|(site, keys)| keys.iter().map(move |(id, _)| format!("{site}:{id}")))
            .collect();
        out.sort();
        out
    }

    /// Checks that the claim is signed by a key of its origin site, no more than `max_age`
    /// before it was stored.
    pub fn verify(&self, claim: &Claim<'_>, max_age: Duration) -> Result<(), Refusal> {
        let Some(signature) = claim.signature else {
            return Err(Refusal::Unsigned);
        };
        let site = claim.origin.to_string();
        let keys = self
            .sites
            .get(claim.origin)
            .ok_or_else(|| Refusal::UnknownSite(site.clone()))?;
        let key_id = claim
            .key_id
            .ok_or_else(|| Refusal::Malformed(format!("no {KEY_ID_HEADER} header")))?;
        let (_, key) =
            keys.iter()
                .find(|(id, _)| id == key_id)
                .ok_or_else(|| Refusal::UnknownKey {
                    site: site.clone(),
                    key: key_id.to_string(),
                })?;
        let signed_at_ms: i64 = claim
            .signed_at
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| Refusal::Malformed(format!("no readable {SIGNED_AT_HEADER} header")))?;
        let path = match claim.proof {
            None => Vec::new(),
            Some(text) => decode_path(text).ok_or_else(|| {
                Refusal::Malformed(format!("{PROOF_HEADER} is not a path to a root"))
            })?,
        };
        let root = root_of(
            leaf(claim.subject, claim.msg_id, claim.origin, claim.payload),
            &path,
        );
        let signed = signed_root(claim.origin, key_id, signed_at_ms, &root);
        // What a signature proved once (a batch's root, with that very signature) is not
        // checked again for each message.
        let seen: [u8; 32] = Sha256::new()
            .chain_update(&signed)
            .chain_update(signature.trim().as_bytes())
            .finalize()
            .into();
        let known = self
            .verified
            .lock()
            .map(|v| v.set.contains(&seen))
            .unwrap_or(false);
        if !known {
            let bytes = b64()
                .decode(signature.trim())
                .map_err(|_| Refusal::Malformed("the signature is not base64".into()))?;
            let signature = ed25519_dalek::Signature::from_slice(&bytes)
                .map_err(|_| Refusal::Malformed("the signature is not 64 bytes".into()))?;
            key.verify(&signed, &signature)
                .map_err(|_| Refusal::BadSignature {
                    site: site.clone(),
                    key: key_id.to_string(),
                })?;
            if let Ok(mut verified) = self.verified.lock() {
                verified.insert(seen);
            }
        }
        let late = claim.stored_at_ms.saturating_sub(signed_at_ms);
        if late > max_age.as_millis() as i64 {
            return Err(Refusal::Replayed {
                site,
                late: Duration::from_millis(late as u64),
            });
        }
        Ok(())
    }
}

fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn claim<'a>(signature: Option<&'a str>, key_id: &'a str, signed_at: &'a str) -> Claim<'a> {
        Claim {
            subject: "AURORA.alerts",
            msg_id: "site-a:x@1.ab",
            origin: "site-a",
            key_id: Some(key_id),
            signed_at: Some(signed_at),
            signature,
            proof: None,
            payload: b"{}",
            stored_at_ms: 1_000,
        }
    }

    /// The signature of the one-message batch of [`claim`]'s message.
    fn sign(key: &SiteKey) -> String {
        let leaf = leaf("AURORA.alerts", "site-a:x@1.ab", "site-a", b"{}");
        key.seal("site-a", 900, &[leaf]).remove(0).signature
    }

    #[test]
    fn only_a_key_of_the_claimed_site_proves_it() {
        let a = SiteKey::from_seed([1; 32]);
        let a2 = SiteKey::from_seed([2; 32]);
        let c = SiteKey::from_seed([3; 32]);
        let mut peers = PeerKeys::default();
        peers.add("site-a", &a.public_base64()).unwrap();
        peers.add("site-a", &a2.public_base64()).unwrap();
        peers.add("site-c", &c.public_base64()).unwrap();
        assert!(
            peers.add("site-a", &c.public_base64()).is_err(),
            "two keys at most"
        );
        let max = Duration::from_secs(60);
        for key in [&a, &a2] {
            let sig = sign(key);
            assert_eq!(
                peers.verify(&claim(Some(&sig), key.id(), "900"), max),
                Ok(())
            );
        }
        let by_c = sign(&c);
        assert!(matches!(
            peers.verify(&claim(Some(&by_c), c.id(), "900"), max),
            Err(Refusal::UnknownKey { .. })
        ));
        assert!(matches!(
            peers.verify(&claim(Some(&by_c), a.id(), "900"), max),
            Err(Refusal::BadSignature { .. })
        ));
        let sig = sign(&a);
        assert!(matches!(
            peers.verify(&claim(Some(&sig), a.id(), "901"), max),
            Err(Refusal::BadSignature { .. })
        ));
        assert_eq!(
            peers.verify(&claim(None, a.id(), "900"), max),
            Err(Refusal::Unsigned)
        );
        assert!(matches!(
            peers.verify(&claim(Some(&sig), a.id(), "900"), Duration::from_millis(10)),
            Err(Refusal::Replayed { .. })
        ));
        let mut unknown = claim(Some(&sig), a.id(), "900");
        unknown.origin = "site-z";
        assert_eq!(
            peers.verify(&unknown, max),
            Err(Refusal::UnknownSite("site-z".into()))
        );
        let mut tampered = claim(Some(&sig), a.id(), "900");
        tampered.payload = b"{ }";
        assert!(matches!(
            peers.verify(&tampered, max),
            Err(Refusal::BadSignature { .. })
        ));
    }

    #[test]
    fn one_signature_covers_a_batch_each_message_by_its_own_path() {
        let a = SiteKey::from_seed([1; 32]);
        let mut peers = PeerKeys::default();
        peers.add("site-a", &a.public_base64()).unwrap();
        let ids: Vec<String> = (0..7).map(|i| format!("site-a:m{i}@1.ab")).collect();
        let leaves: Vec<[u8; 32]> = ids
            .iter()
            .map(|id| leaf("AURORA.alerts", id, "site-a", b"{}"))
            .collect();
        let seals = a.seal("site-a", 900, &leaves);
        assert_eq!(seals.len(), 7);
        assert!(seals.iter().all(|s| s.signature == seals[0].signature));
        let (sig, key_id) = (seals[0].signature.as_str(), a.id());
        let verify = |i: usize, proof: &str| {
            let c = Claim {
                msg_id: &ids[i],
                proof: Some(proof),
                ..claim(Some(sig), key_id, "900")
            };
            peers.verify(&c, Duration::from_secs(60))
        };
        for (i, seal) in seals.iter().enumerate() {
            assert_eq!(verify(i, &seal.proof), Ok(()), "message {i}");
        }
        // Another message's path, or none, leads to another root: not what was signed.
        assert!(matches!(
            verify(0, &seals[1].proof),
            Err(Refusal::BadSignature { .. })
        ));
        assert!(matches!(verify(0, ""), Err(Refusal::BadSignature { .. })));
        assert!(matches!(
            verify(0, "not a path"),
            Err(Refusal::Malformed(_))
        ));
        // A batch of one has an empty path.
        assert_eq!(a.seal("site-a", 1, &leaves[..1])[0].proof, "");
    }

    #[test]
    fn keys_load_from_a_file_or_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let a = SiteKey::from_seed([1; 32]);
        let file = dir.path().join("peers");
        std::fs::write(&file, format!("# peers\nsite-a {}\n", a.public_base64())).unwrap();
        assert_eq!(
            PeerKeys::load(&file).unwrap().describe(),
            vec![format!("site-a:{}", a.id())]
        );
        let secret = dir.path().join("secret");
        std::fs::create_dir(&secret).unwrap();
        std::fs::write(
            secret.join("site-b.pub"),
            format!("{}\n", a.public_base64()),
        )
        .unwrap();
        // A Secret volume: the files are links through `..data` to a hidden directory.
        let hidden = secret.join("..2026_12_01");
        std::fs::create_dir(&hidden).unwrap();
        std::fs::write(hidden.join("site-c"), a.public_base64()).unwrap();
        std::os::unix::fs::symlink("..2026_12_01", secret.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/site-c", secret.join("site-c")).unwrap();
        assert_eq!(
            PeerKeys::load(&secret).unwrap().describe(),
            vec![format!("site-b:{}", a.id()), format!("site-c:{}", a.id())]
        );
        std::fs::write(&file, "site-a not-base64\n").unwrap();
        assert!(PeerKeys::load(&file).is_err());
    }
}
