//! Search helpers: geographic points, distances and the keyset-pagination cursor.
//!
//! Search results are ordered by `(distance_m, price_minor, vehicle uuid)`, a total order, so a
//! page can resume strictly after the last row of the previous one ("keyset pagination")
//! instead of using OFFSET, which skips or repeats rows when availability changes between
//! pages. The cursor carries that last key plus a hash of the query, so a cursor from one
//! search cannot be replayed against another.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

/// Mean Earth radius (IUGG), metres.
const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Great-circle distance in metres between two points given in degrees (haversine formula).
/// Accurate to ~0.5 %, ample for "vehicles near me".
pub fn haversine_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = (lat2 - lat1).to_radians();
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * a.sqrt().min(1.0).asin()
}

/// Why a coordinate pair was rejected.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum GeoError {
    /// Latitude not finite or outside [-90, 90].
    #[error("latitude must be a number between -90 and 90, got {0}")]
    Latitude(f64),
    /// Longitude not finite or outside [-180, 180].
    #[error("longitude must be a number between -180 and 180, got {0}")]
    Longitude(f64),
}

/// A valid WGS 84 coordinate in degrees.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GeoPoint {
    lat: f64,
    lon: f64,
}

impl GeoPoint {
    /// Checks that both values are finite and in range.
    pub fn new(lat: f64, lon: f64) -> Result<Self, GeoError> {
        if !lat.is_finite() || !(-90.0..=90.0).contains(&lat) {
            return Err(GeoError::Latitude(lat));
        }
        if !lon.is_finite() || !(-180.0..=180.0).contains(&lon) {
            return Err(GeoError::Longitude(lon));
        }
        Ok(GeoPoint { lat, lon })
    }

    /// Latitude in degrees.
    pub fn lat(&self) -> f64 {
        self.lat
    }

    /// Longitude in degrees.
    pub fn lon(&self) -> f64 {
        self.lon
    }

    /// Great-circle distance to `other` in metres.
    pub fn distance_m(&self, other: &GeoPoint) -> f64 {
        haversine_m(self.lat, self.lon, other.lat, other.lon)
    }
}

impl<'de> Deserialize<'de> for GeoPoint {
    /// `{"lat": .., "lon": ..}`, validated by [`GeoPoint::new`].
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            lat: f64,
            lon: f64,
        }
        let raw = Raw::deserialize(deserializer)?;
        GeoPoint::new(raw.lat, raw.lon).map_err(serde::de::Error::custom)
    }
}

/// Why a cursor string was rejected. Clients should restart the search from the first page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    /// Longer than any cursor we issue.
    #[error("invalid cursor: too long")]
    TooLong,
    /// Not unpadded base64url.
    #[error("invalid cursor: not base64url")]
    NotBase64,
    /// Wrong number of bytes for the version.
    #[error("invalid cursor: wrong length")]
    WrongLength,
    /// Issued by a format version this build does not know.
    #[error("invalid cursor: unsupported version {0}")]
    UnsupportedVersion(u8),
}

/// Position after the last result of a page, in result order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SearchCursor {
    /// Distance of the last result, metres.
    pub distance_m: u32,
    /// Price of the last result, minor units.
    pub price_minor: i64,
    /// Vehicle uuid of the last result (the tie-breaker).
    pub vehicle: Uuid,
    /// Hash of the normalised query the cursor belongs to.
    pub query_hash: u64,
}

const CURSOR_V1: u8 = 1;
/// version + distance + price + uuid + hash.
const CURSOR_V1_LEN: usize = 1 + 4 + 8 + 16 + 8;
/// Encoded length of a v1 cursor is 50; anything much longer is rejected unread.
const MAX_CURSOR_CHARS: usize = 64;

impl SearchCursor {
    /// Compact, versioned, big-endian binary form in unpadded base64url (50 characters): opaque
    /// to clients, safe in a query string.
    pub fn encode(&self) -> String {
        let mut buf = Vec::with_capacity(CURSOR_V1_LEN);
        buf.push(CURSOR_V1);
        buf.extend_from_slice(&self.distance_m.to_be_bytes());
        buf.extend_from_slice(&self.price_minor.to_be_bytes());
        buf.extend_from_slice(self.vehicle.as_bytes());
        buf.extend_from_slice(&self.query_hash.to_be_bytes());
        URL_SAFE_NO_PAD.encode(buf)
    }

