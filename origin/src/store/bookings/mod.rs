//! The booking write path: holds, confirm, cancel, extend, start, complete, and hold expiry.
//!
//! Every state change is ONE SQL statement inside the caller's transaction: a data-modifying
//! CTE that writes the booking row, its `booking_history` row and its `outbox` rows together,
//! so a change either has all three or none. The state machine in `domain::state` decides
//! whether a transition is legal before any SQL runs; the exclusion constraint
//! `bookings_no_overlap` decides whether the vehicle is free (a violation is a 409, see
//! `error.rs`), so no check-then-act race can double-book.

pub mod model;

use chrono::{DateTime, Utc};
use domain::cancellation::{CancellationFee, CancellationPolicy};
use domain::ids::{BookingId, VehicleId};
use domain::quote_token::QuoteClaims;
use domain::state::{BookingEvent, BookingStatus};
use domain::window::{BookingPolicy, TimeWindow};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::app::pricing;
use crate::events::{Event, Topic};
use crate::http::error::{ApiError, ApiResult};
use model::{Booking, BookingRow, Extension, COLUMNS};

/// Who is changing a booking, for the history row.
#[derive(Debug, Clone, Copy)]
pub struct Actor<'a> {
    /// A user id, or `system` for the sweeper.
    pub id: &'a str,
    pub request_id: Option<&'a str>,
}

impl Actor<'static> {
    /// The sweeper and other background work.
    pub const SYSTEM: Actor<'static> = Actor {
        id: "system",
        request_id: None,
    };
}

fn parse_row(row: BookingRow) -> ApiResult<Booking> {
    Booking::try_from(row).map_err(ApiError::Internal)
}

/// Reads a booking, optionally locking its row for the rest of the transaction.
pub async fn fetch(
    conn: &mut PgConnection,
    id: &BookingId,
    for_update: bool,
) -> ApiResult<Option<Booking>> {
    let sql = format!(
        "select {COLUMNS} from bookings where id = $1 and region = $2{}",
        if for_update { " for update" } else { "" }
    );
    let row: Option<BookingRow> = sqlx::query_as(&sql)
        .bind(id.uuid)
        .bind(id.region.code())
        .fetch_optional(conn)
        .await?;
    row.map(parse_row).transpose()
}

fn not_found(id: &BookingId) -> ApiError {
    ApiError::NotFound(format!("booking {id} not found"))
}

/// A booking the caller may see: their own, or any for ops. Others' bookings are a 404, so
/// ids cannot be probed.
pub async fn get_visible(
    pool: &PgPool,
    user: &crate::http::auth::AuthUser,
    id: &BookingId,
) -> ApiResult<Booking> {
    let mut conn = pool.acquire().await?;
    match fetch(&mut conn, id, false).await? {
        Some(b) if b.user_id == user.id || user.is_ops => Ok(b),
        _ => Err(not_found(id)),
    }
}

/// The vehicle of a booking (any user's), to lock it before a transaction changes its
/// occupancy; `None` when there is no such booking.
pub async fn vehicle_of(conn: &mut PgConnection, id: &BookingId) -> ApiResult<Option<VehicleId>> {
    let vehicle: Option<Uuid> =
        sqlx::query_scalar("select vehicle_id from bookings where id = $1 and region = $2")
            .bind(id.uuid)
            .bind(id.region.code())
            .fetch_optional(conn)
            .await?;
    Ok(vehicle.map(|uuid| VehicleId::new(id.region, uuid)))
}

/// Filters for listing bookings.
#[derive(Debug, Clone)]
pub struct ListFilter {
    pub user_id: String,
    pub status: Option<BookingStatus>,
    pub limit: i64,
    /// Keyset cursor: (created_at, id) of the last row of the previous page.
    pub after: Option<(DateTime<Utc>, Uuid)>,
}

