//! Model-based tests of bookings: random operation sequences run against the booking aggregate
//! and against a deliberately naive reference model, compared after every step.
//!
//! Why: the unit and property tests check each rule alone (the transition table, `overlaps`,
//! the policy, the fee, the extension price). A double booking or a stuck booking comes from
//! *sequences*: hold, extend into a neighbour, move onto another, cancel, re-hold the freed window, let a hold
//! expire, start early… `proptest-state-machine` generates such sequences, shrinks a failing one
//! to its shortest form, and checks the system under test against the reference after each step.
//!
//! * The **system under test** is the aggregate itself, [`domain::booking::Booking`], driven the
//!   way the origin drives it: [`Booking::hold`] from a quote, [`Booking::act`] for every action,
//!   [`Booking::expire`] for the sweeper's batch. The one rule it cannot know — whether another
//!   booking occupies the vehicle — is the exclusion constraint's predicate
//!   ([`TimeWindow::overlaps`] over [`BookingStatus::occupies_vehicle`]), applied to the
//!   transition before it is kept, as the database applies it to the written row.
//! * The **reference** shares none of that code: time is plain minutes, occupancy is a set of
//!   occupied minutes per vehicle (so half-open touching is a fact of the representation, not a
//!   formula), the lifecycle is a table of strings copied from the README (with the events each
//!   step emits), and an extension's price is found by trying every number of whole days.
//!
//! Invariants after every step: both sides agree on every outcome, on the history event and the
//! events written, and on every booking's state, window, hold and price; no two occupying
//! bookings of a vehicle share a minute; a terminal booking never changes again; fee + refund is
//! always the price.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, TimeZone, Utc};
use chrono_tz::Tz;
use domain::booking::{
    Action, Booking, BookingError, EventKind, ExtensionPricing, Rules, Transition,
};
use domain::cancellation::{CancellationPolicy, FeeTier};
use domain::ids::{BookingId, VehicleId};
use domain::money::{Currency, Money};
use domain::pricing::{HourOfWeekTable, RateCard};
use domain::quote_token::QuoteClaims;
use domain::region::Region;
use domain::state::{BookingEvent, BookingStatus};
use domain::window::{BookingPolicy, TimeWindow};
use proptest::prelude::*;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};
use uuid::Uuid;

/// Vehicles in play: few, so windows collide often.
const VEHICLES: u8 = 3;
/// Hold lifetime before the sweeper may fail it (the origin's default, 10 min).
const HOLD_TTL_MIN: i64 = 10;
/// A booking may be started from this long before its start (origin rule).
const START_EARLY_MIN: i64 = 15;
/// The rate card extensions are priced with: a day costs 8 started hours.
const PER_HOUR: i64 = 500;
const PER_DAY: i64 = 4_000;

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
    /// Apply a lifecycle event to the `pick`-th booking (modulo the number of bookings);
    /// `fail` is the expiry of a hold.
    Act { pick: usize, event: BookingEvent },
    /// Move the end of the `pick`-th booking `by` minutes later (or earlier when negative).
    Extend { pick: usize, by: i64 },
    /// Move the `pick`-th booking to the window from `now + lead` for `len` minutes.
    Move { pick: usize, lead: i64, len: i64 },
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
    /// Extended; the extension cost this many minor units.
    Extended {
        amount: i64,
    },
    /// Cancelled with this fee in minor units.
    Cancelled {
        fee: i64,
    },
    /// Refused: the booking already has that window.
    SameWindow,
    /// Moved; the price changed by `difference` plus `fee`, or (`floored`: the difference is a
    /// refund larger than the price) to `fee`.
    Moved {
        difference: i64,
        fee: i64,
        floored: bool,
    },
    /// Nothing to act on.
    Nothing,
    /// The sweeper ended this many holds.
    Swept(usize),
}

/// What one written transition recorded: its history event and its events, in order.
type Effect = (&'static str, Vec<&'static str>);

// ---------------------------------------------------------------------------------------------
// Reference model: minutes, sets of occupied minutes, a table of strings.

/// The lifecycle as the README states it, with the events each step emits.
const TABLE: &[(&str, &str, &str, &[&str])] = &[
    ("RESERVING", "confirm", "CONFIRMED", &["booking.confirmed"]),
    (
        "RESERVING",
        "fail",
        "FAILED",
        &["booking.failed", "vehicle.released"],
    ),
    (
        "RESERVING",
        "cancel",
        "CANCELLED",
        &["booking.cancelled", "vehicle.released"],
    ),
    ("CONFIRMED", "start", "IN_PROGRESS", &["booking.started"]),
    (
        "CONFIRMED",
        "cancel",
        "CANCELLED",
        &["booking.cancelled", "vehicle.released"],
    ),
    (
        "IN_PROGRESS",
        "complete",
        "COMPLETED",
        &["booking.completed", "vehicle.released"],
    ),
];

