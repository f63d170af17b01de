//! The booking service: what the booking handlers call between parsing a request and rendering
//! its answer.
//!
//! It runs one use case at a time on the caller's transaction: load the booking (locking its
//! row), gather what the aggregate needs (today's prices for an extension), let the aggregate
//! (`domain::booking`) decide, and write the transition through the repository
//! (`store::bookings`). It decides no booking rule itself — those are the aggregate's — and
//! knows nothing of HTTP: its [`BookingFailure`] is mapped to a status once, in `http/error.rs`.
//!
//! The transaction, the idempotency key and the vehicle lock belong to the handler, which opens
//! them before calling here and commits, stores the response and releases the lock after.

use chrono::{DateTime, Utc};
use domain::booking::{Action, Booking, BookingError, ExtensionPricing, Rules, Transition};
use domain::ids::{BookingId, VehicleId};
use domain::quote_token::{QuoteSigner, TokenError};
use domain::region::Region;
use domain::window::TimeWindow;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::app::pricing;
use crate::state::AppState;
use crate::store::bookings::at_once::{self, Outcome, StatementLock, Waits};
use crate::store::bookings::{self as store, RowLock, StoreError};
use crate::store::idempotency::KeyClaim;

pub(crate) use crate::store::bookings::{Actor, ListFilter, Viewer};

/// Why a booking use case failed. The texts are the API's problem details.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BookingFailure {
    /// The quote token's validity ended.
    #[error("the quote has expired; get a new one")]
    QuoteExpired,
    /// The quote token is malformed, forged or signed with an unknown key.
    #[error("quote_token: {0}")]
    QuoteInvalid(TokenError),
    /// The quote was issued to someone else.
    #[error("this quote was issued to another user")]
    QuoteOfAnotherUser,
    /// The quote is for a region this origin does not serve.
    #[error(
        "the quote is for region {0}, which this origin does not serve; send it to the {0} origin"
    )]
    RegionNotServed(Region),
    /// No such booking, or not the caller's.
    #[error("booking {0} not found")]
    NotFound(BookingId),
    /// The quoted vehicle is gone, retired or in maintenance.
    #[error("vehicle {0} is not available for booking")]
    VehicleUnavailable(VehicleId),
    /// Another booking starts before the new end.
    #[error(
        "the vehicle is booked by someone else after your booking; it cannot be extended to that time"
    )]
    ExtensionBlocked,
    /// Another booking (or its turnaround buffer) overlaps the new window.
    #[error(
        "the vehicle is taken for that window (another booking, or the turnaround time after one); your booking keeps its window"
    )]
    RescheduleBlocked,
    /// The aggregate refused the action.
    #[error(transparent)]
    Refused(#[from] BookingError),
    /// The repository failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Today's prices for the vehicle could not be loaded.
    #[error(transparent)]
    Pricing(#[from] pricing::PricingError),
    /// The configured hold lifetime does not fit a duration.
    #[error("hold ttl: {0}")]
    HoldTtl(String),
}

/// An action on an existing booking, as a request asks for it (an extension is priced here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    Confirm,
    Cancel,
    Start,
    Complete,
    Extend { new_end: DateTime<Utc> },
    Reschedule { window: TimeWindow },
}

impl Command {
    /// Whether the command changes when the vehicle is taken (it takes the vehicle's lock).
    pub(crate) fn moves_occupancy(&self) -> bool {
        matches!(self, Command::Extend { .. } | Command::Reschedule { .. })
    }
}

/// The rules bookings are judged by, from the origin's configuration.
pub(crate) fn rules(state: &AppState) -> Result<Rules, BookingFailure> {
    let hold_ttl = chrono::Duration::from_std(state.config.hold_ttl)
        .map_err(|e| BookingFailure::HoldTtl(e.to_string()))?;
    Ok(Rules::new(*state.policy, *state.cancellation, hold_ttl))
}

/// Verifies a quote token for `user` and makes the hold the aggregate would write: nothing is
/// written yet, so a request refused here never touches the database.
pub(crate) fn prepare_hold(
    quotes: &QuoteSigner,
    served: &[Region],
    user: &str,
    quote_token: &str,
    rules: &Rules,
    now: DateTime<Utc>,
) -> Result<Transition, BookingFailure> {
    let quote = quotes.verify(quote_token, now).map_err(|e| match e {
        TokenError::Expired => BookingFailure::QuoteExpired,
        other => BookingFailure::QuoteInvalid(other),
    })?;
    quote
        .check_binding(user)
        .map_err(|_| BookingFailure::QuoteOfAnotherUser)?;
    if !served.contains(&quote.region) {
        return Err(BookingFailure::RegionNotServed(quote.region));
    }
    let id = BookingId::new(quote.region, Uuid::now_v7());
    Ok(Booking::hold(&quote, id, rules, now)?)
}

