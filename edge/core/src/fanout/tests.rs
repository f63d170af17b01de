//! Placement and fan-out through `Edge::handle`, against in-memory origins that page exactly
//! as the real ones do (search: `SearchCursor` keyset ascending; list: `(created_at, id)`
//! descending), so the merge, the composite cursor and partial answers are checked end to end
//! in the core. The real origins and runtimes are exercised by `tests/edge`.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use domain::auth::{sign_hs256, Claims};
use domain::search::SearchCursor;
use domain::Region;
use futures_executor::block_on;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::platform::{FetchError, Outbound, Platform, Request, Response};
use crate::regions::{param, place, Placement};
use crate::route::route;
use crate::Edge;

const SECRET: &str = "fan-out-test-secret-fan-out-test-secret";
const SIGNING_KEY: &str = "fan-out-edge-signing-key-fan-out-edge-key";
const NOW_MS: u64 = 1_800_000_000_000;
/// The fake origins' query hash: cursors with any other are refused, as a real origin does.
const HASH: u64 = 7;
/// Two areas sharing the border at latitude 55, so a circle near it reaches both.
const TOUCHING: &str = "EUW=47 5, 55 5, 55 20, 47 20; EUN=55 5, 70 5, 70 25, 55 25";

/// One fake origin's data: search hits (distance, price, uuid) and bookings (µs, uuid).
#[derive(Default)]
struct Data {
    hits: Vec<(u32, i64, Uuid)>,
    bookings: Vec<(i64, Uuid)>,
}

struct Fake {
    vars: BTreeMap<&'static str, String>,
    data: BTreeMap<Region, Data>,
    down: RefCell<BTreeSet<Region>>,
    calls: RefCell<Vec<String>>,
    /// The `X-Edge-Signature` of every origin call, each verified as the origin does.
    signatures: RefCell<Vec<String>>,
}

impl Fake {
    fn new(edge_region: &str, areas: Option<&str>) -> Fake {
        let mut vars = BTreeMap::from([
            ("EDGE_REGION", edge_region.to_owned()),
            ("ORIGIN_EUW_URL", "http://euw.test".to_owned()),
            ("ORIGIN_EUN_URL", "http://eun.test".to_owned()),
            ("UPSTASH_REDIS_REST_URL", "http://upstash.test".to_owned()),
            ("UPSTASH_REDIS_REST_TOKEN", "t".to_owned()),
            ("JWT_HS256_SECRET", SECRET.to_owned()),
            ("EDGE_SIGNING_KID", "e1".to_owned()),
            ("EDGE_SIGNING_KEY", SIGNING_KEY.to_owned()),
            ("JWT_ISSUER", "iss".to_owned()),
            ("JWT_AUDIENCE", "aud".to_owned()),
        ]);
        if let Some(a) = areas {
            vars.insert("SERVICE_AREAS", a.to_owned());
        }
        Fake {
            vars,
            data: BTreeMap::new(),
            down: RefCell::new(BTreeSet::new()),
            calls: RefCell::new(Vec::new()),
            signatures: RefCell::new(Vec::new()),
        }
    }