/// Lists a user's bookings, newest first.
pub async fn list(pool: &PgPool, filter: &ListFilter) -> ApiResult<Vec<Booking>> {
    let sql = format!(
        "select {COLUMNS} from bookings
          where user_id = $1 and ($2::text is null or status = $2)
            and ($3::timestamptz is null or (created_at, id) < ($3, $4))
          order by created_at desc, id desc limit $5"
    );
    let rows: Vec<BookingRow> = sqlx::query_as(&sql)
        .bind(&filter.user_id)
        .bind(filter.status.map(|s| s.as_str()))
        .bind(filter.after.map(|a| a.0))
        .bind(filter.after.map(|a| a.1).unwrap_or_default())
        .bind(filter.limit)
        .fetch_all(pool)
        .await?;
    rows.into_iter().map(parse_row).collect()
}

/// Writes `after` (the booking's new state), its history row and its events in one statement.
#[allow(clippy::too_many_arguments)]
async fn write_transition(
    conn: &mut PgConnection,
    before: &Booking,
    after: &Booking,
    event: &str,
    topics: &[Topic],
    actor: Actor<'_>,
    reason: Option<&str>,
    details: serde_json::Value,
    now: DateTime<Utc>,
) -> ApiResult<()> {
    let events: Vec<Event> = topics
        .iter()
        .map(|t| Event::new(*t, after, now, reason))
        .collect();
    let (ids, names, payloads) = outbox_columns(&events);
    let done = sqlx::query(
        "with u as (
             update bookings
                set status = $2, hold_expires_at = $3, period = tstzrange($4, $5, '[)'),
                    price_minor = $6, extensions = $7, cancellation_fee_minor = $8, updated_at = $9
              where id = $1
          returning id, vehicle_id, region),
         h as (
             insert into booking_history (booking_id, from_status, to_status, event, reason, actor, request_id, details, at)
             select id, $10, $2, $11, $12, $13, $14, $15, $9 from u)
         insert into outbox (event_id, topic, partition_key, aggregate_id, payload)
         select e.event_id, e.topic, $16, u.id, e.payload
           from u, unnest($17::uuid[], $18::text[], $19::jsonb[]) with ordinality as e(event_id, topic, payload, n)
          order by e.n",
    )
    .bind(after.id.uuid)
    .bind(after.status.as_str())
    .bind(after.hold_expires_at)
    .bind(after.window.start())
    .bind(after.window.end())
    .bind(after.price.minor)
    .bind(Json(&after.extensions))
    .bind(after.cancellation_fee.map(|m| m.minor))
    .bind(now)
    .bind(before.status.as_str())
    .bind(event)
    .bind(reason)
    .bind(actor.id)
    .bind(actor.request_id)
    .bind(details)
    .bind(after.vehicle_id.to_string())
    .bind(&ids)
    .bind(&names)
    .bind(&payloads)
    .execute(conn)
    .await?;
    if done.rows_affected() != events.len() as u64 {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "transition of {} wrote {} outbox rows, expected {}",
            after.id,
            done.rows_affected(),
            events.len()
        )));
    }
    Ok(())
}

fn outbox_columns(events: &[Event]) -> (Vec<Uuid>, Vec<&'static str>, Vec<serde_json::Value>) {
    (
        events.iter().map(|e| e.event_id).collect(),
        events.iter().map(|e| e.topic.as_str()).collect(),
        events
            .iter()
            .map(|e| serde_json::to_value(e).unwrap_or_default())
            .collect(),
    )
}

/// Ends expired holds on one vehicle that overlap `window`, so a new hold does not wait for
/// the sweeper. Returns how many it ended.
pub async fn expire_overlapping_holds(
    conn: &mut PgConnection,
    vehicle: &VehicleId,
    window: &TimeWindow,
    now: DateTime<Utc>,
) -> ApiResult<usize> {
    let sql = format!(
        "select {COLUMNS} from bookings
          where vehicle_id = $1 and status = 'RESERVING' and hold_expires_at <= $2
            and period && tstzrange($3, $4, '[)')
          for update skip locked"
    );
    let rows: Vec<BookingRow> = sqlx::query_as(&sql)
        .bind(vehicle.uuid)
        .bind(now)
        .bind(window.start())
        .bind(window.end())
        .fetch_all(&mut *conn)
        .await?;
    let count = rows.len();
    for row in rows {
        expire_hold(conn, parse_row(row)?, now).await?;
    }
    Ok(count)
}

