//! Sliding-window-counter rate limiting, as pure math.
//!
//! The edge keeps two counters per client in Redis: the previous fixed window's count and the
//! current one's. The request rate is estimated as
//!
//! ```text
//! estimate = prev_count × (window − elapsed) / window + curr_count
//! ```
//!
//! i.e. the previous window's requests are assumed evenly spread and only the part still inside
//! the sliding window counts. This gives sliding-window accuracy at the cost of two integers.
//!
//! **Counting convention:** the counts passed in *exclude* the request being decided. The request
//! is allowed iff `estimate + 1 <= limit`, and the edge increments the current counter only for
//! allowed requests — so a client hammering a closed limit does not push its own reset further
//! out. With empty counters exactly `limit` requests are allowed and the next is blocked.
//! All arithmetic is exact integer math (no float drift between the Redis script and the
//! headers).
//!
//! Beside the window, a token bucket lets a client burst to five times its rate for a few
//! seconds ([`burst`]): [`decide`] is the rule the edge applies, window and bucket together.
//! With one Upstash database per region, the counts are shared between regions a moment
//! after they are made ([`shared`]).

pub mod burst;
#[cfg(test)]
mod burst_tests;
pub mod shared;

pub use burst::{decide, Bucket, Burst, Paid, Verdict, BURST_FACTOR, REFILL_DIVISOR};

/// A limit of `limit` requests per `window_ms` milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests allowed per window.
    pub limit: u32,
    /// Window length in milliseconds.
    pub window_ms: u64,
}

/// The outcome for one request, with the numbers for the `RateLimit-*` / `Retry-After` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Requests still allowed right now after this one (0 when blocked).
    pub remaining: u32,
    /// When blocked, milliseconds until a request would be allowed; 0 when allowed.
    pub retry_after_ms: u64,
    /// Milliseconds until the current fixed window ends (counters roll over).
    pub reset_ms: u64,
}

impl Decision {
    /// `Retry-After` in whole seconds: 0 when allowed, otherwise at least 1, rounded up — a
    /// client that waits exactly this long is not blocked again.
    pub fn retry_after_secs(&self) -> u64 {
        if self.allowed {
            0
        } else {
            self.retry_after_ms.div_ceil(1000).max(1)
        }
    }
}

/// Decides one request; see the module docs for the estimate and the counting convention.
/// `elapsed_in_window_ms` beyond the window is treated as the window's end; a zero window is
/// treated as one millisecond.
pub fn sliding_window(
    limit: &RateLimit,
    prev_count: u64,
    curr_count: u64,
    elapsed_in_window_ms: u64,
) -> Decision {
    let w = u128::from(limit.window_ms.max(1));
    let e = u128::from(elapsed_in_window_ms).min(w);
    let lim = u128::from(limit.limit);
    let prev = u128::from(prev_count);
    let curr = u128::from(curr_count);
    let reset_ms = u64::try_from(w - e).unwrap_or(u64::MAX);

    // Scaled by w: estimate_w = prev × (w − e) + curr × w. Allowed iff estimate_w + w <= lim × w.
    let estimate_w = prev * (w - e) + curr * w;
    let capacity_w = lim * w;
    if estimate_w + w <= capacity_w {
        let remaining = (capacity_w - estimate_w - w) / w;
        return Decision {
            allowed: true,
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
            retry_after_ms: 0,
            reset_ms,
        };
    }

    let retry = if lim == 0 {
        // Never allowed; point at the next window so clients back off instead of spinning.
        w - e
    } else if curr < lim {
        // Still possible in this window once enough of prev has slid out:
        // prev × (w − e') <= (lim − curr − 1) × w  ⇔  e' >= w − (lim − curr − 1) × w / prev.
        // prev > 0 here, otherwise the request would have been allowed.
        let room_w = (lim - curr - 1) * w;
        needed_e_ceil(w, room_w, prev).saturating_sub(e).max(1)
    } else {
        // Only in the next window, where the current count becomes `prev`:
        // curr × (w − e'') <= (lim − 1) × w  ⇔  e'' >= w − (lim − 1) × w / curr.
        let next_e = needed_e_ceil(w, (lim - 1) * w, curr);
        (w - e) + next_e
    };
    Decision {
        allowed: false,
        remaining: 0,
        retry_after_ms: u64::try_from(retry).unwrap_or(u64::MAX),
        reset_ms,
    }
}

/// Smallest integer `x` in `[0, w]` with `count × (w − x) <= room_w`.
fn needed_e_ceil(w: u128, room_w: u128, count: u128) -> u128 {
    if count == 0 || count * w <= room_w {
        return 0;
    }
    // count × (w − x) <= room_w  ⇔  w − x <= floor(room_w / count)  ⇔  x >= w − floor(room_w / count)
    w - (room_w / count).min(w)
}

