//! Search candidates: active vehicles that match the filters and are free for the window.
//!
//! Two statements that differ only in how they bound the bays: by the vehicle ids the GEO
//! index found ([`near_ids`]), or by a bounding box on the bays' coordinates when the index
//! cannot answer ([`in_box`]). Everything else is one text, joined around the bound
//! (`candidates_where!`), because the search must answer the same with or without Redis. The
//! window check is the occupancy predicate of `store::vehicles` (expired holds do not count),
//! and no active maintenance block (`vehicle_blocks`) may overlap the booking it would be.

use chrono::{DateTime, Utc};
use domain::ids::VehicleId;
use domain::region::Region;
use domain::vehicle::VehicleClass;
use domain::window::TimeWindow;
use sqlx::PgPool;
use uuid::Uuid;

use super::corrupt;

/// The filters and window every candidate must pass.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Filters<'a> {
    pub regions: &'a [Region],
    pub class: Option<VehicleClass>,
    pub min_seats: Option<i16>,
    pub fuel: Option<&'a str>,
    pub window: &'a TimeWindow,
    /// Holds that expired before this instant do not occupy.
    pub now: DateTime<Utc>,
    /// The most rows returned.
    pub limit: i64,
}

/// The bays' coordinate box to search in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct BoundingBox {
    pub min_lat: f64,
    pub max_lat: f64,
    pub min_lon: f64,
    pub max_lon: f64,
}

/// A candidate vehicle with its bay.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Candidate {
    pub vehicle_id: VehicleId,
    pub class: VehicleClass,
    pub make: String,
    pub model: String,
    pub seats: i16,
    pub fuel: String,
    pub bay_id: Uuid,
    pub bay_name: String,
    pub lat: f64,
    pub lon: f64,
    /// The bay's IANA time zone.
    pub timezone: String,
}

struct CandidateRow {
    id: Uuid,
    region: String,
    class: String,
    make: String,
    model: String,
    seats: i16,
    fuel: String,
    bay_id: Uuid,
    bay_name: String,
    lat: f64,
    lon: f64,
    timezone: String,
}

impl CandidateRow {
    fn into_candidate(self) -> sqlx::Result<Candidate> {
        Ok(Candidate {
            vehicle_id: VehicleId::new(self.region.parse().map_err(corrupt)?, self.id),
            class: self.class.parse().map_err(corrupt)?,
            make: self.make,
            model: self.model,
            seats: self.seats,
            fuel: self.fuel,
            bay_id: self.bay_id,
            bay_name: self.bay_name,
            lat: self.lat,
            lon: self.lon,
            timezone: self.timezone,
        })
    }
}

fn candidates(rows: Vec<CandidateRow>) -> sqlx::Result<Vec<Candidate>> {
    rows.into_iter().map(CandidateRow::into_candidate).collect()
}

fn codes(regions: &[Region]) -> Vec<&'static str> {
    regions.iter().map(|r| r.code()).collect()
}

/// The candidate statement around its bound on the bays: the columns, the filters ($1–$4), the
/// window check ($5–$7) and the limit ($8) are one text for both bounds, joined around
/// `$bound`, whose own parameters (`$bound_arg`) come after, from $9.
macro_rules! candidates_where {
    ($bound:literal, $filters:expr $(, $bound_arg:expr)* $(,)?) => {
        sqlx::query_as!(
            CandidateRow,
            r#"select v.id, v.region, v.class, v.make, v.model, v.seats, v.fuel,
                  b.id as bay_id, b.name as bay_name, b.lat, b.lon, b.timezone
             from parking_bays b
             join vehicles v on v.bay_id = b.id
             left join vehicle_config c on c.region = v.region and c.class = v.class
            where "# + $bound + r#"
              and v.status = 'active'
              and ($2::text is null or v.class = $2)
              and ($3::smallint is null or v.seats >= $3)
              and ($4::text is null or v.fuel = $4)
              and not exists (
                  select 1 from bookings k
                   where k.vehicle_id = v.id
                     and k.status in ('RESERVING', 'CONFIRMED', 'IN_PROGRESS')
                     and k.occupied && tstzrange($5::timestamptz,
                         $6::timestamptz + make_interval(mins => coalesce(c.turnaround_minutes, 0)), '[)')
                     and not (k.status = 'RESERVING' and k.hold_expires_at <= $7))
              and not exists (
                  select 1 from vehicle_blocks x
                   where x.vehicle_id = v.id and x.ended_at is null
                     and x.period && tstzrange($5::timestamptz,
                         $6::timestamptz + make_interval(mins => coalesce(c.turnaround_minutes, 0)), '[)'))
            limit $8"#,
            &codes($filters.regions) as &[&str],
            $filters.class.map(VehicleClass::as_str),
            $filters.min_seats,
            $filters.fuel,
            $filters.window.start(),
            $filters.window.end(),
            $filters.now,
            $filters.limit,
            $($bound_arg,)*
        )
    };
}

/// The candidates among `ids` (found by the GEO index).
#[tracing::instrument(level = "debug", name = "db.search.near_ids", skip_all)]
pub(crate) async fn near_ids(
    pool: &PgPool,
    ids: &[Uuid],
    filters: &Filters<'_>,
) -> sqlx::Result<Vec<Candidate>> {
    let rows = candidates_where!("v.region = any($1) and v.id = any($9)", filters, ids)
        .fetch_all(pool)
        .await?;
    candidates(rows)
}

/// The candidates parked inside `area` (when the GEO index cannot answer).
#[tracing::instrument(level = "debug", name = "db.search.in_box", skip_all)]
pub(crate) async fn in_box(
    pool: &PgPool,
    area: BoundingBox,
    filters: &Filters<'_>,
) -> sqlx::Result<Vec<Candidate>> {
    let rows = candidates_where!(
        "b.region = any($1) and b.lat between $9 and $10 and b.lon between $11 and $12",
        filters,
        area.min_lat,
        area.max_lat,
        area.min_lon,
        area.max_lon,
    )
    .fetch_all(pool)
    .await?;
    candidates(rows)
}
