//! The history checker (in the spirit of Jepsen's Elle, for this system's promises).
//!
//! Every client operation of a run is recorded as an [`Op`]: what was asked (hold, confirm,
//! cancel, extend, or a read of a booking), by whom, of which origin, with which
//! Idempotency-Key and `x-request-id`, when it was invoked and when it completed, and what came
//! back — an [`Outcome`]: **ok** (2xx), **definite failure** (a 4xx other than "in progress"
//! and 429: the request did nothing), or **indeterminate** (no answer, a 5xx, a 429 or "in
//! progress": it may or may not have taken effect, or says nothing about its key). After the run, with the faults healed, [`check`] compares that
//! history with the system of record and the broker. Each check is its own counter in
//! [`Report`]; a clean run has every violation counter at zero.
//!
//! From the clients' view (the acknowledgements and reads), cross-checked against the database:
//!
//! - **(a) No double booking, twice.** `overlaps_acked`: from the acks and reads alone, two
//!   bookings of one vehicle whose windows overlap were both certainly occupying at one moment
//!   (a booking certainly occupies from its hold's ack, or an earlier read that saw it active,
//!   until the first cancel that may have taken effect or, unconfirmed, the earliest moment its
//!   hold could have expired — or later, if a read saw it active later). `overlaps_db`: the same
//!   from `booking_history` (occupancy from the `hold` row to the row that releases, in history
//!   order, which is commit order for rows that conflict), independent of the exclusion
//!   constraint. Neither re-runs the constraint's predicate on the final table.
//! - **(b) No lost or altered acknowledged write** (`lost_acknowledged_writes`): every
//!   acknowledged hold is in the database with the acknowledged vehicle, user, quote and window;
//!   every acknowledged confirm, cancel and extend has its history row with the acknowledged
//!   status (and, for an extend, the acknowledged new end), and the final row agrees (a
//!   cancelled booking is CANCELLED, a confirmed one never FAILED, the end at least the
//!   acknowledged end).
//! - **(c) A definite failure did nothing** (`failed_ops_with_effects`): no history row carries
//!   the `x-request-id` of a 4xx attempt, and no booking holds the quote of a hold whose every
//!   attempt failed definitely. (An outbox row without its history row is caught by (f).)
//! - **(d) No phantom booking** (`phantom_bookings`): every booking row's `hold` history row
//!   carries the request id of one attempted hold, with that attempt's quote, vehicle, user and
//!   window.
//! - **(e) Row and history agree** (`status_history_mismatches`): `bookings.status` equals the
//!   last `booking_history` state, and the row's end equals the last extension's end (or the
//!   hold's), for every booking.
//! - **(f) Events exactly once, in order, none invented.** In the outbox: every history row has
//!   its events, by topic and booking status (`missing_outbox_events`), and every outbox row
//!   belongs to a committed history row of a known booking (`outbox_without_change`). On the
//!   broker: every outbox event is consumed (`events_lost`), redeliveries share an id
//!   (`duplicates_delivered`, a count, not a violation), each record's `sequence` header is
//!   the number the outbox gave its event (`events_misnumbered`), within a topic a vehicle's
//!   events come in sequence order, which is commit order (`events_out_of_order`), a sequence
//!   number missing below one the consumer holds is lost too (`events_lost`), and no event
//!   exists that the outbox does not hold (`events_phantom`, e.g. a rolled-back change's). A
//!   consumer that read nothing
//!   while events were committed fails as `consumer_saw_nothing`, not as "no lost events".
//! - **(g) Indeterminate operations resolve** (`unresolved_keys`,
//!   `inconsistent_resolutions`): after healing, the last attempt of every Idempotency-Key is a
//!   definite answer (the workload retries unanswered keys to an answer), and a key that ends
//!   in a 4xx left no effect (no history row of any of its attempts; no booking of its quote
//!   when no other key tried that quote — the origin hands one caller the same quote for 60 s,
//!   so a second key may be refused "quote used" for the first key's booking).
//! - **Idempotency as the contract states it** (`idempotency_violations`): only 2xx answers are
//!   stored, so a 4xx may be followed by a 2xx; but every 2xx of a key (replays included)
//!   equals its first 2xx, and no 4xx follows a 2xx.
//! - **(h) Holds end** (`stale_holds`): at check time no hold is still RESERVING past its
//!   expiry plus the sweeper's period (plus `clock_slack`). How long expired holds stayed
//!   RESERVING before their `fail` row is reported as a figure (`hold_overstay_max_ms`), not a
//!   violation: while PostgreSQL is down nothing can end a hold, and nothing can use one either
//!   (a confirm checks the expiry, a new hold ends an expired one in its own transaction).
//! - **(i) Reads saw real states** (`impossible_reads`): every 200 read of a booking shows a
//!   state in its history (status with the window it had then, vehicle and start of the row),
//!   and no read invoked after a hold's ack answered 404.
//!
//! Every check is shown to fire by a test that plants its violation (`tests/faults/checker.rs`).

