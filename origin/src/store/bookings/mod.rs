//! The bookings repository: loads bookings and writes the transitions the booking aggregate
//! (`domain::booking`) decides. It holds no booking rule.
//!
//! Every state change is ONE SQL statement inside the caller's transaction: a data-modifying
//! CTE that writes the booking row, its `booking_history` row and its `outbox` rows together,
//! so a change either has all three or none. The exclusion constraint `bookings_no_overlap`
//! decides whether the vehicle is free (a violation is [`StoreError::Overlap`]), so no
//! check-then-act race can double-book.
//!
//! Every statement is checked against the schema at compile time (`sqlx::query!` and friends,
//! `.sqlx/` for offline builds). The booking columns are listed once, in `booking_rows!`,
//! which prepends them to each query as literal SQL (sqlx accepts `"…" + "…"`), so the static
//! variants of one query (with and without `for update`, with and without the lazy-expiry
//! guard) stay static statements rather than strings assembled at run time.

pub(crate) mod at_once;
pub(crate) mod model;

use chrono::{DateTime, Utc};
use domain::booking::{Booking, BookingError, Extension, Reschedule, Transition};
use domain::ids::{BookingId, VehicleId};
use domain::pricing::PriceLine;
use domain::state::BookingStatus;
use domain::vehicle::VehicleClass;
use domain::window::TimeWindow;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::events::{Event, EventWindow, Topic};
use model::BookingRow;

/// Counter of writes the exclusion constraint `bookings_no_overlap` refused (SQLSTATE 23P01):
/// each is a double booking that reached the database and was stopped there.
pub(crate) const OVERLAP_REJECTIONS: &str = "booking_overlap_rejections_total";

/// Why a repository call failed. Constraint violations the API answers (a taken window, a used
/// quote, a lost race) have their own variants; the HTTP layer maps each once (`error.rs`).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `bookings_no_overlap` (23P01): another occupying booking overlaps the window.
    #[error(
        "the vehicle is already booked for part of that window or the turnaround after a booking"
    )]
    Overlap,
    /// `bookings_not_blocked` (23P01): a maintenance block of the vehicle overlaps the window.
    #[error("the vehicle is out of service (a maintenance block) for part of that window")]
    Blocked,
    /// `bookings_waitlist_offer` (23P01): part of the window is offered to a customer on the
    /// vehicle's waitlist for a short while (`until`, RFC 3339, from the error's detail).
    #[error("part of that window is offered to a customer on the vehicle's waitlist until {until}; try again after")]
    OfferedToWaitlist { until: String },
    /// The unique index `bookings_quote` (23505): the quote already bought a booking.
    #[error("this quote was already used for a booking")]
    QuoteUsed,
    /// A deadlock or serialization failure (40P01, 40001): a concurrent transaction won.
    #[error("a concurrent booking for this vehicle won")]
    Contention,
    /// The database cannot be reached: pool exhausted or closed, connection lost.
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// A stored row the domain cannot represent, or a transition the aggregate refuses for a
    /// row the query selected (both are bugs or manual edits, never the client's fault).
    #[error("booking {id}: {detail}")]
    Corrupt { id: Uuid, detail: String },
    /// A transition wrote another number of outbox rows than it has events.
    #[error("transition of {id} wrote {written} outbox rows, expected {expected}")]
    OutboxMismatch {
        id: BookingId,
        written: u64,
        expected: usize,
    },
    /// An event could not be encoded for the outbox.
    #[error("encode event")]
    Encode(#[from] serde_json::Error),
    /// Any other database error.
    #[error("database error")]
    Database(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            match db.code().as_deref() {
                Some("23P01") if db.constraint() == Some("bookings_not_blocked") => {
                    return StoreError::Blocked
                }
                Some("23P01") if db.constraint() == Some("bookings_waitlist_offer") => {
                    let until = db
                        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                        .and_then(|pg| pg.detail())
                        .unwrap_or("the offer ends")
                        .to_owned();
                    return StoreError::OfferedToWaitlist { until };
                }
                Some("23P01") => {
                    // A double booking the exclusion constraint refused (alerted on: rules.yml).
                    metrics::counter!(OVERLAP_REJECTIONS).increment(1);
                    return StoreError::Overlap;
                }
                Some("40P01") | Some("40001") => return StoreError::Contention,
                Some("23505") if db.constraint() == Some("bookings_quote") => {
                    return StoreError::QuoteUsed
                }
                _ => {}
            }
        }
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                StoreError::Unavailable(e)
            }
            other => StoreError::Database(other),
        }
    }
}

