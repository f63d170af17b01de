//! The waitlist repository: `waitlist_entries`. The rules that move the line (offers made in
//! the transaction that frees a window, the refusal of other users' bookings over a live offer,
//! the waiter's own booking taking it) live in the database's triggers, migration
//! `20261208000001_waitlist.sql`, so every write path keeps them; this module joins, reads,
//! withdraws and advances.

use chrono::{DateTime, Utc};
use domain::ids::VehicleId;
use domain::region::Region;
use domain::window::TimeWindow;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// An entry as stored, with its place in line while it waits.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub id: Uuid,
    pub region: String,
    /// The vehicle waited for, or none for a wait for any vehicle of `class` at `bay_id`.
    pub vehicle_id: Option<Uuid>,
    pub class: Option<String>,
    pub bay_id: Option<Uuid>,
    /// The vehicle an offer is (or was) for.
    pub offered_vehicle_id: Option<Uuid>,
    pub user_id: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// `waiting`, `offered`, `booked`, `lapsed`, `expired` or `withdrawn`.
    pub state: String,
    pub offered_at: Option<DateTime<Utc>>,
    pub offer_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// While waiting: 1 + the live entries of the same line before it whose windows overlap
    /// its own.
    pub position: Option<i64>,
}

/// Why an entry could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JoinError {
    #[error("no active vehicle {0}")]
    NoVehicle(VehicleId),
    #[error("no active {class} vehicle parks at bay {bay} of region {region}")]
    NoVehicleOfClass {
        region: Region,
        class: String,
        bay: Uuid,
    },
    #[error("vehicle {0} is free for that window: quote and book it instead of waiting")]
    Free(VehicleId),
    #[error("you are already in this line for part of that window ({entry})")]
    AlreadyWaiting { entry: Uuid },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Why an entry could not be withdrawn.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WithdrawError {
    #[error("the entry is {0}: only a waiting or offered entry can leave the line")]
    Settled(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// What a waiter wants.
#[derive(Debug, Clone)]
pub(crate) enum Wanted {
    /// This vehicle.
    Vehicle(VehicleId),
    /// Any vehicle of `class` parked at `bay` (a bay of `region`).
    Class {
        region: Region,
        class: String,
        bay: Uuid,
    },
}

/// Selects entries with their position (`$1`: the condition's first parameter onwards).
macro_rules! entry_rows {
    ($condition:literal $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            Entry,
            r#"select w.id, w.region, w.vehicle_id, w.class, w.bay_id, w.offered_vehicle_id,
                      w.user_id, lower(w.period) as "start!", upper(w.period) as "end!", w.state,
                      w.offered_at, w.offer_until, w.created_at, w.updated_at,
                      case when w.state = 'waiting' then 1 + (
                          select count(*) from waitlist_entries o
                           where o.state in ('waiting', 'offered')
                             and o.period && w.period and (o.created_at, o.id) < (w.created_at, w.id)
                             and (o.vehicle_id = w.vehicle_id
                                  or (w.vehicle_id is null and o.vehicle_id is null
                                      and o.region = w.region and o.class = w.class
                                      and o.bay_id = w.bay_id)))
                      end as position
                 from waitlist_entries w "# + $condition
            $(, $arg)*
        )
    };
}

/// Puts `user` in line for `window` of what they want, under the write lock of every vehicle
/// concerned (taken in id order; every other writer holds one vehicle's lock at a time, so no
/// cycle): each must be taken for the window (a booking, a block, or an offer to someone
/// else), and the user not already waiting in that line for part of it. The locks order the
/// join with the releases, so an entry never waits for a window that was freed, unoffered, a
/// moment before it joined.
#[tracing::instrument(level = "debug", name = "db.waitlist.join", skip_all)]
pub(crate) async fn join(
    conn: &mut PgConnection,
    id: Uuid,
    wanted: &Wanted,
    user: &str,
    window: &TimeWindow,
    offer_secs: i32,
    now: DateTime<Utc>,
) -> Result<Entry, JoinError> {
    let (region, vehicles) = match wanted {
        Wanted::Vehicle(vehicle) => {
            let active = sqlx::query_scalar!(
                r#"select exists(select 1 from vehicles where id = $1 and region = $2 and status = 'active') as "active!""#,
                vehicle.uuid,
                vehicle.region.code(),
            )
            .fetch_one(&mut *conn)
            .await?;
            if !active {
                return Err(JoinError::NoVehicle(*vehicle));
            }
            (vehicle.region, vec![vehicle.uuid])
        }
        Wanted::Class { region, class, bay } => {
            let ids = sqlx::query_scalar!(
                "select id from vehicles
                  where region = $1 and class = $2 and bay_id = $3 and status = 'active'
                  order by id",
                region.code(),
                class,
                bay,
            )
            .fetch_all(&mut *conn)
            .await?;
            if ids.is_empty() {
                return Err(JoinError::NoVehicleOfClass {
                    region: *region,
                    class: class.clone(),
                    bay: *bay,
                });
            }
            (*region, ids)
        }
    };
    for vehicle in &vehicles {
        sqlx::query!("select lock_vehicle_writes($1, $2)", region.code(), vehicle)
            .execute(&mut *conn)
            .await?;
    }
    let (vehicle_id, class, bay) = match wanted {
        Wanted::Vehicle(v) => (Some(v.uuid), None, None),
        Wanted::Class { class, bay, .. } => (None, Some(class.as_str()), Some(*bay)),
    };
    let mine = sqlx::query_scalar!(
        "select id from waitlist_entries
          where user_id = $1 and state in ('waiting', 'offered') and region = $2
            and period && tstzrange($3, $4, '[)')
            and (vehicle_id = $5 or (vehicle_id is null and class = $6 and bay_id = $7))
          limit 1",
        user,
        region.code(),
        window.start(),
        window.end(),
        vehicle_id,
        class,
        bay,
    )
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(entry) = mine {
        return Err(JoinError::AlreadyWaiting { entry });
    }
    for vehicle in &vehicles {
        if !taken(conn, *vehicle, window, now).await? {
            return Err(JoinError::Free(VehicleId::new(region, *vehicle)));
        }
    }
    sqlx::query!(
        "insert into waitlist_entries (id, region, vehicle_id, class, bay_id, user_id, period, state,
                                       offer_secs, created_at, updated_at)
         values ($1, $2, $3, $4, $5, $6, tstzrange($7, $8, '[)'), 'waiting', $9, $10, $10)",
        id,
        region.code(),
        vehicle_id,
        class,
        bay,
        user,
        window.start(),
        window.end(),
        offer_secs,
        now,
    )
    .execute(&mut *conn)
    .await?;
    Ok(entry_rows!("where w.id = $1", id)
        .fetch_one(&mut *conn)
        .await?)
}