mod client;
mod clients;
mod db;
mod events;
mod store;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::TestResult;

pub use client::{attempt, read, Call};

/// What an operation asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Hold,
    Confirm,
    Cancel,
    Extend,
    /// `GET /v1/bookings/{id}`: changes nothing, but what it saw must have existed.
    Read,
}

/// How an attempt ended, as the client can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: it took effect (or was replayed from the stored effect).
    Ok,
    /// A 4xx other than "in progress" (and 429): the origin refused it, so it did nothing.
    Failed,
    /// No answer, a 5xx or "in progress": it may or may not have taken effect.
    Indeterminate,
}

/// One attempt of one client operation.
#[derive(Debug, Clone)]
pub struct Op {
    pub kind: Kind,
    /// The Idempotency-Key (empty for reads).
    pub key: String,
    pub user: String,
    pub origin: usize,
    /// Hold: the vehicle; others: the booking id.
    pub target: String,
    /// Hold: `{start, end, quote_id}` asked for; extend: the new end asked for.
    pub detail: Value,
    /// Invoked.
    pub started: Instant,
    /// Completed (answered, or given up on).
    pub ended: Instant,
    /// None when no answer came (connection refused or reset, timeout).
    pub status: Option<u16>,
    pub body: Value,
    pub replayed: bool,
    /// The `x-request-id` the attempt sent: the origin writes it into the history row of the
    /// change it makes, which ties every change to the attempt that made it.
    pub request_id: String,
}

impl Op {
    /// ok, definite failure or indeterminate.
    pub fn outcome(&self) -> Outcome {
        match self.status {
            None => Outcome::Indeterminate,
            Some(s) if s >= 500 => Outcome::Indeterminate,
            // Turned away before any handler: says nothing about the key's state.
            Some(429) => Outcome::Indeterminate,
            Some(409) if self.body["type"] == "/problems/idempotency-in-progress" => {
                Outcome::Indeterminate
            }
            Some(s) if (200..300).contains(&s) => Outcome::Ok,
            Some(_) => Outcome::Failed,
        }
    }

    /// An answer that settles the key: ok or a definite failure.
    pub fn definitive(&self) -> bool {
        self.outcome() != Outcome::Indeterminate
    }

    /// A 2xx.
    pub fn acknowledged(&self) -> bool {
        self.outcome() == Outcome::Ok
    }
}

/// The recorded history of a run (shared by the client tasks).
#[derive(Debug, Default)]
pub struct History {
    ops: Mutex<Vec<Op>>,
}

impl History {
    pub fn record(&self, op: Op) {
        if let Ok(mut ops) = self.ops.lock() {
            ops.push(op);
        }
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().map(|o| o.clone()).unwrap_or_default()
    }
}

/// What the checker found. The violation counters are listed in [`Report::violations`]; the
/// rest are figures of the run.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Report {
    pub checked_ops: usize,
    pub acknowledged_ops: usize,
    /// Definite failures (4xx).
    pub failed_ops: usize,
    /// Indeterminate attempts (no answer, 5xx, in progress).
    pub unanswered_ops: usize,
    pub reads: usize,
    /// (a) from the acks and reads.
    pub overlaps_acked: usize,
    /// (a) from `booking_history`.
    pub overlaps_db: usize,
    /// (b)
    pub lost_acknowledged_writes: usize,
    /// (c)
    pub failed_ops_with_effects: usize,
    /// (d)
    pub phantom_bookings: usize,
    /// (e)
    pub status_history_mismatches: usize,
    /// (f), outbox side.
    pub missing_outbox_events: usize,
    pub outbox_without_change: usize,
    /// (f), broker side.
    pub events_committed: usize,
    pub events_consumed: usize,
    pub events_lost: usize,
    pub events_phantom: usize,
    pub events_out_of_order: usize,
    /// A record whose `sequence` header (or key) is not what the outbox gave its event.
    pub events_misnumbered: usize,
    pub duplicates_delivered: usize,
    /// Events of changes committed after the checker read the database (found in the outbox
    /// when looked up again): a count, not a violation.
    pub events_committed_late: usize,
    pub consumer_saw_nothing: bool,
    /// (g)
    pub unresolved_keys: usize,
    pub inconsistent_resolutions: usize,
    /// A 2xx replay that differs from the key's first 2xx, or a 4xx after a 2xx.
    pub idempotency_violations: usize,
    /// (h)
    pub stale_holds: usize,
    /// (h), a figure: the longest an expired hold stayed RESERVING before it was ended.
    pub hold_overstay_max_ms: i64,
    /// (i)
    pub impossible_reads: usize,
    pub problems: Vec<String>,
}

