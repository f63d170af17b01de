//! Model-based tests of bookings: random operation sequences run against the domain's rules and
//! against a deliberately naive reference model, compared after every step.
//!
//! Why: the unit and property tests check each rule alone (the transition table, `overlaps`,
//! the policy, the fee). A double booking or a stuck booking comes from *sequences*: hold,
//! extend into a neighbour, cancel, re-hold the freed window, let a hold expire, start early…
//! `proptest-state-machine` generates such sequences, shrinks a failing one to its shortest
//! form, and checks the system under test against the reference after each step.
//!
//! * The **system under test** is a ledger written the way the origin writes its handlers:
//!   [`BookingPolicy::check`], [`TimeWindow::overlaps`] over [`BookingStatus::occupies_vehicle`]
//!   (the exclusion constraint's predicate), [`BookingStatus::apply`],
//!   [`TimeWindow::extended_to`] and [`CancellationPolicy::fee`].
//! * The **reference** shares none of that code: time is plain minutes, occupancy is a set of
//!   occupied minutes per vehicle (so half-open touching is a fact of the representation, not a
//!   formula), and the lifecycle is a table of strings copied from the README.
//!
//! Invariants after every step: both sides agree on every outcome and on every booking's state
//! and window; no two occupying bookings of a vehicle share a minute; a terminal booking never
//! changes again; fee + refund is always the price.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, TimeZone, Utc};
use domain::cancellation::{CancellationPolicy, FeeTier};
use domain::money::{Currency, Money};
use domain::state::{BookingEvent, BookingStatus};
use domain::window::{BookingPolicy, TimeWindow};
use proptest::prelude::*;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};

/// Vehicles in play: few, so windows collide often.
const VEHICLES: u8 = 3;
/// Hold lifetime before the sweeper may fail it (the origin's default, 10 min).
const HOLD_TTL_MIN: i64 = 10;
/// A booking may be started from this long before its start (origin rule).
const START_EARLY_MIN: i64 = 15;

fn epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2027, 3, 1, 8, 0, 0).unwrap()
}

fn at(minute: i64) -> DateTime<Utc> {
    epoch() + Duration::minutes(minute)
}

/// One generated step.
#[derive(Debug, Clone)]
enum Op {
    /// Hold `vehicle` from `now + lead` for `len` minutes (all multiples of 15 minutes).
    Hold {
        vehicle: u8,
        lead: i64,
        len: i64,
        price: i64,
    },
    /// Apply a lifecycle event to the `pick`-th booking (modulo the number of bookings).
    Act { pick: usize, event: BookingEvent },
    /// Move the end of the `pick`-th booking `by` minutes later (or earlier when negative).
    Extend { pick: usize, by: i64 },
    /// Time passes.
    Tick { minutes: i64 },
    /// The sweeper fails every hold whose expiry has passed.
    Sweep,
}

/// What an operation led to; both sides must report the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Created,
    Changed,
    /// Refused by the booking policy (notice, duration, advance).
    Policy,
    /// Refused because the vehicle is taken for part of the window.
    Taken,
    /// Refused by the lifecycle.
    WrongState,
    /// Refused: not later, or too long.
    BadExtension,
    /// Cancelled with this fee in minor units.
    Cancelled {
        fee: i64,
    },
    /// Nothing to act on.
    Nothing,
    /// The sweeper ended this many holds.
    Swept(usize),
}

// ---------------------------------------------------------------------------------------------
// Reference model: minutes, sets of occupied minutes, a table of strings.

/// The lifecycle as the README states it.
const TABLE: &[(&str, &str, &str)] = &[
    ("RESERVING", "confirm", "CONFIRMED"),
    ("RESERVING", "fail", "FAILED"),
    ("RESERVING", "cancel", "CANCELLED"),
    ("CONFIRMED", "start", "IN_PROGRESS"),
    ("CONFIRMED", "cancel", "CANCELLED"),
    ("IN_PROGRESS", "complete", "COMPLETED"),
];

