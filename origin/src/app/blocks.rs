//! The maintenance block service: placing, changing and ending a vehicle's out-of-service
//! windows, on the caller's transaction (the handler owns it, with its idempotency key).
//!
//! Placing a block (new, or a changed window) reads top to bottom: take the vehicle's write
//! lock, end the expired holds in the way (as a new hold would), look for the occupying
//! bookings still in the way, and then either refuse naming them or, with `force`, withdraw
//! each (cancelled with a full refund, `domain::booking::Action::Withdraw`, its own events)
//! before the block is written. A trip under way is never withdrawn: the car is on the road.
//! Under the lock nothing else changes the vehicle's bookings, so what was found is what is
//! there at commit; the database's block rules (`vehicle_blocks_over_bookings`,
//! `bookings_not_blocked`) stay the guarantee.

use chrono::{DateTime, Utc};
use domain::block::{self, BlockError, Ending, Reason};
use domain::booking::{Action, Booking, Rules};
use domain::ids::VehicleId;
use domain::state::BookingStatus;
use domain::window::TimeWindow;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::events::Topic;
use crate::store::blocks::{self as store, Block, BlockStoreError, InTheWay};
use crate::store::bookings::{self as bookings, Actor, RowLock, StoreError};

/// Why a block use case failed. The texts are the API's problem details.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BlockFailure {
    #[error("vehicle {0} not found")]
    VehicleNotFound(VehicleId),
    #[error("block {0} of this vehicle not found")]
    NotFound(Uuid),
    /// The domain refused the window, the reason, or the block's state.
    #[error(transparent)]
    Refused(#[from] BlockError),
    /// Occupying bookings overlap the window and `force` was not asked for.
    #[error("{} booking(s) of this vehicle overlap that window; move or cancel them, or send \"force\": true to cancel them with a full refund", .0.len())]
    BookingsInTheWay(Vec<InTheWay>),
    /// A trip under way overlaps the window: not even `force` cancels it.
    #[error("{} trip(s) of this vehicle in that window are under way and cannot be cancelled; start the block after they end", .0.len())]
    TripsUnderWay(Vec<InTheWay>),
    #[error(transparent)]
    Block(#[from] BlockStoreError),
    #[error(transparent)]
    Booking(#[from] StoreError),
    /// The aggregate refused to withdraw a booking found in the way (a bug: the query selects
    /// only bookings it can withdraw).
    #[error("withdraw booking: {0}")]
    Withdraw(#[from] domain::booking::BookingError),
}

impl From<sqlx::Error> for BlockFailure {
    fn from(e: sqlx::Error) -> Self {
        BlockFailure::Block(BlockStoreError::Database(e))
    }
}

/// A block as written, with the bookings it withdrew (none unless forced).
#[derive(Debug, Clone)]
pub(crate) struct Placed {
    pub block: Block,
    pub withdrawn: Vec<Booking>,
}

/// What a block should be: a window and a reason, and whether to withdraw bookings in its way.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub window: TimeWindow,
    pub reason: Reason,
    pub force: bool,
}

/// Makes a new block of `vehicle`.
pub(crate) async fn create(
    conn: &mut PgConnection,
    vehicle: &VehicleId,
    plan: Plan,
    actor: Actor<'_>,
    rules: &Rules,
    now: DateTime<Utc>,
) -> Result<Placed, BlockFailure> {
    block::check_window(&plan.window, now)?;
    if !store::vehicle_exists(conn, vehicle).await? {
        return Err(BlockFailure::VehicleNotFound(*vehicle));
    }
    let locked = lock(conn, vehicle, &plan.window).await?;
    let withdrawn = clear(conn, vehicle, &plan, &locked, actor, rules, now).await?;
    let block = Block {
        id: Uuid::now_v7(),
        vehicle: *vehicle,
        window: plan.window,
        reason: plan.reason,
        created_by: actor.id.to_owned(),
        created_at: now,
        updated_at: now,
        ended_at: None,
        ended_by: None,
    };
    store::insert(conn, &block).await?;
    store::publish(
        conn,
        Topic::VehicleBlocked,
        &block,
        None,
        now,
        actor.traceparent,
    )
    .await?;
    Ok(Placed { block, withdrawn })
}

/// Gives block `id` of `vehicle` a new window and reason.
pub(crate) async fn change(
    conn: &mut PgConnection,
    vehicle: &VehicleId,
    id: Uuid,
    plan: Plan,
    actor: Actor<'_>,
    rules: &Rules,
    now: DateTime<Utc>,
) -> Result<Placed, BlockFailure> {
    block::check_window(&plan.window, now)?;
    let locked = lock(conn, vehicle, &plan.window).await?;
    let before = store::load_for_update(conn, vehicle, id)
        .await?
        .ok_or(BlockFailure::NotFound(id))?;
    block::changeable(&before.window, before.ended_at, now)?;
    let withdrawn = clear(conn, vehicle, &plan, &locked, actor, rules, now).await?;
    let block = Block {
        window: plan.window,
        reason: plan.reason,
        updated_at: now,
        ..before.clone()
    };
    store::update(conn, &block).await?;
    store::publish(
        conn,
        Topic::VehicleBlocked,
        &block,
        Some(&before.window),
        now,
        actor.traceparent,
    )
    .await?;
    Ok(Placed { block, withdrawn })
}

/// Ends block `id` of `vehicle`: cancelled if it had not begun, cut at the next minute if it had.
pub(crate) async fn end(
    conn: &mut PgConnection,
    vehicle: &VehicleId,
    id: Uuid,
    actor: Actor<'_>,
    now: DateTime<Utc>,
) -> Result<Block, BlockFailure> {
    store::lock_vehicle(conn, vehicle).await?;
    let before = store::load_for_update(conn, vehicle, id)
        .await?
        .ok_or(BlockFailure::NotFound(id))?;
    let window = match block::end(&before.window, before.ended_at, now)? {
        Ending::Cancelled => before.window,
        Ending::Cut(window) => window,
    };
    let block = Block {
        window,
        updated_at: now,
        ended_at: Some(now),
        ended_by: Some(actor.id.to_owned()),
        ..before
    };
    store::update(conn, &block).await?;
    store::publish(
        conn,
        Topic::VehicleUnblocked,
        &block,
        None,
        now,
        actor.traceparent,
    )
    .await?;
    Ok(block)
}

/// Locks the bookings in `window`'s way, then the vehicle (that order: see
/// `store::blocks::lock_bookings_in_the_way`); returns the bookings locked.
async fn lock(
    conn: &mut PgConnection,
    vehicle: &VehicleId,
    window: &TimeWindow,
) -> Result<Vec<Uuid>, BlockFailure> {
    let locked = store::lock_bookings_in_the_way(conn, vehicle, window).await?;
    store::lock_vehicle(conn, vehicle).await?;
    Ok(locked)
}

/// Ends what stands in `plan`'s window, under the vehicle's lock: expired holds always,
/// holds and confirmed bookings when forced (withdrawn, in start order). Refuses, naming
/// them, when bookings are in the way and it is not forced, or when a trip is under way.
/// `locked` are the bookings whose rows [`lock`] took; one made between that and the
/// vehicle's lock is locked now only if no one holds its row (waiting for it could deadlock
/// with a change of it that waits for the vehicle's lock): otherwise refused as a race lost
/// (409, to retry).
async fn clear(
    conn: &mut PgConnection,
    vehicle: &VehicleId,
    plan: &Plan,
    locked: &[Uuid],
    actor: Actor<'_>,
    rules: &Rules,
    now: DateTime<Utc>,
) -> Result<Vec<Booking>, BlockFailure> {
    bookings::expire_overlapping_holds(conn, vehicle, &plan.window, now).await?;
    let in_the_way = store::bookings_in_the_way(conn, vehicle, &plan.window).await?;
    if in_the_way.is_empty() {
        return Ok(Vec::new());
    }
    if plan.force {
        for late in in_the_way.iter().filter(|b| !locked.contains(&b.id.uuid)) {
            if !store::try_lock_booking(conn, late.id.uuid).await? {
                return Err(BlockFailure::Booking(StoreError::Contention));
            }
        }
    }
    let (trips, others): (Vec<InTheWay>, Vec<InTheWay>) = in_the_way
        .into_iter()
        .partition(|b| b.status == BookingStatus::InProgress);
    if !trips.is_empty() {
        return Err(BlockFailure::TripsUnderWay(trips));
    }
    if !plan.force {
        return Err(BlockFailure::BookingsInTheWay(others));
    }
    let mut withdrawn = Vec::with_capacity(others.len());
    for found in others {
        let booking = bookings::load(conn, &found.id, RowLock::ForUpdate)
            .await?
            .ok_or_else(|| StoreError::Corrupt {
                id: found.id.uuid,
                detail: "vanished under the vehicle's lock".into(),
            })?;
        let transition = booking.act(Action::Withdraw, rules, now)?;
        bookings::save(conn, &transition, actor).await?;
        withdrawn.push(transition.booking);
    }
    Ok(withdrawn)
}
