//! The edge cache: quotes and searches kept in Upstash Redis, keyed so that a committed
//! booking change makes the affected entries unreachable at once.
//!
//! **Generations.** Every key embeds generation counters: `gen:<REGION>` for searches (a
//! search result can change with any booking in the region; a search names no region, so its
//! key carries the counters of all regions) and `gen:veh:<vehicle id>` for quotes (a quote
//! only changes with its own vehicle's bookings). The keys are `domain::edge_cache`'s. The
//! origin bumps both after each committed booking change it serves (through the same REST API,
//! `origin/src/redis/edge_gen.rs`), and the edge bumps them after
//! it forwarded a successful write, so the booking's own edge never needs the origin's bump to
//! arrive first. An entry under an old generation is never read again and expires by itself.
//! A bump instead of a delete also means a response computed *during* the change and stored a
//! moment later lands under the old generation, where nobody looks.
//!
//! **Fresh and stale.** An entry is fresh for its route's TTL (quotes 60 s, searches 10 s)
//! and kept in Redis `stale_secs` longer. Past its fresh time it is refetched; only when the
//! origin is unreachable is it served anyway, with `x-edge-cache: stale` (and, for a quote,
//! only while its token is still valid).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A stored response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// HTTP status.
    pub s: u16,
    /// Content type.
    pub ct: String,
    /// Body (JSON text).
    pub b: String,
    /// Fresh until, ms since the epoch.
    pub f: u64,
    /// Usable (even stale) until, ms since the epoch — a quote's token expiry.
    #[serde(default)]
    pub u: Option<u64>,
}

// The generation keys are shared with the origin, which bumps them too: defined once, in the
// domain crate.
pub use domain::edge_cache::{bump_commands, region_gen_key, vehicle_gen_key};

fn digest(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

/// Sorted query string, so `a=1&b=2` and `b=2&a=1` share an entry.
pub fn normalized_query(query: &str) -> String {
    let mut pairs: Vec<&str> = query.split('&').filter(|s| !s.is_empty()).collect();
    pairs.sort_unstable();
    pairs.join("&")
}

/// The two halves of a cache key around its generations: the key is
/// `head ++ generations joined by "." ++ tail`. Split so that the rate-limit script, which
/// reads the generations, can assemble the key and read the entry in the same round trip
/// ([`crate::ratelimit`]); [`key`] assembles it the same way on the edge for the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyParts {
    pub head: String,
    pub tail: String,
}

/// The key for `parts` under `gens` (the script's `head .. table.concat(gens, '.') .. tail`).
pub fn key(parts: &KeyParts, gens: &[String]) -> String {
    let mut key = String::with_capacity(parts.head.len() + parts.tail.len() + 8 * gens.len());
    key.push_str(&parts.head);
    for (i, g) in gens.iter().enumerate() {
        if i > 0 {
            key.push('.');
        }
        key.push_str(g);
    }
    key.push_str(&parts.tail);
    key
}

/// Key parts of a cached search: version, (the generations of every region), the normalized
/// query.
pub fn search_key_parts(prefix: &str, version: &str, query: &str) -> KeyParts {
    KeyParts {
        head: format!("{prefix}c:search:{version}:"),
        tail: format!(":{}", digest(&[&normalized_query(query)])),
    }
}

/// Key of a cached search under the generations of every region.
pub fn search_key(prefix: &str, version: &str, gens: &[u64], query: &str) -> String {
    let gens: Vec<String> = gens.iter().map(u64::to_string).collect();
    key(&search_key_parts(prefix, version, query), &gens)
}

/// Key parts of a cached quote: quotes are signed for one user (and priced with their
/// membership), so the user is part of the key, with the vehicle (its generation between the
/// halves) and the canonical body.
pub fn quote_key_parts(
    prefix: &str,
    version: &str,
    vehicle: &domain::VehicleId,
    user: &str,
    membership: &str,
    canonical_body: &str,
) -> KeyParts {
    KeyParts {
        head: format!("{prefix}c:quote:{version}:{vehicle}:"),
        tail: format!(":{}", digest(&[user, membership, canonical_body])),
    }
}
