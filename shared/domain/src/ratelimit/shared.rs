//! Limits shared across regions: each region's edges count in their own Upstash database, and
//! what they count reaches the other regions' databases a moment later.
//!
//! **Why asynchronous.** Reading every region's counters on each request would hold the limit
//! exactly (give or take the race of two requests in flight) but add a cross-region round
//! trip (20–40 ms within Europe, more between continents) to every request, which the edge
//! exists to avoid. The other anchors make the same choice: @upstash/ratelimit's
//! `MultiRegionRatelimit` answers from the first database and reconciles the others
//! afterwards; Kong's rate limiting keeps local counters and syncs them every `sync_rate`
//! seconds. The price is an *overshoot*: what a client gets through the other regions'
//! edges in the moment before their counts arrive.
//!
//! **How.** When the edge's rate-limit script admits a request it also adds each spend to an
//! *outbox* hash in its own database ([`outbox_key`]): one field per written counter or
//! bucket ([`Spend`]), the value how many times. Each region's origin drains its outbox every
//! `EDGE_LIMIT_SYNC_MS` (100 ms by default) and adds the spends to every other region's
//! database: a window counter by `INCRBY` under the same key, a burst bucket by taking the
//! tokens out — and when it has fewer, by pushing its refill clock into the future by the
//! difference (a debt: each region refills its own bucket, and without the debt two regions
//! would give a client two refills' worth of tokens). Both are deltas, so a region's own
//! counts and the ones it receives add up, and nothing echoes back (only the edges' own
//! spends enter an outbox). A drain that fails after the outbox was emptied loses those
//! spends: limits fail open, like the edge when Upstash is down.
//!
//! **Staggered clocks.** When a client is at its limit, room comes back as the sliding
//! window's previous count decays — at the same moment in every region. A client hitting
//! both regions at once would then be admitted by each for the same room, every time, and
//! get up to twice the sliding part of its quota. So each region's limiter runs its clock
//! [`STAGGER_MS`] behind the previous region's ([`clock`]): room appears in EUW first, and
//! by the time EUN sees it, EUW's spend of it has arrived there. A client of EUN alone sees
//! its room 300 ms late, a fraction of a request at any sensible limit.
//!
//! **The bound.** What remains is the start of a burst, when every region has room: each
//! admits until the others' spends arrive. A client's overshoot is therefore at most what it
//! gets admitted through the other regions' edges within one sync lag (the interval plus one
//! drain-and-apply cycle), and never more than the limit per other region. The edge suite
//! measures it (`tests/edge/shared_limits.rs`).

use crate::region::Region;

/// How far each region's limiter clock runs behind the previous region's (see the module
/// docs); it must exceed the sync lag, which is why `EDGE_LIMIT_SYNC_MS` is at most
/// [`MAX_SYNC_MS`].
pub const STAGGER_MS: u64 = 300;

/// The longest sync interval the stagger covers, with room for a drain-and-apply cycle.
pub const MAX_SYNC_MS: u64 = 200;

/// An outbox no origin drains (a single-region deployment with sharing on) is dropped after
/// this long, so it cannot grow without bound.
pub const OUTBOX_TTL_MS: u64 = 60_000;

/// The limiter's clock in `region`: `now_ms` less [`STAGGER_MS`] per region before it in
/// [`Region::ALL`].
pub fn clock(region: Region, now_ms: u64) -> u64 {
    let index = Region::ALL.iter().position(|r| *r == region).unwrap_or(0) as u64;
    now_ms.saturating_sub(index * STAGGER_MS)
}

/// The outbox hash of the edges in `region`.
pub fn outbox_key(prefix: &str, region: Region) -> String {
    format!("{prefix}rlsync:{}", region.code())
}

/// One outbox field: a counter or bucket the script wrote, named without the key prefix (the
/// databases of different regions may use different prefixes).
///
/// Spelled `w <ttl_ms> 0 <key>` for a window counter (incremented; kept `ttl_ms`, two
/// windows) and `b <capacity> <refill_ms> <key>` for a burst bucket (a token taken).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spend {
    Window {
        ttl_ms: u64,
        key: String,
    },
    Bucket {
        capacity: u64,
        refill_ms: u64,
        key: String,
    },
}

impl Spend {
    /// The field's text (what the script writes).
    pub fn field(&self) -> String {
        match self {
            Spend::Window { ttl_ms, key } => format!("w {ttl_ms} 0 {key}"),
            Spend::Bucket {
                capacity,
                refill_ms,
                key,
            } => format!("b {capacity} {refill_ms} {key}"),
        }
    }

    /// Parses a field; `None` for anything else (skipped by the origin, never applied).
    pub fn parse(field: &str) -> Option<Spend> {
        let mut parts = field.splitn(4, ' ');
        let kind = parts.next()?;
        let a: u64 = parts.next()?.parse().ok()?;
        let b: u64 = parts.next()?.parse().ok()?;
        let key = parts.next()?;
        let plausible = !key.is_empty()
            && key.len() <= 200
            && key.bytes().all(|c| c.is_ascii_graphic())
            && key.starts_with("rl");
        if !plausible || a == 0 {
            return None;
        }
        match kind {
            "w" if b == 0 => Some(Spend::Window {
                ttl_ms: a,
                key: key.to_owned(),
            }),
            "b" if b > 0 => Some(Spend::Bucket {
                capacity: a,
                refill_ms: b,
                key: key.to_owned(),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_region_runs_its_clock_behind_the_one_before() {
        assert_eq!(clock(Region::Euw, 10_000), 10_000);
        assert_eq!(clock(Region::Eun, 10_000), 10_000 - STAGGER_MS);
        assert_eq!(clock(Region::Eun, 5), 0);
        const { assert!(STAGGER_MS > MAX_SYNC_MS) };
    }

    #[test]
    fn a_field_reads_back_as_written_and_nothing_else_parses() {
        for spend in [
            Spend::Window {
                ttl_ms: 120_000,
                key: "rl:user:0a1b:29000".into(),
            },
            Spend::Bucket {
                capacity: 68,
                refill_ms: 6_000,
                key: "rlb:ip:ff00".into(),
            },
        ] {
            assert_eq!(Spend::parse(&spend.field()), Some(spend));
        }
        for bad in [
            "",
            "w 120000 0",
            "w 120000 5 rl:user:x:1",
            "b 68 0 rlb:ip:x",
            "w 0 0 rl:user:x:1",
            "x 1 1 rl:user:x:1",
            "w 120000 0 gen:EUW",
            "w 120000 0 rl:user:x 1",
            "w -1 0 rl:user:x:1",
        ] {
            assert_eq!(Spend::parse(bad), None, "{bad:?}");
        }
    }
}
