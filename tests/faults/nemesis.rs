//! The nemesis: a fault schedule drawn from a seed, run against the cluster.
//!
//! [`plan`] draws, from `FAULTS_SEED` alone, every fault kind once (each with a random
//! target and duration, both clock-skew magnitudes) plus a few extra picks, and a start time
//! for each within the span. [`run`] starts each at its time; faults on different targets
//! overlap freely, two on one target wait for each other (a fault holds its target while it
//! lasts). The same seed gives the same schedule; the clients' own choices are not seeded, so
//! a rerun reproduces the faults and their timing, not every request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::history::Op;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;

use crate::cluster::Cluster;
use crate::faults::{inject, Fault, Link, LinkFault, Target};
use crate::LOCK_TTL_MS;

/// One planned fault: when (from the nemesis's start) and what.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct Planned {
    pub at_ms: u64,
    pub fault: Fault,
}

/// Every fault kind once, with targets and durations drawn from `rng`.
fn every_kind(rng: &mut StdRng, disk_full: bool) -> Vec<Fault> {
    let origin = |rng: &mut StdRng| rng.gen_range(0..2usize);
    let sign = |rng: &mut StdRng| if rng.gen_bool(0.5) { 1 } else { -1 };
    let mut all = vec![
        Fault::OriginKill {
            origin: origin(rng),
        },
        Fault::OriginPause {
            origin: origin(rng),
            ms: LOCK_TTL_MS + rng.gen_range(500..2_500),
        },
        Fault::ClockSkew {
            origin: origin(rng),
            secs: 30 * sign(rng),
            ms: rng.gen_range(3_000..7_000),
        },
        Fault::ClockSkew {
            origin: origin(rng),
            secs: 300 * sign(rng),
            ms: rng.gen_range(3_000..7_000),
        },
        Fault::PgCrash,
        Fault::PgTerminate,
        Fault::RedisKill {
            ms: rng.gen_range(2_000..4_000),
        },
        Fault::BrokerKill {
            ms: rng.gen_range(3_000..6_000),
        },
        Fault::Overload {
            ms: rng.gen_range(1_500..3_000),
        },
    ];
    for link in [Link::Postgres, Link::Redis] {
        for what in [
            LinkFault::Rst,
            LinkFault::Dead,
            LinkFault::Partition,
            LinkFault::Latency,
        ] {
            all.push(Fault::Link {
                link,
                what,
                ms: rng.gen_range(2_000..5_000),
            });
        }
    }
    if disk_full {
        all.push(Fault::BrokerDiskFull {
            ms: rng.gen_range(3_000..6_000),
        });
    }
    all
}

/// The schedule for `seed`: every kind once plus `extra` random picks, at random times within
/// `span`, in start order.
pub(crate) fn plan(seed: u64, span: Duration, extra: usize, disk_full: bool) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults = every_kind(&mut rng, disk_full);
    for _ in 0..extra {
        let pool = every_kind(&mut rng, disk_full);
        if let Some(f) = pool.choose(&mut rng) {
            faults.push(*f);
        }
    }
    let span_ms = u64::try_from(span.as_millis()).unwrap_or(u64::MAX).max(1);
    let mut planned: Vec<Planned> = faults
        .into_iter()
        .map(|fault| Planned {
            at_ms: rng.gen_range(0..span_ms),
            fault,
        })
        .collect();
    planned.sort_by_key(|p| p.at_ms);
    planned
}

/// What one fault did, and the clients' operations while it lasted.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Record {
    pub kind: String,
    pub fault: Fault,
    pub planned_ms: u64,
    pub start_ms: u64,
    pub end_ms: u64,
    pub effect_seen: bool,
    pub note: String,
    pub acked: usize,
    pub failed: usize,
    pub indeterminate: usize,
}

/// Runs `plan` from `t0`; one record per fault (errors count as no effect).
pub(crate) async fn run(c: Arc<Cluster>, plan: Vec<Planned>, t0: Instant) -> Vec<Record> {
    let locks: Arc<BTreeMap<Target, Mutex<()>>> = Arc::new(
        plan.iter()
            .flat_map(|p| std::iter::once(p.fault.target()).chain(p.fault.also_holds()))
            .map(|t| (t, Mutex::new(())))
            .collect(),
    );
    let mut tasks = Vec::new();
    for p in plan {
        let (c, locks) = (c.clone(), locks.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until((t0 + Duration::from_millis(p.at_ms)).into()).await;
            let _held = match locks.get(&p.fault.target()) {
                Some(l) => Some(l.lock().await),
                None => None,
            };
            // Taken second: `also_holds` comes after `target` in the map's order.
            let _also = match p.fault.also_holds().and_then(|t| locks.get(&t)) {
                Some(l) => Some(l.lock().await),
                None => None,
            };
            let start = t0.elapsed();
            eprintln!("[nemesis] {:>6} ms start {:?}", start.as_millis(), p.fault);
            let (effect_seen, note) = match inject(&c, p.fault, &locks).await {
                Ok(e) => (e.seen, e.note),
                Err(e) => (false, format!("error: {e:#}")),
            };
            let end = t0.elapsed();
            eprintln!(
                "[nemesis] {:>6} ms end   {} (effect: {effect_seen}) {note}",
                end.as_millis(),
                p.fault.kind()
            );
            Record {
                kind: p.fault.kind(),
                fault: p.fault,
                planned_ms: p.at_ms,
                start_ms: ms(start),
                end_ms: ms(end),
                effect_seen,
                note,
                acked: 0,
                failed: 0,
                indeterminate: 0,
            }
        }));
    }
    let mut records = Vec::new();
    for t in tasks {
        match t.await {
            Ok(r) => records.push(r),
            Err(e) => eprintln!("[nemesis] a fault task panicked: {e}"),
        }
    }
    records
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Whether `op` was in flight at some moment of [start_ms, end_ms] (relative to `t0`).
pub(crate) fn during(op: &Op, t0: Instant, start_ms: u64, end_ms: u64) -> bool {
    let s = t0 + Duration::from_millis(start_ms);
    let e = t0 + Duration::from_millis(end_ms);
    op.started <= e && op.ended >= s
}

/// Fills each record's acked / definitely failed / unanswered counts from the history.
pub(crate) fn attribute(records: &mut [Record], ops: &[Op], t0: Instant) {
    for r in records {
        for op in ops.iter().filter(|o| during(o, t0, r.start_ms, r.end_ms)) {
            match op.status {
                None => r.indeterminate += 1,
                Some(_) if op.acknowledged() => r.acked += 1,
                Some(_) => r.failed += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_seed_gives_one_schedule_with_every_kind_and_another_seed_another() {
        let a = plan(7, Duration::from_secs(90), 4, true);
        let b = plan(7, Duration::from_secs(90), 4, true);
        let c = plan(8, Duration::from_secs(90), 4, true);
        let key = |p: &[Planned]| format!("{p:?}");
        assert_eq!(key(&a), key(&b));
        assert_ne!(key(&a), key(&c));
        let kinds: std::collections::BTreeSet<String> =
            a.iter().map(|p| p.fault.kind().replace('-', "+")).collect();
        // 9 fixed kinds (two skews: ±30 s and ±300 s) + 8 link faults + disk full.
        assert!(kinds.len() >= 17, "{kinds:?}");
        assert!(a.iter().all(|p| p.at_ms < 90_000));
        assert!(a.iter().any(|p| matches!(
            p.fault,
            Fault::OriginPause { ms, .. } if ms > LOCK_TTL_MS
        )));
    }
}
