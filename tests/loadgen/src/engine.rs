//! The driver: when requests are sent (open or closed loop) and how their outcomes are recorded.
//!
//! Open loop: the scheduler computes, from the rate schedule, how many operations should have
//! started by now and starts them, each stamped with its *intended* start; it wakes every
//! millisecond, so tokio's timer granularity does not cap the rate. Latency of an operation's
//! first request is measured from that intended time (wrk2's correction for coordinated
//! omission); later requests of a chain (hold after quote) from their own send time, since the
//! client could not send them earlier. Requests in flight are bounded (`max_in_flight`): when
//! the bound is reached the scheduler waits, and that wait lands in the latencies it delays.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::Semaphore;

use crate::workload::Context;
use crate::RunOptions;

/// One constant-rate stretch of an open-loop schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Phase {
    pub secs: f64,
    /// Operations started per second.
    pub rate: f64,
}

/// How load is offered.
#[derive(Debug, Clone, PartialEq)]
pub enum Load {
    /// Operations started on a schedule, whatever the server does.
    Open { phases: Vec<Phase> },
    /// `concurrency` workers, each starting its next operation when the last one finished.
    Closed {
        concurrency: usize,
        duration: Duration,
    },
}

impl Load {
    /// A constant rate for `secs` seconds.
    pub fn constant(rate: f64, secs: f64) -> Self {
        Load::Open {
            phases: vec![Phase { secs, rate }],
        }
    }

    /// `base` rate, then `factor` × base for `step_secs`, then back to base.
    pub fn burst(base: f64, factor: f64, before: f64, step_secs: f64, after: f64) -> Self {
        Load::Open {
            phases: vec![
                Phase {
                    secs: before,
                    rate: base,
                },
                Phase {
                    secs: step_secs,
                    rate: base * factor,
                },
                Phase {
                    secs: after,
                    rate: base,
                },
            ],
        }
    }

    /// Total length.
    pub fn duration(&self) -> Duration {
        match self {
            Load::Open { phases } => {
                Duration::from_secs_f64(phases.iter().map(|p| p.secs.max(0.0)).sum())
            }
            Load::Closed { duration, .. } => *duration,
        }
    }

    /// Operations scheduled in total (open loop).
    pub fn planned_ops(&self) -> Option<u64> {
        match self {
            Load::Open { phases } => Some(
                phases
                    .iter()
                    .map(|p| p.secs.max(0.0) * p.rate.max(0.0))
                    .sum::<f64>()
                    .floor() as u64,
            ),
            Load::Closed { .. } => None,
        }
    }

    /// The target rate at `t` seconds (open loop).
    pub fn rate_at(&self, t: f64) -> f64 {
        let Load::Open { phases } = self else {
            return 0.0;
        };
        let mut end = 0.0;
        for p in phases {
            end += p.secs;
            if t < end {
                return p.rate;
            }
        }
        phases.last().map(|p| p.rate).unwrap_or(0.0)
    }
}

/// Operations that should have started by `t` seconds: those whose due time is ≤ `t`
/// (operation 0 is due at once).
fn ops_due(phases: &[Phase], t: f64) -> u64 {
    let mut left = t;
    let mut due = 0.0;
    let mut total = 0.0;
    for p in phases {
        total += p.secs.max(0.0) * p.rate.max(0.0);
        let span = left.clamp(0.0, p.secs.max(0.0));
        due += span * p.rate.max(0.0);
        left -= span;
    }
    (due.floor() as u64 + 1).min(total.floor() as u64)
}

/// When operation `n` (0-based) is due, in seconds from the start.
fn due_time(phases: &[Phase], n: u64) -> f64 {
    let mut remaining = n as f64;
    let mut t = 0.0;
    for p in phases {
        let ops = p.secs.max(0.0) * p.rate.max(0.0);
        if remaining < ops && p.rate > 0.0 {
            return t + remaining / p.rate;
        }
        remaining -= ops;
        t += p.secs.max(0.0);
    }
    t
}

/// The outcome class of one request: an HTTP status, or why there was none.
pub const TRANSPORT_ERROR: u16 = 0;
/// The client gave up waiting (`RunOptions::timeout`).
pub const CLIENT_TIMEOUT: u16 = 1;

/// Latencies up to 60 s, 3 significant digits, in microseconds.
fn histogram() -> Histogram<u64> {
    // Bounds are constants known to be valid; `new_with_bounds` only fails on bad bounds.
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits is valid"))
    })
}

/// What one endpoint saw.
#[derive(Debug, Clone)]
pub struct EndpointStats {
    pub latency_us: Histogram<u64>,
    pub statuses: BTreeMap<u16, u64>,
    /// Error answers by "status problem-type" (e.g. `503 /problems/overloaded`).
    pub problems: BTreeMap<String, u64>,
    /// 503 and 429 answers without a `Retry-After` header.
    pub missing_retry_after: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
}

