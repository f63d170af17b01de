//! The fleet as the read paths see it: `vehicles` and their `parking_bays`, for quotes, the
//! GEO availability index and the surge grid.
//!
//! Two reads here also look at `bookings`, only through the **occupancy predicate** the
//! exclusion constraint `bookings_no_overlap` covers (RESERVING, CONFIRMED, IN_PROGRESS over an
//! overlapping period), minus holds already past their expiry, which the sweeper has simply not
//! ended yet. The bookings themselves are written by `store::bookings` alone.

use chrono::{DateTime, Utc};
use domain::ids::VehicleId;
use domain::region::Region;
use domain::vehicle::VehicleClass;
use domain::window::TimeWindow;
use sqlx::PgPool;
use uuid::Uuid;

use super::corrupt;

/// What pricing a quote needs to know about an active vehicle.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PricingFacts {
    pub class: VehicleClass,
    /// Its bay's IANA time zone (time-of-day multipliers are local).
    pub timezone: String,
    /// Its bay's position (the surge cell).
    pub lat: f64,
    pub lon: f64,
    /// Whether the vehicle is taken for part of the quoted window at `now`: a booking
    /// occupies it (a hold past its expiry does not), turnaround buffers included — a
    /// booking's range runs to its end plus its buffer, and the window is extended by the
    /// class's buffer (`booking_occupied`, the constraint's own ranges) — or an active
    /// maintenance block overlaps that range, or the range is offered to another waitlisted
    /// user than the one asking for now. Advisory: the exclusion constraint, the block rule
    /// (`bookings_not_blocked`) and the offer rule (`bookings_waitlist_offer`) decide when the
    /// hold is written. The predicate is the SQL function `vehicle_taken`, shared with the
    /// waitlist's joins and offers.
    pub occupied: bool,
}

/// The pricing facts of `vehicle` if it is active in its region (`None` otherwise), with
/// whether it is taken for part of `window` for `user` at `now`: one statement, so a quote
/// that misses its cache costs one PostgreSQL round trip before pricing, not two.
#[tracing::instrument(level = "debug", name = "db.vehicles.quote_facts", skip_all)]
pub(crate) async fn quote_facts(
    pool: &PgPool,
    vehicle: &VehicleId,
    window: &TimeWindow,
    now: DateTime<Utc>,
    user: &str,
) -> sqlx::Result<Option<PricingFacts>> {
    let row = sqlx::query!(
        r#"select v.class, b.timezone, b.lat, b.lon,
                  vehicle_taken(v.id, $3, $4, $5, $6) as "occupied!"
             from vehicles v join parking_bays b on b.id = v.bay_id
            where v.id = $1 and v.region = $2 and v.status = 'active'"#,
        vehicle.uuid,
        vehicle.region.code(),
        window.start(),
        window.end(),
        now,
        user,
    )
    .fetch_optional(pool)
    .await?;
    row.map(|row| {
        Ok(PricingFacts {
            class: row.class.parse().map_err(corrupt)?,
            timezone: row.timezone,
            lat: row.lat,
            lon: row.lon,
            occupied: row.occupied,
        })
    })
    .transpose()
}

/// Whether `bay` is a parking bay of `region`.
#[tracing::instrument(level = "debug", name = "db.vehicles.bay_in_region", skip_all)]
pub(crate) async fn bay_in_region(pool: &PgPool, bay: Uuid, region: Region) -> sqlx::Result<bool> {
    sqlx::query_scalar!(
        r#"select exists(select 1 from parking_bays where id = $1 and region = $2) as "exists!""#,
        bay,
        region.code(),
    )
    .fetch_one(pool)
    .await
}

/// One range during which a vehicle is taken, as the availability index keeps it: a booking's
/// occupied range (its window plus its turnaround buffer) or an active maintenance block's
/// window; `expires` is a hold's expiry (after it the range no longer counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Taken {
    pub vehicle: Uuid,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub expires: Option<DateTime<Utc>>,
}

/// Every range that takes a vehicle after `now` — of `region`'s vehicles, or of one `vehicle`
/// — ordered by vehicle and start: the occupancy the availability index mirrors
/// ([`crate::redis::availability`]). The same predicates as [`quote_facts`]' `occupied`.
#[tracing::instrument(level = "debug", name = "db.vehicles.taken", skip_all)]
pub(crate) async fn taken<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    region: Option<Region>,
    vehicle: Option<Uuid>,
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<Taken>> {
    sqlx::query_as!(
        Taken,
        r#"select b.vehicle_id as "vehicle!", lower(b.occupied) as "start!", upper(b.occupied) as "end!",
                  case when b.status = 'RESERVING' then b.hold_expires_at end as expires
             from bookings b join vehicles v on v.id = b.vehicle_id
            where ($1::text is null or v.region = $1) and ($2::uuid is null or b.vehicle_id = $2)
              and b.status in ('RESERVING', 'CONFIRMED', 'IN_PROGRESS')
              and upper(b.occupied) > $3
              and not (b.status = 'RESERVING' and b.hold_expires_at <= $3)
           union all
           select k.vehicle_id, lower(k.period), upper(k.period), null
             from vehicle_blocks k join vehicles v on v.id = k.vehicle_id
            where ($1::text is null or v.region = $1) and ($2::uuid is null or k.vehicle_id = $2)
              and k.ended_at is null and upper(k.period) > $3
           order by 1, 2"#,
        region.map(|r| r.code()),
        vehicle,
        now,
    )
    .fetch_all(conn)
    .await
}

/// An active vehicle at its bay's position.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Position {
    pub vehicle: Uuid,
    pub lon: f64,
    pub lat: f64,
}

/// Every active vehicle of `region` at its bay's position, ordered by vehicle id (what the GEO
/// availability index holds).
#[tracing::instrument(level = "debug", name = "db.vehicles.active_positions", skip_all)]
pub(crate) async fn active_positions(pool: &PgPool, region: Region) -> sqlx::Result<Vec<Position>> {
    sqlx::query_as!(
        Position,
        "select v.id as vehicle, b.lon, b.lat
           from vehicles v join parking_bays b on b.id = v.bay_id
          where v.region = $1 and v.status = 'active'
          order by v.id",
        region.code(),
    )
    .fetch_all(pool)
    .await
}

/// A bay's supply and live demand, the surge grid's input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct BayLoad {
    pub lat: f64,
    pub lon: f64,
    /// Active vehicles parked there.
    pub supply: i64,
    /// Bookings of its vehicles made in the last hour that still hold or have confirmed one.
    pub holds: i64,
}

/// The load of every bay of `region`.
#[tracing::instrument(level = "debug", name = "db.vehicles.bay_loads", skip_all)]
pub(crate) async fn bay_loads(pool: &PgPool, region: Region) -> sqlx::Result<Vec<BayLoad>> {
    sqlx::query_as!(
        BayLoad,
        r#"select b.lat, b.lon,
                  (select count(*) from vehicles v where v.bay_id = b.id and v.status = 'active')
                      as "supply!",
                  (select count(*) from bookings k
                    where k.bay_id = b.id and k.created_at > now() - interval '1 hour'
                      and (k.status in ('CONFIRMED', 'IN_PROGRESS')
                           or (k.status = 'RESERVING' and k.hold_expires_at > now())))
                      as "holds!"
             from parking_bays b where b.region = $1"#,
        region.code(),
    )
    .fetch_all(pool)
    .await
}