#[derive(Debug, Clone, PartialEq, Eq)]
struct RefBooking {
    vehicle: u8,
    start: i64,
    end: i64,
    status: &'static str,
    hold_expires: Option<i64>,
    price: i64,
}

impl RefBooking {
    fn occupies(&self) -> bool {
        matches!(self.status, "RESERVING" | "CONFIRMED" | "IN_PROGRESS")
    }
}

#[derive(Debug, Clone, Default)]
struct Model {
    now: i64,
    bookings: Vec<RefBooking>,
    last: Option<Outcome>,
}

impl Model {
    /// Minutes of `vehicle` occupied by bookings other than `except`.
    fn occupied(&self, vehicle: u8, except: Option<usize>) -> BTreeSet<i64> {
        self.bookings
            .iter()
            .enumerate()
            .filter(|(i, b)| Some(*i) != except && b.vehicle == vehicle && b.occupies())
            .flat_map(|(_, b)| b.start..b.end)
            .collect()
    }

    fn free(&self, vehicle: u8, start: i64, end: i64, except: Option<usize>) -> bool {
        let taken = self.occupied(vehicle, except);
        (start..end).all(|m| !taken.contains(&m))
    }

    fn policy_ok(&self, start: i64, len: i64) -> bool {
        start - self.now >= 5
            && start - self.now <= 180 * 24 * 60
            && (30..=30 * 24 * 60).contains(&len)
    }
}

fn event_name(e: BookingEvent) -> &'static str {
    match e {
        BookingEvent::Quote => "quote",
        BookingEvent::Hold => "hold",
        BookingEvent::Confirm => "confirm",
        BookingEvent::Start => "start",
        BookingEvent::Complete => "complete",
        BookingEvent::Cancel => "cancel",
        BookingEvent::Fail => "fail",
    }
}

/// Reference fee: whole-percent tiers, rounded half to even by hand.
fn ref_fee(b: &RefBooking, now: i64) -> i64 {
    let percent = if b.status == "RESERVING" {
        0
    } else {
        let lead = b.start - now;
        if lead >= 24 * 60 {
            0
        } else if lead >= 120 {
            25
        } else {
            50
        }
    };
    let num = b.price * percent;
    let (q, r) = (num / 100, num % 100);
    match r.cmp(&50) {
        std::cmp::Ordering::Less => q,
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + (q % 2),
    }
}

struct Reference;

