//! Service areas: which region's origin answers a question about a place.
//!
//! Ids carry their region, so writes and booking reads route by id; a search or a surge read
//! names only a point. Each [`Region`] therefore has a service area, one or more polygons in
//! latitude/longitude, and edge and origin read the same definition from here: the edge to pick
//! the origin(s) to ask, the origin to refuse (421) a point it does not own.
//!
//! Geometry, and why it is hand-written: the areas are a handful of country-sized polygons and
//! the questions are "is this point inside" and "does this circle touch it". A geometry crate
//! (geo, h3o) would work but adds a dependency tree to every wasm edge for ~80 lines of code.
//! - Polygon edges are straight lines in (lat, lon) degrees ("plate carrée"): that is what a
//!   box in a config string means to whoever writes it. Nothing crosses the antimeridian or a
//!   pole (the service is in Europe); [`ServiceAreas::parse`] rejects such polygons.
//! - Point in polygon: even-odd ray casting; a point exactly on an edge counts as inside.
//! - Circle vs polygon, conservative by design: the circle is projected with an equirectangular
//!   projection centred on it, whose east-west scale is the *smallest* cos(latitude) over the
//!   circle's latitude band. That map is linear in (lat, lon), so polygon edges stay straight,
//!   and it never makes a distance longer than it is; the radius is further widened by 1 % + 100 m
//!   for the haversine/plane difference. So [`ServiceAreas::regions_near`] may name a region a
//!   circle misses by a hair (one extra origin asked, returning nothing) but never leaves out
//!   a region the circle reaches.
//!
//! Areas must not overlap (checked at parse), so a point has at most one owner and nobody has
//! to guess. They may share a border (two neighbouring test areas do); a point exactly on it
//! belongs to the first of them in [`Region::ALL`] order, a stated rule rather than a guess.

use std::fmt;

use crate::region::Region;
use crate::search::GeoPoint;

/// Metres per degree of latitude (mean Earth radius 6 371 008.8 m).
const M_PER_DEG: f64 = 111_195.08;

/// A simple polygon in degrees, vertices in order (either orientation), implicitly closed.
#[derive(Debug, Clone, PartialEq)]
pub struct Polygon {
    /// (lat, lon) vertices, at least three.
    vertices: Vec<(f64, f64)>,
}

impl Polygon {
    /// The axis-aligned box between two corners.
    pub fn rect(lat_min: f64, lon_min: f64, lat_max: f64, lon_max: f64) -> Polygon {
        Polygon {
            vertices: vec![
                (lat_min, lon_min),
                (lat_max, lon_min),
                (lat_max, lon_max),
                (lat_min, lon_max),
            ],
        }
    }

    /// The vertices as (lat, lon).
    pub fn vertices(&self) -> &[(f64, f64)] {
        &self.vertices
    }

