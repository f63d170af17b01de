//! A circuit breaker per remote dependency (the AI inference API's risk and demand endpoints).
//!
//! States: **closed** (calls flow; consecutive failures are counted) → **open** after
//! `failures` consecutive failures (calls are refused at once, the caller uses its fallback)
//! → **half-open** once `cooldown` has passed, where exactly **one probe** call is let through
//! while every other caller is still refused → **closed** if the probe succeeds, **open**
//! again (for another cool-down) if it fails.
//!
//! Why not the `failsafe` crate: its half-open state admits every call until one of them
//! reports back, so a recovering service would get the whole queued burst at once; its clock
//! is internal, so the state machine could not be tested without sleeping. This one is a few
//! dozen lines, takes the time as an argument (tests are deterministic) and reports every
//! state change to one place, which logs it and counts it in `/metrics`
//! (`circuit_breaker_transitions_total{dependency,to}`, gauge `circuit_breaker_state`:
//! 0 closed, 1 half-open, 2 open; `circuit_breaker_rejected_total{dependency}`).
//!
//! A [`Permit`] that is dropped without a verdict (the caller's deadline cancelled the call)
//! counts as a failure: a call that did not answer in time is exactly what the breaker is for,
//! and a lost half-open probe must not wedge the breaker in "probe in flight" forever.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The three states; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// Label used in logs and metrics.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

/// When to open and how long to stay open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BreakerSettings {
    /// Consecutive failures that open a closed breaker (at least 1).
    pub failures: u32,
    /// Time an open breaker refuses calls before letting one probe through.
    pub cooldown: Duration,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive_failures: u32,
    opened_at: Option<Instant>,
    probe_in_flight: bool,
}

/// One dependency's breaker. Cheap to share (`Arc`).
#[derive(Debug)]
pub(crate) struct CircuitBreaker {
    name: &'static str,
    settings: BreakerSettings,
    inner: Mutex<Inner>,
}

/// Permission to make one call; report the outcome with [`Permit::success`] or
/// [`Permit::failure`]. Dropping it unreported counts as a failure.
#[derive(Debug)]
pub(crate) struct Permit {
    breaker: Arc<CircuitBreaker>,
    probe: bool,
    reported: bool,
}

impl Permit {
    /// The call answered correctly.
    pub(crate) fn success(mut self) {
        self.reported = true;
        self.breaker.record(self.probe, true, Instant::now());
    }

    /// The call failed (error, bad status, timeout, unreadable answer).
    pub(crate) fn failure(mut self) {
        self.reported = true;
        self.breaker.record(self.probe, false, Instant::now());
    }

    /// Whether this call is the half-open probe.
    #[cfg(test)]
    pub(crate) fn is_probe(&self) -> bool {
        self.probe
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker.record(self.probe, false, Instant::now());
        }
    }
}