impl Report {
    /// Every violation counter by name (`consumer_saw_nothing` as 0 or 1).
    pub fn violations(&self) -> [(&'static str, usize); 18] {
        [
            ("overlaps_acked", self.overlaps_acked),
            ("overlaps_db", self.overlaps_db),
            ("lost_acknowledged_writes", self.lost_acknowledged_writes),
            ("failed_ops_with_effects", self.failed_ops_with_effects),
            ("phantom_bookings", self.phantom_bookings),
            ("status_history_mismatches", self.status_history_mismatches),
            ("missing_outbox_events", self.missing_outbox_events),
            ("outbox_without_change", self.outbox_without_change),
            ("events_lost", self.events_lost),
            ("events_phantom", self.events_phantom),
            ("events_out_of_order", self.events_out_of_order),
            ("events_misnumbered", self.events_misnumbered),
            (
                "consumer_saw_nothing",
                usize::from(self.consumer_saw_nothing),
            ),
            ("unresolved_keys", self.unresolved_keys),
            ("inconsistent_resolutions", self.inconsistent_resolutions),
            ("idempotency_violations", self.idempotency_violations),
            ("stale_holds", self.stale_holds),
            ("impossible_reads", self.impossible_reads),
        ]
    }

    /// The violation counters that are not zero.
    pub fn fired(&self) -> Vec<&'static str> {
        self.violations()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(name, _)| name)
            .collect()
    }

    pub fn clean(&self) -> bool {
        self.fired().is_empty()
    }
}

/// Where and how [`check_with`] reads the broker, and its tolerances.
#[derive(Debug, Clone)]
pub struct Options {
    pub brokers: String,
    /// The topics to read (every outbox topic by default).
    pub topics: Vec<String>,
    /// Where to start per partition (`broker::end_offsets` taken before the run); a partition
    /// not in the map is read from the beginning. `None`: everything from the beginning.
    pub since: Option<HashMap<(String, i32), i64>>,
    /// Ignore records about bookings this database does not hold (a broker shared with other
    /// tests); a private broker leaves it false, so any unknown event is a phantom.
    pub only_known_bookings: bool,
    /// The origins' sweeper period.
    pub sweeper: Duration,
    /// How long to read the broker for events not seen yet.
    pub event_wait: Duration,
    /// Allowed disagreement between clocks (client instants, origin wall clocks).
    pub clock_slack: Duration,
    /// Read the broker (check (f)'s broker side). Self-tests of other checks turn it off.
    pub read_events: bool,
}

impl Options {
    /// Defaults for a private broker: every topic from the beginning, 1 s of clock slack.
    pub fn new(brokers: &str, sweeper: Duration, event_wait: Duration) -> Self {
        Options {
            brokers: brokers.to_owned(),
            topics: origin::events::Topic::ALL
                .iter()
                .map(|t| t.as_str().to_owned())
                .collect(),
            since: None,
            only_known_bookings: false,
            sweeper,
            event_wait,
            clock_slack: Duration::from_secs(1),
            read_events: true,
        }
    }
}

/// The uuid inside a public id (`bkg_euw_<hex>`).
pub(crate) fn uuid_of(public: &str) -> Option<Uuid> {
    public
        .rsplit('_')
        .next()
        .and_then(|h| Uuid::try_parse(h).ok())
}

/// Runs every check with [`Options::new`] (a private broker read from the beginning).
pub async fn check(
    ops: &[Op],
    pool: &PgPool,
    brokers: &str,
    sweeper: Duration,
    event_wait: Duration,
) -> TestResult<Report> {
    check_with(ops, pool, &Options::new(brokers, sweeper, event_wait)).await
}

/// Runs every check of the module docs.
pub async fn check_with(ops: &[Op], pool: &PgPool, options: &Options) -> TestResult<Report> {
    let mut r = Report {
        checked_ops: ops.len(),
        acknowledged_ops: ops
            .iter()
            .filter(|o| o.kind != Kind::Read && o.acknowledged())
            .count(),
        failed_ops: ops
            .iter()
            .filter(|o| o.kind != Kind::Read && o.outcome() == Outcome::Failed)
            .count(),
        unanswered_ops: ops
            .iter()
            .filter(|o| o.outcome() == Outcome::Indeterminate)
            .count(),
        reads: ops.iter().filter(|o| o.kind == Kind::Read).count(),
        ..Report::default()
    };
    let db = db::Db::load(pool).await?;
    clients::overlaps(ops, options, &mut r);
    store::overlaps(&db, &mut r);
    clients::acknowledged(ops, &db, &mut r);
    clients::failed(ops, &db, &mut r);
    clients::phantoms(ops, &db, &mut r);
    store::row_matches_history(&db, &mut r);
    store::outbox_matches_history(&db, &mut r);
    if options.read_events {
        events::consumed(&db, pool, options, &mut r).await?;
    }
    clients::keys(ops, &db, &mut r);
    r.stale_holds = store::stale_holds(pool, options).await?;
    if r.stale_holds > 0 {
        r.problems.push(format!(
            "{} holds RESERVING past expiry + sweeper",
            r.stale_holds
        ));
    }
    store::hold_overstay(&db, &mut r);
    clients::reads(ops, &db, &mut r);
    Ok(r)
}
