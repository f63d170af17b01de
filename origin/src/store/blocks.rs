//! The maintenance blocks repository: `vehicle_blocks` and their events.
//!
//! The rules that keep blocks and bookings apart live in the database
//! (`migrations/20261205000001_vehicle_blocks.sql`): both sides take the vehicle's write lock
//! ([`lock_vehicle`]) before they write, and each refuses to overlap the other with SQLSTATE
//! 23P01 named after its rule. This module reads and writes the rows; what a block may be is
//! `domain::block`'s, and what to do with the bookings in its way is `app::blocks`'s.

use chrono::{DateTime, Utc};
use domain::block::Reason;
use domain::ids::{BookingId, VehicleId};
use domain::state::BookingStatus;
use domain::window::TimeWindow;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::corrupt;
use crate::events::Topic;

/// Why writing a block failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BlockStoreError {
    /// `vehicle_blocks_no_overlap`: another active block of the vehicle overlaps the window.
    #[error("another maintenance block of this vehicle overlaps that window")]
    BlockOverlap,
    /// `vehicle_blocks_over_bookings`: an occupying booking overlaps the window (the caller
    /// looks for them under the vehicle's lock first, so only a bug gets here).
    #[error("a booking of this vehicle overlaps that window")]
    BookingOverlap,
    /// Any other database error.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// An event could not be encoded for the outbox.
    #[error("encode block event")]
    Encode(#[from] serde_json::Error),
}

/// Maps the block rules' violations to their variants.
fn classify(e: sqlx::Error) -> BlockStoreError {
    if let sqlx::Error::Database(db) = &e {
        match db.constraint() {
            Some("vehicle_blocks_no_overlap") => return BlockStoreError::BlockOverlap,
            Some("vehicle_blocks_over_bookings") => return BlockStoreError::BookingOverlap,
            _ => {}
        }
    }
    BlockStoreError::Database(e)
}

/// A maintenance block as stored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Block {
    pub id: Uuid,
    pub vehicle: VehicleId,
    pub window: TimeWindow,
    pub reason: Reason,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When it was ended (cancelled before its start, or cut), if it was.
    pub ended_at: Option<DateTime<Utc>>,
    pub ended_by: Option<String>,
}

struct BlockRow {
    id: Uuid,
    region: String,
    vehicle_id: Uuid,
    start_at: DateTime<Utc>,
    end_at: DateTime<Utc>,
    reason: String,
    created_by: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
    ended_by: Option<String>,
}

impl TryFrom<BlockRow> for Block {
    type Error = sqlx::Error;

    fn try_from(row: BlockRow) -> sqlx::Result<Self> {
        Ok(Block {
            id: row.id,
            vehicle: VehicleId::new(row.region.parse().map_err(corrupt)?, row.vehicle_id),
            window: TimeWindow::new(row.start_at, row.end_at).map_err(corrupt)?,
            reason: Reason::parse(&row.reason).map_err(corrupt)?,
            created_by: row.created_by,
            created_at: row.created_at,
            updated_at: row.updated_at,
            ended_at: row.ended_at,
            ended_by: row.ended_by,
        })
    }
}

/// `sqlx::query_as!` into a [`BlockRow`]: every column, then the rest of the statement.
macro_rules! block_rows {
    ($tail:literal $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            BlockRow,
            r#"select id as "id!", region as "region!", vehicle_id as "vehicle_id!",
                      lower(period) as "start_at!", upper(period) as "end_at!",
                      reason as "reason!", created_by as "created_by!",
                      created_at as "created_at!", updated_at as "updated_at!",
                      ended_at, ended_by
                 from vehicle_blocks "# + $tail
            $(, $arg)*
        )
    };
}

/// Whether `vehicle` exists in its region (in any status: a retired car can still be blocked
/// out of the way of its last bookings).
#[tracing::instrument(level = "debug", name = "db.blocks.vehicle_exists", skip_all)]
pub(crate) async fn vehicle_exists(
    conn: &mut PgConnection,
    vehicle: &VehicleId,
) -> sqlx::Result<bool> {
    sqlx::query_scalar!(
        r#"select exists(select 1 from vehicles where id = $1 and region = $2) as "exists!""#,
        vehicle.uuid,
        vehicle.region.code(),
    )
    .fetch_one(conn)
    .await
}

