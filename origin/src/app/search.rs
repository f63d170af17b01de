//! Vehicle search: available vehicles near a point for a time window.
//!
//! Candidates come from the Redis GEO index (`availability.rs`: the nearest active vehicles,
//! by id) or, when Redis cannot answer, from a bounding box on the bays' coordinates (an
//! index range scan). Either way PostgreSQL has the last word: the vehicle is active, matches
//! the filters, and the time-window check is the authoritative `NOT EXISTS` against occupying
//! bookings (expired holds do not count). Distances are always the haversine over
//! PostgreSQL's bay coordinates, so both candidate sources give the same page. Ranking is (distance in whole metres, indicative price, vehicle
//! id). That order depends only on the fleet and the rates, never on bookings, so a keyset
//! cursor over it stays stable while bookings change: a vehicle that gets booked drops out of
//! later pages, nothing shifts or repeats.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use domain::ids::VehicleId;
use domain::region::Region;
use domain::search::{haversine_m, GeoPoint, SearchCursor};
use domain::window::TimeWindow;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::app::pricing;
use crate::http::error::{ApiError, ApiResult};
use crate::redis::availability::Availability;

/// The most candidates one search considers: a bound on work per request.
pub const MAX_CANDIDATES: i64 = 5_000;
/// The widest search radius.
pub const MAX_RADIUS_M: u32 = 50_000;
/// The largest page.
pub const MAX_LIMIT: u32 = 100;

/// A validated search.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    pub center: GeoPoint,
    pub radius_m: u32,
    pub window: TimeWindow,
    pub class: Option<String>,
    pub min_seats: Option<i16>,
    pub fuel: Option<String>,
    pub max_price_minor: Option<i64>,
    pub limit: u32,
    pub cursor: Option<SearchCursor>,
}

impl SearchQuery {
    /// A fingerprint of everything but the cursor and limit: a cursor only continues the
    /// search it came from.
    pub fn fingerprint(&self) -> u64 {
        let text = format!(
            "{}|{}|{}|{}|{}|{:?}|{:?}|{:?}|{:?}",
            self.center.lat(),
            self.center.lon(),
            self.radius_m,
            self.window.start().timestamp(),
            self.window.end().timestamp(),
            self.class,
            self.min_seats,
            self.fuel,
            self.max_price_minor
        );
        let digest = Sha256::digest(text.as_bytes());
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(bytes)
    }
}

/// One available vehicle.
#[derive(Debug, Clone)]
pub struct Hit {
    pub vehicle_id: VehicleId,
    pub class: String,
    pub make: String,
    pub model: String,
    pub seats: i16,
    pub fuel: String,
    pub bay_id: Uuid,
    pub bay_name: String,
    pub lat: f64,
    pub lon: f64,
    pub distance_m: u32,
    pub price_minor: i64,
    pub currency: domain::money::Currency,
}

/// A page of hits.
#[derive(Debug, Clone)]
pub struct Page {
    pub hits: Vec<Hit>,
    pub next: Option<SearchCursor>,
}

type CandidateRow = (
    Uuid,
    String,
    String,
    String,
    String,
    i16,
    String,
    Uuid,
    String,
    f64,
    f64,
    String,
);

/// Everything but the candidate predicate: status, filters ($3–$5), the window ($6, $7) at
/// `now` ($8), the bound ($9). `{where}` selects candidates with $1 and $2.
const CANDIDATES_SQL: &str = "select v.id, v.region, v.class, v.make, v.model, v.seats, v.fuel,
                b.id, b.name, b.lat, b.lon, b.timezone
           from parking_bays b
           join vehicles v on v.bay_id = b.id
          where {where}
            and v.status = 'active'
            and ($3::text is null or v.class = $3)
            and ($4::smallint is null or v.seats >= $4)
            and ($5::text is null or v.fuel = $5)
            and not exists (
                select 1 from bookings k
                 where k.vehicle_id = v.id
                   and k.status in ('RESERVING', 'CONFIRMED', 'IN_PROGRESS')
                   and k.period && tstzrange($6, $7, '[)')
                   and not (k.status = 'RESERVING' and k.hold_expires_at <= $8))
          limit $9";