/// Who is changing a booking, for the history row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Actor<'a> {
    /// A user id, or `system` for the sweeper.
    pub id: &'a str,
    /// The request that made the change, when there is one.
    pub request_id: Option<&'a str>,
    /// The request's incoming `traceparent` (raw; validated where used): the outbox rows carry
    /// the trace on (`telemetry::current_traceparent`).
    pub traceparent: Option<&'a str>,
}

impl Actor<'static> {
    /// The sweeper and other background work.
    pub(crate) const SYSTEM: Actor<'static> = Actor {
        id: "system",
        request_id: None,
        traceparent: None,
    };
}

/// Who is reading: a user sees their own bookings, ops see every booking.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Viewer<'a> {
    /// The caller's user id.
    pub user_id: &'a str,
    /// Whether the caller has the ops role.
    pub is_ops: bool,
}

/// `sqlx::query_as!` into a [`BookingRow`]: the `[…]` literals, then `select <every booking
/// column>`, then the last literal, then the arguments. The column list is the one place that
/// knows [`BookingRow`]'s order and nullability.
macro_rules! booking_rows {
    ([$($head:literal),*], $tail:literal $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            BookingRow,
            $($head +)* r#"select id as "id!", region as "region!", vehicle_id as "vehicle_id!",
                       user_id as "user_id!", bay_id as "bay_id!",
                       destination_bay_id as "destination_bay_id?",
                       lower(period) as "start_at!", upper(period) as "end_at!",
                       status as "status!", currency as "currency!", price_minor as "price_minor!",
                       breakdown as "breakdown!: Json<Vec<PriceLine>>",
                       extensions as "extensions!: Json<Vec<Extension>>",
                       reschedules as "reschedules!: Json<Vec<Reschedule>>",
                       quote_id as "quote_id!", hold_expires_at as "hold_expires_at?",
                       cancellation_fee_minor as "cancellation_fee_minor?",
                       created_at as "created_at!", updated_at as "updated_at!" "# + $tail
            $(, $arg)*
        )
    };
}

fn parse_all(rows: Vec<BookingRow>) -> Result<Vec<Booking>, StoreError> {
    rows.into_iter().map(Booking::try_from).collect()
}

/// Whether [`load`] locks the row for the rest of the transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowLock {
    /// A plain read.
    None,
    /// `for update`: the row is ours until commit or rollback.
    ForUpdate,
}

/// Reads a booking, optionally locking its row for the rest of the transaction.
#[tracing::instrument(level = "debug", name = "db.bookings.load", skip_all)]
pub(crate) async fn load(
    conn: &mut PgConnection,
    id: &BookingId,
    lock: RowLock,
) -> Result<Option<Booking>, StoreError> {
    let row = match lock {
        RowLock::None => {
            booking_rows!(
                [],
                "from bookings where id = $1 and region = $2",
                id.uuid,
                id.region.code()
            )
            .fetch_optional(conn)
            .await?
        }
        RowLock::ForUpdate => {
            booking_rows!(
                [],
                "from bookings where id = $1 and region = $2 for update",
                id.uuid,
                id.region.code()
            )
            .fetch_optional(conn)
            .await?
        }
    };
    row.map(Booking::try_from).transpose()
}

/// A booking `viewer` may see: their own, or any for ops. `None` for others' bookings as for
/// missing ones, so ids cannot be probed.
#[tracing::instrument(level = "debug", name = "db.bookings.load_visible", skip_all)]
pub(crate) async fn load_visible(
    pool: &PgPool,
    id: &BookingId,
    viewer: Viewer<'_>,
) -> Result<Option<Booking>, StoreError> {
    let mut conn = pool.acquire().await?;
    Ok(load(&mut conn, id, RowLock::None)
        .await?
        .filter(|b| b.user_id == viewer.user_id || viewer.is_ops))
}

/// The vehicle of a booking (any user's), to lock it before a transaction changes its
/// occupancy; `None` when there is no such booking.
#[tracing::instrument(level = "debug", name = "db.bookings.vehicle_of", skip_all)]
pub(crate) async fn vehicle_of(
    conn: &mut PgConnection,
    id: &BookingId,
) -> Result<Option<VehicleId>, StoreError> {
    let vehicle = sqlx::query_scalar!(
        "select vehicle_id from bookings where id = $1 and region = $2",
        id.uuid,
        id.region.code()
    )
    .fetch_optional(conn)
    .await?;
    Ok(vehicle.map(|uuid| VehicleId::new(id.region, uuid)))
}