    fn edges(&self) -> impl Iterator<Item = ((f64, f64), (f64, f64))> + '_ {
        let n = self.vertices.len();
        (0..n).map(move |i| (self.vertices[i], self.vertices[(i + 1) % n]))
    }

    /// Whether (lat, lon) lies inside or on the border.
    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        let mut inside = false;
        for ((y1, x1), (y2, x2)) in self.edges() {
            if on_segment((lat, lon), (y1, x1), (y2, x2)) {
                return true;
            }
            if (y1 > lat) != (y2 > lat) {
                let x_cross = x1 + (lat - y1) * (x2 - x1) / (y2 - y1);
                if lon < x_cross {
                    inside = !inside;
                }
            }
        }
        inside
    }

    /// Whether the circle around `center` with `radius_m` touches the polygon (conservatively:
    /// see the module docs).
    pub fn touches_circle(&self, center: &GeoPoint, radius_m: f64) -> bool {
        if self.contains(center.lat(), center.lon()) {
            return true;
        }
        let reach_m = radius_m * 1.01 + 100.0;
        let band_deg = reach_m / M_PER_DEG;
        let worst_lat = (center.lat().abs() + band_deg).min(90.0);
        let kx = worst_lat.to_radians().cos().max(0.0) * M_PER_DEG;
        let ky = M_PER_DEG;
        let project =
            |(lat, lon): (f64, f64)| ((lon - center.lon()) * kx, (lat - center.lat()) * ky);
        self.edges().any(|(a, b)| {
            let (a, b) = (project(a), project(b));
            distance_to_segment((0.0, 0.0), a, b) <= reach_m
        })
    }

    fn on_border(&self, lat: f64, lon: f64) -> bool {
        self.edges().any(|(a, b)| on_segment((lat, lon), a, b))
    }

    fn strictly_contains(&self, (lat, lon): (f64, f64)) -> bool {
        self.contains(lat, lon) && !self.on_border(lat, lon)
    }

    /// Points that lie strictly inside `self` when its interior meets another polygon's
    /// without any edges crossing: vertices, edge midpoints and the vertex average.
    fn probes(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        let n = self.vertices.len() as f64;
        let (sy, sx) = self
            .vertices
            .iter()
            .fold((0.0, 0.0), |(y, x), v| (y + v.0, x + v.1));
        self.vertices
            .iter()
            .copied()
            .chain(
                self.edges()
                    .map(|(a, b)| ((a.0 + b.0) / 2.0, (a.1 + b.1) / 2.0)),
            )
            .chain(std::iter::once((sy / n, sx / n)))
    }

    /// Whether the interiors overlap; sharing a border is fine. Exact for convex polygons (the
    /// boxes the defaults and tests use); for concave ones a probe could miss an overlap that
    /// crosses no edge, which a config author has to avoid.
    fn overlaps(&self, other: &Polygon) -> bool {
        self.edges().any(|(a, b)| {
            other
                .edges()
                .any(|(c, d)| segments_properly_cross(a, b, c, d))
        }) || other.probes().any(|p| self.strictly_contains(p))
            || self.probes().any(|p| other.strictly_contains(p))
    }
}

fn cross(o: (f64, f64), a: (f64, f64), b: (f64, f64)) -> f64 {
    (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0)
}

fn on_segment(p: (f64, f64), a: (f64, f64), b: (f64, f64)) -> bool {
    cross(a, b, p) == 0.0
        && p.0 >= a.0.min(b.0)
        && p.0 <= a.0.max(b.0)
        && p.1 >= a.1.min(b.1)
        && p.1 <= a.1.max(b.1)
}

/// Whether segments ab and cd cross at a point inside both (touching does not count).
fn segments_properly_cross(a: (f64, f64), b: (f64, f64), c: (f64, f64), d: (f64, f64)) -> bool {
    let (d1, d2) = (cross(c, d, a), cross(c, d, b));
    let (d3, d4) = (cross(a, b, c), cross(a, b, d));
    ((d1 > 0.0 && d2 < 0.0) || (d1 < 0.0 && d2 > 0.0))
        && ((d3 > 0.0 && d4 < 0.0) || (d3 < 0.0 && d4 > 0.0))
}

/// Euclidean distance from p to segment ab in the plane.
fn distance_to_segment(p: (f64, f64), a: (f64, f64), b: (f64, f64)) -> f64 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 == 0.0 {
        0.0
    } else {
        (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0)
    };
    let (qx, qy) = (a.0 + t * dx, a.1 + t * dy);
    ((p.0 - qx).powi(2) + (p.1 - qy).powi(2)).sqrt()
}