#[derive(Debug, Clone, PartialEq, Eq)]
struct RefBooking {
    vehicle: u8,
    start: i64,
    end: i64,
    status: &'static str,
    hold_expires: Option<i64>,
    price: i64,
    extensions: usize,
    moves: usize,
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
    effects: Vec<Effect>,
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

/// The README's name of an event. A copy of `BookingEvent::as_str` on purpose (the duplicates
/// check pairs the two): the reference must not take its expectations from the code under test,
/// so a renamed event fails here instead of changing both sides at once.
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

/// Reference price of `len` minutes: the cheapest of "d whole days, then started hours" over
/// every d (no time-of-day rules, no discounts).
fn ref_price(len: i64) -> i64 {
    (0..=len / 1_440 + 1)
        .map(|days| {
            let rest = (len - days * 1_440).max(0);
            days * PER_DAY + (rest + 59) / 60 * PER_HOUR
        })
        .min()
        .unwrap_or(0)
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
            2 => Just(BookingEvent::Fail),
        ];
        // Some cheap quotes, so a move can refund more than the booking cost.
        let price = prop_oneof![1 => 1..1_000i64, 3 => 1..100_000i64];
        let hold =
            (0..VEHICLES, 0..10i64, 0..10i64, price).prop_map(|(vehicle, lead, len, price)| {
                Op::Hold {
                    vehicle,
                    // 0 min lead is refused (notice), a few steps reach far ahead.
                    lead: lead * 15,
                    // 0 and 15 min are refused (too short).
                    len: len * 15,
                    price,
                }
            });
        let n = state.bookings.len().max(1);
        // Mostly act on live bookings (acting on finished ones is checked, but is dull).
        let live: Vec<usize> = (0..state.bookings.len())
            .filter(|&i| {
                !TABLE
                    .iter()
                    .all(|(from, _, _, _)| *from != state.bookings[i].status)
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
            2 => (pick.clone(), -2..8i64).prop_map(|(pick, by)| Op::Extend { pick, by: by * 15 }),
            1 => (pick, 0..12i64, 1..10i64).prop_map(|(pick, lead, len)| Op::Move {
                pick,
                lead: lead * 15,
                len: len * 15,
            }),
            3 => (1..40i64).prop_map(|minutes| Op::Tick { minutes }),
            1 => Just(Op::Sweep),
        ]
        .boxed()
    }

