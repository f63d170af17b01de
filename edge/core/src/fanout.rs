//! Asking several origins at once and merging their pages: a search circle that crosses a
//! service-area boundary, and a user's booking list (bookings live in their vehicle's region).
//!
//! # Merge
//! Each origin already pages by a total order: searches by `(distance_m, price minor, vehicle
//! uuid)` ascending (`origin/src/app/search.rs`), lists by `(created_at, booking uuid)`
//! descending (`origin/src/store/bookings`). The edge asks every region for `limit` items after
//! that region's position, in parallel, and merges the pages by the same order. Any item of
//! the true next page is among its region's next `limit` items, so the merged first `limit`
//! items are exactly the next page of the union. Across regions a search compares prices in
//! minor units of different currencies (EUR, SEK): only a tie in distance, to the metre, ever
//! reaches that comparison, and it stays a total, deterministic order.
//!
//! # Composite cursor
//! The `next_cursor` the edge hands out is unpadded base64url JSON (`v`, a hash `q` of the
//! query without `cursor` and `limit`, and `r`: each region's position): `start` (nothing
//! read yet), `{"at": <origin cursor>}`, `done`, or, for a search region whose last page had
//! no next cursor, `{"after": {"from": <cursor of that page or null>, "key": <last item>}}`
//! (the page is read again and the items up to `key` skipped). Positions inside a page are
//! written as origin cursors: a list cursor is the origin's `(created_at µs, uuid)` text
//! (`origin/src/http/bookings.rs::encode_list_cursor`); a search cursor is a
//! `domain::search::SearchCursor` with the query hash taken from that origin's own
//! `next_cursor` (the hash is the origin's, so the edge never recomputes it). A cursor that
//! does not decode, belongs to another query or names other regions is a 400 problem.
//!
//! # Partial answers
//! A region whose origin cannot be reached, answers 5xx, or answers 421 (its areas disagree
//! with the edge's) is left out and named: `partial: ["EUN"]` in a v2 body and an
//! `x-partial-regions: EUN` header (both versions); its position in the cursor is not moved,
//! so the next page asks it again from where it was. Never a silent gap. When every region
//! fails the answer is the usual 503 with `Retry-After`. A 4xx from any origin is the
//! client's mistake (every origin sees the same query) and is returned as it is.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use domain::search::SearchCursor;
use domain::{BookingId, Region, VehicleId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::platform::{Platform, Request, Response};
use crate::regions::query_pairs;
use crate::{problem, Edge};

/// Which merge: the order and the item key differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Search hits, ascending by (distance, price, vehicle uuid).
    Search,
    /// A user's bookings, newest first by (created_at, booking uuid).
    List,
}

/// An item's place in its kind's order: (distance m, price minor, uuid) or (created_at µs,
/// 0, uuid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct Key(i64, i64, Uuid);

/// Where a region's next page starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Pos {
    /// Nothing read yet: the first page.
    Start,
    /// Continue with this origin cursor.
    At(String),
    /// Read the page at `from` again and skip what is not after `key` (search only).
    After { from: Option<String>, key: Key },
    /// Nothing left.
    Done,
}

/// The cursor the edge hands out for a merged answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Composite {
    v: u8,
    q: String,
    r: BTreeMap<Region, Pos>,
}

const COMPOSITE_V1: u8 = 1;
/// Longer than any cursor the edge writes for two regions; anything longer is not read.
const MAX_COMPOSITE_CHARS: usize = 2_048;
/// The origins' default page size.
const DEFAULT_LIMIT: usize = 20;

impl Kind {
    fn order(self, a: &Key, b: &Key) -> Ordering {
        match self {
            Kind::Search => a.cmp(b),
            Kind::List => b.cmp(a),
        }
    }

    /// An item's key, read from the origin's JSON (v1 or v2 shape).
    fn key(self, item: &Value) -> Option<Key> {
        match self {
            Kind::Search => {
                let distance = item.get("distance_m")?.as_i64()?;
                let price = match item.get("indicative_price") {
                    Some(p) => p.get("minor")?.as_i64()?,
                    None => decimal_minor(item.get("price")?.as_str()?)?,
                };
                let vehicle: VehicleId = item.get("vehicle_id")?.as_str()?.parse().ok()?;
                Some(Key(distance, price, vehicle.uuid))
            }
            Kind::List => {
                let at = item.get("created_at")?.as_str()?;
                let at = chrono::DateTime::parse_from_rfc3339(at).ok()?;
                let id: BookingId = item.get("id")?.as_str()?.parse().ok()?;
                Some(Key(at.timestamp_micros(), 0, id.uuid))
            }
        }
    }

    /// The origin cursor that resumes strictly after `key`; `hash_from` is an origin cursor
    /// of the same query (a search cursor carries the origin's query hash).
    fn cursor_after(self, key: &Key, hash_from: Option<&str>) -> Option<String> {
        match self {
            Kind::Search => {
                let hash = SearchCursor::decode(hash_from?).ok()?.query_hash;
                Some(
                    SearchCursor {
                        distance_m: u32::try_from(key.0).ok()?,
                        price_minor: key.1,
                        vehicle: key.2,
                        query_hash: hash,
                    }
                    .encode(),
                )
            }
            Kind::List => Some(URL_SAFE_NO_PAD.encode(format!("{}.{}", key.0, key.2.simple()))),
        }
    }
}