/// Why a `SERVICE_AREAS` string was rejected; the message says where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AreaError {
    /// A `;`-separated entry is not `REGION=polygon`.
    #[error("entry {0:?}: expected REGION=lat lon, lat lon, lat lon[| another polygon]")]
    Entry(String),
    /// The region code is unknown.
    #[error("entry {0:?}: unknown region (expected EUW or EUN)")]
    Region(String),
    /// A region is listed twice.
    #[error("region {0} is listed twice")]
    Duplicate(Region),
    /// A region has no area.
    #[error("region {0} has no area")]
    Missing(Region),
    /// A vertex is not two numbers in range.
    #[error("region {region}: vertex {vertex:?} must be `lat lon` in degrees, lat in [-89, 89], lon in [-180, 180]")]
    Vertex {
        /// The region whose polygon holds the vertex.
        region: Region,
        /// The text as written.
        vertex: String,
    },
    /// Fewer than three vertices.
    #[error("region {0}: a polygon needs at least 3 vertices")]
    TooFewVertices(Region),
    /// Spans more than 180° of longitude (would cross the antimeridian).
    #[error("region {0}: a polygon may not span more than 180 degrees of longitude")]
    TooWide(Region),
    /// Two regions' areas overlap (sharing a border is allowed).
    #[error("the areas of {0} and {1} overlap: a point could have two owners")]
    Overlap(Region, Region),
}

/// Each region's service area; built by [`ServiceAreas::parse`] or [`ServiceAreas::default`].
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceAreas {
    areas: Vec<(Region, Vec<Polygon>)>,
}

/// The default areas, as a `SERVICE_AREAS` string (documented in the README): a box around
/// Germany for EUW (Frankfurt) and one around Sweden for EUN (Stockholm). They do not touch
/// (the gap is the Baltic between Rügen and Skåne).
pub const DEFAULT_SERVICE_AREAS: &str =
    "EUW=47.2 5.8, 55.1 5.8, 55.1 15.1, 47.2 15.1; EUN=55.3 10.9, 69.1 10.9, 69.1 24.2, 55.3 24.2";

impl Default for ServiceAreas {
    fn default() -> Self {
        ServiceAreas {
            areas: vec![
                (Region::Euw, vec![Polygon::rect(47.2, 5.8, 55.1, 15.1)]),
                (Region::Eun, vec![Polygon::rect(55.3, 10.9, 69.1, 24.2)]),
            ],
        }
    }
}

impl ServiceAreas {
    /// Parses `REGION=lat lon, lat lon, lat lon[| polygon…][; REGION=…]`: every region exactly
    /// once, each polygon at least three vertices, areas not overlapping. Whitespace around
    /// separators is free; an empty string is an error (use the default instead).
    pub fn parse(text: &str) -> Result<ServiceAreas, AreaError> {
        let mut areas: Vec<(Region, Vec<Polygon>)> = Vec::new();
        for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (code, polys) = entry
                .split_once('=')
                .ok_or_else(|| AreaError::Entry(entry.to_owned()))?;
            let region: Region = code
                .trim()
                .parse()
                .map_err(|_| AreaError::Region(entry.to_owned()))?;
            if areas.iter().any(|(r, _)| *r == region) {
                return Err(AreaError::Duplicate(region));
            }
            let mut polygons = Vec::new();
            for poly in polys.split('|') {
                polygons.push(parse_polygon(region, poly)?);
            }
            areas.push((region, polygons));
        }
        for region in Region::ALL {
            if !areas.iter().any(|(r, _)| *r == region) {
                return Err(AreaError::Missing(region));
            }
        }
        for (i, (ra, pa)) in areas.iter().enumerate() {
            for (rb, pb) in &areas[i + 1..] {
                if pa.iter().any(|a| pb.iter().any(|b| a.overlaps(b))) {
                    return Err(AreaError::Overlap(*ra, *rb));
                }
            }
        }
        Ok(ServiceAreas { areas })
    }

    /// The polygons of one region.
    pub fn area(&self, region: Region) -> &[Polygon] {
        self.areas
            .iter()
            .find(|(r, _)| *r == region)
            .map_or(&[], |(_, p)| p.as_slice())
    }

    /// The region whose area holds the point, if any (areas do not overlap; on a shared
    /// border, the first in [`Region::ALL`] order).
    pub fn region_of(&self, point: &GeoPoint) -> Option<Region> {
        Region::ALL.into_iter().find(|r| {
            self.area(*r)
                .iter()
                .any(|p| p.contains(point.lat(), point.lon()))
        })
    }

    /// The regions whose areas a search circle touches, in [`Region::ALL`] order; conservative
    /// (may include a region missed by a few metres, never leaves one out). Empty when the
    /// circle is outside every area.
    pub fn regions_near(&self, center: &GeoPoint, radius_m: f64) -> Vec<Region> {
        Region::ALL
            .into_iter()
            .filter(|r| {
                self.area(*r)
                    .iter()
                    .any(|p| p.touches_circle(center, radius_m))
            })
            .collect()
    }
}