/// Writes a prepared hold (ending expired holds in its way): the stored booking, with its bay.
pub(crate) async fn hold(
    conn: &mut PgConnection,
    hold: &Transition,
    actor: Actor<'_>,
) -> Result<Booking, BookingFailure> {
    store::insert_hold(conn, hold, actor)
        .await?
        .ok_or(BookingFailure::VehicleUnavailable(hold.booking.vehicle_id))
}

/// Writes a prepared hold in one statement (`store::bookings::at_once`): with `key`, its
/// lookup and stored answer too, and the vehicle's advisory lock when `lock` asks for it.
pub(crate) async fn hold_at_once(
    pool: &PgPool,
    hold: &Transition,
    actor: Actor<'_>,
    key: Option<&KeyClaim<'_>>,
    lock: StatementLock,
    waits: Waits,
    response: &at_once::Response,
) -> Result<Outcome, BookingFailure> {
    Ok(at_once::hold(pool, hold, actor, key, lock, waits, response).await?)
}

/// The vehicle of a booking (anyone's), to lock before changing its occupancy.
pub(crate) async fn vehicle_of(
    conn: &mut PgConnection,
    id: &BookingId,
) -> Result<Option<VehicleId>, BookingFailure> {
    Ok(store::vehicle_of(conn, id).await?)
}

/// Applies `command` to the actor's booking `id` and writes the transition; another user's
/// booking is [`BookingFailure::NotFound`], as a missing one.
pub(crate) async fn act(
    conn: &mut PgConnection,
    id: &BookingId,
    command: Command,
    actor: Actor<'_>,
    rules: &Rules,
    now: DateTime<Utc>,
) -> Result<Transition, BookingFailure> {
    let before = store::load(conn, id, RowLock::ForUpdate)
        .await?
        .filter(|b| b.user_id == actor.id)
        .ok_or(BookingFailure::NotFound(*id))?;
    let transition = match command {
        Command::Confirm => before.act(Action::Confirm, rules, now)?,
        Command::Cancel => before.act(Action::Cancel, rules, now)?,
        Command::Start => before.act(Action::Start, rules, now)?,
        Command::Complete => before.act(Action::Complete, rules, now)?,
        Command::Extend { new_end } => {
            // Refuse what can be refused before loading prices.
            before.extension_window(new_end, &rules.policy, now)?;
            let (ctx, tz) = todays_prices(conn, &before).await?;
            let pricing = changes_priced_by(&ctx, tz);
            before.act(Action::Extend { new_end, pricing }, rules, now)?
        }
        Command::Reschedule { window } => {
            before.check_reschedule(&window, &rules.policy, now)?;
            let (ctx, tz) = todays_prices(conn, &before).await?;
            let pricing = changes_priced_by(&ctx, tz);
            let transition = before.act(Action::Reschedule { window, pricing }, rules, now)?;
            // An expired hold in the new window is ended first (an event of its own), as a
            // new hold would; a live one makes the move fail on the constraint below.
            store::expire_overlapping_holds(conn, &before.vehicle_id, &window, now).await?;
            transition
        }
    };
    match store::save(conn, &transition, actor).await {
        Ok(()) => Ok(transition),
        Err(StoreError::Overlap | StoreError::Contention)
            if matches!(command, Command::Extend { .. }) =>
        {
            Err(BookingFailure::ExtensionBlocked)
        }
        Err(StoreError::Overlap | StoreError::Contention)
            if matches!(command, Command::Reschedule { .. }) =>
        {
            Err(BookingFailure::RescheduleBlocked)
        }
        Err(e) => Err(e.into()),
    }
}

/// How an extension or a move is priced from today's `ctx` in the bay's zone `tz`.
fn changes_priced_by(ctx: &pricing::PricingContext, tz: chrono_tz::Tz) -> ExtensionPricing<'_> {
    ExtensionPricing {
        rate: &ctx.rate,
        time_table: &ctx.time_table,
        tz,
        discounts: &ctx.discounts,
    }
}

/// Today's prices for `booking`'s vehicle, and its bay's time zone.
async fn todays_prices(
    conn: &mut PgConnection,
    booking: &Booking,
) -> Result<(pricing::PricingContext, chrono_tz::Tz), BookingFailure> {
    let facts = store::pricing_facts(conn, &booking.vehicle_id).await?;
    let ctx = pricing::context(conn, booking.region(), facts.class).await?;
    let tz = pricing::parse_tz(&facts.timezone)?;
    Ok((ctx, tz))
}

/// One booking `viewer` may see.
pub(crate) async fn get(
    pool: &PgPool,
    id: &BookingId,
    viewer: Viewer<'_>,
) -> Result<Booking, BookingFailure> {
    store::load_visible(pool, id, viewer)
        .await?
        .ok_or(BookingFailure::NotFound(*id))
}

/// A page of a user's bookings, newest first.
pub(crate) async fn list(
    pool: &PgPool,
    filter: &ListFilter,
) -> Result<Vec<Booking>, BookingFailure> {
    Ok(store::list(pool, filter).await?)
}