/// The identifier an address is limited under: an IPv4 address as itself, an IPv6 address
/// by its /64 (`2001:db8:1:2::/64`). One IPv6 subscriber (a home, a phone, a cloud VM)
/// usually gets a whole /64 and can pick any of its 2^64 addresses per request, so limiting
/// single IPv6 addresses would limit nothing. An IPv4-mapped IPv6 address (`::ffff:1.2.3.4`)
/// is the IPv4 address it maps. Text that is no address (a host that gives none, or garbage)
/// is kept as it is: it can only be what the platform put there, never what a client chose.
pub fn address_bucket(addr: &str) -> String {
    use std::net::IpAddr;
    match addr.trim().parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.to_string(),
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
        Err(_) => addr.trim().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: RateLimit = RateLimit {
        limit: 10,
        window_ms: 60_000,
    };

    #[test]
    fn exactly_limit_requests_are_allowed_and_the_next_is_blocked() {
        let mut curr = 0;
        for i in 0..10 {
            let d = sliding_window(&L, 0, curr, 1_000);
            assert!(d.allowed, "request {}", i + 1);
            assert_eq!(d.remaining, 9 - i);
            assert_eq!(d.retry_after_ms, 0);
            assert_eq!(d.retry_after_secs(), 0);
            curr += 1;
        }
        let d = sliding_window(&L, 0, curr, 1_000);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        // This window is full; in the next one its 10 requests still weigh
        // 10 × (60 − e'')/60, which drops to 9 at e'' = 6 s: 59 s + 6 s.
        assert_eq!(d.retry_after_ms, 65_000);
        assert_eq!(d.reset_ms, 59_000);
        assert_eq!(d.retry_after_secs(), 65);
    }

    #[test]
    fn previous_window_weighs_in_proportionally() {
        // Half-way through: 10 × 0.5 + 4 = 9 -> one more allowed, then blocked.
        let d = sliding_window(&L, 10, 4, 30_000);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        let d = sliding_window(&L, 10, 5, 30_000);
        assert!(!d.allowed);
        // Needs 10 × (60 − e')/60 <= 4 -> e' >= 36 s, i.e. 6 s from now.
        assert_eq!(d.retry_after_ms, 6_000);
        assert!(sliding_window(&L, 10, 5, 36_000).allowed);
        assert!(!sliding_window(&L, 10, 5, 35_999).allowed);
    }

    #[test]
    fn retry_after_points_into_the_next_window_when_this_one_is_full() {
        // curr = 10 fills this window; in the next, 10 × (60 − e'')/60 <= 9 -> e'' >= 6 s.
        let d = sliding_window(&L, 0, 10, 50_000);
        assert_eq!(d.retry_after_ms, 10_000 + 6_000);
        assert!(sliding_window(&L, 10, 0, 6_000).allowed);
        assert!(!sliding_window(&L, 10, 0, 5_999).allowed);
    }

    #[test]
    fn retry_after_seconds_round_up_and_are_at_least_one() {
        let d = Decision {
            allowed: false,
            remaining: 0,
            retry_after_ms: 1,
            reset_ms: 0,
        };
        assert_eq!(d.retry_after_secs(), 1);
        let d = Decision {
            retry_after_ms: 1_001,
            ..d
        };
        assert_eq!(d.retry_after_secs(), 2);
        let d = Decision {
            retry_after_ms: 0,
            ..d
        };
        assert_eq!(d.retry_after_secs(), 1);
    }

    #[test]
    fn degenerate_limits_do_not_panic() {
        let zero = RateLimit {
            limit: 0,
            window_ms: 1_000,
        };
        let d = sliding_window(&zero, 0, 0, 0);
        assert!(!d.allowed);
        assert!(d.retry_after_secs() >= 1);
        let no_window = RateLimit {
            limit: 1,
            window_ms: 0,
        };
        assert!(sliding_window(&no_window, 0, 0, 5).allowed);
        let d = sliding_window(&L, u64::MAX, u64::MAX, u64::MAX);
        assert!(!d.allowed);
    }

    #[test]
    fn waiting_retry_after_is_always_enough() {
        for prev in 0..25u64 {
            for curr in 0..15u64 {
                for e in (0..60_000u64).step_by(7_919) {
                    let d = sliding_window(&L, prev, curr, e);
                    if d.allowed {
                        continue;
                    }
                    let later = e + d.retry_after_ms;
                    let ok = if later <= 60_000 {
                        sliding_window(&L, prev, curr, later).allowed
                    } else {
                        sliding_window(&L, curr, 0, later - 60_000).allowed
                    };
                    assert!(
                        ok,
                        "prev={prev} curr={curr} e={e} retry={}",
                        d.retry_after_ms
                    );
                    // And one millisecond earlier is still blocked.
                    let earlier = later - 1;
                    let blocked = if earlier < 60_000 {
                        !sliding_window(&L, prev, curr, earlier).allowed
                    } else {
                        !sliding_window(&L, curr, 0, earlier - 60_000).allowed
                    };
                    assert!(
                        blocked || d.retry_after_ms == 1,
                        "prev={prev} curr={curr} e={e}"
                    );
                }
            }
        }
    }

    #[test]
    fn ipv6_addresses_share_their_64_and_ipv4_stays_whole() {
        assert_eq!(address_bucket("203.0.113.7"), "203.0.113.7");
        assert_eq!(address_bucket(" 203.0.113.7 "), "203.0.113.7");
        assert_eq!(address_bucket("::ffff:203.0.113.7"), "203.0.113.7");
        let a = address_bucket("2001:db8:aa:bb:1:2:3:4");
        assert_eq!(a, "2001:db8:aa:bb::/64");
        assert_eq!(address_bucket("2001:0db8:00aa:00bb:ffff::9"), a);
        assert_eq!(address_bucket("2001:db8:aa:bb::"), a);
        assert_ne!(address_bucket("2001:db8:aa:bc::1"), a);
        assert_ne!(address_bucket("203.0.113.8"), address_bucket("203.0.113.7"));
        assert_eq!(address_bucket("unknown"), "unknown");
    }
}