    fn origin(&self, region: Region, path: &str, query: &str) -> Response {
        let data = self.data.get(&region);
        let limit: usize = param(query, "limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(20);
        let cursor = param(query, "cursor");
        let slug = region.slug();
        let v2 = path.starts_with("/v2/");
        if path.ends_with("/vehicles/search") {
            let mut hits = data.map(|d| d.hits.clone()).unwrap_or_default();
            hits.sort();
            if let Some(c) = cursor {
                let Ok(c) = SearchCursor::decode(&c).map_err(|_| ()).and_then(|c| {
                    if c.belongs_to(HASH) {
                        Ok(c)
                    } else {
                        Err(())
                    }
                }) else {
                    return json_response(400, json!({"type": "/problems/bad-request"}));
                };
                hits.retain(|h| *h > (c.distance_m, c.price_minor, c.vehicle));
            }
            let more = hits.len() > limit;
            hits.truncate(limit);
            let items: Vec<Value> = hits
                .iter()
                .map(|(d, p, id)| {
                    let mut item = json!({
                        "vehicle_id": format!("veh_{slug}_{}", id.simple()),
                        "distance_m": d,
                    });
                    if v2 {
                        item["indicative_price"] = json!({"minor": p, "currency": "EUR"});
                    } else {
                        item["price"] = json!(format!("{}.{:02}", p / 100, p % 100));
                    }
                    item
                })
                .collect();
            let mut body = json!({ "items": items });
            if let (true, Some((d, p, id))) = (more, hits.last()) {
                body["next_cursor"] = json!(SearchCursor {
                    distance_m: *d,
                    price_minor: *p,
                    vehicle: *id,
                    query_hash: HASH,
                }
                .encode());
            }
            return json_response(200, body);
        }
        if path.ends_with("/bookings") {
            let mut rows = data.map(|d| d.bookings.clone()).unwrap_or_default();
            rows.sort_by(|a, b| b.cmp(a));
            if let Some(c) = cursor {
                let decoded = URL_SAFE_NO_PAD
                    .decode(&c)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|t| {
                        let (us, id) = t.split_once('.')?;
                        Some((us.parse::<i64>().ok()?, Uuid::try_parse(id).ok()?))
                    });
                let Some(after) = decoded else {
                    return json_response(400, json!({"type": "/problems/bad-request"}));
                };
                rows.retain(|r| *r < after);
            }
            let more = rows.len() > limit;
            rows.truncate(limit);
            let items: Vec<Value> = rows
                .iter()
                .map(|(us, id)| {
                    let at = chrono::DateTime::from_timestamp_micros(*us).unwrap_or_default();
                    json!({
                        "id": format!("bkg_{slug}_{}", id.simple()),
                        "created_at": at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    })
                })
                .collect();
            let mut body = json!({ "items": items });
            if let (true, Some((us, id))) = (more, rows.last()) {
                body["next_cursor"] =
                    json!(URL_SAFE_NO_PAD.encode(format!("{us}.{}", id.simple())));
            }
            return json_response(200, body);
        }
        json_response(200, json!({ "served_by": region.code() }))
    }
}

fn json_response(status: u16, body: Value) -> Response {
    Response {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: serde_json::to_vec(&body).unwrap_or_default(),
    }
}

impl Platform for Fake {
    async fn fetch(&self, req: Outbound) -> Result<Response, FetchError> {
        self.calls.borrow_mut().push(req.url.clone());
        let (base, rest) = req.url.split_at(req.url.find(".test").map_or(0, |i| i + 5));
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let region = match base {
            "http://euw.test" => Region::Euw,
            "http://eun.test" => Region::Eun,
            // Upstash unreachable: rate limits fail open, the edge cache is bypassed.
            _ => return Err(FetchError::Network("no upstash here".into())),
        };
        if self.down.borrow().contains(&region) {
            return Err(FetchError::Network("connection refused".into()));
        }
        // As an origin does (`origin/src/http/edge_guard.rs`): a request without a valid
        // edge signature is refused.
        let header = |name: &str| crate::platform::header(&req.headers, name).unwrap_or("");
        let hash = domain::edge_auth::body_sha256(&req.body);
        let parts = domain::edge_auth::RequestParts {
            method: &req.method,
            path,
            query,
            body_sha256: &hash,
            request_id: header("x-request-id"),
            region: header("x-edge-region"),
        };
        let verifier = domain::edge_auth::EdgeVerifier::new(vec![(
            "e1".into(),
            SIGNING_KEY.as_bytes().to_vec(),
        )])
        .map_err(|e| FetchError::Network(e.to_string()))?;
        let signature = header("x-edge-signature").to_owned();
        if let Err(e) = verifier.verify(Some(&signature), &parts, (NOW_MS / 1000) as i64) {
            return Ok(Response {
                status: 401,
                headers: Vec::new(),
                body: e.to_string().into_bytes(),
            });
        }
        self.signatures.borrow_mut().push(signature);
        Ok(self.origin(region, path, query))
    }
    fn now_ms(&self) -> u64 {
        NOW_MS
    }
    fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }
    fn log(&self, _line: &str) {}
}

