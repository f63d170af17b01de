//! Tests of the burst allowance ([`super::burst`]): the promise (five times the rate for the
//! configured seconds, then the window), the header numbers (`remaining` exact, `Retry-After`
//! enough and no more), the bounds, and the README's plot, regenerated from [`decide`].

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

/// What Redis holds for one client, driven through [`decide`] the way the edge's script
/// applies it: a window-paid request increments the current window's counter, a bucket-paid
/// one stores the bucket, a refused one changes nothing.
#[derive(Debug, Clone)]
struct Client {
    limit: RateLimit,
    burst: Option<Burst>,
    counts: BTreeMap<u64, u64>,
    bucket: Option<Bucket>,
}

impl Client {
    fn new(limit: u32, window_ms: u64, burst_secs: u64) -> Client {
        let limit = RateLimit { limit, window_ms };
        Client {
            limit,
            burst: Burst::new(&limit, burst_secs),
            counts: BTreeMap::new(),
            bucket: None,
        }
    }

    fn request(&mut self, now: u64) -> Verdict {
        let index = now / self.limit.window_ms;
        let prev = index
            .checked_sub(1)
            .and_then(|i| self.counts.get(&i))
            .copied()
            .unwrap_or(0);
        let curr = self.counts.get(&index).copied().unwrap_or(0);
        let v = decide(
            &self.limit,
            self.burst.as_ref(),
            prev,
            curr,
            now,
            self.bucket,
        );
        match v.paid {
            Some(Paid::Window) => *self.counts.entry(index).or_insert(0) += 1,
            Some(Paid::Bucket) => self.bucket = v.bucket,
            None => {}
        }
        v
    }
}

/// Request times at `per_window` requests per window from `from` (inclusive) to `to`
/// (exclusive), evenly spread in whole milliseconds.
fn at_rate(per_window: u64, window_ms: u64, from: u64, to: u64) -> Vec<u64> {
    (0..)
        .map(|k| from + k * window_ms / per_window)
        .take_while(|t| *t < to)
        .collect()
}

/// A start that is not aligned with any window, so phases straddle window boundaries.
const T0: u64 = 1_000_000_007;

#[test]
fn the_defaults_give_68_tokens_one_back_every_6_s_and_a_policy_of_83_in_10_s() {
    let limit = RateLimit {
        limit: 100,
        window_ms: 60_000,
    };
    let b = Burst::new(&limit, 10).unwrap_or_else(|| panic!("burst off"));
    // (4 × 100 + 1)/60 × 10 = 66.8, rounded up, plus one; 5 × 100/60 × 10 = 83.3, rounded down.
    assert_eq!(b.capacity, 68);
    assert_eq!(b.refill_ms, 6_000);
    assert_eq!(b.quota(&limit), 83);
    assert_eq!(Burst::new(&limit, 0), None, "0 seconds: off");
    let tiny = RateLimit {
        limit: 0,
        window_ms: 60_000,
    };
    assert_eq!(Burst::new(&tiny, 10), None);
}

/// The promise, for many limits, windows and burst lengths: a client that has been sending
/// at its rate for two windows then sends five times its rate is not refused for the burst
/// seconds, and is refused soon after (the bucket is empty and the window full); without the
/// burst the same client is refused within its first second at five times the rate.
#[test]
fn a_client_at_its_rate_bursts_to_five_times_it_for_the_burst_seconds_then_is_limited() {
    // Windows that divide evenly by the limit, so the client at its rate is exactly at it.
    for (limit, window_ms) in [
        (100, 60_000),
        (15, 3_000),
        (60, 60_000),
        (1000, 60_000),
        (8, 10_000),
    ] {
        for burst_secs in [1, 2, 5, 10, 30] {
            let case = format!("{limit}/{window_ms} ms, burst {burst_secs} s");
            let mut on = Client::new(limit, window_ms, burst_secs);
            let mut off = Client::new(limit, window_ms, 0);
            let start = T0 + 2 * window_ms;
            for t in at_rate(u64::from(limit), window_ms, T0, start) {
                assert!(on.request(t).decision.allowed, "{case}: at the rate, t={t}");
                off.request(t);
            }
            let burst_end = start + burst_secs * 1000;
            let five = at_rate(
                5 * u64::from(limit),
                window_ms,
                start,
                burst_end + 10 * window_ms,
            );
            let mut first_refusal = None;
            let mut off_refusal = None;
            for t in five {
                if first_refusal.is_none() && !on.request(t).decision.allowed {
                    first_refusal = Some(t);
                }
                if off_refusal.is_none() && !off.request(t).decision.allowed {
                    off_refusal = Some(t);
                }
            }
            let refused = first_refusal.unwrap_or_else(|| panic!("{case}: never limited"));
            assert!(
                refused >= burst_end,
                "{case}: refused {} ms into the burst",
                refused - start
            );
            // Limited before 1.5 × the burst (plus one window's rounding for tiny limits).
            assert!(
                refused < start + burst_secs * 1500 + window_ms / u64::from(limit) * 5,
                "{case}: first refusal only {} ms into the burst",
                refused - start
            );
            let off_refused = off_refusal.unwrap_or_else(|| panic!("{case}: off never limited"));
            assert!(
                off_refused < start + 1000,
                "{case}: without burst refused at {}",
                off_refused - start
            );
        }
    }
}