async fn expire_hold(
    conn: &mut PgConnection,
    before: Booking,
    now: DateTime<Utc>,
) -> ApiResult<()> {
    let status = before
        .status
        .apply(BookingEvent::Fail)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("expire hold: {e}")))?;
    let after = Booking {
        status,
        hold_expires_at: None,
        ..before.clone()
    };
    let details = serde_json::json!({ "hold_expires_at": before.hold_expires_at });
    write_transition(
        conn,
        &before,
        &after,
        "fail",
        &[Topic::BookingFailed, Topic::VehicleReleased],
        Actor::SYSTEM,
        Some("hold_expired"),
        details,
        now,
    )
    .await
}

/// The sweeper's batch: ends up to `batch` expired holds, skipping rows another origin is
/// working on. Returns how many it ended.
pub async fn sweep_expired_holds(
    pool: &PgPool,
    now: DateTime<Utc>,
    batch: i64,
) -> ApiResult<usize> {
    let mut tx = pool.begin().await?;
    let sql = format!(
        "select {COLUMNS} from bookings
          where status = 'RESERVING' and hold_expires_at <= $1
          order by hold_expires_at limit $2
          for update skip locked"
    );
    let rows: Vec<BookingRow> = sqlx::query_as(&sql)
        .bind(now)
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?;
    let count = rows.len();
    for row in rows {
        expire_hold(&mut tx, parse_row(row)?, now).await?;
    }
    tx.commit().await?;
    Ok(count)
}

/// Creates a hold (RESERVING) from a verified quote: the price is the quote's.
///
/// One round trip in the common case: the insert itself checks that no *expired* hold
/// overlaps the window (`not exists`, on the `(vehicle_id, period)` index) and inserts nothing
/// if one does. Only then — rarely — are those holds ended ([`expire_overlapping_holds`]) and
/// the insert repeated without the check, so lazy expiry costs nothing when there is nothing
/// to expire. The guard is an optimisation only: the exclusion constraint still decides.
pub async fn create_hold(
    conn: &mut PgConnection,
    quote: &QuoteClaims,
    actor: Actor<'_>,
    hold_ttl: chrono::Duration,
    now: DateTime<Utc>,
) -> ApiResult<Booking> {
    let status = BookingStatus::PriceQuoted
        .apply(BookingEvent::Hold)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("{e}")))?;
    let id = BookingId {
        region: quote.region,
        uuid: Uuid::now_v7(),
    };
    let hold_expires_at = now + hold_ttl;
    // The events describe the booking as it will be; the bay is filled in from the row.
    let draft = Booking {
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
        quote_id: quote.quote_id,
        hold_expires_at: Some(hold_expires_at),
        cancellation_fee: None,
        created_at: now,
        updated_at: now,
    };
    let events = [
        Event::new(Topic::BookingCreated, &draft, now, None),
        Event::new(Topic::VehicleReserved, &draft, now, None),
    ];
    let (ids, names, payloads) = outbox_columns(&events);
    for guarded in [true, false] {
        if !guarded {
            expire_overlapping_holds(conn, &quote.vehicle_id, &quote.window, now).await?;
        }
        let guard = if guarded {
            "and not exists (select 1 from bookings x
                              where x.vehicle_id = v.id and x.status = 'RESERVING'
                                and x.hold_expires_at <= $13 and x.period && tstzrange($5, $6, '[)'))"
        } else {
            ""
        };
        if let Some(row) = insert_hold(
            conn,
            guard,
            quote,
            id,
            status,
            hold_expires_at,
            actor,
            now,
            (&ids, &names, &payloads),
        )
        .await?
        {
            return parse_row(row);
        }
    }
    Err(ApiError::NotFound(format!(
        "vehicle {} is not available for booking",
        quote.vehicle_id
    )))
}