impl Default for EndpointStats {
    fn default() -> Self {
        EndpointStats {
            latency_us: histogram(),
            statuses: BTreeMap::new(),
            problems: BTreeMap::new(),
            missing_retry_after: 0,
            cache_hits: 0,
            cache_misses: 0,
        }
    }
}

/// What an answer said beyond its status.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// `x-cache: hit` (true) or another value (false); `None` without the header.
    pub cache: Option<bool>,
    /// The problem `type` of an error answer.
    pub problem: Option<String>,
    /// Whether the answer carried `Retry-After`.
    pub retry_after: bool,
}

/// One second of the run (by intended start time).
#[derive(Debug, Clone)]
pub struct Second {
    /// Latency of every request that got an answer other than 503/429 (admitted).
    pub admitted_us: Histogram<u64>,
    /// Latency of every request.
    pub all_us: Histogram<u64>,
    pub shed: u64,
    pub server_errors: u64,
    pub ops_started: u64,
}

impl Default for Second {
    fn default() -> Self {
        Second {
            admitted_us: histogram(),
            all_us: histogram(),
            shed: 0,
            server_errors: 0,
            ops_started: 0,
        }
    }
}

/// Everything recorded during a run.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    pub endpoints: BTreeMap<&'static str, EndpointStats>,
    pub timeline: Vec<Second>,
    pub ops_started: u64,
    pub ops_finished: u64,
    /// Wall time from the first scheduled operation to the last answer.
    pub elapsed: Duration,
    /// Operations that found nothing to do (e.g. the prepared quotes ran out).
    pub exhausted: bool,
}

/// Shared sink of samples; the lock is held for a few histogram updates only.
#[derive(Debug, Clone)]
pub struct Recorder {
    inner: Arc<Mutex<Recorded>>,
    started: Instant,
    in_flight: Arc<AtomicU64>,
}

impl Recorder {
    fn new(started: Instant) -> Self {
        Recorder {
            inner: Arc::new(Mutex::new(Recorded::default())),
            started,
            in_flight: Arc::new(AtomicU64::new(0)),
        }
    }

    fn second_of(&self, at: Instant) -> usize {
        at.saturating_duration_since(self.started).as_secs() as usize
    }

    /// Records one request: `sent` is when it was due (or sent), `status` its outcome.
    pub fn record(&self, endpoint: &'static str, sent: Instant, status: u16, answer: Answer) {
        let micros = sent.elapsed().as_micros().clamp(1, 60_000_000) as u64;
        let second = self.second_of(sent);
        let Ok(mut r) = self.inner.lock() else {
            return;
        };
        let stats = r.endpoints.entry(endpoint).or_default();
        let _ = stats.latency_us.record(micros);
        *stats.statuses.entry(status).or_insert(0) += 1;
        if let Some(problem) = answer.problem {
            *stats
                .problems
                .entry(format!("{status} {problem}"))
                .or_insert(0) += 1;
        }
        if (status == 503 || status == 429) && !answer.retry_after {
            stats.missing_retry_after += 1;
        }
        match answer.cache {
            Some(true) => stats.cache_hits += 1,
            Some(false) => stats.cache_misses += 1,
            None => {}
        }
        if r.timeline.len() <= second {
            r.timeline.resize_with(second + 1, Second::default);
        }
        let s = &mut r.timeline[second];
        let _ = s.all_us.record(micros);
        if status == 503 || status == 429 {
            s.shed += 1;
        } else {
            let _ = s.admitted_us.record(micros);
        }
        if status >= 500 && status != 503 {
            s.server_errors += 1;
        }
    }

    fn op_started(&self, intended: Instant) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let second = self.second_of(intended);
        if let Ok(mut r) = self.inner.lock() {
            r.ops_started += 1;
            if r.timeline.len() <= second {
                r.timeline.resize_with(second + 1, Second::default);
            }
            r.timeline[second].ops_started += 1;
        }
    }

    fn op_finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Ok(mut r) = self.inner.lock() {
            r.ops_finished += 1;
        }
    }

    fn snapshot_line(&self, label: &str, total: Duration, target: f64) -> String {
        let elapsed = self.started.elapsed();
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let Ok(r) = self.inner.lock() else {
            return String::new();
        };
        let last = elapsed.as_secs().saturating_sub(1) as usize;
        let (p99, shed, errors) = r
            .timeline
            .get(last)
            .map(|s| {
                (
                    s.all_us.value_at_quantile(0.99) as f64 / 1000.0,
                    s.shed,
                    s.server_errors,
                )
            })
            .unwrap_or((0.0, 0, 0));
        let conflicts: u64 = r
            .endpoints
            .values()
            .map(|e| e.statuses.get(&409).copied().unwrap_or(0))
            .sum();
        format!(
            "[{label} {:>4.0}s/{:.0}s] target {target:.0}/s  started {}  done {}  in flight {in_flight}  last-second p99 {p99:.1} ms  503/429 {shed}  5xx {errors}  409 total {conflicts}",
            elapsed.as_secs_f64(),
            total.as_secs_f64(),
            r.ops_started,
            r.ops_finished,
        )
    }

    fn finish(self, elapsed: Duration, exhausted: bool) -> Recorded {
        let mut r = match self.inner.lock() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        r.elapsed = elapsed;
        r.exhausted = exhausted;
        r
    }
}