    fn apply(mut s: Model, op: &Op) -> Model {
        s.effects.clear();
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
                        extensions: 0,
                        moves: 0,
                    });
                    s.effects
                        .push(("hold", vec!["booking.created", "vehicle.reserved"]));
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
                        .find(|(from, ev, _, _)| *from == b.status && *ev == event_name(event))
                        .map(|(_, ev, to, events)| (*ev, *to, *events));
                    let expired = b.hold_expires.is_some_and(|t| t <= now);
                    match next {
                        None => Outcome::WrongState,
                        Some(_) if event == BookingEvent::Confirm && expired => Outcome::WrongState,
                        Some(_) if event == BookingEvent::Fail && !expired => Outcome::WrongState,
                        Some(_)
                            if event == BookingEvent::Start
                                && (now < b.start - START_EARLY_MIN || now >= b.end) =>
                        {
                            Outcome::WrongState
                        }
                        Some((ev, to, events)) => {
                            let fee = ref_fee(b, now);
                            b.status = to;
                            b.hold_expires = None;
                            s.effects.push((ev, events.to_vec()));
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
                        let amount =
                            (ref_price(b.end + by - b.start) - ref_price(b.end - b.start)).max(0);
                        let r = &mut s.bookings[i];
                        r.end += by;
                        r.price += amount;
                        r.extensions += 1;
                        s.effects.push(("extend", vec!["booking.extended"]));
                        Outcome::Extended { amount }
                    }
                }
            },
            Op::Move { pick, lead, len } => match s.bookings.len() {
                0 => Outcome::Nothing,
                n => {
                    let i = pick % n;
                    let b = s.bookings[i].clone();
                    let (start, end) = (s.now + lead, s.now + lead + len);
                    let expired = b.hold_expires.is_some_and(|t| t <= s.now);
                    if !matches!(b.status, "RESERVING" | "CONFIRMED") || expired {
                        Outcome::WrongState
                    } else if (start, end) == (b.start, b.end) {
                        Outcome::SameWindow
                    } else if !s.policy_ok(start, len) {
                        Outcome::Policy
                    } else if !s.free(b.vehicle, start, end, Some(i)) {
                        Outcome::Taken
                    } else {
                        let difference = ref_price(len) - ref_price(b.end - b.start);
                        let fee = ref_fee(&b, s.now);
                        let floored = b.price + difference < 0;
                        let r = &mut s.bookings[i];
                        r.start = start;
                        r.end = end;
                        r.price = if floored {
                            fee
                        } else {
                            r.price + difference + fee
                        };
                        r.moves += 1;
                        s.effects.push(("reschedule", vec!["booking.rescheduled"]));
                        Outcome::Moved {
                            difference,
                            fee,
                            floored,
                        }
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
                        s.effects
                            .push(("fail", vec!["booking.failed", "vehicle.released"]));
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
// System under test: the booking aggregate, plus the exclusion constraint's predicate (the one
// rule about *other* bookings, which the database decides).

/// The origin's wire names of the aggregate's events.
fn topic(kind: EventKind) -> &'static str {
    match kind {
        EventKind::BookingCreated => "booking.created",
        EventKind::BookingConfirmed => "booking.confirmed",
        EventKind::BookingStarted => "booking.started",
        EventKind::BookingCompleted => "booking.completed",
        EventKind::BookingCancelled => "booking.cancelled",
        EventKind::BookingFailed => "booking.failed",
        EventKind::BookingExtended => "booking.extended",
        EventKind::BookingRescheduled => "booking.rescheduled",
        EventKind::VehicleReserved => "vehicle.reserved",
        EventKind::VehicleReleased => "vehicle.released",
    }
}

fn effect(t: &Transition) -> Effect {
    (
        t.record.event,
        t.events.iter().copied().map(topic).collect(),
    )
}

fn vehicle_id(vehicle: u8) -> VehicleId {
    VehicleId::new(Region::Euw, Uuid::from_u128(u128::from(vehicle)))
}

#[derive(Debug)]
struct Ledger {
    now: DateTime<Utc>,
    bookings: Vec<Booking>,
    rules: Rules,
    rate: RateCard,
    table: HourOfWeekTable,
    last: Option<Outcome>,
    effects: Vec<Effect>,
}

impl Ledger {
    /// The exclusion constraint's question: does an occupying booking of `vehicle` other than
    /// `except` overlap `window`?
    fn taken(&self, vehicle: VehicleId, window: &TimeWindow, except: Option<usize>) -> bool {
        self.bookings.iter().enumerate().any(|(i, b)| {
            Some(i) != except
                && b.vehicle_id == vehicle
                && b.status.occupies_vehicle()
                && b.window.overlaps(window)
        })
    }

    fn quote(&self, vehicle: u8, window: TimeWindow, price: i64) -> QuoteClaims {
        QuoteClaims {
            quote_id: Uuid::from_u128(self.bookings.len() as u128 + 1),
            user_id: "model-user".into(),
            vehicle_id: vehicle_id(vehicle),
            region: Region::Euw,
            window,
            total: Money::new(price, Currency::EUR),
            breakdown: Vec::new(),
            destination_bay_id: None,
            issued_at: self.now,
            expires_at: self.now + Duration::minutes(10),
        }
    }

    /// A hold from a fresh quote, as the origin makes it: the aggregate decides, then the
    /// exclusion constraint's predicate keeps or refuses the row.
    fn hold(&mut self, vehicle: u8, lead: i64, len: i64, price: i64) -> Outcome {
        let start = self.now + Duration::minutes(lead);
        let window = match TimeWindow::new(start, start + Duration::minutes(len)) {
            Ok(w) => w,
            Err(_) => return Outcome::Policy,
        };
        let id = BookingId::new(Region::Euw, Uuid::from_u128(self.bookings.len() as u128));
        let quote = self.quote(vehicle, window, price);
        let t = match Booking::hold(&quote, id, &self.rules, self.now) {
            Ok(t) => t,
            Err(BookingError::Window { field: "start", .. }) => return Outcome::Policy,
            Err(e) => panic!("a hold refused for another reason: {e}"),
        };
        if self.taken(t.booking.vehicle_id, &t.booking.window, None) {
            return Outcome::Taken;
        }
        self.effects.push(effect(&t));
        self.bookings.push(t.booking);
        Outcome::Created
    }

    fn step(&mut self, op: Op) -> Outcome {
        self.effects.clear();
        match op {
            Op::Hold {
                vehicle,
                lead,
                len,
                price,
            } => self.hold(vehicle, lead, len, price),
            Op::Act { pick, event } => {
                if self.bookings.is_empty() {
                    return Outcome::Nothing;
                }
                let i = pick % self.bookings.len();
                let action = match event {
                    BookingEvent::Confirm => Action::Confirm,
                    BookingEvent::Cancel => Action::Cancel,
                    BookingEvent::Start => Action::Start,
                    BookingEvent::Complete => Action::Complete,
                    BookingEvent::Fail => Action::Expire,
                    BookingEvent::Quote | BookingEvent::Hold => {
                        unreachable!("not generated: not an action on a booking")
                    }
                };
                let b = &self.bookings[i];
                let t = match b.act(action, &self.rules, self.now) {
                    Ok(t) => t,
                    Err(
                        BookingError::InvalidTransition(_)
                        | BookingError::HoldExpired(_)
                        | BookingError::HoldNotExpired(_)
                        | BookingError::NotStartable { .. },
                    ) => return Outcome::WrongState,
                    Err(e) => panic!("{event} refused for another reason: {e}"),
                };
                let outcome = match t.cancellation {
                    Some(fee) => {
                        assert_eq!(
                            fee.fee.minor + fee.refund.minor,
                            b.price.minor,
                            "fee + refund must be the price"
                        );
                        assert!(fee.fee.minor >= 0 && fee.fee.minor <= b.price.minor);
                        // Free charges nothing; a late tier charges something unless its
                        // share of the price rounds to zero (a price a refunding move
                        // brought down to a few minor units, or to zero).
                        let policy = &self.rules.cancellation;
                        let bp = match fee.tier {
                            FeeTier::Free => 0,
                            FeeTier::Late => policy.late_fee_bp,
                            FeeTier::VeryLate => policy.very_late_fee_bp,
                        };
                        if fee.tier == FeeTier::Free {
                            assert_eq!(fee.fee.minor, 0, "a free cancellation charged");
                        } else if i128::from(b.price.minor) * i128::from(bp) >= 10_000 {
                            assert!(fee.fee.minor > 0, "a late cancellation charged nothing");
                        }
                        assert_eq!(t.booking.cancellation_fee, Some(fee.fee));
                        Outcome::Cancelled { fee: fee.fee.minor }
                    }
                    None => Outcome::Changed,
                };
                self.effects.push(effect(&t));
                self.bookings[i] = t.booking;
                outcome
            }
            Op::Extend { pick, by } => {
                if self.bookings.is_empty() {
                    return Outcome::Nothing;
                }
                let i = pick % self.bookings.len();
                let b = &self.bookings[i];
                let pricing = ExtensionPricing {
                    rate: &self.rate,
                    time_table: &self.table,
                    tz: Tz::UTC,
                    discounts: &[],
                };
                let new_end = b.window.end() + Duration::minutes(by);
                let t = match b.act(Action::Extend { new_end, pricing }, &self.rules, self.now) {
                    Ok(t) => t,
                    Err(BookingError::NotExtendable(_) | BookingError::Ended) => {
                        return Outcome::WrongState
                    }
                    Err(
                        BookingError::Window { field: "end", .. }
                        | BookingError::ExtensionTooLong { .. },
                    ) => return Outcome::BadExtension,
                    Err(e) => panic!("extension refused for another reason: {e}"),
                };
                if self.taken(b.vehicle_id, &t.booking.window, Some(i)) {
                    return Outcome::Taken;
                }
                let amount = t.extension.as_ref().map_or(-1, |e| e.amount_minor);
                self.effects.push(effect(&t));
                self.bookings[i] = t.booking;
                Outcome::Extended { amount }
            }
            Op::Move { pick, lead, len } => {
                if self.bookings.is_empty() {
                    return Outcome::Nothing;
                }
                let i = pick % self.bookings.len();
                let b = &self.bookings[i];
                let pricing = ExtensionPricing {
                    rate: &self.rate,
                    time_table: &self.table,
                    tz: Tz::UTC,
                    discounts: &[],
                };
                let start = self.now + Duration::minutes(lead);
                let window = match TimeWindow::new(start, start + Duration::minutes(len)) {
                    Ok(w) => w,
                    Err(_) => return Outcome::Policy,
                };
                let t = match b.act(
                    Action::Reschedule { window, pricing },
                    &self.rules,
                    self.now,
                ) {
                    Ok(t) => t,
                    Err(BookingError::NotReschedulable(_) | BookingError::HoldExpired(_)) => {
                        return Outcome::WrongState
                    }
                    Err(BookingError::SameWindow) => return Outcome::SameWindow,
                    Err(BookingError::Window { field: "start", .. }) => return Outcome::Policy,
                    Err(e) => panic!("a move refused for another reason: {e}"),
                };
                if self.taken(b.vehicle_id, &t.booking.window, Some(i)) {
                    return Outcome::Taken;
                }
                let r = t.reschedule.clone().expect("a move records itself");
                assert_eq!((r.from, r.to), (b.window, window));
                let floored = b.price.minor + r.difference_minor < 0;
                self.effects.push(effect(&t));
                self.bookings[i] = t.booking;
                Outcome::Moved {
                    difference: r.difference_minor,
                    fee: r.fee_minor,
                    floored,
                }
            }
            Op::Tick { minutes } => {
                self.now += Duration::minutes(minutes);
                Outcome::Changed
            }
            Op::Sweep => {
                // The sweeper's query: RESERVING rows whose expiry has passed.
                let now = self.now;
                let mut ended = 0;
                for b in &mut self.bookings {
                    if b.status == BookingStatus::Reserving
                        && b.hold_expires_at.is_some_and(|t| t <= now)
                    {
                        let t = b.expire(now).expect("an expired hold can be expired");
                        self.effects.push(effect(&t));
                        *b = t.booking;
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
            rules: Rules::new(
                BookingPolicy::default(),
                CancellationPolicy::default(),
                Duration::minutes(HOLD_TTL_MIN),
            ),
            rate: RateCard {
                currency: Currency::EUR,
                per_hour_minor: PER_HOUR,
                per_day_minor: PER_DAY,
                floor_minor: 0,
                ceiling_minor: 1_000_000_000,
            },
            table: HourOfWeekTable::neutral(),
            last: None,
            effects: Vec::new(),
        }
    }

    fn apply(mut sut: Ledger, model: &Model, op: Op) -> Ledger {
        // Terminal bookings must come out of any step unchanged.
        let terminal_before: Vec<(usize, Booking)> = sut
            .bookings
            .iter()
            .enumerate()
            .filter(|(_, b)| b.status.is_terminal())
            .map(|(i, b)| (i, b.clone()))
            .collect();
        let outcome = sut.step(op.clone());
        assert_eq!(Some(outcome), model.last, "outcome of {op:?}");
        assert_eq!(sut.effects, model.effects, "history and events of {op:?}");
        for (i, before) in terminal_before {
            assert_eq!(
                sut.bookings[i], before,
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
            assert_eq!(b.vehicle_id, vehicle_id(r.vehicle));
            assert_eq!((b.window.start(), b.window.end()), (at(r.start), at(r.end)));
            assert_eq!(b.hold_expires_at, r.hold_expires.map(at));
            assert_eq!(b.price.minor, r.price);
            assert_eq!(b.extensions.len(), r.extensions);
            assert_eq!(b.reschedules.len(), r.moves);
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
                (Op::Extend { .. }, Some(Outcome::Extended { amount })) if amount > 0 => {
                    "extended at a price"
                }
                (Op::Extend { .. }, Some(Outcome::Taken)) => "extension refused: taken",
                (Op::Move { .. }, Some(Outcome::Moved { floored: true, .. })) => {
                    "moved for a refund larger than the price"
                }
                (Op::Move { .. }, Some(Outcome::Moved { fee, .. })) if fee > 0 => {
                    "moved late, with a fee"
                }
                (Op::Move { .. }, Some(Outcome::Moved { difference, .. })) if difference < 0 => {
                    "moved for a refund"
                }
                (Op::Move { .. }, Some(Outcome::Moved { .. })) => "moved",
                (Op::Move { .. }, Some(Outcome::Taken)) => "move refused: taken",
                (_, Some(Outcome::Cancelled { fee })) if fee > 0 => "cancelled with a fee",
                (_, Some(Outcome::Swept(n))) if n > 0 => "holds expired",
                (
                    Op::Act {
                        event: BookingEvent::Fail,
                        ..
                    },
                    Some(Outcome::Changed),
                ) => "hold expired",
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
        "extended at a price",
        "extension refused: taken",
        "moved",
        "moved late, with a fee",
        "moved for a refund",
        "moved for a refund larger than the price",
        "move refused: taken",
        "cancelled with a fee",
        "holds expired",
        "hold expired",
        "started",
        "completed",
    ] {
        assert!(
            counts.get(key).copied().unwrap_or(0) >= 3,
            "{key} reached too rarely: {counts:?}"
        );
    }
}