    /// Strict inverse of [`SearchCursor::encode`].
    pub fn decode(s: &str) -> Result<Self, CursorError> {
        if s.len() > MAX_CURSOR_CHARS {
            return Err(CursorError::TooLong);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| CursorError::NotBase64)?;
        let (&version, rest) = bytes.split_first().ok_or(CursorError::WrongLength)?;
        if version != CURSOR_V1 {
            return Err(CursorError::UnsupportedVersion(version));
        }
        if bytes.len() != CURSOR_V1_LEN {
            return Err(CursorError::WrongLength);
        }
        let (distance, rest) = rest.split_at(4);
        let (price, rest) = rest.split_at(8);
        let (vehicle, hash) = rest.split_at(16);
        let arr4 = <[u8; 4]>::try_from(distance).map_err(|_| CursorError::WrongLength)?;
        let arr8 = <[u8; 8]>::try_from(price).map_err(|_| CursorError::WrongLength)?;
        let arr16 = <[u8; 16]>::try_from(vehicle).map_err(|_| CursorError::WrongLength)?;
        let hash8 = <[u8; 8]>::try_from(hash).map_err(|_| CursorError::WrongLength)?;
        Ok(SearchCursor {
            distance_m: u32::from_be_bytes(arr4),
            price_minor: i64::from_be_bytes(arr8),
            vehicle: Uuid::from_bytes(arr16),
            query_hash: u64::from_be_bytes(hash8),
        })
    }

    /// Whether the cursor belongs to the query with this hash; a mismatch means "restart".
    pub fn belongs_to(&self, query_hash: u64) -> bool {
        self.query_hash == query_hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haversine_matches_known_distances() {
        // Frankfurt Hbf -> Stockholm C, about 1 187 km.
        let d = haversine_m(50.1071, 8.6638, 59.3303, 18.0583);
        assert!((d - 1_187_000.0).abs() < 5_000.0, "{d}");
        assert_eq!(haversine_m(10.0, 20.0, 10.0, 20.0), 0.0);
        // A quarter meridian.
        let q = haversine_m(0.0, 0.0, 90.0, 0.0);
        assert!((q - 10_007_557.0).abs() < 10.0, "{q}");
    }

    #[test]
    fn geo_point_rejects_out_of_range_and_non_finite_values() {
        assert!(GeoPoint::new(90.0, -180.0).is_ok());
        assert_eq!(GeoPoint::new(90.1, 0.0), Err(GeoError::Latitude(90.1)));
        assert_eq!(GeoPoint::new(0.0, 180.5), Err(GeoError::Longitude(180.5)));
        assert!(GeoPoint::new(f64::NAN, 0.0).is_err());
        assert!(GeoPoint::new(0.0, f64::INFINITY).is_err());
        assert!(serde_json::from_str::<GeoPoint>(r#"{"lat":91,"lon":0}"#).is_err());
        let p: GeoPoint = serde_json::from_str(r#"{"lat":59.33,"lon":18.06}"#).unwrap();
        assert_eq!((p.lat(), p.lon()), (59.33, 18.06));
    }

    #[test]
    fn cursor_round_trips_and_is_strict() {
        let c = SearchCursor {
            distance_m: 1234,
            price_minor: -5,
            vehicle: Uuid::from_u128(42),
            query_hash: u64::MAX,
        };
        let s = c.encode();
        assert_eq!(s.len(), 50);
        assert_eq!(SearchCursor::decode(&s), Ok(c));
        assert!(c.belongs_to(u64::MAX) && !c.belongs_to(0));
        assert_eq!(
            SearchCursor::decode(&"A".repeat(65)),
            Err(CursorError::TooLong)
        );
        assert_eq!(
            SearchCursor::decode("not base64!"),
            Err(CursorError::NotBase64)
        );
        assert_eq!(SearchCursor::decode(""), Err(CursorError::WrongLength));
        assert_eq!(
            SearchCursor::decode(&URL_SAFE_NO_PAD.encode([1u8; 10])),
            Err(CursorError::WrongLength)
        );
        assert_eq!(
            SearchCursor::decode(&URL_SAFE_NO_PAD.encode([2u8; 37])),
            Err(CursorError::UnsupportedVersion(2))
        );
        // Padded or standard-alphabet variants are not accepted.
        assert!(SearchCursor::decode(&format!("{s}==")).is_err());
    }
}