/// "12.50" → 1250 (the origin's v1 decimal: two fraction digits, both currencies).
fn decimal_minor(text: &str) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (units, cents) = digits.split_once('.')?;
    if cents.len() != 2 {
        return None;
    }
    let value = units
        .parse::<i64>()
        .ok()?
        .checked_mul(100)?
        .checked_add(cents.parse().ok()?)?;
    Some(if negative { -value } else { value })
}

/// Hash of the query without `cursor` and `limit`, order-insensitive: a composite cursor only
/// continues the query it came from.
fn query_hash(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query_pairs(query)
        .into_iter()
        .filter(|(k, _)| k != "cursor" && k != "limit")
        .collect();
    pairs.sort();
    let mut h = Sha256::new();
    for (k, v) in pairs {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..12])
}

impl Composite {
    pub(crate) fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Strict: the right version, this query, exactly these regions.
    pub(crate) fn decode(text: &str, query: &str, regions: &[Region]) -> Result<Self, String> {
        let bad = |why: &str| format!("cursor: {why}; start again without a cursor");
        if text.len() > MAX_COMPOSITE_CHARS {
            return Err(bad("too long"));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| bad("not a cursor from a previous page"))?;
        let c: Composite =
            serde_json::from_slice(&bytes).map_err(|_| bad("not a cursor from a previous page"))?;
        if c.v != COMPOSITE_V1 {
            return Err(bad("unsupported version"));
        }
        if c.q != query_hash(query) {
            return Err(bad("it belongs to a different query"));
        }
        if c.r.len() != regions.len() || !regions.iter().all(|r| c.r.contains_key(r)) {
            return Err(bad("it names other regions than this query reaches"));
        }
        Ok(c)
    }
}

/// One region's answer, ready to merge.
struct Page {
    region: Region,
    /// The origin cursor this page was read with.
    used: Option<String>,
    /// Items after the position, in the origin's order, with their keys.
    items: Vec<(Key, Value)>,
    next: Option<String>,
}

enum Fetched {
    Page(Page),
    /// Left out: named in `partial`.
    Failed(Region),
    /// The origin refused the query: returned to the client as it is.
    ClientError(Response),
}

/// `query` with its `cursor` replaced (or removed).
fn with_cursor(query: &str, cursor: Option<&str>) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in query_pairs(query) {
        if k != "cursor" {
            out.append_pair(&k, &v);
        }
    }
    if let Some(c) = cursor {
        out.append_pair("cursor", c);
    }
    out.finish()
}

impl Edge {
    /// Asks every region in `regions` and merges (see the module docs).
    pub(crate) async fn fan_out(
        &self,
        p: &impl Platform,
        req: &Request,
        rid: &str,
        version: &str,
        kind: Kind,
        regions: &[Region],
    ) -> Response {
        // One origin serving several regions (`ORIGIN_EUW_URL` = `ORIGIN_EUN_URL`, the
        // single-origin setup) is asked once: it already answers for all of them.
        let mut asked: Vec<Region> = Vec::new();
        for r in regions {
            if !asked
                .iter()
                .any(|a| self.config.origin(*a) == self.config.origin(*r))
            {
                asked.push(*r);
            }
        }
        let regions = asked.as_slice();
        let mut positions: BTreeMap<Region, Pos> = match crate::regions::param(&req.query, "cursor")
        {
            None => regions.iter().map(|r| (*r, Pos::Start)).collect(),
            Some(text) => match Composite::decode(&text, &req.query, regions) {
                Ok(c) => c.r,
                Err(detail) => return problem::problem(400, "bad-request", "Bad request", &detail),
            },
        };
        let limit = crate::regions::param(&req.query, "limit")
            .and_then(|l| l.trim().parse::<usize>().ok())
            .filter(|l| (1..=100).contains(l))
            .unwrap_or(DEFAULT_LIMIT);

        let asks = positions
            .iter()
            .filter(|(_, pos)| **pos != Pos::Done)
            .map(|(region, pos)| self.fetch_page(p, req, rid, kind, *region, pos.clone()));
        let fetched = futures_util::future::join_all(asks).await;

        let mut pages = Vec::new();
        let mut partial = Vec::new();
        for f in fetched {
            match f {
                Fetched::Page(page) => pages.push(page),
                // Every region that origin serves is missing from the answer.
                Fetched::Failed(region) => partial.extend(
                    Region::ALL
                        .into_iter()
                        .filter(|r| self.config.origin(*r) == self.config.origin(region)),
                ),
                Fetched::ClientError(resp) => return resp,
            }
        }
        if pages.is_empty() && !partial.is_empty() {
            return problem::origin_unavailable(
                self.config.retry_after_secs,
                "the booking services of every region asked are unreachable",
            );
        }

        let (items, taken) = merge(kind, &pages, limit);
        for (page, n) in pages.iter().zip(taken) {
            let next = next_position(kind, page, n);
            if let Some(next) = next {
                positions.insert(page.region, next);
            }
        }
        let done = positions.values().all(|p| *p == Pos::Done);
        let mut body = serde_json::json!({ "items": items });
        if !done {
            let cursor = Composite {
                v: COMPOSITE_V1,
                q: query_hash(&req.query),
                r: positions,
            };
            body["next_cursor"] = Value::String(cursor.encode());
        }
        partial.sort();
        let codes: Vec<&str> = partial.iter().map(|r| r.code()).collect();
        if version == "v2" && !codes.is_empty() {
            body["partial"] = serde_json::json!(codes);
        }
        let mut resp = Response {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(&body).unwrap_or_default(),
        };
        if !codes.is_empty() {
            resp.set_header("x-partial-regions", codes.join(","));
        }
        let asked: Vec<&str> = regions.iter().map(|r| r.code()).collect();
        resp.set_header("x-edge-fanout", asked.join(","));
        resp.set_header("x-edge-cache", "bypass");
        resp
    }