/// Whether `vehicle` is taken for part of `window`: an occupying booking (not an expired
/// hold), an active block or anyone's live offer (the SQL function `vehicle_taken`, which
/// `vehicles::quote_facts` and the offers the database makes share).
async fn taken(
    conn: &mut PgConnection,
    vehicle: Uuid,
    window: &TimeWindow,
    now: DateTime<Utc>,
) -> sqlx::Result<bool> {
    sqlx::query_scalar!(
        r#"select vehicle_taken($1, $2, $3, $4, null) as "taken!""#,
        vehicle,
        window.start(),
        window.end(),
        now,
    )
    .fetch_one(&mut *conn)
    .await
}

/// One entry.
#[tracing::instrument(level = "debug", name = "db.waitlist.get", skip_all)]
pub(crate) async fn get<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    id: Uuid,
) -> sqlx::Result<Option<Entry>> {
    entry_rows!("where w.id = $1", id)
        .fetch_optional(conn)
        .await
}

/// Takes `id` out of the line (`withdrawn`); if it held an offer, the line moves on in the
/// same transaction. `None`: no such entry.
#[tracing::instrument(level = "debug", name = "db.waitlist.withdraw", skip_all)]
pub(crate) async fn withdraw(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<Entry>, WithdrawError> {
    let Some(entry) = get(&mut *conn, id).await? else {
        return Ok(None);
    };
    // An offer holds its vehicle: leave under its lock, and let the line move on.
    let vehicle = entry.offered_vehicle_id.or(entry.vehicle_id);
    if let Some(vehicle) = vehicle {
        sqlx::query!("select lock_vehicle_writes($1, $2)", entry.region, vehicle)
            .execute(&mut *conn)
            .await?;
    }
    let left = sqlx::query_scalar!(
        "update waitlist_entries set state = 'withdrawn', updated_at = now()
          where id = $1 and state in ('waiting', 'offered')
        returning id",
        id
    )
    .fetch_optional(&mut *conn)
    .await?;
    if left.is_none() {
        // Read again under the lock: a trigger may have settled it since the first read.
        let state = sqlx::query_scalar!("select state from waitlist_entries where id = $1", id)
            .fetch_one(&mut *conn)
            .await?;
        return Err(WithdrawError::Settled(state));
    }
    if let (Some(vehicle), "offered") = (vehicle, entry.state.as_str()) {
        sqlx::query_scalar!(
            r#"select waitlist_offer_next($1, $2) as "offered!""#,
            entry.region,
            vehicle
        )
        .fetch_one(&mut *conn)
        .await?;
    }
    Ok(get(&mut *conn, id).await?)
}

/// Vehicles whose line has something to do: an offer whose time is up, or a wait for the
/// vehicle whose window has begun.
#[tracing::instrument(level = "debug", name = "db.waitlist.due", skip_all)]
pub(crate) async fn due(pool: &PgPool, limit: i64) -> sqlx::Result<Vec<(String, Uuid)>> {
    let rows = sqlx::query!(
        r#"select distinct region as "region!", vehicle as "vehicle!" from (
             (select region, offered_vehicle_id as vehicle from waitlist_entries
               where state = 'offered' and offer_until <= now() order by offer_until limit $1)
             union all
             (select region, vehicle_id from waitlist_entries
               where state = 'waiting' and vehicle_id is not null and lower(period) <= now()
               order by lower(period) limit $1)
         ) d"#,
        limit
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.region, r.vehicle)).collect())
}

/// Waits for a class at a bay whose window has begun expire (they hold no vehicle's lock: an
/// offer, made under one, only takes an entry still waiting).
#[tracing::instrument(level = "debug", name = "db.waitlist.expire_class_waits", skip_all)]
pub(crate) async fn expire_class_waits(pool: &PgPool) -> sqlx::Result<u64> {
    Ok(sqlx::query!(
        "update waitlist_entries set state = 'expired', updated_at = now()
          where state = 'waiting' and vehicle_id is null and lower(period) <= now()"
    )
    .execute(pool)
    .await?
    .rows_affected())
}

/// Lapses `vehicle`'s passed offers, expires its begun waits and offers what is free, in one
/// transaction under the vehicle's lock; the offers made.
#[tracing::instrument(level = "debug", name = "db.waitlist.advance", skip_all)]
pub(crate) async fn advance(pool: &PgPool, region: &str, vehicle: Uuid) -> sqlx::Result<i32> {
    let mut tx = pool.begin().await?;
    let offered = sqlx::query_scalar!(
        r#"select waitlist_advance($1, $2) as "offered!""#,
        region,
        vehicle
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(offered)
}
