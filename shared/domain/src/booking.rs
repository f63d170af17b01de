//! The booking aggregate: every rule about what may happen to a booking, and what it records.
//!
//! A [`Booking`] takes one action at a time — a hold from a verified quote ([`Booking::hold`]),
//! then confirm, cancel, extend, reschedule, start, complete or expire ([`Booking::act`]) — with
//! `now` and
//! the [`Rules`], and answers with a [`Transition`]: the booking as it is after the action, the
//! history row to record and the events to emit. Or it refuses with a [`BookingError`] naming
//! the rule. It does no I/O: the origin loads the booking, asks the aggregate, and writes the
//! transition in one statement (booking row, history row, outbox rows), so the rules live here,
//! next to the state machine, and not next to SQL or in HTTP handlers.
//!
//! Two rules are not the aggregate's, because they are facts about *other* rows: whether the
//! vehicle is free for the window (the exclusion constraint over all bookings decides, and a
//! lock only serialises contenders) and whether the caller may see or change this booking.
//!
//! Legal lifecycle steps come from [`BookingStatus::apply`] alone; the aggregate adds the
//! conditions that depend on time and money: a hold cannot be confirmed once expired, a
//! booking can be started only from [`START_EARLY_MINUTES`] before its start until its end, an
//! extension is priced with [`extension_price`] and must be in the booking's currency.

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::cancellation::{CancellationFee, CancellationPolicy, FeeTier};
use crate::ids::{BookingId, VehicleId};
use crate::money::{Currency, Money, MoneyError};
use crate::multiplier::Multiplier;
use crate::pricing::{
    applicable_discounts, price_difference, DiscountContext, DiscountRule, HourOfWeekTable,
    PriceInput, PriceLine, PricingError, RateCard,
};
use crate::quote_token::QuoteClaims;
use crate::region::Region;
use crate::state::{BookingEvent, BookingStatus, InvalidTransition};
use crate::window::{BookingPolicy, TimeWindow, WindowError};

/// How early before its start a confirmed booking may be started.
pub const START_EARLY_MINUTES: i64 = 15;

/// The history reason of a booking cancelled because operations took its vehicle out of
/// service ([`Action::Withdraw`]).
pub const WITHDRAWN: &str = "vehicle_out_of_service";

/// One extension of a booking's end, priced when it was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extension {
    /// The end before the extension.
    pub from: DateTime<Utc>,
    /// The end after it.
    pub to: DateTime<Utc>,
    /// What the added time cost, in the booking's currency (minor units).
    pub amount_minor: i64,
}

/// One move of a booking to another window of the same vehicle, priced when it was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reschedule {
    /// The window before the move.
    pub from: TimeWindow,
    /// The window after it.
    pub to: TimeWindow,
    /// Today's price of `to` minus today's price of `from` (negative: refunded), in the
    /// booking's currency (minor units).
    pub difference_minor: i64,
    /// The change fee: what cancelling at that moment would have cost (the cancellation
    /// policy's fee on the price before the move), so a late move is not a free cancellation.
    pub fee_minor: i64,
    /// When the move was made.
    pub at: DateTime<Utc>,
}

/// A booking: typed ids, window, state and money, parsed once from storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booking {
    /// Public id; its region is the booking's home.
    pub id: BookingId,
    /// The vehicle booked.
    pub vehicle_id: VehicleId,
    /// The customer (JWT `sub`).
    pub user_id: String,
    /// The vehicle's bay at hold time (filled in by storage; nil in a hold's draft).
    pub bay_id: Uuid,
    /// Drop-off bay of a one-way trip.
    pub destination_bay_id: Option<Uuid>,
    /// The booked window, extensions included.
    pub window: TimeWindow,
    /// Where the booking is in its lifecycle.
    pub status: BookingStatus,
    /// Total price: the quote's, plus every extension.
    pub price: Money,
    /// The quote's breakdown.
    pub breakdown: Vec<PriceLine>,
    /// Extensions, oldest first.
    pub extensions: Vec<Extension>,
    /// Moves to other windows, oldest first.
    pub reschedules: Vec<Reschedule>,
    /// The quote this booking was made from (a quote buys at most one booking).
    pub quote_id: Uuid,
    /// When an unconfirmed hold ends; `None` once the booking left `RESERVING`.
    pub hold_expires_at: Option<DateTime<Utc>>,
    /// The fee kept when the booking was cancelled.
    pub cancellation_fee: Option<Money>,
    /// When the hold was made.
    pub created_at: DateTime<Utc>,
    /// When the booking last changed.
    pub updated_at: DateTime<Utc>,
}

