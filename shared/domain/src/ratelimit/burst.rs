//! Burst allowance: a token bucket beside the sliding window.
//!
//! The sliding window ([`super::sliding_window`]) holds a client to `limit` requests per
//! window, which is right for its sustained rate but refuses the short spikes real clients
//! make (an app opening, a list being scrolled). Beside each window the edge keeps a token
//! bucket with [@upstash/ratelimit's token-bucket semantics]: it starts full, holds at most
//! `capacity` tokens, and gets one token back every `refill_ms`, counted in whole intervals
//! from the last refill (so the refill clock does not drift with request timing). One
//! difference: the refill clock runs only while the bucket is below capacity (Upstash's keeps
//! its phase while full), which makes an expired key and a full bucket the same thing.
//!
//! **The rule.** A request is allowed if the sliding window allows it (it is then counted in
//! the window, as before); else if the bucket has a token (the token is spent, the window is
//! not touched); else it is refused. Every allowed request is paid by exactly one budget.
//!
//! **The sizes.** For a limit of `L` per window `W` (rate `r = L / W`) and a burst of `B`
//! seconds (`EDGE_RATE_LIMIT_BURST_SECS`):
//!
//! * `capacity = (BURST_FACTOR − 1) × r × B`, plus `B / W + 1`, rounded up: while a client
//!   sends at `BURST_FACTOR × r`, the window keeps paying for `r` of it (its estimate slides at
//!   that rate once full) and the bucket for the other `(BURST_FACTOR − 1) × r`, so a client
//!   that was at most at its rate (its bucket full) bursts to five times it for `B` seconds
//!   before the first refusal (a quieter client gets longer: the window's unused room is
//!   spent first). The extra tokens cover the window's whole-request rounding: saturated, it
//!   pays `L − 1` per window, not `L` (one token per window the burst spans), and one more
//!   for the window the burst starts in. `domain`'s tests check the promise for any limit,
//!   window and burst length;
//! * `refill_ms = REFILL_DIVISOR × W / L`: the bucket refills at a tenth of the window's rate.
//!   That is the choice that matters: what a client can *sustain* is the window's rate plus
//!   the refill rate, so a tenth bounds any client's long-run rate to 1.1 × its limit,
//!   whatever `B` is, while a full burst is earned back after `capacity × refill_ms`
//!   (`40 × B` seconds: 6 min 40 s for the default 10 s). A faster refill (say, the whole
//!   bucket per window) would make the limit meaningless (1.67 × at `B = 10`); no refill at
//!   all would make the burst a once-per-key-expiry gift.
//!
//! All arithmetic is integer milliseconds and tokens, the same in the Redis script
//! (`edge/core/src/ratelimit.rs`) and here, so the headers are computed from what the script
//! decided, not estimated beside it.
//!
//! [@upstash/ratelimit's token-bucket semantics]: https://github.com/upstash/ratelimit-js (`tokenBucketLimitScript`)

use super::{sliding_window, Decision, RateLimit};

/// A client may burst to this multiple of its rate.
pub const BURST_FACTOR: u64 = 5;

/// The bucket refills at `1 / REFILL_DIVISOR` of the window's rate (see the module docs).
pub const REFILL_DIVISOR: u64 = 10;

/// The burst allowance of one limit. Built by [`Burst::new`]: `None` there means "off".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Burst {
    /// The configured burst length in seconds (for the policy header).
    pub secs: u64,
    /// Tokens in a full bucket: requests beyond the window's rate.
    pub capacity: u64,
    /// One token comes back every `refill_ms` milliseconds.
    pub refill_ms: u64,
}

impl Burst {
    /// The allowance for `limit` with bursts of `secs` seconds; `None` when `secs` is 0 (off)
    /// or the limit is too small to give even one token.
    pub fn new(limit: &RateLimit, secs: u64) -> Option<Burst> {
        if secs == 0 || limit.limit == 0 {
            return None;
        }
        let w = u128::from(limit.window_ms.max(1));
        let l = u128::from(limit.limit);
        // ((F − 1) × L + 1) × B / W, rounded up, plus one: see the module docs.
        let capacity = (u128::from(BURST_FACTOR - 1) * l + 1)
            .saturating_mul(u128::from(secs) * 1000)
            .div_ceil(w)
            + 1;
        let refill_ms = (u128::from(REFILL_DIVISOR) * w / l).max(1);
        Some(Burst {
            secs,
            capacity: u64::try_from(capacity).unwrap_or(u64::MAX),
            refill_ms: u64::try_from(refill_ms).unwrap_or(u64::MAX),
        })
    }

    /// What the burst lets through in `secs` seconds at [`BURST_FACTOR`] × the rate, rounded
    /// down: the quota of the burst's `RateLimit-Policy` item.
    pub fn quota(&self, limit: &RateLimit) -> u64 {
        let w = u128::from(limit.window_ms.max(1));
        let q =
            u128::from(BURST_FACTOR) * u128::from(limit.limit) * u128::from(self.secs) * 1000 / w;
        u64::try_from(q).unwrap_or(u64::MAX)
    }
}