/// What pricing an extension needs to know about a vehicle: its class and its bay's IANA zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PricingFacts {
    /// The vehicle class.
    pub class: VehicleClass,
    /// The bay's time zone name, as stored.
    pub timezone: String,
}

/// The class and bay time zone of `vehicle`.
#[tracing::instrument(level = "debug", name = "db.bookings.pricing_facts", skip_all)]
pub(crate) async fn pricing_facts(
    conn: &mut PgConnection,
    vehicle: &VehicleId,
) -> Result<PricingFacts, StoreError> {
    let row = sqlx::query!(
        "select v.class, b.timezone
           from vehicles v join parking_bays b on b.id = v.bay_id
          where v.id = $1",
        vehicle.uuid
    )
    .fetch_one(conn)
    .await?;
    let class = row.class.parse().map_err(|e| StoreError::Corrupt {
        id: vehicle.uuid,
        detail: format!("vehicle class: {e}"),
    })?;
    Ok(PricingFacts {
        class,
        timezone: row.timezone,
    })
}

/// Filters for listing bookings.
#[derive(Debug, Clone)]
pub(crate) struct ListFilter {
    pub user_id: String,
    pub status: Option<BookingStatus>,
    pub limit: i64,
    /// Keyset cursor: (created_at, id) of the last row of the previous page.
    pub after: Option<(DateTime<Utc>, Uuid)>,
    /// Only bookings of these regions (the origin's own: a database shared with another
    /// region's origin never leaks its rows into this origin's answers).
    pub regions: Vec<String>,
}

/// Lists a user's bookings, newest first.
#[tracing::instrument(level = "debug", name = "db.bookings.list", skip_all)]
pub(crate) async fn list(pool: &PgPool, filter: &ListFilter) -> Result<Vec<Booking>, StoreError> {
    let rows = booking_rows!(
        [],
        "from bookings
          where user_id = $1 and ($2::text is null or status = $2)
            and ($3::timestamptz is null or (created_at, id) < ($3, $4))
            and region = any($6)
          order by created_at desc, id desc limit $5",
        filter.user_id,
        filter.status.map(|s| s.as_str()),
        filter.after.map(|a| a.0),
        filter.after.map(|a| a.1).unwrap_or_default(),
        filter.limit,
        &filter.regions,
    )
    .fetch_all(pool)
    .await?;
    parse_all(rows)
}

/// The outbox rows of a transition, as the three arrays the statements `unnest`.
struct OutboxRows {
    ids: Vec<Uuid>,
    topics: Vec<String>,
    payloads: Vec<serde_json::Value>,
}

impl OutboxRows {
    fn of(transition: &Transition) -> Result<Self, StoreError> {
        let events: Vec<Event> = transition
            .events
            .iter()
            .map(|kind| {
                let mut event = Event::new(
                    Topic::from(*kind),
                    &transition.booking,
                    transition.at,
                    transition.record.reason,
                );
                if let (Topic::BookingRescheduled, Some(moved)) =
                    (event.topic, &transition.reschedule)
                {
                    event.previous_window = Some(EventWindow {
                        start: moved.from.start(),
                        end: moved.from.end(),
                    });
                }
                event
            })
            .collect();
        Ok(OutboxRows {
            ids: events.iter().map(|e| e.event_id).collect(),
            topics: events.iter().map(|e| e.topic.as_str().to_owned()).collect(),
            payloads: events
                .iter()
                .map(serde_json::to_value)
                .collect::<Result<_, _>>()?,
        })
    }
}