#[test]
fn over_many_windows_a_hammering_client_gets_at_most_1_1_times_its_limit() {
    let (limit, window_ms, windows) = (100u64, 60_000u64, 60u64);
    let mut c = Client::new(100, window_ms, 10);
    let cap = c.burst.map_or(0, |b| b.capacity);
    let allowed = at_rate(20 * limit, window_ms, T0, T0 + windows * window_ms)
        .into_iter()
        .filter(|t| c.request(*t).decision.allowed)
        .count() as u64;
    // The window's rate, a tenth of it from the refill, one full bucket, and one window of
    // the sliding estimate's start-up (an empty previous window).
    let bound = windows * limit + windows * limit / REFILL_DIVISOR + cap + limit;
    assert!(allowed <= bound, "{allowed} > {bound}");
    assert!(
        allowed >= windows * limit,
        "{allowed}: the window's rate is always available"
    );
}

#[test]
fn a_full_bucket_and_no_bucket_are_the_same_and_the_key_may_expire_once_it_is_full() {
    let limit = RateLimit {
        limit: 15,
        window_ms: 3_000,
    };
    let b = Burst::new(&limit, 2).unwrap_or_else(|| panic!("off"));
    let spent = Bucket {
        tokens: 3,
        refilled_at_ms: T0,
    };
    let keep = spent.keep_ms(&b, T0 + 500);
    let full_at = T0 + 500 + keep;
    assert_eq!(spent.refilled(&b, full_at), Bucket::full(&b, full_at));
    assert_ne!(spent.refilled(&b, full_at - 1).tokens, b.capacity);
    // Spending the first token of a full bucket starts the refill clock there.
    let mut c = Client::new(15, 3_000, 2);
    for _ in 0..15 {
        assert_eq!(c.request(T0).paid, Some(Paid::Window));
    }
    let v = c.request(T0 + 100);
    assert_eq!(v.paid, Some(Paid::Bucket));
    assert_eq!(
        v.bucket,
        Some(Bucket {
            tokens: b.capacity - 1,
            refilled_at_ms: T0 + 100
        })
    );
}

fn limit_strategy() -> impl Strategy<Value = (u32, u64, u64)> {
    (
        1u32..60,
        prop::sample::select(vec![1_000u64, 3_000, 10_000, 60_000]),
        0u64..20,
    )
}