/// The hold's insert CTE (booking, history, outbox rows); `guard` is extra SQL on the vehicle
/// row. `None` when nothing was inserted.
#[allow(clippy::too_many_arguments)]
async fn insert_hold(
    conn: &mut PgConnection,
    guard: &str,
    quote: &QuoteClaims,
    id: BookingId,
    status: BookingStatus,
    hold_expires_at: DateTime<Utc>,
    actor: Actor<'_>,
    now: DateTime<Utc>,
    (ids, names, payloads): (&[Uuid], &[&'static str], &[serde_json::Value]),
) -> ApiResult<Option<BookingRow>> {
    let sql = format!(
        "with b as (
             insert into bookings (id, region, vehicle_id, user_id, bay_id, destination_bay_id, period,
                                   status, currency, price_minor, breakdown, quote_id, hold_expires_at,
                                   created_at, updated_at)
             select $1, v.region, v.id, $3, v.bay_id, $4, tstzrange($5, $6, '[)'),
                    $7, $8, $9, $10, $11, $12, $13, $13
               from vehicles v
              where v.id = $2 and v.region = $14 and v.status = 'active' {guard}
          returning *),
         h as (
             insert into booking_history (booking_id, from_status, to_status, event, actor, request_id, details, at)
             select id, $15, status, 'hold', $3, $16, jsonb_build_object('quote_id', quote_id), $13 from b),
         o as (
             insert into outbox (event_id, topic, partition_key, aggregate_id, payload)
             select e.event_id, e.topic, $17, b.id, e.payload
               from b, unnest($18::uuid[], $19::text[], $20::jsonb[]) with ordinality as e(event_id, topic, payload, n)
              order by e.n)
         select {COLUMNS} from b"
    );
    let row: Option<BookingRow> = sqlx::query_as(&sql)
        .bind(id.uuid)
        .bind(quote.vehicle_id.uuid)
        .bind(&quote.user_id)
        .bind(quote.destination_bay_id)
        .bind(quote.window.start())
        .bind(quote.window.end())
        .bind(status.as_str())
        .bind(quote.total.currency.code())
        .bind(quote.total.minor)
        .bind(Json(&quote.breakdown))
        .bind(quote.quote_id)
        .bind(hold_expires_at)
        .bind(now)
        .bind(quote.region.code())
        .bind(BookingStatus::PriceQuoted.as_str())
        .bind(actor.request_id)
        .bind(quote.vehicle_id.to_string())
        .bind(ids)
        .bind(names)
        .bind(payloads)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row)
}

/// A user action on an existing booking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Confirm,
    Cancel,
    Start,
    Complete,
    Extend { new_end: DateTime<Utc> },
}

/// What an action did, beyond the booking's new state.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub booking: Booking,
    pub cancellation: Option<CancellationFee>,
    pub extension: Option<Extension>,
}

/// How early before its start a booking may be started.
pub const START_EARLY_MINUTES: i64 = 15;

/// Rules an action needs besides the booking itself.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    pub policy: &'a BookingPolicy,
    pub cancellation: &'a CancellationPolicy,
}

/// Applies `action` to the caller's booking `id` inside the caller's transaction.
pub async fn act(
    conn: &mut PgConnection,
    id: &BookingId,
    action: Action,
    actor: Actor<'_>,
    rules: Rules<'_>,
    now: DateTime<Utc>,
) -> ApiResult<Outcome> {
    let before = match fetch(conn, id, true).await? {
        Some(b) if b.user_id == actor.id => b,
        _ => return Err(not_found(id)),
    };
    let event = match action {
        Action::Confirm => BookingEvent::Confirm,
        Action::Cancel => BookingEvent::Cancel,
        Action::Start => BookingEvent::Start,
        Action::Complete => BookingEvent::Complete,
        Action::Extend { .. } => {
            return extend(conn, before, action, actor, rules, now).await;
        }
    };
    let status = before
        .status
        .apply(event)
        .map_err(|e| ApiError::InvalidState(e.to_string()))?;
    let mut after = Booking {
        status,
        hold_expires_at: None,
        updated_at: now,
        ..before.clone()
    };
    let mut cancellation = None;
    let topics: &[Topic] = match action {
        Action::Confirm => {
            if before.hold_expires_at.is_some_and(|at| at <= now) {
                return Err(ApiError::HoldExpired(format!(
                    "the hold on booking {id} expired; make a new booking"
                )));
            }
            &[Topic::BookingConfirmed]
        }
        Action::Cancel => {
            let fee =
                rules
                    .cancellation
                    .fee(before.price, before.window.start(), now, before.status);
            after.cancellation_fee = Some(fee.fee);
            cancellation = Some(fee);
            &[Topic::BookingCancelled, Topic::VehicleReleased]
        }
        Action::Start => {
            let earliest = before.window.start() - chrono::Duration::minutes(START_EARLY_MINUTES);
            if now < earliest || now >= before.window.end() {
                return Err(ApiError::InvalidState(format!(
                    "a booking can be started from {START_EARLY_MINUTES} minutes before its start until its end"
                )));
            }
            &[Topic::BookingStarted]
        }
        Action::Complete => &[Topic::BookingCompleted, Topic::VehicleReleased],
        Action::Extend { .. } => &[],
    };
    let details = match &cancellation {
        Some(fee) => {
            serde_json::json!({ "fee_minor": fee.fee.minor, "refund_minor": fee.refund.minor })
        }
        None => serde_json::json!({}),
    };
    write_transition(
        conn,
        &before,
        &after,
        &event.to_string(),
        topics,
        actor,
        None,
        details,
        now,
    )
    .await?;
    Ok(Outcome {
        booking: after,
        cancellation,
        extension: None,
    })
}