/// A bucket's state as stored in Redis. A bucket that is not stored is full
/// ([`Bucket::full`]): a new client, or one whose key expired after it had refilled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    pub tokens: u64,
    /// When the last whole refill interval ended (ms since the epoch).
    pub refilled_at_ms: u64,
}

impl Bucket {
    /// A full bucket whose refill clock starts now.
    pub fn full(burst: &Burst, now_ms: u64) -> Bucket {
        Bucket {
            tokens: burst.capacity,
            refilled_at_ms: now_ms,
        }
    }

    /// The bucket at `now_ms`: one token per whole `refill_ms` since `refilled_at_ms`, at
    /// most `capacity`. The refill clock moves by whole intervals, and only while the bucket
    /// is below capacity: a full bucket's clock is `now_ms` (a full bucket earns nothing).
    /// That makes a stored full bucket the same as none at all, so the Redis key can expire
    /// once the bucket would be full again, and refilling twice, or late, gives the same
    /// bucket as refilling once.
    pub fn refilled(self, burst: &Burst, now_ms: u64) -> Bucket {
        let every = burst.refill_ms.max(1);
        let intervals = now_ms.saturating_sub(self.refilled_at_ms) / every;
        let tokens = self.tokens.saturating_add(intervals).min(burst.capacity);
        if tokens >= burst.capacity {
            return Bucket::full(burst, now_ms);
        }
        Bucket {
            tokens,
            refilled_at_ms: self
                .refilled_at_ms
                .saturating_add(intervals.saturating_mul(every)),
        }
    }

    /// How long the Redis key must live: until the bucket would be full again (after that,
    /// no key means the same, see [`Bucket::refilled`]); at least 1 ms.
    pub fn keep_ms(&self, burst: &Burst, now_ms: u64) -> u64 {
        let missing = burst.capacity.saturating_sub(self.tokens);
        self.refilled_at_ms
            .saturating_add(missing.saturating_mul(burst.refill_ms.max(1)))
            .saturating_sub(now_ms)
            .max(1)
    }

    /// Milliseconds from `now_ms` until the next token (at least 1).
    pub fn next_token_in_ms(&self, burst: &Burst, now_ms: u64) -> u64 {
        self.refilled_at_ms
            .saturating_add(burst.refill_ms.max(1))
            .saturating_sub(now_ms)
            .max(1)
    }
}

/// Which budget paid for an allowed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paid {
    /// Counted in the sliding window's current counter.
    Window,
    /// A token spent from the bucket.
    Bucket,
}

/// One request's outcome under a window and its burst allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// For the headers: `remaining` counts both budgets (the requests that would still pass
    /// right now), `retry_after_ms` is the earlier of the window's and the next token's.
    pub decision: Decision,
    /// Who pays; `None` when refused.
    pub paid: Option<Paid>,
    /// The bucket after this request (`None` when the burst is off).
    pub bucket: Option<Bucket>,
}

/// Decides one request at `now_ms` (the window's elapsed time is `now_ms % window_ms`, as the
/// edge numbers windows). `prev` and `curr` are the window's counts without this request;
/// `stored` is the bucket as stored (`None`: not stored, i.e. full). With `burst` `None` this
/// is exactly [`sliding_window`].
pub fn decide(
    limit: &RateLimit,
    burst: Option<&Burst>,
    prev: u64,
    curr: u64,
    now_ms: u64,
    stored: Option<Bucket>,
) -> Verdict {
    let elapsed = now_ms % limit.window_ms.max(1);
    let window = sliding_window(limit, prev, curr, elapsed);
    let Some(burst) = burst else {
        return Verdict {
            decision: window,
            paid: window.allowed.then_some(Paid::Window),
            bucket: None,
        };
    };
    let bucket = stored
        .unwrap_or_else(|| Bucket::full(burst, now_ms))
        .refilled(burst, now_ms);
    let tokens = |b: &Bucket| u32::try_from(b.tokens).unwrap_or(u32::MAX);
    if window.allowed {
        return Verdict {
            decision: Decision {
                remaining: window.remaining.saturating_add(tokens(&bucket)),
                ..window
            },
            paid: Some(Paid::Window),
            bucket: Some(bucket),
        };
    }
    if bucket.tokens > 0 {
        let after = Bucket {
            tokens: bucket.tokens - 1,
            ..bucket
        };
        return Verdict {
            decision: Decision {
                allowed: true,
                // The window has no room (it refused), so what is left is the bucket's.
                remaining: tokens(&after),
                retry_after_ms: 0,
                reset_ms: window.reset_ms,
            },
            paid: Some(Paid::Bucket),
            bucket: Some(after),
        };
    }
    Verdict {
        decision: Decision {
            retry_after_ms: window
                .retry_after_ms
                .min(bucket.next_token_in_ms(burst, now_ms)),
            ..window
        },
        paid: None,
        bucket: Some(bucket),
    }
}