/// Writes a transition of an existing booking: its new state, its history row and its events,
/// in one statement.
#[tracing::instrument(level = "debug", name = "db.bookings.save", skip_all)]
pub(crate) async fn save(
    conn: &mut PgConnection,
    transition: &Transition,
    actor: Actor<'_>,
) -> Result<(), StoreError> {
    let after = &transition.booking;
    let outbox = OutboxRows::of(transition)?;
    let extensions = serde_json::to_value(&after.extensions)?;
    let reschedules = serde_json::to_value(&after.reschedules)?;
    let traceparent = crate::telemetry::current_traceparent(actor.traceparent);
    let done = sqlx::query!(
        "with u as (
             update bookings
                set status = $2, hold_expires_at = $3, period = tstzrange($4, $5, '[)'),
                    price_minor = $6, extensions = $7, cancellation_fee_minor = $8, updated_at = $9,
                    reschedules = $21
              where id = $1
          returning id, vehicle_id, region),
         h as (
             insert into booking_history (booking_id, from_status, to_status, event, reason, actor, request_id, details, at)
             select id, $10::text, $2, $11::text, $12::text, $13::text, $14::text, $15::jsonb, $9 from u)
         insert into outbox (event_id, topic, partition_key, aggregate_id, payload, traceparent)
         select e.event_id, e.topic, $16, u.id, e.payload, $20::text
           from u, unnest($17::uuid[], $18::text[], $19::jsonb[]) with ordinality as e(event_id, topic, payload, n)
          order by e.n",
        after.id.uuid,
        after.status.as_str(),
        after.hold_expires_at,
        after.window.start(),
        after.window.end(),
        after.price.minor,
        extensions,
        after.cancellation_fee.map(|m| m.minor),
        transition.at,
        transition.from.as_str(),
        transition.record.event,
        transition.record.reason,
        actor.id,
        actor.request_id,
        transition.record.details,
        after.vehicle_id.to_string(),
        &outbox.ids,
        &outbox.topics,
        &outbox.payloads,
        traceparent,
        reschedules,
    )
    .execute(conn)
    .await?;
    if done.rows_affected() != outbox.ids.len() as u64 {
        return Err(StoreError::OutboxMismatch {
            id: after.id,
            written: done.rows_affected(),
            expected: outbox.ids.len(),
        });
    }
    Ok(())
}

/// Ends one hold the query selected as expired, through the aggregate.
/// Ends one expired hold; the vehicle it freed.
async fn expire(
    conn: &mut PgConnection,
    row: BookingRow,
    now: DateTime<Utc>,
) -> Result<VehicleId, StoreError> {
    let hold = Booking::try_from(row)?;
    let transition = hold
        .expire(now)
        .map_err(|e: BookingError| StoreError::Corrupt {
            id: hold.id.uuid,
            detail: format!("selected as an expired hold, but {e}"),
        })?;
    save(conn, &transition, Actor::SYSTEM).await?;
    Ok(hold.vehicle_id)
}

/// Ends expired holds on one vehicle that overlap `window` (turnaround buffers included, as
/// the constraint compares them), so a new hold does not wait for the sweeper. Returns how
/// many it ended.
#[tracing::instrument(
    level = "debug",
    name = "db.bookings.expire_overlapping_holds",
    skip_all
)]
pub(crate) async fn expire_overlapping_holds(
    conn: &mut PgConnection,
    vehicle: &VehicleId,
    window: &TimeWindow,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let rows = booking_rows!(
        [],
        "from bookings
          where vehicle_id = $1 and status = 'RESERVING' and hold_expires_at <= $2
            and occupied && booking_occupied($1, $3, $4)
          for update skip locked",
        vehicle.uuid,
        now,
        window.start(),
        window.end(),
    )
    .fetch_all(&mut *conn)
    .await?;
    let count = rows.len();
    for row in rows {
        expire(conn, row, now).await?;
    }
    Ok(count)
}

/// The sweeper's batch: ends up to `batch` expired holds, oldest expiry first, each in a
/// transaction of its own, skipping holds another origin (or a new hold's lazy expiry) is
/// working on. Returns the vehicle of each hold it ended, so the caller can tell the caches
/// (a freed window must not stay hidden behind a cached refusal at the origin or the edge).
///
/// One transaction per hold, not one per batch: ending a hold locks its vehicle's
/// event-sequence row until commit (migration `20261202071500_outbox_vehicle_sequence.sql`),
/// and a batch transaction would hold the rows of every vehicle it had touched until its last
/// hold was ended, stalling every write to those vehicles meanwhile (the fault suite's
/// PostgreSQL latency fault, at 300 ms a round trip, made that seconds), and two sweepers
/// would lock the vehicles of their batches in different orders. The candidates are read
/// without a lock; each is locked (`skip locked`) and re-checked in its own transaction.
#[tracing::instrument(level = "debug", name = "db.bookings.sweep_expired_holds", skip_all)]
pub(crate) async fn sweep_expired_holds(
    pool: &PgPool,
    now: DateTime<Utc>,
    batch: i64,
) -> Result<Vec<VehicleId>, StoreError> {
    let candidates = sqlx::query_scalar!(
        "select id from bookings
          where status = 'RESERVING' and hold_expires_at <= $1
          order by hold_expires_at limit $2",
        now,
        batch,
    )
    .fetch_all(pool)
    .await?;
    let mut freed = Vec::new();
    for id in candidates {
        let mut tx = pool.begin().await?;
        let row = booking_rows!(
            [],
            "from bookings
              where id = $1 and status = 'RESERVING' and hold_expires_at <= $2
              for update skip locked",
            id,
            now,
        )
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = row {
            let vehicle = expire(&mut tx, row, now).await?;
            tx.commit().await?;
            freed.push(vehicle);
        }
    }
    Ok(freed)
}