impl CircuitBreaker {
    /// A closed breaker for dependency `name`.
    pub(crate) fn new(name: &'static str, settings: BreakerSettings) -> Arc<Self> {
        metrics::gauge!("circuit_breaker_state", "dependency" => name)
            .set(BreakerState::Closed.gauge());
        Arc::new(CircuitBreaker {
            name,
            settings: BreakerSettings {
                failures: settings.failures.max(1),
                ..settings
            },
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                opened_at: None,
                probe_in_flight: false,
            }),
        })
    }

    /// The dependency's name.
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere while holding it; the state is plain
        // data and still consistent, so keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current state (an open breaker past its cool-down still reads open until a caller
    /// asks to call).
    pub(crate) fn state(&self) -> BreakerState {
        self.lock().state
    }

    fn transition(&self, inner: &mut Inner, to: BreakerState) {
        let from = inner.state;
        if from == to {
            return;
        }
        inner.state = to;
        tracing::warn!(
            dependency = self.name,
            from = from.as_str(),
            to = to.as_str(),
            "circuit breaker state change"
        );
        metrics::counter!("circuit_breaker_transitions_total", "dependency" => self.name, "to" => to.as_str())
            .increment(1);
        metrics::gauge!("circuit_breaker_state", "dependency" => self.name).set(to.gauge());
    }

    /// Asks to call at `now`: a permit, or `None` when the breaker refuses (open, or half-open
    /// with the probe already out).
    pub(crate) fn try_acquire_at(self: &Arc<Self>, now: Instant) -> Option<Permit> {
        let mut inner = self.lock();
        let probe = match inner.state {
            BreakerState::Closed => false,
            BreakerState::Open => {
                let cooled = inner
                    .opened_at
                    .is_none_or(|at| now.saturating_duration_since(at) >= self.settings.cooldown);
                if !cooled {
                    drop(inner);
                    self.rejected();
                    return None;
                }
                self.transition(&mut inner, BreakerState::HalfOpen);
                inner.probe_in_flight = true;
                true
            }
            BreakerState::HalfOpen => {
                if inner.probe_in_flight {
                    drop(inner);
                    self.rejected();
                    return None;
                }
                inner.probe_in_flight = true;
                true
            }
        };
        Some(Permit {
            breaker: Arc::clone(self),
            probe,
            reported: false,
        })
    }

    /// [`try_acquire_at`](Self::try_acquire_at) now.
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        self.try_acquire_at(Instant::now())
    }

    fn rejected(&self) {
        metrics::counter!("circuit_breaker_rejected_total", "dependency" => self.name).increment(1);
    }

    fn record(&self, probe: bool, ok: bool, now: Instant) {
        let mut inner = self.lock();
        if probe {
            inner.probe_in_flight = false;
        }
        match (inner.state, ok) {
            (BreakerState::Closed, true) => inner.consecutive_failures = 0,
            (BreakerState::Closed, false) => {
                inner.consecutive_failures += 1;
                if inner.consecutive_failures >= self.settings.failures {
                    inner.opened_at = Some(now);
                    self.transition(&mut inner, BreakerState::Open);
                }
            }
            (BreakerState::HalfOpen, true) if probe => {
                inner.consecutive_failures = 0;
                inner.opened_at = None;
                self.transition(&mut inner, BreakerState::Closed);
            }
            (BreakerState::HalfOpen, false) if probe => {
                inner.opened_at = Some(now);
                self.transition(&mut inner, BreakerState::Open);
            }
            // A call admitted while closed that reports after the breaker opened (or went
            // half-open) does not change the verdict of the probe.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(failures: u32, cooldown_ms: u64) -> Arc<CircuitBreaker> {
        CircuitBreaker::new(
            "test",
            BreakerSettings {
                failures,
                cooldown: Duration::from_millis(cooldown_ms),
            },
        )
    }

    fn fail(b: &Arc<CircuitBreaker>, now: Instant) {
        if let Some(p) = b.try_acquire_at(now) {
            b.record(p.probe, false, now);
            std::mem::forget(p);
        }
    }

    #[test]
    fn opens_after_the_threshold_of_consecutive_failures_only() {
        let b = breaker(3, 1000);
        let t0 = Instant::now();
        fail(&b, t0);
        fail(&b, t0);
        // A success in between resets the count.
        if let Some(p) = b.try_acquire_at(t0) {
            p.success();
        }
        fail(&b, t0);
        fail(&b, t0);
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b, t0);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_acquire_at(t0 + Duration::from_millis(999)).is_none());
    }

    #[test]
    fn after_the_cooldown_exactly_one_probe_goes_through() {
        let b = breaker(1, 1000);
        let t0 = Instant::now();
        fail(&b, t0);
        let later = t0 + Duration::from_millis(1000);
        let probe = b.try_acquire_at(later);
        assert!(probe.as_ref().is_some_and(Permit::is_probe));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(
            b.try_acquire_at(later).is_none(),
            "a second caller is refused"
        );
        if let Some(p) = probe {
            p.success();
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.try_acquire_at(later).is_some_and(|p| !p.is_probe()));
    }

    #[test]
    fn a_failed_probe_reopens_for_another_cooldown() {
        let b = breaker(2, 500);
        let t0 = Instant::now();
        fail(&b, t0);
        fail(&b, t0);
        let t1 = t0 + Duration::from_millis(600);
        fail(&b, t1);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_acquire_at(t1 + Duration::from_millis(400)).is_none());
        assert!(b.try_acquire_at(t1 + Duration::from_millis(500)).is_some());
    }

    #[test]
    fn a_dropped_probe_counts_as_a_failure_and_does_not_wedge_the_breaker() {
        let b = breaker(1, 0);
        let t0 = Instant::now();
        fail(&b, t0);
        let probe = b.try_acquire_at(t0);
        assert!(probe.is_some());
        drop(probe);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_acquire_at(Instant::now()).is_some());
    }

    #[test]
    fn late_results_of_calls_admitted_while_closed_do_not_decide_half_open() {
        let b = breaker(1, 0);
        let t0 = Instant::now();
        let slow = b.try_acquire_at(t0);
        fail(&b, t0);
        let probe = b.try_acquire_at(t0);
        if let Some(p) = slow {
            p.success();
        }
        assert_eq!(b.state(), BreakerState::HalfOpen);
        if let Some(p) = probe {
            p.success();
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