async fn extend(
    conn: &mut PgConnection,
    before: Booking,
    action: Action,
    actor: Actor<'_>,
    rules: Rules<'_>,
    now: DateTime<Utc>,
) -> ApiResult<Outcome> {
    let Action::Extend { new_end } = action else {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "extend called for {action:?}"
        )));
    };
    if !matches!(
        before.status,
        BookingStatus::Confirmed | BookingStatus::InProgress
    ) {
        return Err(ApiError::InvalidState(format!(
            "only a CONFIRMED or IN_PROGRESS booking can be extended; this one is {}",
            before.status
        )));
    }
    if before.window.end() <= now {
        return Err(ApiError::InvalidState(
            "the booking has already ended".into(),
        ));
    }
    let window = before
        .window
        .extended_to(new_end)
        .map_err(|e| ApiError::field("end", e.to_string()))?;
    if window.duration_minutes() > rules.policy.max_duration.num_minutes() {
        return Err(ApiError::field(
            "end",
            format!(
                "a booking may last at most {} minutes",
                rules.policy.max_duration.num_minutes()
            ),
        ));
    }
    let (class, tz): (String, String) = sqlx::query_as(
        "select v.class, b.timezone from vehicles v join parking_bays b on b.id = v.bay_id where v.id = $1",
    )
    .bind(before.vehicle_id.uuid)
    .fetch_one(&mut *conn)
    .await?;
    let class: domain::vehicle::VehicleClass = class.parse().map_err(crate::store::corrupt)?;
    let ctx = pricing::context(conn, before.region(), class).await?;
    let tz = pricing::parse_tz(&tz)?;
    let old = pricing::quote_price(
        &ctx,
        &before.window,
        tz,
        pricing::Signals::NEUTRAL,
        pricing::Customer::default(),
        now,
    )?;
    let new = pricing::quote_price(
        &ctx,
        &window,
        tz,
        pricing::Signals::NEUTRAL,
        pricing::Customer::default(),
        now,
    )?;
    let amount_minor = (new.total.minor - old.total.minor).max(0);
    let extension = Extension {
        from: before.window.end(),
        to: new_end,
        amount_minor,
    };
    let mut after = before.clone();
    after.window = window;
    after.price.minor = before
        .price
        .minor
        .checked_add(amount_minor)
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("price overflow")))?;
    after.extensions.push(extension.clone());
    after.updated_at = now;
    let details = serde_json::json!({ "from": extension.from, "to": extension.to, "amount_minor": amount_minor });
    // Same state: the history row records the event `extend` from and to the same status.
    write_transition(
        conn,
        &before,
        &after,
        "extend",
        &[Topic::BookingExtended],
        actor,
        Some("extended"),
        details,
        now,
    )
    .await
    .map_err(|e| match e {
        ApiError::Conflict(_) => ApiError::Conflict(
            "the vehicle is booked by someone else after your booking; it cannot be extended to that time"
                .into(),
        ),
        other => other,
    })?;
    Ok(Outcome {
        booking: after,
        cancellation: None,
        extension: Some(extension),
    })
}