/// The policies an action is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Limits on a new booking's window (and on an extended one's length).
    pub policy: BookingPolicy,
    /// Cancellation fees.
    pub cancellation: CancellationPolicy,
    /// How long a hold lasts unless confirmed.
    pub hold_ttl: Duration,
    /// How early before its start a booking may be started.
    pub start_early: Duration,
}

impl Rules {
    /// Rules with the standard start-early allowance ([`START_EARLY_MINUTES`]).
    pub fn new(
        policy: BookingPolicy,
        cancellation: CancellationPolicy,
        hold_ttl: Duration,
    ) -> Self {
        Rules {
            policy,
            cancellation,
            hold_ttl,
            start_early: Duration::minutes(START_EARLY_MINUTES),
        }
    }
}

/// Today's prices for the booking's vehicle, to price an extension or a move: both windows are
/// priced with these rules, without surge, risk loading, promo code or membership (the duration
/// discounts still apply), and the booking pays (or, for a cheaper move, gets back) the
/// difference.
#[derive(Debug, Clone, Copy)]
pub struct ExtensionPricing<'a> {
    /// The vehicle class's rate card.
    pub rate: &'a RateCard,
    /// The region's time-of-day multipliers.
    pub time_table: &'a HourOfWeekTable,
    /// The bay's time zone (time-of-day rules are local).
    pub tz: Tz,
    /// The region's active discount rules.
    pub discounts: &'a [DiscountRule],
}

/// Something a customer or the system does to an existing booking.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    /// Make a hold firm.
    Confirm,
    /// Cancel a hold or a confirmed booking; the fee depends on how close the start is.
    Cancel,
    /// Begin the trip.
    Start,
    /// End the trip.
    Complete,
    /// Move the end later, priced with today's rules.
    Extend {
        /// The new end.
        new_end: DateTime<Utc>,
        /// Today's prices for the vehicle.
        pricing: ExtensionPricing<'a>,
    },
    /// Move a hold or a confirmed booking to another window of the same vehicle, priced with
    /// today's rules; a move inside the cancellation policy's fee period pays its fee.
    Reschedule {
        /// The new window.
        window: TimeWindow,
        /// Today's prices for the vehicle.
        pricing: ExtensionPricing<'a>,
    },
    /// End a hold whose time ran out (the sweeper, or a new hold wanting its window).
    Expire,
    /// Operations take the vehicle out of service over this hold or confirmed booking (a
    /// forced maintenance block): cancelled with the whole price refunded, whatever the
    /// cancellation policy says, since the customer did nothing.
    Withdraw,
}

/// An event a transition emits; the origin's outbox names each one on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A hold was made.
    BookingCreated,
    /// A hold was confirmed.
    BookingConfirmed,
    /// A trip started.
    BookingStarted,
    /// A trip ended.
    BookingCompleted,
    /// A booking was cancelled.
    BookingCancelled,
    /// A hold expired.
    BookingFailed,
    /// A booking's end moved later.
    BookingExtended,
    /// A booking moved to another window.
    BookingRescheduled,
    /// The vehicle is now held for the booking's window.
    VehicleReserved,
    /// The vehicle is free again for the booking's window.
    VehicleReleased,
}

/// What the booking's history records about a transition.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The history row's event: the lifecycle verb (`hold`, `confirm`, `fail`, …) or `extend`.
    pub event: &'static str,
    /// Why, when it was not the customer's own action (`hold_expired`), or a tag (`extended`).
    /// Events carry the same reason.
    pub reason: Option<&'static str>,
    /// Facts of the change worth keeping (fee and refund, extension, quote id, expiry).
    pub details: serde_json::Value,
}

/// The result of an action: the booking after it, and what to write and emit.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The state before the action (`PRICE_QUOTED` for a new hold).
    pub from: BookingStatus,
    /// The booking after the action.
    pub booking: Booking,
    /// When it happened (the booking's `updated_at`).
    pub at: DateTime<Utc>,
    /// The history row.
    pub record: Record,
    /// Events to emit, in order.
    pub events: &'static [EventKind],
    /// The fee split of a cancellation.
    pub cancellation: Option<CancellationFee>,
    /// The extension just made.
    pub extension: Option<Extension>,
    /// The move just made.
    pub reschedule: Option<Reschedule>,
}

