//! Region placement: which origin (or origins) answers a request, decided before anything is
//! forwarded.
//!
//! Each region's origin is the system of record for its own vehicles, so every edge must send
//! every request to the owner:
//! - a write, a booking read, a quote: the region in the booking id, vehicle id or quote token
//!   (`Edge::region_of`, unchanged);
//! - a search: the service areas (`domain::area`, the `SERVICE_AREAS` variable shared with the
//!   origins) its circle reaches — one region, or several, whose pages [`crate::fanout`] merges;
//!   a circle outside every area is a 422 naming `lat`, since no origin could answer it;
//! - the surge at a point: the area holding the point (422 naming `lat` outside every area);
//!   the surge of a region, its recompute and the pricing audit: their `region` parameter;
//! - admin pricing: the region in the path; a vehicle's maintenance blocks: the vehicle's;
//!   webhooks, the deny list and API keys: their `region` parameter, then the region their
//!   id names;
//! - a user's booking list: every region, merged by [`crate::fanout`].
//!
//! A request the edge cannot place because it is malformed (no `lat`, a region named `XYZ`,
//! an unknown route) goes to the edge's own origin, whose answer is the precise 4xx every
//! origin would give; the edge never guesses a region for a well-formed request. The one
//! well-formed request no single origin can answer in full, the pricing audit without a
//! `region`, is refused here with a 422 saying so.

use domain::search::GeoPoint;
use domain::Region;

use crate::config::EdgeConfig;
use crate::platform::Response;
use crate::route::Route;

/// Where a request goes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Placement {
    /// One origin answers (for id-routed requests, the region `Edge::region_of` reads).
    One(Region),
    /// Several origins answer and the edge merges their pages: a search across a boundary.
    Search(Vec<Region>),
    /// Every region's origin answers and the edge merges: a user's booking list.
    List(Vec<Region>),
    /// The edge answers itself with this 4xx problem.
    Refused(Response),
}

/// The query string's pairs, percent-decoded (`+` as space), in order.
pub(crate) fn query_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The first value of a query parameter.
pub(crate) fn param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A region as the origin reads it from a path or query (`euw`, `EUW`, `Euw`).
fn region_named(text: &str) -> Option<Region> {
    text.to_ascii_uppercase().parse().ok()
}

/// A 4xx problem naming the field at fault, in the origin's validation shape.
pub(crate) fn field_problem(status: u16, field: &str, detail: &str) -> Response {
    let body = serde_json::json!({
        "type": "/problems/validation",
        "title": "Invalid request",
        "status": status,
        "detail": detail,
        "field": field,
    });
    Response {
        status,
        headers: vec![("content-type".into(), "application/problem+json".into())],
        body: serde_json::to_vec(&body).unwrap_or_default(),
    }
}

/// The point in `lat`/`lon`, if both are valid coordinates.
fn point(query: &str) -> Option<GeoPoint> {
    let lat = param(query, "lat")?.trim().parse().ok()?;
    let lon = param(query, "lon")?.trim().parse().ok()?;
    GeoPoint::new(lat, lon).ok()
}

/// The search radius the origin would use: `radius_m`, 2 km by default; `None` when it is not
/// a number the origin accepts (then the origin explains).
fn radius_m(query: &str) -> Option<u32> {
    match param(query, "radius_m") {
        None => Some(2_000),
        Some(r) => r.trim().parse().ok().filter(|r| (1..=50_000).contains(r)),
    }
}

fn outside(point: &GeoPoint, what: &str) -> Response {
    field_problem(
        422,
        "lat",
        &format!(
            "lat/lon: {what} ({}, {}) is outside every service area, so no region can answer it",
            point.lat(),
            point.lon()
        ),
    )
}

/// Places one request (`rest` is the path after `/v1/` or `/v2/`).
pub(crate) fn place(
    config: &EdgeConfig,
    route: &Route,
    method: &str,
    rest: &str,
    query: &str,
) -> Placement {
    let home = Placement::One(config.region);
    let all: Vec<Region> = Region::ALL.to_vec();
    match route {
        Route::Search => {
            let (Some(center), Some(radius)) = (point(query), radius_m(query)) else {
                return home;
            };
            let near = config.areas.regions_near(&center, f64::from(radius));
            match near.as_slice() {
                [] => Placement::Refused(outside(&center, "the search circle around")),
                [one] => Placement::One(*one),
                _ => Placement::Search(near),
            }
        }
        Route::Other => {
            let segments: Vec<&str> = rest.split('/').collect();
            let by_param = || param(query, "region").as_deref().and_then(region_named);
            match (method, segments.as_slice()) {
                ("GET", ["bookings"]) => Placement::List(all),
                (_, ["surge"]) => {
                    if param(query, "region").is_some() {
                        return by_param().map_or(home, Placement::One);
                    }
                    match point(query) {
                        Some(p) => match config.areas.region_of(&p) {
                            Some(r) => Placement::One(r),
                            None => Placement::Refused(outside(&p, "the point")),
                        },
                        None => home,
                    }
                }
                (_, ["admin", "surge", "recompute"]) => by_param().map_or(home, Placement::One),
                (_, ["admin", "pricing", region, ..]) => {
                    region_named(region).map_or(home, Placement::One)
                }
                (_, ["admin", "vehicles", vehicle, ..]) => vehicle
                    .parse::<domain::VehicleId>()
                    .map_or(home, |v| Placement::One(v.region)),
                // A region's webhooks: registered and listed by `?region=`, then by their id
                // (`whk_<region>_…`), as a vehicle's writes are by the vehicle's.
                (_, ["admin", "webhooks"]) => by_param().map_or(home, Placement::One),
                (_, ["admin", "webhooks", webhook, ..]) => webhook
                    .parse::<domain::ids::WebhookId>()
                    .map_or(home, |w| Placement::One(w.region)),
                // A region's deny list: added to and listed by `?region=`, then by the entry's
                // id (`dny_<region>_…`). Every edge enforces every region's entries.
                (_, ["admin", "deny-list"]) => by_param().map_or(home, Placement::One),
                (_, ["admin", "deny-list", entry, ..]) => entry
                    .parse::<domain::ids::DenyId>()
                    .map_or(home, |d| Placement::One(d.region)),
                // An app's API key: created and listed by `?region=`, then by the key's id
                // (`key_<region>_…`). Every edge accepts every region's keys.
                (_, ["admin", "api-keys"]) => by_param().map_or(home, Placement::One),
                (_, ["admin", "api-keys", key, ..]) => key
                    .parse::<domain::ids::ApiKeyId>()
                    .map_or(home, |k| Placement::One(k.region)),
                // A waitlist entry lives in its vehicle's region (`wlt_<region>_…`); joining
                // is placed by the body's vehicle (`Edge::region_of`).
                (_, ["waitlist", entry, ..]) => entry
                    .parse::<domain::ids::WaitlistId>()
                    .map_or(home, |w| Placement::One(w.region)),
                (_, ["admin", "pricing-audit"]) => match param(query, "region") {
                    Some(_) => by_param().map_or(home, Placement::One),
                    None => Placement::Refused(field_problem(
                        422,
                        "region",
                        "region: each region keeps its own pricing audit log; pass region=EUW or region=EUN",
                    )),
                },
                _ => home,
            }
        }
        // Ids and quote tokens name their region: `Edge::region_of` reads it.
        _ => home,
    }
}