/// Takes `vehicle`'s write lock until the transaction ends: no booking or block of it changes
/// meanwhile except ours, so what [`bookings_in_the_way`] reads stays true until commit.
#[tracing::instrument(level = "debug", name = "db.blocks.lock_vehicle", skip_all)]
pub(crate) async fn lock_vehicle(conn: &mut PgConnection, vehicle: &VehicleId) -> sqlx::Result<()> {
    sqlx::query!(
        "select lock_vehicle_writes($1, $2)",
        vehicle.region.code(),
        vehicle.uuid
    )
    .fetch_one(conn)
    .await?;
    Ok(())
}

/// Locks the rows of `vehicle`'s occupying bookings that `window` overlaps, expired holds
/// included, and returns their ids. Taken *before* [`lock_vehicle`]: a booking change locks
/// its row first and the vehicle's write lock second (`store::bookings`), so a block taking
/// them the other way round could deadlock with it.
#[tracing::instrument(level = "debug", name = "db.blocks.lock_bookings_in_the_way", skip_all)]
pub(crate) async fn lock_bookings_in_the_way(
    conn: &mut PgConnection,
    vehicle: &VehicleId,
    window: &TimeWindow,
) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar!(
        "select id from bookings
          where vehicle_id = $1 and status in ('RESERVING', 'CONFIRMED', 'IN_PROGRESS')
            and occupied && tstzrange($2, $3, '[)')
          order by id
          for update",
        vehicle.uuid,
        window.start(),
        window.end(),
    )
    .fetch_all(conn)
    .await
}

/// Locks booking `id`'s row if no one holds it (`for update nowait`): `false` if someone
/// does. For a booking made after [`lock_bookings_in_the_way`] ran: under the vehicle's lock
/// it is committed, but a change of it may hold its row while waiting for the vehicle's lock,
/// which we hold, so waiting for the row could deadlock.
#[tracing::instrument(level = "debug", name = "db.blocks.try_lock_booking", skip_all)]
pub(crate) async fn try_lock_booking(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<bool> {
    let locked = sqlx::query_scalar!(
        "select id from bookings where id = $1 for update nowait",
        id
    )
    .fetch_optional(conn)
    .await;
    match locked {
        Ok(row) => Ok(row.is_some()),
        // lock_not_available
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("55P03") => Ok(false),
        Err(e) => Err(e),
    }
}

/// An occupying booking a block's window overlaps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct InTheWay {
    /// The booking's id.
    #[schema(value_type = String)]
    pub id: BookingId,
    /// RESERVING, CONFIRMED or IN_PROGRESS.
    #[schema(value_type = String)]
    pub status: BookingStatus,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// The occupying bookings of `vehicle` whose occupied range (turnaround included) overlaps
/// `window`, by start; `except` is a block being changed (its own window does not count).
#[tracing::instrument(level = "debug", name = "db.blocks.bookings_in_the_way", skip_all)]
pub(crate) async fn bookings_in_the_way(
    conn: &mut PgConnection,
    vehicle: &VehicleId,
    window: &TimeWindow,
) -> sqlx::Result<Vec<InTheWay>> {
    let rows = sqlx::query!(
        r#"select id, status, lower(period) as "start_at!", upper(period) as "end_at!"
             from bookings
            where vehicle_id = $1 and status in ('RESERVING', 'CONFIRMED', 'IN_PROGRESS')
              and occupied && tstzrange($2, $3, '[)')
            order by lower(period), id"#,
        vehicle.uuid,
        window.start(),
        window.end(),
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(InTheWay {
                id: BookingId::new(vehicle.region, row.id),
                status: row.status.parse().map_err(corrupt)?,
                start: row.start_at,
                end: row.end_at,
            })
        })
        .collect()
}

/// Writes a new block.
#[tracing::instrument(level = "debug", name = "db.blocks.insert", skip_all)]
pub(crate) async fn insert(conn: &mut PgConnection, block: &Block) -> Result<(), BlockStoreError> {
    sqlx::query!(
        "insert into vehicle_blocks (id, region, vehicle_id, period, reason, created_by,
                                     created_at, updated_at)
         values ($1, $2, $3, tstzrange($4, $5, '[)'), $6, $7, $8, $8)",
        block.id,
        block.vehicle.region.code(),
        block.vehicle.uuid,
        block.window.start(),
        block.window.end(),
        block.reason.as_str(),
        block.created_by,
        block.created_at,
    )
    .execute(conn)
    .await
    .map_err(classify)?;
    Ok(())
}

