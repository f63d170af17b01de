//! The fleet as the API shows it: vehicles grouped by parking bay ("areas"), found through
//! the search endpoint itself, so the load generator needs no database access and works
//! through an edge as well as against an origin.

use std::collections::BTreeMap;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde::Deserialize;

/// The two demo cities' centres (Frankfurt, Stockholm).
pub const CITIES: [(f64, f64); 2] = [(50.1109, 8.6821), (59.3293, 18.0686)];

/// A parking bay with the vehicles parked there.
#[derive(Debug, Clone)]
pub struct Area {
    pub lat: f64,
    pub lon: f64,
    pub vehicles: Vec<String>,
}

/// Every area found, most vehicles first (so Zipf rank 1 is a busy bay), then by position.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    pub areas: Vec<Area>,
}

#[derive(Deserialize)]
struct Bay {
    id: String,
    lat: f64,
    lon: f64,
}

#[derive(Deserialize)]
struct Hit {
    vehicle_id: String,
    bay: Bay,
}

#[derive(Deserialize)]
struct Page {
    items: Vec<Hit>,
    next_cursor: Option<String>,
}

/// RFC 3339 on whole seconds, as the API expects in query strings.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl Fleet {
    /// Searches 50 km around each city for a window and collects every hit, page by page.
    pub async fn discover(
        client: &reqwest::Client,
        base: &str,
        token: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> anyhow::Result<Fleet> {
        let mut bays: BTreeMap<String, Area> = BTreeMap::new();
        for (lat, lon) in CITIES {
            let mut cursor: Option<String> = None;
            loop {
                let mut url = format!(
                    "{base}/v1/vehicles/search?lat={lat}&lon={lon}&radius_m=50000&limit=100&start={}&end={}",
                    rfc3339(start),
                    rfc3339(end)
                );
                if let Some(c) = &cursor {
                    url.push_str("&cursor=");
                    url.push_str(c);
                }
                let response = client
                    .get(&url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .with_context(|| format!("search {url}"))?;
                let status = response.status();
                anyhow::ensure!(
                    status.is_success(),
                    "fleet discovery: search answered {status}: {}",
                    response.text().await.unwrap_or_default()
                );
                let page: Page = response.json().await.context("search page")?;
                for hit in page.items {
                    bays.entry(hit.bay.id)
                        .or_insert_with(|| Area {
                            lat: hit.bay.lat,
                            lon: hit.bay.lon,
                            vehicles: Vec::new(),
                        })
                        .vehicles
                        .push(hit.vehicle_id);
                }
                match page.next_cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
        }
        let mut areas: Vec<Area> = bays.into_values().collect();
        areas.sort_by(|a, b| {
            b.vehicles
                .len()
                .cmp(&a.vehicles.len())
                .then(a.lat.total_cmp(&b.lat))
                .then(a.lon.total_cmp(&b.lon))
        });
        Ok(Fleet { areas })
    }

    /// Every vehicle, area by area.
    pub fn vehicles(&self) -> Vec<String> {
        self.areas
            .iter()
            .flat_map(|a| a.vehicles.iter().cloned())
            .collect()
    }
}