impl fmt::Display for ServiceAreas {
    /// The `SERVICE_AREAS` form, which [`ServiceAreas::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (region, polys)) in self.areas.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{region}=")?;
            for (j, p) in polys.iter().enumerate() {
                if j > 0 {
                    f.write_str(" | ")?;
                }
                for (k, (lat, lon)) in p.vertices.iter().enumerate() {
                    if k > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{lat} {lon}")?;
                }
            }
        }
        Ok(())
    }
}

fn parse_polygon(region: Region, text: &str) -> Result<Polygon, AreaError> {
    let mut vertices = Vec::new();
    for vertex in text.split(',').map(str::trim) {
        let bad = || AreaError::Vertex {
            region,
            vertex: vertex.to_owned(),
        };
        let mut nums = vertex.split_whitespace().map(str::parse::<f64>);
        let (Some(Ok(lat)), Some(Ok(lon)), None) = (nums.next(), nums.next(), nums.next()) else {
            return Err(bad());
        };
        // Poles are excluded so that cos(latitude) stays positive in the circle test.
        if !lat.is_finite() || !(-89.0..=89.0).contains(&lat) {
            return Err(bad());
        }
        if !lon.is_finite() || !(-180.0..=180.0).contains(&lon) {
            return Err(bad());
        }
        vertices.push((lat, lon));
    }
    if vertices.len() < 3 {
        return Err(AreaError::TooFewVertices(region));
    }
    let (lo, hi) = vertices.iter().fold((f64::MAX, f64::MIN), |(lo, hi), v| {
        (lo.min(v.1), hi.max(v.1))
    });
    if hi - lo > 180.0 {
        return Err(AreaError::TooWide(region));
    }
    Ok(Polygon { vertices })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::haversine_m;
    use proptest::prelude::*;

    fn pt(lat: f64, lon: f64) -> GeoPoint {
        GeoPoint::new(lat, lon).unwrap()
    }

    #[test]
    fn the_default_string_parses_to_the_default_areas_and_prints_back() {
        let parsed = ServiceAreas::parse(DEFAULT_SERVICE_AREAS).unwrap();
        assert_eq!(parsed, ServiceAreas::default());
        assert_eq!(ServiceAreas::parse(&parsed.to_string()).unwrap(), parsed);
    }

    #[test]
    fn the_default_areas_hold_the_demo_fleets_and_nothing_far_away() {
        let areas = ServiceAreas::default();
        // Frankfurt Hbf, the airport, Riedberg; Stockholm Central.
        for (lat, lon) in [(50.1071, 8.6638), (50.0506, 8.5704), (50.174, 8.633)] {
            assert_eq!(areas.region_of(&pt(lat, lon)), Some(Region::Euw));
        }
        assert_eq!(areas.region_of(&pt(59.3303, 18.0586)), Some(Region::Eun));
        // Berlin, Munich: EUW; Gothenburg, Malmö: EUN.
        assert_eq!(areas.region_of(&pt(52.52, 13.40)), Some(Region::Euw));
        assert_eq!(areas.region_of(&pt(48.14, 11.58)), Some(Region::Euw));
        assert_eq!(areas.region_of(&pt(57.71, 11.97)), Some(Region::Eun));
        assert_eq!(areas.region_of(&pt(55.60, 13.00)), Some(Region::Eun));
        // Paris, New York, the Null Island, the Baltic gap.
        for (lat, lon) in [(48.86, 2.35), (40.7, -74.0), (0.0, 0.0), (55.2, 13.0)] {
            assert_eq!(areas.region_of(&pt(lat, lon)), None, "{lat} {lon}");
        }
    }

    #[test]
    fn a_circle_reaches_the_regions_it_touches() {
        let areas = ServiceAreas::default();
        assert_eq!(
            areas.regions_near(&pt(50.11, 8.68), 50_000.0),
            vec![Region::Euw]
        );
        // In the gap between the areas (55.1..55.3), 5 km does not reach either, 20 km both.
        assert!(areas.regions_near(&pt(55.2, 13.0), 5_000.0).is_empty());
        assert_eq!(
            areas.regions_near(&pt(55.2, 13.0), 20_000.0),
            vec![Region::Euw, Region::Eun]
        );
        // Paris with 600 km reaches Germany (Saarbrücken is ~ 350 km away), not Sweden.
        assert_eq!(
            areas.regions_near(&pt(48.86, 2.35), 600_000.0),
            vec![Region::Euw]
        );
        assert!(areas.regions_near(&pt(48.86, 2.35), 100_000.0).is_empty());
    }

    #[test]
    fn parse_takes_several_polygons_and_reports_each_mistake() {
        let two = ServiceAreas::parse(
            "EUN = 55.3 10.9, 69.1 10.9, 69.1 24.2 ;EUW=47 6, 50 6, 50 9 | 51 6, 54 6, 54 9",
        )
        .unwrap();
        assert_eq!(two.area(Region::Euw).len(), 2);
        assert_eq!(two.region_of(&pt(53.0, 6.5)), Some(Region::Euw));
        assert_eq!(two.region_of(&pt(50.5, 6.5)), None);

        let e = |s: &str| ServiceAreas::parse(s).unwrap_err();
        assert_eq!(e(""), AreaError::Missing(Region::Euw));
        assert_eq!(e("EUW=1 1, 2 2, 1 2"), AreaError::Missing(Region::Eun));
        assert!(matches!(e("EUW 1 1, 2 2, 1 2"), AreaError::Entry(_)));
        assert!(matches!(e("USE=1 1, 2 2, 1 2"), AreaError::Region(_)));
        assert_eq!(
            e("EUW=1 1, 2 2, 1 2; EUW=5 5, 6 6, 5 6"),
            AreaError::Duplicate(Region::Euw)
        );
        assert_eq!(
            e("EUW=1 1, 2 2; EUN=5 5, 6 6, 5 6"),
            AreaError::TooFewVertices(Region::Euw)
        );
        for bad in ["1 x", "1", "1 2 3", "95 1", "1 181", "NaN 1"] {
            let err = e(&format!("EUW=1 1, 2 2, {bad}; EUN=5 5, 6 6, 5 6"));
            assert!(matches!(err, AreaError::Vertex { .. }), "{bad}: {err:?}");
        }
        assert_eq!(
            e("EUW=1 -100, 2 100, 1 100; EUN=5 5, 6 6, 5 6"),
            AreaError::TooWide(Region::Euw)
        );
        // Crossing, one inside the other, and the same box twice are refused.
        for eun in [
            "1 1.5, 3 1.5, 3 3",
            "1.2 1.2, 1.3 1.2, 1.3 1.3",
            "1 1, 1 2.5, 2 2.5, 2 1",
            "0 0, 0 3, 3 3, 3 0",
        ] {
            assert_eq!(
                e(&format!("EUW=1 1, 1 2.5, 2 2.5, 2 1; EUN={eun}")),
                AreaError::Overlap(Region::Euw, Region::Eun),
                "{eun}"
            );
        }
        // Sharing a border or a corner is fine; the border belongs to EUW (first in ALL).
        for eun in [
            "2 1, 2 2.5, 3 2.5, 3 1",
            "2 2.5, 3 2.5, 3 4",
            "2 1.5, 2 2, 3 2",
        ] {
            let areas = ServiceAreas::parse(&format!("EUN={eun}; EUW=1 1, 1 2.5, 2 2.5, 2 1"))
                .unwrap_or_else(|e| panic!("{eun}: {e}"));
            assert_eq!(areas.region_of(&pt(2.0, 2.5)), Some(Region::Euw), "{eun}");
        }
        assert!(e("x").to_string().contains("REGION=lat lon"));
    }

    #[test]
    fn a_point_on_the_border_is_inside() {
        let p = Polygon::rect(1.0, 1.0, 2.0, 2.0);
        assert!(p.contains(1.0, 1.5) && p.contains(2.0, 2.0) && p.contains(1.5, 1.5));
        assert!(!p.contains(0.999, 1.5) && !p.contains(1.5, 2.001));
    }

    proptest! {
        /// The circle test never misses: if any sampled point of the circle's disc (by true
        /// great-circle distance) is inside the polygon, the circle is reported to touch it.
        #[test]
        fn the_circle_test_never_misses_a_polygon_the_circle_reaches(
            lat in 40.0f64..70.0, lon in -10.0f64..30.0,
            radius_m in 100.0f64..400_000.0,
            box_lat in 40.0f64..70.0, box_lon in -10.0f64..30.0,
            h in 0.01f64..3.0, w in 0.01f64..3.0,
            bearing in 0.0f64..std::f64::consts::TAU, frac in 0.0f64..=1.0,
        ) {
            let poly = Polygon::rect(box_lat, box_lon, box_lat + h, box_lon + w);
            let center = pt(lat, lon);
            // A point at `frac * radius` along `bearing` (destination-point formula).
            let d = frac * radius_m / 6_371_008.8;
            let (p1, l1) = (lat.to_radians(), lon.to_radians());
            let p2 = (p1.sin() * d.cos() + p1.cos() * d.sin() * bearing.cos()).asin();
            let l2 = l1 + (bearing.sin() * d.sin() * p1.cos()).atan2(d.cos() - p1.sin() * p2.sin());
            let (lat2, lon2) = (p2.to_degrees(), l2.to_degrees());
            prop_assert!(haversine_m(lat, lon, lat2, lon2) <= radius_m * 1.000_001 + 0.01);
            if poly.contains(lat2, lon2) {
                prop_assert!(poly.touches_circle(&center, radius_m));
            }
        }

        /// A circle reported as missing a polygon really is far from it: every vertex is at
        /// least the radius away.
        #[test]
        fn a_missed_polygon_is_beyond_the_radius(
            lat in 40.0f64..70.0, lon in -10.0f64..30.0, radius_m in 100.0f64..400_000.0,
            box_lat in 40.0f64..70.0, box_lon in -10.0f64..30.0,
            h in 0.01f64..3.0, w in 0.01f64..3.0,
        ) {
            let poly = Polygon::rect(box_lat, box_lon, box_lat + h, box_lon + w);
            if !poly.touches_circle(&pt(lat, lon), radius_m) {
                prop_assert!(!poly.contains(lat, lon));
                for &(vlat, vlon) in poly.vertices() {
                    prop_assert!(haversine_m(lat, lon, vlat, vlon) > radius_m);
                }
            }
        }

        /// Parsing what Display prints gives the same areas back.
        #[test]
        fn display_round_trips(
            a in 40.0f64..50.0, b in 0.0f64..10.0, c in 51.0f64..60.0, d in 11.0f64..20.0,
        ) {
            let text = format!("EUW={a} {b}, {a} {d}, {c} {d}; EUN={} {b}, {} {b}, {} {d}", c + 1.0, c + 2.0, c + 2.0);
            let areas = ServiceAreas::parse(&text).unwrap();
            prop_assert_eq!(ServiceAreas::parse(&areas.to_string()).unwrap(), areas);
        }
    }
}
