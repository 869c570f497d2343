//! Random input for tests that count what goes in against what comes out. The seed is
//! printed; `E2E_SEED=<n>` replays a run.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// A generator seeded from `E2E_SEED` or at random; the seed is printed with `test`.
pub fn seeded_rng(test: &str) -> StdRng {
    let seed = std::env::var("E2E_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen::<u64>());
    eprintln!("{test}: E2E_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

/// A random JSON value, `depth` levels deep at most.
pub fn random_json(rng: &mut StdRng, depth: u32) -> Value {
    match rng.gen_range(0..if depth == 0 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => json!(rng.gen::<bool>()),
        2 => json!(rng.gen_range(-1_000_000i64..1_000_000)),
        3 => json!(rng.gen::<f64>() * 1e6),
        4 => json!(random_text(rng, 0..40)),
        5 => Value::Array(
            (0..rng.gen_range(0..4))
                .map(|_| random_json(rng, depth - 1))
                .collect(),
        ),
        _ => random_object(rng, depth - 1),
    }
}

pub fn random_object(rng: &mut StdRng, depth: u32) -> Value {
    let mut m = serde_json::Map::new();
    for _ in 0..rng.gen_range(0..5) {
        m.insert(random_text(rng, 1..12), random_json(rng, depth));
    }
    Value::Object(m)
}

/// Text from a pool of awkward characters (never `/`, `+`, `#`, NUL or control characters,
/// which MQTT topics cannot hold).
pub fn random_text(rng: &mut StdRng, len: std::ops::Range<usize>) -> String {
    const POOL: &[char] = &[
        'a', 'b', 'z', 'A', 'Z', '0', '9', '_', '.', ':', '-', ' ', 'é', 'ß', '☢', '𝄞', '$', '%',
        '"', '\\', '{', '}', '[', '*', '>', '\'', '=', '?', '&',
    ];
    let n = rng.gen_range(len);
    (0..n).map(|_| POOL[rng.gen_range(0..POOL.len())]).collect()
}

pub fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let n = rng.gen_range(0..max);
    (0..n).map(|_| rng.gen::<u8>()).collect()
}

/// Every byte outside `[A-Za-z0-9]` percent-encoded.
pub fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Sets each of `fields` of the object `o`, with probability `p`, to random JSON nested up to
/// `depth` (`rng` drawn in the order of `fields`: a seed gives the same object again).
pub fn randomize_fields(rng: &mut StdRng, o: &mut Value, fields: &[&str], p: f64, depth: u32) {
    for field in fields {
        if rng.gen_bool(p) {
            o[*field] = random_json(rng, depth);
        }
    }
}