impl ReferenceStateMachine for Reference {
    type State = Model;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model::default()).boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Op> {
        let events = prop_oneof![
            3 => Just(BookingEvent::Confirm),
            1 => Just(BookingEvent::Cancel),
            3 => Just(BookingEvent::Start),
            2 => Just(BookingEvent::Complete),
            1 => Just(BookingEvent::Fail),
            1 => Just(BookingEvent::Hold),
        ];
        let hold = (0..VEHICLES, 0..10i64, 0..10i64, 1..100_000i64).prop_map(
            |(vehicle, lead, len, price)| Op::Hold {
                vehicle,
                // 0 min lead is refused (notice), a few steps reach far ahead.
                lead: lead * 15,
                // 0 and 15 min are refused (too short).
                len: len * 15,
                price,
            },
        );
        let n = state.bookings.len().max(1);
        // Mostly act on live bookings (acting on finished ones is checked, but is dull).
        let live: Vec<usize> = (0..state.bookings.len())
            .filter(|&i| {
                !TABLE
                    .iter()
                    .all(|(from, _, _)| *from != state.bookings[i].status)
            })
            .collect();
        let pick = if live.is_empty() {
            (0..n).boxed()
        } else {
            prop_oneof![3 => proptest::sample::select(live), 1 => 0..n].boxed()
        };
        prop_oneof![
            4 => hold,
            6 => (pick.clone(), events).prop_map(|(pick, event)| Op::Act { pick, event }),
            2 => (pick, -2..8i64).prop_map(|(pick, by)| Op::Extend { pick, by: by * 15 }),
            3 => (1..40i64).prop_map(|minutes| Op::Tick { minutes }),
            1 => Just(Op::Sweep),
        ]
        .boxed()
    }

    fn apply(mut s: Model, op: &Op) -> Model {
        let outcome = match *op {
            Op::Hold {
                vehicle,
                lead,
                len,
                price,
            } => {
                let start = s.now + lead;
                // Times are whole minutes already; the origin also snaps nothing here.
                if !s.policy_ok(start, len) {
                    Outcome::Policy
                } else if !s.free(vehicle, start, start + len, None) {
                    Outcome::Taken
                } else {
                    s.bookings.push(RefBooking {
                        vehicle,
                        start,
                        end: start + len,
                        status: "RESERVING",
                        hold_expires: Some(s.now + HOLD_TTL_MIN),
                        price,
                    });
                    Outcome::Created
                }
            }
            Op::Act { pick, event } => match s.bookings.len() {
                0 => Outcome::Nothing,
                n => {
                    let i = pick % n;
                    let now = s.now;
                    let b = &mut s.bookings[i];
                    let next = TABLE
                        .iter()
                        .find(|(from, ev, _)| *from == b.status && *ev == event_name(event))
                        .map(|(_, _, to)| *to);
                    match next {
                        None => Outcome::WrongState,
                        Some(_)
                            if event == BookingEvent::Confirm
                                && b.hold_expires.is_some_and(|t| t <= now) =>
                        {
                            Outcome::WrongState
                        }
                        Some(_)
                            if event == BookingEvent::Start
                                && (now < b.start - START_EARLY_MIN || now >= b.end) =>
                        {
                            Outcome::WrongState
                        }
                        Some(to) => {
                            let fee = ref_fee(b, now);
                            b.status = to;
                            b.hold_expires = None;
                            if event == BookingEvent::Cancel {
                                Outcome::Cancelled { fee }
                            } else {
                                Outcome::Changed
                            }
                        }
                    }
                }
            },
            Op::Extend { pick, by } => match s.bookings.len() {
                0 => Outcome::Nothing,
                n => {
                    let i = pick % n;
                    let b = s.bookings[i].clone();
                    if !matches!(b.status, "CONFIRMED" | "IN_PROGRESS") || b.end <= s.now {
                        Outcome::WrongState
                    } else if by <= 0 || b.end + by - b.start > 30 * 24 * 60 {
                        Outcome::BadExtension
                    } else if !s.free(b.vehicle, b.end, b.end + by, Some(i)) {
                        Outcome::Taken
                    } else {
                        s.bookings[i].end += by;
                        Outcome::Changed
                    }
                }
            },
            Op::Tick { minutes } => {
                s.now += minutes;
                Outcome::Changed
            }
            Op::Sweep => {
                let now = s.now;
                let mut ended = 0;
                for b in &mut s.bookings {
                    if b.status == "RESERVING" && b.hold_expires.is_some_and(|t| t <= now) {
                        b.status = "FAILED";
                        b.hold_expires = None;
                        ended += 1;
                    }
                }
                Outcome::Swept(ended)
            }
        };
        s.last = Some(outcome);
        s
    }
}

// ---------------------------------------------------------------------------------------------
// System under test: the domain's types, used the way the origin's handlers use them.

#[derive(Debug, Clone)]
struct Booking {
    vehicle: u8,
    window: TimeWindow,
    status: BookingStatus,
    hold_expires_at: Option<DateTime<Utc>>,
    price: Money,
}

#[derive(Debug)]
struct Ledger {
    now: DateTime<Utc>,
    bookings: Vec<Booking>,
    policy: BookingPolicy,
    cancellation: CancellationPolicy,
    last: Option<Outcome>,
}

impl Ledger {
    /// The exclusion constraint's question: does an occupying booking of `vehicle` other than
    /// `except` overlap `window`?
    fn taken(&self, vehicle: u8, window: &TimeWindow, except: Option<usize>) -> bool {
        self.bookings.iter().enumerate().any(|(i, b)| {
            Some(i) != except
                && b.vehicle == vehicle
                && b.status.occupies_vehicle()
                && b.window.overlaps(window)
        })
    }