    async fn fetch_page(
        &self,
        p: &impl Platform,
        req: &Request,
        rid: &str,
        kind: Kind,
        region: Region,
        pos: Pos,
    ) -> Fetched {
        let (used, after) = match pos {
            Pos::Start | Pos::Done => (None, None),
            Pos::At(c) => (Some(c), None),
            Pos::After { from, key } => (from, Some(key)),
        };
        let mut sub = req.clone();
        sub.query = with_cursor(&req.query, used.as_deref());
        let resp = match self.forward(p, &sub, rid, region).await {
            Ok(resp) => resp,
            Err(e) => {
                p.log(&format!(
                    "origin {} unreachable (partial answer): {e}",
                    region.code()
                ));
                return Fetched::Failed(region);
            }
        };
        if resp.status >= 500 || resp.status == 421 {
            p.log(&format!(
                "origin {} answered {} (partial answer)",
                region.code(),
                resp.status
            ));
            return Fetched::Failed(region);
        }
        if resp.status != 200 {
            return Fetched::ClientError(resp);
        }
        let Ok(body) = serde_json::from_slice::<Value>(&resp.body) else {
            p.log(&format!(
                "origin {} sent a page that is not JSON",
                region.code()
            ));
            return Fetched::Failed(region);
        };
        let mut items = Vec::new();
        for item in body
            .get("items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(key) = kind.key(item) else {
                p.log(&format!(
                    "origin {} sent an item without its sort key",
                    region.code()
                ));
                return Fetched::Failed(region);
            };
            if after.is_some_and(|a| kind.order(&key, &a) != Ordering::Greater) {
                continue;
            }
            items.push((key, item.clone()));
        }
        Fetched::Page(Page {
            region,
            used,
            items,
            next: body
                .get("next_cursor")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }
}

/// The first `limit` items of the pages in `kind`'s order, and how many each page gave. A
/// page with more behind it (`next`) that runs out stops the merge: its next item is unknown.
fn merge(kind: Kind, pages: &[Page], limit: usize) -> (Vec<Value>, Vec<usize>) {
    let mut taken = vec![0usize; pages.len()];
    let mut out = Vec::new();
    while out.len() < limit {
        let mut best: Option<usize> = None;
        let mut blocked = false;
        for (i, page) in pages.iter().enumerate() {
            match page.items.get(taken[i]) {
                Some((key, _)) => {
                    let better = best.is_none_or(|b| {
                        let (bk, _) = &pages[b].items[taken[b]];
                        kind.order(key, bk) == Ordering::Less
                    });
                    if better {
                        best = Some(i);
                    }
                }
                None if page.next.is_some() => blocked = true,
                None => {}
            }
        }
        match best {
            Some(i) if !blocked => {
                out.push(pages[i].items[taken[i]].1.clone());
                taken[i] += 1;
            }
            _ => break,
        }
    }
    (out, taken)
}

/// A region's position after `n` of its page's items were handed out; `None`: unchanged.
fn next_position(kind: Kind, page: &Page, n: usize) -> Option<Pos> {
    if n == page.items.len() {
        return Some(match &page.next {
            Some(c) => Pos::At(c.clone()),
            None => Pos::Done,
        });
    }
    let last = page.items.get(n.checked_sub(1)?)?.0;
    // Resume right after the last item handed out: as an origin cursor when the edge can
    // write one (a list always; a search with the origin's query hash from one of its
    // cursors), else by reading this page again and skipping up to `last`.
    let hash_from = page.next.as_deref().or(page.used.as_deref());
    Some(match kind.cursor_after(&last, hash_from) {
        Some(c) => Pos::At(c),
        None => Pos::After {
            from: page.used.clone(),
            key: last,
        },
    })
}

#[cfg(test)]
mod tests;

#[cfg(test)]
impl Composite {
    /// A cursor for `query` with the given positions, as the edge would write it.
    pub(crate) fn for_test(query: &str, positions: &[(Region, Pos)]) -> String {
        Composite {
            v: COMPOSITE_V1,
            q: query_hash(query),
            r: positions.iter().cloned().collect(),
        }
        .encode()
    }
}