/// Writes a changed block: its window, reason and end.
#[tracing::instrument(level = "debug", name = "db.blocks.update", skip_all)]
pub(crate) async fn update(conn: &mut PgConnection, block: &Block) -> Result<(), BlockStoreError> {
    sqlx::query!(
        "update vehicle_blocks
            set period = tstzrange($2, $3, '[)'), reason = $4, updated_at = $5,
                ended_at = $6, ended_by = $7
          where id = $1",
        block.id,
        block.window.start(),
        block.window.end(),
        block.reason.as_str(),
        block.updated_at,
        block.ended_at,
        block.ended_by,
    )
    .execute(conn)
    .await
    .map_err(classify)?;
    Ok(())
}

/// Block `id` of `vehicle`, its row locked until the transaction ends.
#[tracing::instrument(level = "debug", name = "db.blocks.load_for_update", skip_all)]
pub(crate) async fn load_for_update(
    conn: &mut PgConnection,
    vehicle: &VehicleId,
    id: Uuid,
) -> sqlx::Result<Option<Block>> {
    block_rows!(
        "where id = $1 and vehicle_id = $2 and region = $3 for update",
        id,
        vehicle.uuid,
        vehicle.region.code()
    )
    .fetch_optional(conn)
    .await?
    .map(Block::try_from)
    .transpose()
}

/// Every block of `vehicle`, latest window first, at most `limit`.
#[tracing::instrument(level = "debug", name = "db.blocks.list", skip_all)]
pub(crate) async fn list(
    pool: &PgPool,
    vehicle: &VehicleId,
    limit: i64,
) -> sqlx::Result<Vec<Block>> {
    block_rows!(
        "where vehicle_id = $1 and region = $2 order by lower(period) desc, id limit $3",
        vehicle.uuid,
        vehicle.region.code(),
        limit
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(Block::try_from)
    .collect()
}

/// A block in an event.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct BlockSnapshot {
    pub id: Uuid,
    pub vehicle_id: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
}

/// The envelope of `vehicle.blocked` and `vehicle.unblocked` (documented as `BlockEvent`):
/// the booking events' envelope with the block in place of the booking.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct BlockEvent {
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub topic: Topic,
    pub occurred_at: DateTime<Utc>,
    pub region: String,
    pub block: BlockSnapshot,
    /// `vehicle.blocked` of a changed block: the window it had before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_window: Option<crate::events::EventWindow>,
}

/// Writes `topic`'s event about `block` to the outbox, keyed by the vehicle like its
/// bookings' events (one partition, one order per vehicle).
#[tracing::instrument(level = "debug", name = "db.blocks.publish", skip_all)]
pub(crate) async fn publish(
    conn: &mut PgConnection,
    topic: Topic,
    block: &Block,
    previous: Option<&TimeWindow>,
    at: DateTime<Utc>,
    traceparent: Option<&str>,
) -> Result<(), BlockStoreError> {
    let event = BlockEvent {
        event_id: Uuid::now_v7(),
        topic,
        occurred_at: at,
        region: block.vehicle.region.code().to_owned(),
        block: BlockSnapshot {
            id: block.id,
            vehicle_id: block.vehicle.to_string(),
            start: block.window.start(),
            end: block.window.end(),
            reason: block.reason.as_str().to_owned(),
            ended_at: block.ended_at,
        },
        previous_window: previous.map(|w| crate::events::EventWindow {
            start: w.start(),
            end: w.end(),
        }),
    };
    let traceparent = crate::telemetry::current_traceparent(traceparent);
    sqlx::query!(
        "insert into outbox (event_id, topic, partition_key, aggregate_id, payload, traceparent)
         values ($1, $2, $3, $4, $5, $6)",
        event.event_id,
        topic.as_str(),
        block.vehicle.to_string(),
        block.id,
        serde_json::to_value(&event)?,
        traceparent,
    )
    .execute(conn)
    .await?;
    Ok(())
}