/// Why the aggregate refused an action. Messages are safe to show to API clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BookingError {
    /// The lifecycle does not allow this step from the current state.
    #[error(transparent)]
    InvalidTransition(#[from] InvalidTransition),
    /// The hold ran out before it was confirmed.
    #[error("the hold on booking {0} expired; make a new booking")]
    HoldExpired(BookingId),
    /// Expiring a hold whose time has not run out.
    #[error("the hold on booking {0} has not expired yet")]
    HoldNotExpired(BookingId),
    /// Starting outside `[start − start_early, end)`.
    #[error(
        "a booking can be started from {early_minutes} minutes before its start until its end"
    )]
    NotStartable {
        /// The start-early allowance in minutes.
        early_minutes: i64,
    },
    /// Only confirmed and in-progress bookings can be extended.
    #[error("only a CONFIRMED or IN_PROGRESS booking can be extended; this one is {0}")]
    NotExtendable(BookingStatus),
    /// Extending a booking whose end has passed.
    #[error("the booking has already ended")]
    Ended,
    /// Only holds and confirmed bookings can be moved.
    #[error("only a RESERVING or CONFIRMED booking can be rescheduled; this one is {0}")]
    NotReschedulable(BookingStatus),
    /// A move to the window the booking already has.
    #[error("the booking already has this window")]
    SameWindow,
    /// A window refused by its own rules or by the booking policy; `field` names the request
    /// field at fault (`start` for a hold, `end` for an extension).
    #[error("{error}")]
    Window {
        /// The request field at fault.
        field: &'static str,
        /// The broken rule.
        error: WindowError,
    },
    /// An extension that would make the booking longer than the policy allows.
    #[error("a booking may last at most {max_minutes} minutes")]
    ExtensionTooLong {
        /// The policy's maximum duration in minutes.
        max_minutes: i64,
    },
    /// The extension was priced in another currency than the booking's.
    #[error("the extension is priced in {extension}, the booking in {booking}")]
    CurrencyMismatch {
        /// The booking's currency.
        booking: Currency,
        /// The extension price's currency.
        extension: Currency,
    },
    /// The extension could not be priced (the pricing configuration is broken).
    #[error("pricing configuration: {0}")]
    Pricing(PricingError),
    /// The new total does not fit.
    #[error("price overflow")]
    Overflow,
}

impl From<MoneyError> for BookingError {
    fn from(e: MoneyError) -> Self {
        match e {
            MoneyError::CurrencyMismatch { left, right } => BookingError::CurrencyMismatch {
                booking: left,
                extension: right,
            },
            MoneyError::Overflow => BookingError::Overflow,
        }
    }
}

impl From<PricingError> for BookingError {
    fn from(e: PricingError) -> Self {
        BookingError::Pricing(e)
    }
}

impl Booking {
    /// The region this booking lives in.
    pub fn region(&self) -> Region {
        self.id.region
    }

    /// A hold (`RESERVING`) from a verified quote: the quote's vehicle, window and price,
    /// expiring `rules.hold_ttl` after `now`. `id` is the new booking's id (the caller makes
    /// it: the aggregate draws no random numbers). The window must satisfy the booking policy
    /// *now*, even though the quote was priced earlier. Whether the quote is genuine, unexpired
    /// and the caller's is the token's business ([`QuoteClaims`] are verified already).
    ///
    /// The draft's `bay_id` is nil: storage fills in the vehicle's bay.
    pub fn hold(
        quote: &QuoteClaims,
        id: BookingId,
        rules: &Rules,
        now: DateTime<Utc>,
    ) -> Result<Transition, BookingError> {
        rules
            .policy
            .check(&quote.window, now)
            .map_err(|error| BookingError::Window {
                field: "start",
                error,
            })?;
        let from = BookingStatus::PriceQuoted;
        let status = from.apply(BookingEvent::Hold)?;
        let booking = Booking {
            id,
            vehicle_id: quote.vehicle_id,
            user_id: quote.user_id.clone(),
            bay_id: Uuid::nil(),
            destination_bay_id: quote.destination_bay_id,
            window: quote.window,
            status,
            price: quote.total,
            breakdown: quote.breakdown.clone(),
            extensions: Vec::new(),
            reschedules: Vec::new(),
            quote_id: quote.quote_id,
            hold_expires_at: Some(now + rules.hold_ttl),
            cancellation_fee: None,
            created_at: now,
            updated_at: now,
        };
        Ok(Transition {
            from,
            booking,
            at: now,
            record: Record {
                event: BookingEvent::Hold.as_str(),
                reason: None,
                details: json!({ "quote_id": quote.quote_id }),
            },
            events: &[EventKind::BookingCreated, EventKind::VehicleReserved],
            cancellation: None,
            extension: None,
            reschedule: None,
        })
    }