/// A history of request times: bursts and pauses of random lengths.
fn history_strategy() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(0u64..5_000, 1..300).prop_map(|gaps| {
        gaps.into_iter()
            .scan(T0, |t, g| {
                // Mostly short gaps (a burst), sometimes a long pause.
                *t += if g > 4_900 { g * 20 } else { g / 25 };
                Some(*t)
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// With the burst off, `decide` is the sliding window, request for request.
    #[test]
    fn with_the_burst_off_decide_is_the_sliding_window(
        (limit, window_ms, _) in limit_strategy(),
        prev in 0u64..200, curr in 0u64..200, now in 0u64..10_000_000,
    ) {
        let l = RateLimit { limit, window_ms };
        let v = decide(&l, None, prev, curr, now, None);
        prop_assert_eq!(v.decision, sliding_window(&l, prev, curr, now % window_ms));
        prop_assert_eq!(v.bucket, None);
    }

    /// The promise for any limit, window and burst: whatever the client did before, if its
    /// bucket is full when it starts sending five times its rate, it is not refused for the
    /// burst seconds.
    #[test]
    fn with_a_full_bucket_five_times_the_rate_passes_for_the_burst_seconds(
        limit in 1u32..300,
        window_ms in prop::sample::select(vec![1_000u64, 2_000, 3_000, 10_000, 60_000]),
        burst_secs in 1u64..30,
        before in 0u64..2,
        offset in 0u64..60_000,
    ) {
        let mut c = Client::new(limit, window_ms, burst_secs);
        let b = c.burst.unwrap_or_else(|| panic!("off"));
        let start = T0 + 2 * window_ms + offset % window_ms;
        // Before: quiet, or exactly at the rate for two windows.
        if before > 0 {
            for t in at_rate(u64::from(limit), window_ms, T0, start) {
                c.request(t);
            }
        }
        let full = c.bucket.is_none_or(|x| x.refilled(&b, start).tokens == b.capacity);
        prop_assume!(full);
        let end = start + burst_secs * 1000;
        for t in at_rate(5 * u64::from(limit), window_ms, start, end) {
            prop_assert!(c.request(t).decision.allowed, "refused {} ms into the burst", t - start);
        }
    }

    /// `Retry-After` (in ms) is enough and no more: a request that waits it passes, one
    /// that comes a millisecond earlier does not.
    #[test]
    fn waiting_retry_after_is_enough_and_a_millisecond_less_is_not(
        (limit, window_ms, burst_secs) in limit_strategy(),
        times in history_strategy(),
    ) {
        let mut c = Client::new(limit, window_ms, burst_secs);
        for t in times {
            let v = c.request(t);
            if v.decision.allowed {
                prop_assert_eq!(v.decision.retry_after_ms, 0);
                continue;
            }
            let retry = v.decision.retry_after_ms;
            prop_assert!(retry >= 1);
            prop_assert!(c.clone().request(t + retry).decision.allowed, "t={} retry={}", t, retry);
            if retry > 1 {
                prop_assert!(!c.clone().request(t + retry - 1).decision.allowed, "t={} retry={}", t, retry);
            }
        }
    }

    /// `RateLimit-Remaining` counts both budgets exactly: right after an allowed request
    /// with remaining `k`, `k` more pass at the same instant and the next is refused.
    #[test]
    fn remaining_is_the_number_of_requests_that_still_pass_now(
        (limit, window_ms, burst_secs) in limit_strategy(),
        times in history_strategy(),
    ) {
        let mut c = Client::new(limit, window_ms, burst_secs);
        for t in times {
            let v = c.request(t);
            if !v.decision.allowed {
                prop_assert_eq!(v.decision.remaining, 0);
                continue;
            }
            let mut probe = c.clone();
            for i in 0..v.decision.remaining {
                prop_assert!(probe.request(t).decision.allowed, "t={} request {} of {}", t, i + 1, v.decision.remaining);
            }
            prop_assert!(!probe.request(t).decision.allowed, "t={}: more than {} passed", t, v.decision.remaining);
        }
    }

    /// The bucket never pays for more than it holds plus what it earned, and never holds
    /// more than its capacity.
    #[test]
    fn the_bucket_pays_at_most_its_capacity_plus_one_token_per_refill_interval(
        (limit, window_ms, burst_secs) in limit_strategy(),
        times in history_strategy(),
    ) {
        let mut c = Client::new(limit, window_ms, burst_secs);
        let Some(b) = c.burst else { return Ok(()); };
        let (first, last) = (times[0], times[times.len() - 1]);
        let mut paid = 0u64;
        for t in &times {
            let v = c.request(*t);
            if v.paid == Some(Paid::Bucket) {
                paid += 1;
            }
            prop_assert!(v.bucket.is_none_or(|x| x.tokens <= b.capacity));
        }
        prop_assert!(paid <= b.capacity + (last - first) / b.refill_ms, "{} paid", paid);
    }

    /// Refilling is path-independent: refilling at `t1` and then at `t2` is refilling at `t2`.
    #[test]
    fn refilling_late_or_twice_is_refilling_once(
        (limit, window_ms, burst_secs) in limit_strategy(),
        tokens in 0u64..100, d1 in 0u64..200_000, d2 in 0u64..200_000,
    ) {
        let l = RateLimit { limit, window_ms };
        let Some(b) = Burst::new(&l, burst_secs.max(1)) else { return Ok(()); };
        let bucket = Bucket { tokens: tokens.min(b.capacity), refilled_at_ms: T0 };
        let (t1, t2) = (T0 + d1.min(d2), T0 + d1.max(d2));
        prop_assert_eq!(bucket.refilled(&b, t1).refilled(&b, t2), bucket.refilled(&b, t2));
    }
}

// --- The README's plot ------------------------------------------------------------------

/// The scenario plotted in the README (defaults: 100 a minute, bursts of 10 s): a client at
/// its rate for a minute, five times it for 40 s, then its rate again.
fn plot_scenario(burst_secs: u64) -> Vec<(u64, bool)> {
    let (limit, window_ms) = (100u64, 60_000u64);
    // At a window's start, so the minute at the rate fills one window exactly.
    let t0 = T0 - T0 % window_ms;
    let mut c = Client::new(100, window_ms, burst_secs);
    let mut times = at_rate(limit, window_ms, t0, t0 + 60_000);
    times.extend(at_rate(5 * limit, window_ms, t0 + 60_000, t0 + 100_000));
    times.extend(at_rate(limit, window_ms, t0 + 100_000, t0 + 180_000));
    times
        .into_iter()
        .map(|t| (t - t0, c.request(t).decision.allowed))
        .collect()
}

/// An ASCII plot of allowed requests per second (2-second columns) over three minutes, with
/// the burst and without it, for the same traffic.
fn render_plot() -> String {
    const COL_MS: u64 = 2_000;
    const COLS: usize = 90;
    const ROWS: usize = 8; // 1 row = 1 request per second
    let series = |burst_secs| {
        let mut offered = [0u64; COLS];
        let mut allowed = [0u64; COLS];
        for (t, ok) in plot_scenario(burst_secs) {
            let col = usize::try_from(t / COL_MS).unwrap_or(COLS).min(COLS - 1);
            offered[col] += 1;
            if ok {
                allowed[col] += 1;
            }
        }
        (offered, allowed)
    };
    let (offered, with) = series(10);
    let (_, without) = series(0);
    // A cell is filled when the column's rate reaches its row (to the nearest request/s).
    let reaches = |n: u64, row: usize| 2 * n * 1000 / COL_MS >= 2 * row as u64 - 1;
    let mut out = String::new();
    out.push_str("requests/s  (limit 100/min = 1.67/s, EDGE_RATE_LIMIT_BURST_SECS=10)\n");
    out.push_str("  # allowed with and without the burst   * allowed only with the burst\n");
    out.push_str("  + allowed only without it               . sent and refused (429) either way\n");
    for row in (1..=ROWS).rev() {
        out.push_str(&format!("{row:>2} |"));
        for col in 0..COLS {
            let cell = match (reaches(with[col], row), reaches(without[col], row)) {
                (true, true) => '#',
                (true, false) => '*',
                (false, true) => '+',
                (false, false) if reaches(offered[col], row) => '.',
                (false, false) => ' ',
            };
            out.push(cell);
        }
        out.push('\n');
    }
    out.push_str("   +");
    out.push_str(&"-".repeat(COLS));
    out.push('\n');
    // Seconds every 10 columns, and the phases under their columns.
    out.push_str("    ");
    for col in (0..COLS).step_by(10) {
        out.push_str(&format!(
            "{:<10}",
            format!("{} s", col as u64 * COL_MS / 1000)
        ));
    }
    out.push('\n');
    out.push_str("    ");
    let col_of = |secs: usize| secs * 1000 / COL_MS as usize;
    for (from, to, label) in [
        (0, 60, "at the rate"),
        (60, 100, "5x"),
        (100, 180, "at the rate"),
    ] {
        let width = col_of(to) - col_of(from);
        out.push_str(&format!("{:-<width$}", format!("|- {label} ")));
    }
    out.push('|');
    out.push('\n');
    out.lines().map(|l| format!("{}\n", l.trim_end())).collect()
}

const PLOT_START: &str =
    "<!-- burst-plot:start (generated by shared/domain/src/ratelimit/burst_tests.rs) -->";
const PLOT_END: &str = "<!-- burst-plot:end -->";

/// The README's plot is what `render_plot` draws from `decide` today; `BLESS=1` rewrites it.
#[test]
fn the_readme_plot_of_allowed_rate_over_time_is_regenerated_from_decide() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let readme =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let block = format!("{PLOT_START}\n```text\n{}```\n{PLOT_END}", render_plot());
    let (Some(start), Some(end)) = (readme.find(PLOT_START), readme.find(PLOT_END)) else {
        panic!("README.md has no burst plot markers");
    };
    let current = &readme[start..end + PLOT_END.len()];
    if current != block {
        if std::env::var_os("BLESS").is_some() {
            let updated = format!(
                "{}{block}{}",
                &readme[..start],
                &readme[end + PLOT_END.len()..]
            );
            std::fs::write(&path, updated).unwrap_or_else(|e| panic!("{e}"));
        } else {
            panic!("the README's burst plot is stale; run with BLESS=1 to regenerate:\n{block}");
        }
    }
}