    fn step(&mut self, op: Op) -> Outcome {
        match op {
            Op::Hold {
                vehicle,
                lead,
                len,
                price,
            } => {
                let start = self.now + Duration::minutes(lead);
                let window = match TimeWindow::new(start, start + Duration::minutes(len)) {
                    Ok(w) => w,
                    Err(_) => return Outcome::Policy,
                };
                if self.policy.check(&window, self.now).is_err() {
                    return Outcome::Policy;
                }
                if self.taken(vehicle, &window, None) {
                    return Outcome::Taken;
                }
                let status = BookingStatus::PriceQuoted
                    .apply(BookingEvent::Hold)
                    .expect("a quote can always become a hold");
                self.bookings.push(Booking {
                    vehicle,
                    window,
                    status,
                    hold_expires_at: Some(self.now + Duration::minutes(HOLD_TTL_MIN)),
                    price: Money::new(price, Currency::EUR),
                });
                Outcome::Created
            }
            Op::Act { pick, event } => {
                if self.bookings.is_empty() {
                    return Outcome::Nothing;
                }
                let i = pick % self.bookings.len();
                let now = self.now;
                let cancellation = self.cancellation;
                let b = &mut self.bookings[i];
                let Ok(next) = b.status.apply(event) else {
                    return Outcome::WrongState;
                };
                match event {
                    BookingEvent::Confirm if b.hold_expires_at.is_some_and(|t| t <= now) => {
                        return Outcome::WrongState
                    }
                    BookingEvent::Start
                        if now < b.window.start() - Duration::minutes(START_EARLY_MIN)
                            || now >= b.window.end() =>
                    {
                        return Outcome::WrongState
                    }
                    _ => {}
                }
                let fee = cancellation.fee(b.price, b.window.start(), now, b.status);
                assert_eq!(
                    fee.fee.minor + fee.refund.minor,
                    b.price.minor,
                    "fee + refund must be the price"
                );
                assert!(fee.fee.minor >= 0 && fee.fee.minor <= b.price.minor);
                assert_eq!(
                    fee.tier == FeeTier::Free,
                    fee.fee.minor == 0 || b.price.minor == 0
                );
                b.status = next;
                b.hold_expires_at = None;
                if event == BookingEvent::Cancel {
                    Outcome::Cancelled { fee: fee.fee.minor }
                } else {
                    Outcome::Changed
                }
            }
            Op::Extend { pick, by } => {
                if self.bookings.is_empty() {
                    return Outcome::Nothing;
                }
                let i = pick % self.bookings.len();
                let b = self.bookings[i].clone();
                if !matches!(
                    b.status,
                    BookingStatus::Confirmed | BookingStatus::InProgress
                ) || b.window.end() <= self.now
                {
                    return Outcome::WrongState;
                }
                let Ok(window) = b.window.extended_to(b.window.end() + Duration::minutes(by))
                else {
                    return Outcome::BadExtension;
                };
                if window.duration() > self.policy.max_duration {
                    return Outcome::BadExtension;
                }
                if self.taken(b.vehicle, &window, Some(i)) {
                    return Outcome::Taken;
                }
                self.bookings[i].window = window;
                Outcome::Changed
            }
            Op::Tick { minutes } => {
                self.now += Duration::minutes(minutes);
                Outcome::Changed
            }
            Op::Sweep => {
                let now = self.now;
                let mut ended = 0;
                for b in &mut self.bookings {
                    if b.status == BookingStatus::Reserving
                        && b.hold_expires_at.is_some_and(|t| t <= now)
                    {
                        b.status = b.status.apply(BookingEvent::Fail).expect("holds can fail");
                        b.hold_expires_at = None;
                        ended += 1;
                    }
                }
                Outcome::Swept(ended)
            }
        }
    }
}

struct LedgerTest;

impl StateMachineTest for LedgerTest {
    type SystemUnderTest = Ledger;
    type Reference = Reference;

    fn init_test(_: &Model) -> Ledger {
        Ledger {
            now: epoch(),
            bookings: Vec::new(),
            policy: BookingPolicy::default(),
            cancellation: CancellationPolicy::default(),
            last: None,
        }
    }