    /// Applies `action` at `now` under `rules`: the transition to write, or the rule it breaks.
    pub fn act(
        &self,
        action: Action<'_>,
        rules: &Rules,
        now: DateTime<Utc>,
    ) -> Result<Transition, BookingError> {
        match action {
            Action::Confirm => self.confirm(now),
            Action::Cancel => self.cancel(&rules.cancellation, now),
            Action::Start => self.start(rules.start_early, now),
            Action::Complete => self.step(BookingEvent::Complete, now),
            Action::Extend { new_end, pricing } => {
                self.extend(new_end, &pricing, &rules.policy, now)
            }
            Action::Reschedule { window, pricing } => self.reschedule(window, &pricing, rules, now),
            Action::Expire => self.expire(now),
            Action::Withdraw => self.withdraw(now),
        }
    }

    /// Cancels for operations (the vehicle goes out of service): no fee, the whole price back,
    /// reason `vehicle_out_of_service`. Only what a customer could cancel can be withdrawn: a
    /// trip in progress cannot.
    pub fn withdraw(&self, now: DateTime<Utc>) -> Result<Transition, BookingError> {
        let mut transition = self.step(BookingEvent::Cancel, now)?;
        let fee = CancellationFee {
            fee: Money::zero(self.price.currency),
            refund: self.price,
            tier: FeeTier::Free,
        };
        transition.booking.cancellation_fee = Some(fee.fee);
        transition.record.reason = Some(WITHDRAWN);
        transition.record.details =
            json!({ "fee_minor": fee.fee.minor, "refund_minor": fee.refund.minor });
        transition.cancellation = Some(fee);
        Ok(transition)
    }

    /// Ends an expired hold (`FAILED`, reason `hold_expired`), releasing the vehicle. Needs no
    /// policy, so the sweeper can call it without [`Rules`].
    pub fn expire(&self, now: DateTime<Utc>) -> Result<Transition, BookingError> {
        let mut transition = self.step(BookingEvent::Fail, now)?;
        if self.hold_expires_at.is_none_or(|at| at > now) {
            return Err(BookingError::HoldNotExpired(self.id));
        }
        transition.record.reason = Some("hold_expired");
        transition.record.details = json!({ "hold_expires_at": self.hold_expires_at });
        Ok(transition)
    }

    fn confirm(&self, now: DateTime<Utc>) -> Result<Transition, BookingError> {
        let transition = self.step(BookingEvent::Confirm, now)?;
        if self.hold_expires_at.is_some_and(|at| at <= now) {
            return Err(BookingError::HoldExpired(self.id));
        }
        Ok(transition)
    }

    fn start(&self, early: Duration, now: DateTime<Utc>) -> Result<Transition, BookingError> {
        let transition = self.step(BookingEvent::Start, now)?;
        if now < self.window.start() - early || now >= self.window.end() {
            return Err(BookingError::NotStartable {
                early_minutes: early.num_minutes(),
            });
        }
        Ok(transition)
    }

    fn cancel(
        &self,
        policy: &CancellationPolicy,
        now: DateTime<Utc>,
    ) -> Result<Transition, BookingError> {
        let mut transition = self.step(BookingEvent::Cancel, now)?;
        let fee = policy.fee(self.price, self.window.start(), now, self.status);
        transition.booking.cancellation_fee = Some(fee.fee);
        transition.record.details =
            json!({ "fee_minor": fee.fee.minor, "refund_minor": fee.refund.minor });
        transition.cancellation = Some(fee);
        Ok(transition)
    }