fn token() -> String {
    let claims = Claims {
        sub: "fan".into(),
        iss: "iss".into(),
        aud: json!("aud"),
        exp: (NOW_MS / 1000) as i64 + 3600,
        nbf: None,
        iat: None,
        roles: vec!["ops".into()],
        membership: None,
    };
    sign_hs256(&claims, SECRET.as_bytes(), None).unwrap_or_default()
}

fn get(fake: &Fake, path_and_query: &str) -> (Response, Value) {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let req = Request {
        method: "GET".into(),
        path: path.into(),
        query: query.into(),
        headers: vec![("authorization".into(), format!("Bearer {}", token()))],
        body: Vec::new(),
        client_ip: Some("192.0.2.1".into()),
    };
    let edge = Edge::new(fake, "test").unwrap_or_else(|e| panic!("config: {e}"));
    let resp = block_on(edge.handle(fake, req));
    let body = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    (resp, body)
}

fn uuid(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

/// Follows `next_cursor` from `first` to the end; returns the pages' items.
fn all_pages(fake: &Fake, first: &str) -> Vec<Vec<Value>> {
    pages_from(fake, first, None)
}

/// Like [`all_pages`], starting at `cursor`.
fn pages_from(fake: &Fake, first: &str, cursor: Option<&str>) -> Vec<Vec<Value>> {
    let mut pages = Vec::new();
    let mut url = match cursor {
        Some(c) => format!("{first}&cursor={c}"),
        None => first.to_owned(),
    };
    for _ in 0..50 {
        let (resp, body) = get(fake, &url);
        assert_eq!(resp.status, 200, "{url}: {body}");
        pages.push(body["items"].as_array().cloned().unwrap_or_default());
        match body["next_cursor"].as_str() {
            Some(c) => url = format!("{first}&cursor={c}"),
            None => return pages,
        }
    }
    panic!("more than 50 pages: the cursor does not advance");
}

fn search_fake(edge_region: &str) -> Fake {
    let mut fake = Fake::new(edge_region, Some(TOUCHING));
    // Interleaved distances, a distance tie across regions broken by price, and a price tie
    // within a region broken by uuid.
    fake.data.insert(
        Region::Euw,
        Data {
            hits: vec![
                (100, 500, uuid(1)),
                (300, 700, uuid(2)),
                (300, 700, uuid(3)),
                (900, 100, uuid(4)),
                (1_000, 100, uuid(5)),
                (5_000, 100, uuid(6)),
                (5_001, 100, uuid(7)),
            ],
            ..Data::default()
        },
    );
    fake.data.insert(
        Region::Eun,
        Data {
            hits: vec![
                (50, 9_000, uuid(11)),
                (300, 600, uuid(12)),
                (2_000, 100, uuid(13)),
                (2_500, 100, uuid(14)),
            ],
            ..Data::default()
        },
    );
    fake
}

fn hit_key(item: &Value) -> (u64, i64, String) {
    let price = item["indicative_price"]["minor"]
        .as_i64()
        .unwrap_or_else(|| {
            item["price"]
                .as_str()
                .and_then(|p| p.replace('.', "").parse().ok())
                .unwrap_or(-1)
        });
    (
        item["distance_m"].as_u64().unwrap_or(0),
        price,
        item["vehicle_id"].as_str().unwrap_or("").to_owned(),
    )
}

const BORDER_SEARCH: &str = "lat=54.9&lon=12&radius_m=20000&start=s&end=e";

#[test]
fn requests_are_placed_by_id_area_path_or_parameter_and_the_unplaceable_are_refused() {
    let fake = Fake::new("EUW", None);
    let edge = Edge::new(&fake, "test").unwrap_or_else(|e| panic!("{e}"));
    let at = |method: &str, rest: &str, query: &str| {
        place(&edge.config, &route(method, rest), method, rest, query)
    };
    use Placement::*;
    // Searches and surge by the point: Frankfurt and Stockholm, from the Frankfurt edge.
    assert_eq!(
        at("GET", "vehicles/search", "lat=50.11&lon=8.68&radius_m=5000"),
        One(Region::Euw)
    );
    assert_eq!(
        at("GET", "vehicles/search", "lat=59.33&lon=18.06"),
        One(Region::Eun)
    );
    assert_eq!(at("GET", "surge", "lat=59.33&lon=18.06"), One(Region::Eun));
    assert_eq!(at("GET", "surge", "region=eun"), One(Region::Eun));
    // Admin by the path, recompute and audit by the parameter.
    assert_eq!(at("GET", "admin/pricing/EUN", ""), One(Region::Eun));
    assert_eq!(
        at("PUT", "admin/pricing/EUN/base-rates/van", ""),
        One(Region::Eun)
    );
    assert_eq!(
        at("POST", "admin/surge/recompute", "region=EUN"),
        One(Region::Eun)
    );
    assert_eq!(
        at("GET", "admin/pricing-audit", "region=EUN&limit=5"),
        One(Region::Eun)
    );
    // A vehicle's maintenance blocks: the vehicle's region, from the Frankfurt edge.
    let eun_vehicle = "veh_eun_0190f5b2c3d47e8f9a0b1c2d3e4f5a6b";
    assert_eq!(
        at("POST", &format!("admin/vehicles/{eun_vehicle}/blocks"), ""),
        One(Region::Eun)
    );
    assert_eq!(
        at(
            "DELETE",
            &format!("admin/vehicles/{eun_vehicle}/blocks/0190f5b2-c3d4-7e8f-9a0b-1c2d3e4f5a6b"),
            ""
        ),
        One(Region::Eun)
    );
    // Webhooks: registered and listed by the parameter, then by the endpoint's id.
    assert_eq!(at("POST", "admin/webhooks", "region=EUN"), One(Region::Eun));
    assert_eq!(
        at("GET", "admin/webhooks", "region=EUN&limit=5"),
        One(Region::Eun)
    );
    let eun_webhook = "whk_eun_0190f5b2c3d47e8f9a0b1c2d3e4f5a6b";
    for (method, rest) in [
        ("GET", format!("admin/webhooks/{eun_webhook}")),
        ("POST", format!("admin/webhooks/{eun_webhook}/rotate")),
        (
            "POST",
            format!("admin/webhooks/{eun_webhook}/deliveries/0190f5b2-c3d4-7e8f-9a0b-1c2d3e4f5a6b/redeliver"),
        ),
    ] {
        assert_eq!(at(method, &rest, ""), One(Region::Eun), "{method} {rest}");
    }
    // A waitlist entry: its vehicle's region, by its id.
    let eun_entry = "wlt_eun_0190f5b2c3d47e8f9a0b1c2d3e4f5a6b";
    for method in ["GET", "DELETE"] {
        assert_eq!(
            at(method, &format!("waitlist/{eun_entry}"), ""),
            One(Region::Eun),
            "{method} waitlist/{eun_entry}"
        );
    }
    // The booking list: every region.
    assert_eq!(
        at("GET", "bookings", "limit=5"),
        List(vec![Region::Euw, Region::Eun])
    );
    // Malformed requests go home, where the origin explains precisely.
    for (rest, query) in [
        ("vehicles/search", "lon=8"),
        ("vehicles/search", "lat=abc&lon=8"),
        ("vehicles/search", "lat=95&lon=8"),
        ("vehicles/search", "lat=50&lon=8&radius_m=0"),
        ("surge", ""),
        ("surge", "region=XYZ"),
        ("admin/pricing/0/discount-rules", ""),
        ("admin/pricing-audit", "region=nope"),
        ("admin/vehicles/veh_xyz_0/blocks", ""),
        ("admin/webhooks", ""),
        ("admin/webhooks", "region=nope"),
        ("admin/webhooks/whk_xyz_0", ""),
        ("waitlist/wlt_xyz_0", ""),
        ("no/such/route", ""),
    ] {
        assert_eq!(at("GET", rest, query), One(Region::Euw), "{rest}?{query}");
    }
    // Well-formed but unplaceable: 422 naming the field.
    for (rest, query, field) in [
        ("vehicles/search", "lat=48.86&lon=2.35", "lat"),
        ("surge", "lat=48.86&lon=2.35", "lat"),
        ("admin/pricing-audit", "limit=5", "region"),
    ] {
        let Refused(resp) = at("GET", rest, query) else {
            panic!("{rest}?{query} was placed");
        };
        assert_eq!(resp.status, 422);
        assert_eq!(
            resp.header("content-type"),
            Some("application/problem+json")
        );
        let body: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
        assert_eq!(body["field"], field, "{body}");
        assert!(
            body["detail"].as_str().is_some_and(|d| d.len() > 20),
            "{body}"
        );
    }
    // Near a shared border: both regions.
    let touching = Fake::new("EUN", Some(TOUCHING));
    let edge = Edge::new(&touching, "test").unwrap_or_else(|e| panic!("{e}"));
    let rest = "vehicles/search";
    assert_eq!(
        place(
            &edge.config,
            &route("GET", rest),
            "GET",
            rest,
            BORDER_SEARCH
        ),
        Search(vec![Region::Euw, Region::Eun])
    );
}

#[test]
fn joining_a_waitlist_goes_to_the_vehicles_or_the_bays_region_and_a_body_without_either_goes_home()
{
    let fake = search_fake("EUW");
    let post = |body: Value| {
        let req = Request {
            method: "POST".into(),
            path: "/v1/waitlist".into(),
            query: String::new(),
            headers: vec![
                ("authorization".into(), format!("Bearer {}", token())),
                ("content-type".into(), "application/json".into()),
            ],
            body: serde_json::to_vec(&body).unwrap_or_default(),
            client_ip: Some("192.0.2.1".into()),
        };
        let edge = Edge::new(&fake, "test").unwrap_or_else(|e| panic!("config: {e}"));
        block_on(edge.handle(&fake, req))
    };
    let origin_calls = |fake: &Fake| -> Vec<String> {
        let calls = fake.calls.borrow();
        calls
            .iter()
            .filter(|c| !c.contains("upstash"))
            .cloned()
            .collect()
    };
    let resp = post(json!({
        "vehicle_id": "veh_eun_0190f5b2c3d47e8f9a0b1c2d3e4f5a6b",
        "start": "2027-03-01T08:00:00Z",
        "end": "2027-03-01T10:00:00Z",
    }));
    assert_eq!(resp.status, 200);
    assert_eq!(
        origin_calls(&fake),
        vec!["http://eun.test/v1/waitlist".to_owned()]
    );
    // A class at a bay: the bay's region.
    let resp = post(json!({ "class": "van", "bay_id": uuid(7), "region": "EUN" }));
    assert_eq!(resp.status, 200);
    assert_eq!(
        origin_calls(&fake).last().map(String::as_str),
        Some("http://eun.test/v1/waitlist")
    );
    // No vehicle the edge can read: the home origin explains (422 naming the field).
    let resp = post(json!({ "vehicle_id": "veh_xyz_0" }));
    assert_eq!(resp.status, 200);
    assert_eq!(
        origin_calls(&fake).last().map(String::as_str),
        Some("http://euw.test/v1/waitlist")
    );
}

#[test]
fn a_point_in_the_other_region_goes_to_that_origin_only() {
    let fake = search_fake("EUW");
    let (resp, body) = get(
        &fake,
        "/v2/vehicles/search?lat=59.33&lon=18.06&start=s&end=e",
    );
    assert_eq!(resp.status, 200, "{body}");
    let calls = fake.calls.borrow();
    let origin_calls: Vec<&String> = calls.iter().filter(|c| !c.contains("upstash")).collect();
    assert_eq!(origin_calls.len(), 1, "{calls:?}");
    assert!(origin_calls[0].starts_with("http://eun.test/v2/vehicles/search?"));
}

#[test]
fn a_search_across_a_boundary_merges_both_regions_in_ranking_order_across_pages() {
    for version in ["v1", "v2"] {
        for limit in [1, 2, 3, 4, 20] {
            let fake = search_fake("EUN");
            let first = format!("/{version}/vehicles/search?{BORDER_SEARCH}&limit={limit}");
            let pages = all_pages(&fake, &first);
            let got: Vec<(u64, i64, String)> = pages.iter().flatten().map(hit_key).collect();
            let mut expected: Vec<(u64, i64, Uuid, String)> = fake
                .data
                .iter()
                .flat_map(|(r, d)| {
                    d.hits.iter().map(move |(dist, p, id)| {
                        (
                            u64::from(*dist),
                            *p,
                            *id,
                            format!("veh_{}_{}", r.slug(), id.simple()),
                        )
                    })
                })
                .collect();
            expected.sort();
            let expected: Vec<(u64, i64, String)> =
                expected.into_iter().map(|(d, p, _, v)| (d, p, v)).collect();
            assert_eq!(
                got, expected,
                "{version} limit {limit}: every hit once, in order"
            );
            assert!(pages.iter().all(|p| p.len() <= limit));
            if limit == 20 {
                assert_eq!(pages.len(), 1);
            }
        }
    }
    // The answer says it was merged.
    let fake = search_fake("EUN");
    let (resp, _) = get(&fake, &format!("/v2/vehicles/search?{BORDER_SEARCH}"));
    assert_eq!(resp.header("x-edge-fanout"), Some("EUW,EUN"));
    assert_eq!(resp.header("x-partial-regions"), None);
}

fn list_fake() -> Fake {
    let mut fake = Fake::new("EUW", None);
    let t = 1_790_000_000_000_000i64;
    fake.data.insert(
        Region::Euw,
        Data {
            bookings: vec![
                (t, uuid(1)),
                (t + 5, uuid(2)),
                (t + 5, uuid(3)),
                (t + 90, uuid(4)),
            ],
            ..Data::default()
        },
    );
    fake.data.insert(
        Region::Eun,
        Data {
            bookings: vec![(t + 1, uuid(11)), (t + 5, uuid(12)), (t + 100, uuid(13))],
            ..Data::default()
        },
    );
    fake
}

fn expected_list(fake: &Fake, skip: Option<Region>) -> Vec<String> {
    let mut rows: Vec<(i64, Uuid, String)> = fake
        .data
        .iter()
        .filter(|(r, _)| Some(**r) != skip)
        .flat_map(|(r, d)| {
            d.bookings
                .iter()
                .map(move |(us, id)| (*us, *id, format!("bkg_{}_{}", r.slug(), id.simple())))
        })
        .collect();
    rows.sort_by(|a, b| b.cmp(a));
    rows.into_iter().map(|(_, _, id)| id).collect()
}

#[test]
fn a_users_booking_list_merges_both_regions_newest_first_with_one_cursor() {
    for limit in [1, 2, 3, 20] {
        let fake = list_fake();
        let pages = all_pages(&fake, &format!("/v2/bookings?limit={limit}"));
        let got: Vec<String> = pages
            .iter()
            .flatten()
            .map(|b| b["id"].as_str().unwrap_or("").to_owned())
            .collect();
        assert_eq!(got, expected_list(&fake, None), "limit {limit}");
    }
}

#[test]
fn one_origin_serving_both_regions_is_asked_once_and_nothing_is_listed_twice() {
    let mut fake = list_fake();
    fake.vars
        .insert("ORIGIN_EUN_URL", "http://euw.test".to_owned());
    // That one origin holds both regions' bookings (the fake keys its data by the URL).
    let eun = fake.data.remove(&Region::Eun).unwrap_or_default();
    if let Some(euw) = fake.data.get_mut(&Region::Euw) {
        euw.bookings.extend(eun.bookings);
    }
    let pages = all_pages(&fake, "/v2/bookings?limit=2");
    let got: Vec<String> = pages
        .iter()
        .flatten()
        .map(|b| b["id"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(got, expected_list(&fake, None));
    let (resp, _) = get(&fake, "/v2/bookings");
    assert_eq!(resp.header("x-edge-fanout"), Some("EUW"));
    fake.down.borrow_mut().insert(Region::Euw);
    let (resp, body) = get(&fake, "/v2/bookings");
    assert_eq!(resp.status, 503, "{body}");
}

#[test]
fn a_region_that_is_down_makes_the_list_partial_and_flagged_and_is_asked_again_later() {
    let fake = list_fake();
    fake.down.borrow_mut().insert(Region::Eun);
    let (resp, body) = get(&fake, "/v2/bookings?limit=2");
    assert_eq!(resp.status, 200, "{body}");
    assert_eq!(body["partial"], json!(["EUN"]), "{body}");
    assert_eq!(resp.header("x-partial-regions"), Some("EUN"));
    let ids: Vec<&str> = body["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["id"].as_str())
        .collect();
    assert_eq!(ids, expected_list(&fake, Some(Region::Eun))[..2].to_vec());
    // v1 says it in a header only.
    let (v1, v1_body) = get(&fake, "/v1/bookings?limit=2");
    assert_eq!(v1.header("x-partial-regions"), Some("EUN"));
    assert!(v1_body.get("partial").is_none(), "{v1_body}");

    // EUN returns: following the cursor, every EUN booking still arrives (none skipped),
    // every EUW booking exactly once.
    let cursor = body["next_cursor"].as_str().unwrap_or_default().to_owned();
    fake.down.borrow_mut().clear();
    let rest = pages_from(&fake, "/v2/bookings?limit=2", Some(&cursor));
    let mut seen: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
    seen.extend(
        rest.iter()
            .flatten()
            .map(|b| b["id"].as_str().unwrap_or("").to_owned()),
    );
    let mut sorted_seen = seen.clone();
    sorted_seen.sort();
    let mut all = expected_list(&fake, None);
    all.sort();
    assert_eq!(sorted_seen, all, "every booking once");

    // Every region down: 503 with Retry-After, not an empty list.
    fake.down.borrow_mut().extend([Region::Euw, Region::Eun]);
    let (resp, body) = get(&fake, "/v2/bookings");
    assert_eq!(resp.status, 503, "{body}");
    assert!(resp.header("retry-after").is_some());
}

#[test]
fn a_search_across_a_boundary_with_one_region_down_is_partial_and_resumes_it_later() {
    let fake = search_fake("EUW");
    fake.down.borrow_mut().insert(Region::Euw);
    let first = format!("/v2/vehicles/search?{BORDER_SEARCH}&limit=3");
    let (resp, body) = get(&fake, &first);
    assert_eq!(resp.status, 200, "{body}");
    assert_eq!(body["partial"], json!(["EUW"]), "{body}");
    assert_eq!(resp.header("x-partial-regions"), Some("EUW"));
    let shown: Vec<(u64, i64, String)> = body["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(hit_key)
        .collect();
    assert!(
        shown.iter().all(|(_, _, v)| v.starts_with("veh_eun_")),
        "{shown:?}"
    );
    // EUW comes back: the rest of the pages bring every EUW hit, nothing twice.
    fake.down.borrow_mut().clear();
    let cursor = body["next_cursor"].as_str().unwrap_or_default().to_owned();
    let rest = pages_from(&fake, &first, Some(&cursor));
    let mut all: Vec<(u64, i64, String)> = shown;
    all.extend(rest.iter().flatten().map(hit_key));
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(before, all.len(), "a hit was shown twice");
    let total: usize = fake.data.values().map(|d| d.hits.len()).sum();
    assert_eq!(all.len(), total, "every hit of both regions arrives");
}

#[test]
fn a_tampered_or_foreign_composite_cursor_is_a_400_problem() {
    let fake = search_fake("EUN");
    let (_, body) = get(
        &fake,
        &format!("/v2/vehicles/search?{BORDER_SEARCH}&limit=2"),
    );
    let cursor = body["next_cursor"].as_str().unwrap_or_default().to_owned();
    assert!(!cursor.is_empty(), "{body}");
    let mut json: Value = URL_SAFE_NO_PAD
        .decode(&cursor)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    json["r"].as_object_mut().map(|r| r.remove("EUN"));
    let dropped = URL_SAFE_NO_PAD.encode(json.to_string());
    for (what, url) in [
        (
            "garbage",
            format!("/v2/vehicles/search?{BORDER_SEARCH}&cursor=!!!"),
        ),
        (
            "not JSON",
            format!("/v2/vehicles/search?{BORDER_SEARCH}&cursor=bm90LWpzb24"),
        ),
        (
            "another query",
            format!("/v2/vehicles/search?{BORDER_SEARCH}&class=van&cursor={cursor}"),
        ),
        (
            "a region dropped",
            format!("/v2/vehicles/search?{BORDER_SEARCH}&cursor={dropped}"),
        ),
        (
            "too long",
            format!(
                "/v2/vehicles/search?{BORDER_SEARCH}&cursor={}",
                "A".repeat(3000)
            ),
        ),
        (
            "a search cursor on the list",
            format!("/v2/bookings?cursor={cursor}"),
        ),
    ] {
        let (resp, body) = get(&fake, &url);
        assert_eq!(resp.status, 400, "{what}: {body}");
        assert_eq!(
            resp.header("content-type"),
            Some("application/problem+json"),
            "{what}"
        );
        assert!(
            body["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("cursor:")),
            "{what}: {body}"
        );
    }
    // A page size change keeps the cursor valid.
    let (resp, body) = get(
        &fake,
        &format!("/v2/vehicles/search?{BORDER_SEARCH}&limit=5&cursor={cursor}"),
    );
    assert_eq!(resp.status, 200, "{body}");
}

#[test]
fn an_origins_4xx_is_returned_as_it_is_and_a_search_outside_every_area_never_reaches_an_origin() {
    let fake = search_fake("EUN");
    // The fake origin refuses a cursor with a foreign hash: the edge passes that 400 on.
    let bogus = crate::fanout::Composite::for_test(
        &format!("{BORDER_SEARCH}&limit=2"),
        &[
            (Region::Euw, crate::fanout::Pos::At("AQ".into())),
            (Region::Eun, crate::fanout::Pos::Start),
        ],
    );
    let (resp, body) = get(
        &fake,
        &format!("/v2/vehicles/search?{BORDER_SEARCH}&limit=2&cursor={bogus}"),
    );
    assert_eq!(resp.status, 400, "{body}");
    assert_eq!(body["type"], "/problems/bad-request");

    let before = fake
        .calls
        .borrow()
        .iter()
        .filter(|c| !c.contains("upstash"))
        .count();
    let (resp, body) = get(&fake, "/v2/vehicles/search?lat=40.4&lon=-3.7&start=s&end=e");
    assert_eq!(resp.status, 422, "{body}");
    assert_eq!(body["field"], "lat");
    let after = fake
        .calls
        .borrow()
        .iter()
        .filter(|c| !c.contains("upstash"))
        .count();
    assert_eq!(before, after, "no origin was asked");
}

#[test]
fn every_request_to_an_origin_is_signed_and_no_two_signatures_are_alike() {
    let fake = list_fake();
    let (resp, body) = get(&fake, "/v1/bookings?limit=2");
    assert_eq!(resp.status, 200, "{body}");
    let (resp, body) = get(&fake, "/v1/bookings?limit=2");
    assert_eq!(resp.status, 200, "{body}");
    let signatures = fake.signatures.borrow();
    let origin_calls = fake
        .calls
        .borrow()
        .iter()
        .filter(|c| !c.contains("upstash"))
        .count();
    // Both regions asked, twice: four calls, each verified by the fake origin with the key.
    assert_eq!(origin_calls, 4);
    assert_eq!(signatures.len(), 4, "{signatures:?}");
    // The same content to two regions, and the same request twice: a fresh nonce each time,
    // so an origin's replay memory never refuses a legitimate request.
    let distinct: BTreeSet<&String> = signatures.iter().collect();
    assert_eq!(distinct.len(), 4, "{signatures:?}");
}