/// Runs the candidate statement with `first` as `$1` and the shared parameters after it.
async fn fetch_candidates<T>(
    pool: &PgPool,
    sql: &str,
    first: T,
    region_codes: &[&str],
    query: &SearchQuery,
    now: DateTime<Utc>,
) -> ApiResult<Vec<CandidateRow>>
where
    T: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send,
{
    Ok(sqlx::query_as(sql)
        .bind(first)
        .bind(region_codes)
        .bind(&query.class)
        .bind(query.min_seats)
        .bind(&query.fuel)
        .bind(query.window.start())
        .bind(query.window.end())
        .bind(now)
        .bind(MAX_CANDIDATES)
        .fetch_all(pool)
        .await?)
}

/// Runs a search over the regions this origin serves: GEO candidates from `availability`
/// when it can answer, else the PostgreSQL bounding box.
pub async fn search(
    pool: &PgPool,
    availability: &Availability,
    caches: &crate::redis::cache::Caches,
    regions: &[Region],
    query: &SearchQuery,
    now: DateTime<Utc>,
) -> ApiResult<Page> {
    let lat = query.center.lat();
    let lon = query.center.lon();
    let region_codes: Vec<&str> = regions.iter().map(|r| r.code()).collect();
    let geo = availability
        .candidates(query.center, query.radius_m, MAX_CANDIDATES)
        .await;
    // The two candidate sources differ only in how they bound the bays ($1 and the `where`);
    // the availability check and filters ($2..) are the same statement.
    let rows: Vec<CandidateRow> = match geo {
        Some(ids) if ids.is_empty() => Vec::new(),
        Some(ids) => {
            let sql = CANDIDATES_SQL.replace("{where}", "v.id = any($1) and v.region = any($2)");
            fetch_candidates(pool, &sql, ids, &region_codes, query, now).await?
        }
        None => {
            let dlat = f64::from(query.radius_m) / 111_320.0;
            let dlon = f64::from(query.radius_m) / (111_320.0 * lat.to_radians().cos().max(0.01));
            let sql = CANDIDATES_SQL.replace(
                "{where}",
                "b.region = any($2) and b.lat between ($1::float8[])[1] and ($1::float8[])[2]
            and b.lon between ($1::float8[])[3] and ($1::float8[])[4]",
            );
            let bounds = vec![lat - dlat, lat + dlat, lon - dlon, lon + dlon];
            fetch_candidates(pool, &sql, bounds, &region_codes, query, now).await?
        }
    };

    // Pricing context per (region, class), from L2, looked up once per search.
    let mut contexts: HashMap<(Region, String), pricing::PricingContext> = HashMap::new();
    let mut hits = Vec::new();
    for (id, region, class, make, model, seats, fuel, bay_id, bay_name, blat, blon, tz) in rows {
        let distance = haversine_m(lat, lon, blat, blon);
        if distance > f64::from(query.radius_m) {
            continue;
        }
        let region: Region = region
            .parse()
            .map_err(|_| ApiError::Internal(anyhow::anyhow!("bad region {region}")))?;
        let key = (region, class.clone());
        if !contexts.contains_key(&key) {
            let ctx = caches.pricing(pool, region, &class).await?;
            contexts.insert(key.clone(), ctx);
        }
        let Some(ctx) = contexts.get(&key) else {
            continue;
        };
        let price_minor = pricing::indicative_price(ctx, &query.window, pricing::parse_tz(&tz)?)?;
        if query.max_price_minor.is_some_and(|max| price_minor > max) {
            continue;
        }
        hits.push(Hit {
            vehicle_id: VehicleId { region, uuid: id },
            class,
            make,
            model,
            seats,
            fuel,
            bay_id,
            bay_name,
            lat: blat,
            lon: blon,
            // Whole metres: the ranking key must be exact to be a stable cursor.
            distance_m: distance.round() as u32,
            price_minor,
            currency: ctx.rate.currency,
        });
    }
    hits.sort_by(|a, b| {
        (a.distance_m, a.price_minor, a.vehicle_id.uuid).cmp(&(
            b.distance_m,
            b.price_minor,
            b.vehicle_id.uuid,
        ))
    });
    if let Some(cursor) = &query.cursor {
        let after = (cursor.distance_m, cursor.price_minor, cursor.vehicle);
        hits.retain(|h| (h.distance_m, h.price_minor, h.vehicle_id.uuid) > after);
    }
    let limit = query.limit as usize;
    let next = if hits.len() > limit {
        hits.truncate(limit);
        hits.last().map(|h| SearchCursor {
            distance_m: h.distance_m,
            price_minor: h.price_minor,
            vehicle: h.vehicle_id.uuid,
            query_hash: query.fingerprint(),
        })
    } else {
        None
    };
    Ok(Page { hits, next })
}
