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

use std::collections::hash_map::{Entry, HashMap};

use chrono::{DateTime, Utc};
use domain::region::Region;
use domain::search::{haversine_m, GeoPoint, SearchCursor};
use domain::vehicle::VehicleClass;
use domain::window::TimeWindow;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::app::pricing::{self, PricingError};
use crate::redis::availability::Availability;
use crate::store::search::{self as store, BoundingBox, Candidate, Filters};

/// Why a search could not be answered (each a server-side failure; bad input is refused
/// before a [`SearchQuery`] exists).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SearchError {
    /// A candidate's indicative price could not be computed.
    #[error(transparent)]
    Pricing(#[from] PricingError),
    /// The candidate query failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The most candidates one search considers: a bound on work per request.
pub(crate) const MAX_CANDIDATES: i64 = 5_000;
/// The widest search radius.
pub(crate) const MAX_RADIUS_M: u32 = 50_000;
/// The largest page.
pub(crate) const MAX_LIMIT: u32 = 100;

/// A validated search.
#[derive(Debug, Clone)]
pub(crate) struct SearchQuery {
    pub center: GeoPoint,
    pub radius_m: u32,
    pub window: TimeWindow,
    pub class: Option<VehicleClass>,
    pub min_seats: Option<i16>,
    pub fuel: Option<String>,
    pub max_price_minor: Option<i64>,
    pub limit: u32,
    pub cursor: Option<SearchCursor>,
}

impl SearchQuery {
    /// A fingerprint of everything but the cursor and limit: a cursor only continues the
    /// search it came from.
    pub(crate) fn fingerprint(&self) -> u64 {
        // The class as its name (`Some("van")`), as when it was a string: cursors handed out
        // before stay valid.
        let text = format!(
            "{}|{}|{}|{}|{}|{:?}|{:?}|{:?}|{:?}",
            self.center.lat(),
            self.center.lon(),
            self.radius_m,
            self.window.start().timestamp(),
            self.window.end().timestamp(),
            self.class.map(VehicleClass::as_str),
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

/// One available vehicle: the candidate as PostgreSQL found it, with its distance and price.
#[derive(Debug, Clone)]
pub(crate) struct Hit {
    pub vehicle: Candidate,
    pub distance_m: u32,
    pub price_minor: i64,
    pub currency: domain::money::Currency,
}

impl Hit {
    /// The indicative price for the window.
    pub(crate) fn price(&self) -> domain::money::Money {
        domain::money::Money::new(self.price_minor, self.currency)
    }
}

/// A page of hits.
#[derive(Debug, Clone)]
pub(crate) struct Page {
    pub hits: Vec<Hit>,
    pub next: Option<SearchCursor>,
}

/// Runs a search over the regions this origin serves: GEO candidates from `availability`
/// when it can answer, else the PostgreSQL bounding box.
pub(crate) async fn search(
    pool: &PgPool,
    availability: &Availability,
    caches: &crate::redis::cache::Caches,
    regions: &[Region],
    query: &SearchQuery,
    now: DateTime<Utc>,
) -> Result<Page, SearchError> {
    let lat = query.center.lat();
    let lon = query.center.lon();
    let geo = availability
        .candidates(
            query.center,
            query.radius_m,
            MAX_CANDIDATES,
            &query.window,
            now,
        )
        .await;
    let filters = Filters {
        regions,
        class: query.class,
        min_seats: query.min_seats,
        fuel: query.fuel.as_deref(),
        window: &query.window,
        now,
        limit: MAX_CANDIDATES,
    };
    // The two candidate sources differ only in how they bound the bays; the availability
    // check and the filters are the same.
    let rows: Vec<Candidate> = match geo {
        Some(ids) if ids.is_empty() => Vec::new(),
        Some(ids) => store::near_ids(pool, &ids, &filters).await?,
        None => {
            let dlat = f64::from(query.radius_m) / 111_320.0;
            let dlon = f64::from(query.radius_m) / (111_320.0 * lat.to_radians().cos().max(0.01));
            let area = BoundingBox {
                min_lat: lat - dlat,
                max_lat: lat + dlat,
                min_lon: lon - dlon,
                max_lon: lon + dlon,
            };
            store::in_box(pool, area, &filters).await?
        }
    };

    // Pricing context per (region, class), from L2, looked up once per search.
    let mut contexts: HashMap<(Region, VehicleClass), pricing::PricingContext> = HashMap::new();
    let mut hits = Vec::new();
    for row in rows {
        let distance = haversine_m(lat, lon, row.lat, row.lon);
        if distance > f64::from(query.radius_m) {
            continue;
        }
        let region = row.vehicle_id.region;
        let ctx = match contexts.entry((region, row.class)) {
            Entry::Occupied(cached) => cached.into_mut(),
            Entry::Vacant(slot) => slot.insert(caches.pricing(pool, region, row.class).await?),
        };
        let price_minor =
            pricing::indicative_price(ctx, &query.window, pricing::parse_tz(&row.timezone)?)?;
        if query.max_price_minor.is_some_and(|max| price_minor > max) {
            continue;
        }
        hits.push(Hit {
            vehicle: row,
            // Whole metres: the ranking key must be exact to be a stable cursor.
            distance_m: distance.round() as u32,
            price_minor,
            currency: ctx.rate.currency,
        });
    }
    hits.sort_by(|a, b| {
        (a.distance_m, a.price_minor, a.vehicle.vehicle_id.uuid).cmp(&(
            b.distance_m,
            b.price_minor,
            b.vehicle.vehicle_id.uuid,
        ))
    });
    if let Some(cursor) = &query.cursor {
        let after = (cursor.distance_m, cursor.price_minor, cursor.vehicle);
        hits.retain(|h| (h.distance_m, h.price_minor, h.vehicle.vehicle_id.uuid) > after);
    }
    let limit = query.limit as usize;
    let next = if hits.len() > limit {
        hits.truncate(limit);
        hits.last().map(|h| SearchCursor {
            distance_m: h.distance_m,
            price_minor: h.price_minor,
            vehicle: h.vehicle.vehicle_id.uuid,
            query_hash: query.fingerprint(),
        })
    } else {
        None
    };
    Ok(Page { hits, next })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(class: Option<VehicleClass>) -> Result<SearchQuery, Box<dyn std::error::Error>> {
        let start = DateTime::from_timestamp(1_800_000_000, 0).ok_or("time")?;
        Ok(SearchQuery {
            center: GeoPoint::new(50.11, 8.68)?,
            radius_m: 2_000,
            window: TimeWindow::new(start, start + chrono::Duration::hours(2))?,
            class,
            min_seats: Some(4),
            fuel: None,
            max_price_minor: None,
            limit: 20,
            cursor: None,
        })
    }

    /// The fingerprint as it was computed when the class was an `Option<String>`.
    fn fingerprint_of(text: &str) -> u64 {
        let digest = Sha256::digest(text.as_bytes());
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(bytes)
    }

    #[test]
    fn the_fingerprint_names_the_class_as_before_so_issued_cursors_stay_valid(
    ) -> Result<(), Box<dyn std::error::Error>> {
        assert_eq!(
            query(Some(VehicleClass::Van))?.fingerprint(),
            fingerprint_of(
                r#"50.11|8.68|2000|1800000000|1800007200|Some("van")|Some(4)|None|None"#
            )
        );
        assert_eq!(
            query(None)?.fingerprint(),
            fingerprint_of("50.11|8.68|2000|1800000000|1800007200|None|Some(4)|None|None")
        );
        Ok(())
    }
}