/// Runs the workload under the load of `options` and returns what was recorded.
pub async fn drive(ctx: &Arc<Context>, options: &RunOptions) -> anyhow::Result<Recorded> {
    let started = Instant::now();
    let recorder = Recorder::new(started);
    let total = options.load.duration();
    let done = Arc::new(AtomicBool::new(false));
    let progress = options.progress.then(|| {
        let (recorder, done, load) = (recorder.clone(), done.clone(), options.load.clone());
        let label = options.workload.name();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            while !done.load(Ordering::Relaxed) {
                tick.tick().await;
                let t = started.elapsed().as_secs_f64();
                eprintln!("{}", recorder.snapshot_line(label, total, load.rate_at(t)));
            }
        })
    });
    let exhausted = match &options.load {
        Load::Open { phases } => open_loop(ctx, phases, options, &recorder, started, total).await?,
        Load::Closed {
            concurrency,
            duration,
        } => closed_loop(ctx, *concurrency, *duration, options.seed, &recorder).await,
    };
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        p.abort();
    }
    Ok(recorder.finish(elapsed, exhausted))
}

async fn open_loop(
    ctx: &Arc<Context>,
    phases: &[Phase],
    options: &RunOptions,
    recorder: &Recorder,
    started: Instant,
    total: Duration,
) -> anyhow::Result<bool> {
    let permits = options.max_in_flight.max(1);
    let limit = Arc::new(Semaphore::new(permits));
    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut sent: u64 = 0;
    let mut exhausted = false;
    'schedule: loop {
        let now = started.elapsed();
        if now >= total {
            break;
        }
        let due = ops_due(phases, now.as_secs_f64());
        while sent < due {
            let intended = started + Duration::from_secs_f64(due_time(phases, sent));
            let Some(op) = ctx.next_op(&mut rng, sent) else {
                exhausted = true;
                break 'schedule;
            };
            let permit = limit.clone().acquire_owned().await?;
            recorder.op_started(intended);
            let (ctx, recorder) = (ctx.clone(), recorder.clone());
            tokio::spawn(async move {
                ctx.execute(op, intended, &recorder).await;
                recorder.op_finished();
                drop(permit);
            });
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Let what was started finish (each request is bounded by the client timeout).
    let drain = u32::try_from(permits).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(
        options.timeout * 3 + Duration::from_secs(1),
        limit.acquire_many(drain),
    )
    .await;
    Ok(exhausted)
}

async fn closed_loop(
    ctx: &Arc<Context>,
    concurrency: usize,
    duration: Duration,
    seed: u64,
    recorder: &Recorder,
) -> bool {
    let seq = Arc::new(AtomicU64::new(0));
    let exhausted = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + duration;
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|w| {
            let (ctx, recorder, seq, exhausted) = (
                ctx.clone(),
                recorder.clone(),
                seq.clone(),
                exhausted.clone(),
            );
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed.wrapping_add(w as u64 * 7919));
                while Instant::now() < deadline && !exhausted.load(Ordering::Relaxed) {
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    let Some(op) = ctx.next_op(&mut rng, n) else {
                        exhausted.store(true, Ordering::Relaxed);
                        break;
                    };
                    let now = Instant::now();
                    recorder.op_started(now);
                    ctx.execute(op, now, &recorder).await;
                    recorder.op_finished();
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    exhausted.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_counts_and_due_times_agree_across_phases() {
        let phases = [
            Phase {
                secs: 2.0,
                rate: 10.0,
            },
            Phase {
                secs: 1.0,
                rate: 50.0,
            },
            Phase {
                secs: 2.0,
                rate: 10.0,
            },
        ];
        assert_eq!(ops_due(&phases, 0.0), 1);
        assert_eq!(ops_due(&phases, 1.0), 11);
        assert_eq!(ops_due(&phases, 2.5), 46);
        assert_eq!(ops_due(&phases, 5.0), 90);
        assert!((due_time(&phases, 20) - 2.0).abs() < 1e-9);
        assert!((due_time(&phases, 45) - 2.5).abs() < 1e-9);
        assert!((due_time(&phases, 70) - 3.0).abs() < 1e-9);
        for n in 0..90 {
            let t = due_time(&phases, n);
            assert!(ops_due(&phases, t + 1e-9) > n, "op {n} due at {t}");
        }
    }

    #[test]
    fn burst_load_is_five_times_the_base_rate_during_the_step() {
        let load = Load::burst(100.0, 5.0, 10.0, 5.0, 10.0);
        assert_eq!(load.rate_at(3.0), 100.0);
        assert_eq!(load.rate_at(12.0), 500.0);
        assert_eq!(load.rate_at(20.0), 100.0);
        assert_eq!(load.planned_ops(), Some(4500));
        assert_eq!(load.duration(), Duration::from_secs(25));
    }
}
