//! The one retry pause schedule of the origin: exponential steps with jitter, capped.
//!
//! Three callers retry against something that may be away, and they want different jitter:
//!
//! * the outbox relay ([`crate::events::relay`]) backs off from the broker or the database with
//!   **equal jitter** (each pause in the upper half of its step): relays that failed together
//!   spread out, yet a pause never collapses to zero, which would hammer a broker that is down;
//! * the inference client ([`crate::inference`]) retries an idempotent call with **full jitter**
//!   (anywhere from zero to the step): inside a quote's 150 ms budget an early retry is worth
//!   more than an even spread;
//! * the webhook dispatcher ([`crate::webhooks`]) spaces a failing delivery's attempts with
//!   **equal jitter**, so endpoints that failed together do not all come back at once.
//!
//! Step `k` (from 0) is `base · 2^k`, at most `cap`; the pause is drawn from it as above.

use std::time::Duration;

use rand::Rng;

/// How a pause is drawn from its step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Jitter {
    /// Anywhere in `0..=step`.
    Full,
    /// In the upper half, `step/2..=step`.
    Equal,
}

/// A retry schedule and how far along it is.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    cap: Duration,
    jitter: Jitter,
    step: u32,
}

impl Backoff {
    /// A schedule starting at `base`, doubling up to `cap`.
    pub(crate) fn new(base: Duration, cap: Duration, jitter: Jitter) -> Self {
        Backoff {
            base,
            cap,
            jitter,
            step: 0,
        }
    }

    /// The same schedule, `step` steps along (a caller that keeps its attempt count elsewhere,
    /// e.g. a webhook delivery's row).
    pub(crate) fn at_step(mut self, step: u32) -> Self {
        self.step = step;
        self
    }

    /// Back to the first step (after a success).
    pub(crate) fn reset(&mut self) {
        self.step = 0;
    }

    /// The step the next pause is drawn from, without advancing.
    pub(crate) fn current_step(&self) -> Duration {
        self.base
            .saturating_mul(1u32 << self.step.min(16))
            .min(self.cap)
    }

    /// The pause before the next attempt; advances the schedule.
    pub(crate) fn next_pause(&mut self) -> Duration {
        let full = self.current_step();
        self.step = self.step.saturating_add(1);
        let floor = match self.jitter {
            Jitter::Full => Duration::ZERO,
            Jitter::Equal => full / 2,
        };
        if full <= floor {
            return full;
        }
        rand::thread_rng().gen_range(floor..=full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_jitter_grows_to_its_cap_and_stays_in_the_upper_half_of_each_step() {
        let cap = Duration::from_secs(10);
        let mut backoff = Backoff::new(Duration::from_millis(200), cap, Jitter::Equal);
        let mut full = Duration::from_millis(200);
        for _ in 0..12 {
            let pause = backoff.next_pause();
            assert!(
                pause >= full / 2 && pause <= full,
                "{pause:?} for step {full:?}"
            );
            full = (full * 2).min(cap);
        }
        backoff.reset();
        assert!(backoff.next_pause() <= Duration::from_millis(200));
    }

    #[test]
    fn full_jitter_stays_within_each_doubling_step_up_to_the_cap() {
        let cap = Duration::from_millis(160);
        let mut backoff = Backoff::new(Duration::from_millis(10), cap, Jitter::Full);
        for step_ms in [10, 20, 40, 80, 160, 160, 160] {
            assert_eq!(backoff.current_step(), Duration::from_millis(step_ms));
            assert!(backoff.next_pause() <= Duration::from_millis(step_ms));
        }
    }

    #[test]
    fn full_jitter_pauses_are_spread_not_constant() {
        let mut pauses = std::collections::BTreeSet::new();
        for _ in 0..64 {
            let mut backoff = Backoff::new(
                Duration::from_millis(100),
                Duration::from_secs(1),
                Jitter::Full,
            );
            pauses.insert(backoff.next_pause());
        }
        assert!(pauses.len() > 8, "{pauses:?}");
        assert!(pauses.iter().any(|p| *p < Duration::from_millis(50)));
    }

    #[test]
    fn a_schedule_never_overflows_however_long_it_runs() {
        let cap = Duration::from_secs(10);
        let mut backoff = Backoff::new(Duration::from_secs(1), cap, Jitter::Equal);
        for _ in 0..200 {
            assert!(backoff.next_pause() <= cap);
        }
    }
}