    fn apply(mut sut: Ledger, model: &Model, op: Op) -> Ledger {
        // Terminal bookings must come out of any step unchanged.
        let terminal_before: Vec<(usize, BookingStatus, TimeWindow)> = sut
            .bookings
            .iter()
            .enumerate()
            .filter(|(_, b)| b.status.is_terminal())
            .map(|(i, b)| (i, b.status, b.window))
            .collect();
        let outcome = sut.step(op.clone());
        assert_eq!(Some(outcome), model.last, "outcome of {op:?}");
        for (i, status, window) in terminal_before {
            assert_eq!(
                (sut.bookings[i].status, sut.bookings[i].window),
                (status, window),
                "a terminal booking changed on {op:?}"
            );
        }
        sut.last = Some(outcome);
        sut
    }

    fn check_invariants(sut: &Ledger, model: &Model) {
        assert_eq!(sut.now, at(model.now));
        assert_eq!(sut.bookings.len(), model.bookings.len());
        for (b, r) in sut.bookings.iter().zip(&model.bookings) {
            assert_eq!(b.status.as_str(), r.status);
            assert_eq!(b.vehicle, r.vehicle);
            assert_eq!((b.window.start(), b.window.end()), (at(r.start), at(r.end)));
            assert_eq!(b.hold_expires_at, r.hold_expires.map(at));
            assert_eq!(b.status.occupies_vehicle(), r.occupies());
        }
        // No minute of a vehicle is held by two occupying bookings (checked on the model's
        // representation, which does not use `overlaps`).
        let mut seen: BTreeMap<(u8, i64), usize> = BTreeMap::new();
        for (i, r) in model
            .bookings
            .iter()
            .enumerate()
            .filter(|(_, r)| r.occupies())
        {
            for m in r.start..r.end {
                if let Some(j) = seen.insert((r.vehicle, m), i) {
                    panic!(
                        "bookings {j} and {i} both hold vehicle {} at minute {m}",
                        r.vehicle
                    );
                }
            }
        }
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        // Failure persistence files would land in the source tree; shrinking prints the case.
        failure_persistence: None,
        .. ProptestConfig::default()
    })]

    #[test]
    fn random_booking_sequences_agree_with_the_reference_model_and_never_double_book(
        sequential 1..60 => LedgerTest
    );
}

/// The generator must reach the interesting places, or the model test proves little: run a
/// fixed-seed batch and count how often each outcome happens.
#[test]
fn generated_sequences_reach_conflicts_extensions_cancellations_and_expiries() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRunner};
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        ),
    );
    let strategy = Reference::sequential_strategy(1..60);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for _ in 0..200 {
        let (initial, ops, _) = strategy.new_tree(&mut runner).unwrap().current();
        let mut model = initial;
        for op in &ops {
            model = Reference::apply(model, op);
            let key = match (op, model.last) {
                (Op::Hold { .. }, Some(Outcome::Taken)) => "hold refused: taken",
                (Op::Hold { .. }, Some(Outcome::Created)) => "hold created",
                (Op::Hold { .. }, Some(Outcome::Policy)) => "hold refused: policy",
                (Op::Extend { .. }, Some(Outcome::Changed)) => "extended",
                (Op::Extend { .. }, Some(Outcome::Taken)) => "extension refused: taken",
                (_, Some(Outcome::Cancelled { fee })) if fee > 0 => "cancelled with a fee",
                (_, Some(Outcome::Swept(n))) if n > 0 => "holds expired",
                (Op::Act { event, .. }, Some(Outcome::Changed)) => match event {
                    BookingEvent::Start => "started",
                    BookingEvent::Complete => "completed",
                    _ => "other change",
                },
                _ => "other",
            };
            *counts.entry(key).or_default() += 1;
        }
    }
    for key in [
        "hold created",
        "hold refused: taken",
        "hold refused: policy",
        "extended",
        "extension refused: taken",
        "cancelled with a fee",
        "holds expired",
        "started",
        "completed",
    ] {
        assert!(
            counts.get(key).copied().unwrap_or(0) >= 3,
            "{key} reached too rarely: {counts:?}"
        );
    }
}