/// Inserts a hold the aggregate made ([`Booking::hold`]) with its history and outbox rows, in
/// one statement; the booking takes its vehicle's bay. `None` when the vehicle is missing, not
/// active, or not in the booking's region.
///
/// One round trip in the common case: the insert itself checks that no *expired* hold overlaps
/// the window (`not exists`, on the `(vehicle_id, period)` index) and inserts nothing if one
/// does. Only then — rarely — are those holds ended ([`expire_overlapping_holds`]) and the
/// unguarded insert run, so lazy expiry costs nothing when there is nothing to expire. The
/// guard is an optimisation only: the exclusion constraint still decides.
#[tracing::instrument(level = "debug", name = "db.bookings.insert_hold", skip_all)]
pub(crate) async fn insert_hold(
    conn: &mut PgConnection,
    hold: &Transition,
    actor: Actor<'_>,
) -> Result<Option<Booking>, StoreError> {
    let b = &hold.booking;
    let outbox = OutboxRows::of(hold)?;
    let breakdown = serde_json::to_value(&b.breakdown)?;
    let traceparent = crate::telemetry::current_traceparent(actor.traceparent);
    /// The hold's statement; `$guard` is extra SQL on the vehicle row.
    macro_rules! insert {
        ($guard:literal) => {
            booking_rows!(
                [
                    "with b as (
                         insert into bookings (id, region, vehicle_id, user_id, bay_id, destination_bay_id,
                                               period, status, currency, price_minor, breakdown, quote_id,
                                               hold_expires_at, created_at, updated_at, turnaround_minutes)
                         select $1, v.region, v.id, $3, v.bay_id, $4, tstzrange($5, $6, '[)'),
                                $7, $8, $9, $10, $11, $12, $13, $13, coalesce(c.turnaround_minutes, 0)
                           from vehicles v
                           left join vehicle_config c on c.region = v.region and c.class = v.class
                          where v.id = $2 and v.region = $14 and v.status = 'active' ",
                    $guard,
                    " returning *),
                     h as (
                         insert into booking_history (booking_id, from_status, to_status, event, reason, actor,
                                                      request_id, details, at)
                         select id, $15::text, status, $16::text, $17::text, $18::text, $19::text, $20::jsonb, $13
                           from b),
                     o as (
                         insert into outbox (event_id, topic, partition_key, aggregate_id, payload, traceparent)
                         select e.event_id, e.topic, $21, b.id, e.payload, $25::text
                           from b, unnest($22::uuid[], $23::text[], $24::jsonb[])
                                   with ordinality as e(event_id, topic, payload, n)
                          order by e.n)
                     "
                ],
                "from b",
                b.id.uuid,
                b.vehicle_id.uuid,
                b.user_id,
                b.destination_bay_id,
                b.window.start(),
                b.window.end(),
                b.status.as_str(),
                b.price.currency.code(),
                b.price.minor,
                breakdown,
                b.quote_id,
                b.hold_expires_at,
                hold.at,
                b.region().code(),
                hold.from.as_str(),
                hold.record.event,
                hold.record.reason,
                actor.id,
                actor.request_id,
                hold.record.details,
                b.vehicle_id.to_string(),
                &outbox.ids,
                &outbox.topics,
                &outbox.payloads,
                traceparent.as_deref(),
            )
            .fetch_optional(&mut *conn)
        };
    }
    let guarded = insert!(
        "and not exists (select 1 from bookings x
                          where x.vehicle_id = v.id and x.status = 'RESERVING'
                            and x.hold_expires_at <= $13
                            and x.occupied && tstzrange($5::timestamptz,
                                $6::timestamptz + make_interval(mins => coalesce(c.turnaround_minutes, 0)), '[)'))"
    )
    .await?;
    let row = match guarded {
        Some(row) => Some(row),
        None => {
            expire_overlapping_holds(conn, &b.vehicle_id, &b.window, hold.at).await?;
            insert!("").await?
        }
    };
    row.map(Booking::try_from).transpose()
}