    /// A plain lifecycle step: the next state, no hold any more, the event's own outbox events.
    fn step(&self, event: BookingEvent, now: DateTime<Utc>) -> Result<Transition, BookingError> {
        let status = self.status.apply(event)?;
        let events: &'static [EventKind] = match event {
            BookingEvent::Confirm => &[EventKind::BookingConfirmed],
            BookingEvent::Start => &[EventKind::BookingStarted],
            BookingEvent::Complete => &[EventKind::BookingCompleted, EventKind::VehicleReleased],
            BookingEvent::Cancel => &[EventKind::BookingCancelled, EventKind::VehicleReleased],
            BookingEvent::Fail => &[EventKind::BookingFailed, EventKind::VehicleReleased],
            BookingEvent::Hold => &[EventKind::BookingCreated, EventKind::VehicleReserved],
            BookingEvent::Quote => &[],
        };
        Ok(Transition {
            from: self.status,
            booking: Booking {
                status,
                hold_expires_at: None,
                updated_at: now,
                ..self.clone()
            },
            at: now,
            record: Record {
                event: event.as_str(),
                reason: None,
                details: json!({}),
            },
            events,
            cancellation: None,
            extension: None,
            reschedule: None,
        })
    }

    /// The window an extension to `new_end` would give, if the booking may be extended to it at
    /// `now`: only a confirmed or running booking that has not ended, only later, and no longer
    /// than the policy's maximum. [`Action::Extend`] checks the same before pricing; a caller
    /// may check first to avoid loading prices for a refused extension.
    pub fn extension_window(
        &self,
        new_end: DateTime<Utc>,
        policy: &BookingPolicy,
        now: DateTime<Utc>,
    ) -> Result<TimeWindow, BookingError> {
        if !matches!(
            self.status,
            BookingStatus::Confirmed | BookingStatus::InProgress
        ) {
            return Err(BookingError::NotExtendable(self.status));
        }
        if self.window.end() <= now {
            return Err(BookingError::Ended);
        }
        let window = self
            .window
            .extended_to(new_end)
            .map_err(|error| BookingError::Window {
                field: "end",
                error,
            })?;
        if window.duration() > policy.max_duration {
            return Err(BookingError::ExtensionTooLong {
                max_minutes: policy.max_duration.num_minutes(),
            });
        }
        Ok(window)
    }

    fn extend(
        &self,
        new_end: DateTime<Utc>,
        pricing: &ExtensionPricing<'_>,
        policy: &BookingPolicy,
        now: DateTime<Utc>,
    ) -> Result<Transition, BookingError> {
        let window = self.extension_window(new_end, policy, now)?;
        let amount = pricing.extension(&self.window, &window, now)?;
        let price = self.price.checked_add(amount)?;
        let extension = Extension {
            from: self.window.end(),
            to: new_end,
            amount_minor: amount.minor,
        };
        let mut booking = self.clone();
        booking.window = window;
        booking.price = price;
        booking.extensions.push(extension.clone());
        booking.updated_at = now;
        Ok(Transition {
            // The same state: the history row records `extend` from and to it.
            from: self.status,
            booking,
            at: now,
            record: Record {
                event: "extend",
                reason: Some("extended"),
                details: json!({
                    "from": extension.from,
                    "to": extension.to,
                    "amount_minor": extension.amount_minor,
                }),
            },
            events: &[EventKind::BookingExtended],
            cancellation: None,
            extension: Some(extension),
            reschedule: None,
        })
    }
}

impl Booking {
    /// Whether the booking may move to `window` at `now`: a hold that has not expired or a
    /// confirmed booking, to another window that the booking policy accepts as a new booking
    /// (notice, length, how far ahead). [`Action::Reschedule`] checks the same before pricing;
    /// a caller may check first to avoid loading prices for a refused move.
    pub fn check_reschedule(
        &self,
        window: &TimeWindow,
        policy: &BookingPolicy,
        now: DateTime<Utc>,
    ) -> Result<(), BookingError> {
        match self.status {
            BookingStatus::Reserving if self.hold_expires_at.is_some_and(|at| at <= now) => {
                return Err(BookingError::HoldExpired(self.id));
            }
            BookingStatus::Reserving | BookingStatus::Confirmed => {}
            other => return Err(BookingError::NotReschedulable(other)),
        }
        if *window == self.window {
            return Err(BookingError::SameWindow);
        }
        policy
            .check(window, now)
            .map_err(|error| BookingError::Window {
                field: "start",
                error,
            })
    }

    /// The move: one window replaces the other in the same row (never two held, never none),
    /// the price changes by today's difference between the windows (never below zero), plus
    /// the change fee — the cancellation policy's fee at `now` on the price before the move,
    /// free for holds and for moves made before the policy's free period.
    fn reschedule(
        &self,
        window: TimeWindow,
        pricing: &ExtensionPricing<'_>,
        rules: &Rules,
        now: DateTime<Utc>,
    ) -> Result<Transition, BookingError> {
        self.check_reschedule(&window, &rules.policy, now)?;
        let difference = pricing.difference(&self.window, &window, now)?;
        if difference.currency != self.price.currency {
            return Err(BookingError::CurrencyMismatch {
                booking: self.price.currency,
                extension: difference.currency,
            });
        }
        let fee = rules
            .cancellation
            .fee(self.price, self.window.start(), now, self.status)
            .fee;
        let moved = self
            .price
            .minor
            .checked_add(difference.minor)
            .ok_or(BookingError::Overflow)?
            .max(0);
        let price = Money::new(moved, self.price.currency).checked_add(fee)?;
        let reschedule = Reschedule {
            from: self.window,
            to: window,
            difference_minor: difference.minor,
            fee_minor: fee.minor,
            at: now,
        };
        let mut booking = self.clone();
        booking.window = window;
        booking.price = price;
        booking.reschedules.push(reschedule.clone());
        booking.updated_at = now;
        Ok(Transition {
            // The same state (a hold keeps its expiry): the history row records `reschedule`.
            from: self.status,
            booking,
            at: now,
            record: Record {
                event: "reschedule",
                reason: Some("rescheduled"),
                details: json!({
                    "from": reschedule.from,
                    "to": reschedule.to,
                    "difference_minor": reschedule.difference_minor,
                    "fee_minor": reschedule.fee_minor,
                }),
            },
            events: &[EventKind::BookingRescheduled],
            cancellation: None,
            extension: None,
            reschedule: Some(reschedule),
        })
    }
}

impl<'a> ExtensionPricing<'a> {
    /// The price of moving from `old` to `new`: both windows priced with today's rules, neutral
    /// surge and risk, no promo code or membership, never below zero (the difference of the
    /// two full-window prices, as [`extension_price`](crate::pricing::extension_price) defines).
    pub fn extension(
        &self,
        old: &TimeWindow,
        new: &TimeWindow,
        now: DateTime<Utc>,
    ) -> Result<Money, BookingError> {
        let delta = self.difference(old, new, now)?;
        Ok(Money::new(delta.minor.max(0), delta.currency))
    }

    /// Today's price of `new` minus today's price of `old`, with the same rules as
    /// [`ExtensionPricing::extension`] but signed: what a move adds or refunds.
    pub fn difference(
        &self,
        old: &TimeWindow,
        new: &TimeWindow,
        now: DateTime<Utc>,
    ) -> Result<Money, BookingError> {
        let (old_discounts, new_discounts) =
            (self.discounts_for(old, now)?, self.discounts_for(new, now)?);
        Ok(price_difference(
            &self.input(old, &old_discounts),
            &self.input(new, &new_discounts),
        )?)
    }

    fn discounts_for(
        &self,
        window: &TimeWindow,
        now: DateTime<Utc>,
    ) -> Result<Vec<&'a DiscountRule>, BookingError> {
        Ok(applicable_discounts(
            self.discounts,
            &DiscountContext {
                promo_code: None,
                membership_tier: None,
                duration_minutes: window.duration_minutes(),
                now,
            },
        )?)
    }

    fn input<'w>(&self, window: &'w TimeWindow, discounts: &'w [&'w DiscountRule]) -> PriceInput<'w>
    where
        'a: 'w,
    {
        PriceInput {
            rate: self.rate,
            window,
            tz: self.tz,
            time_table: self.time_table,
            surge: Multiplier::ONE,
            risk: Multiplier::ONE,
            discounts,
        }
    }
}

#[cfg(test)]
#[path = "booking_tests.rs"]
mod tests;
