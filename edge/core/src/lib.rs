//! The edge worker's logic, once, for every runtime.
//!
//! An edge request goes through the same steps on Cloudflare Workers and on Spin:
//!
//! 1. a request id is taken from `X-Request-Id` (if well-formed) or made, and sent on to the
//!    origin and back to the client;
//! 2. the bearer JWT is verified here with `domain::auth` — the origin's rules, so both tiers
//!    accept exactly the same tokens — and a bad token is a 401 that never reaches the origin;
//! 3. the per-user (100/min) and per-IP (1000/min) limits, each with its burst allowance
//!    (five times the rate for 10 s), are checked in one Redis round trip ([`ratelimit`]), with the client address from the platform's trusted source only (an
//!    IPv6 client by its /64, `domain::ratelimit::address_bucket`); for a
//!    search or quote the same round trip reads the cache entry, so a hit costs one Upstash
//!    request and a client known to be blocked none;
//! 4. searches and quotes are answered from the edge cache when fresh ([`cache`]); on a miss
//!    they are fetched from the origin and stored (a second Upstash request); when the origin is unreachable a stale
//!    entry is served (`x-edge-cache: stale`), without one a 503 with `Retry-After`;
//! 5. writes go to the origin of the vehicle's home region — from the booking id
//!    (`bkg_eun_…`) or the quote token's region — with the caller's `Authorization`,
//!    `X-Request-Id` and `Idempotency-Key`; the edge never writes bookings itself. After a
//!    successful write the edge bumps the cache generations it affects. Every request to an
//!    origin is signed (`domain::edge_auth`: method, path, query, body hash, timestamp,
//!    nonce, request id, this edge's region), and origins refuse what is not.
//! 6. reads that name no id are placed by [`regions`]: a search or surge by the service area
//!    of its point, admin by its region; a search circle crossing into another area and a
//!    user's booking list ask every region's origin in parallel and are merged ([`fanout`]).
//!
//! The host is reached only through [`platform::Platform`].

pub mod cache;
pub mod config;
mod fanout;
pub mod platform;
pub mod problem;
pub mod ratelimit;
mod regions;
mod route;
pub mod trace;
pub mod upstash;

use std::cell::Cell;
use std::rc::Rc;

use domain::api_key::KeyRefusal;
use domain::auth::{AuthError, Claims};
use domain::edge_auth;
use domain::ratelimit::{address_bucket, Burst, RateLimit};
use domain::{Region, VehicleId};
use serde_json::Value;

use crate::cache::Entry;
use crate::config::EdgeConfig;
use crate::platform::{FetchError, Outbound, Platform, Request, Response};
use crate::ratelimit::{
    BlockedCache, CacheFound, CacheRead, Check, DenyRead, KeyRead, Outbox, Outcome, Subject,
};
use crate::regions::Placement;
use crate::route::{canonical, is_write, quote_token_target, route, uri_safe, Route};
use crate::upstash::{arg, Upstash};

/// Largest request body the edge forwards (the origin's default limit).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The methods the edge forwards; the origin routes no other (it answers them 405 too).
pub const FORWARDED_METHODS: &[&str] =
    &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Origin response headers passed back to the client.
const PASSED_BACK: &[&str] = &[
    "content-type",
    "retry-after",
    "idempotent-replayed",
    "location",
    "x-cache",
    "cache-control",
];

/// An edge instance: validated configuration and the in-isolate blocked-client memory.
#[derive(Debug)]
pub struct Edge {
    pub config: EdgeConfig,
    blocked: BlockedCache,
    runtime: &'static str,
    /// Requests being handled by this isolate right now (single-threaded hosts: a `Cell`).
    in_flight: Rc<Cell<usize>>,
    /// Each region's deny-list hash and API-key hash (`domain::deny::hash_key`,
    /// `domain::api_key::hash_key`), named once.
    deny_keys: Vec<String>,
    api_key_keys: Vec<String>,
    /// This region's outbox when limits are shared across regions (`EDGE_SHARE_LIMITS`).
    outbox: Option<Outbox>,
}

/// Counts a request in flight until dropped — also when the host drops the request's
/// future (a client that went away), so the count cannot leak.
struct InFlight(Rc<Cell<usize>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// How a cached route looks its entry up.
enum Cached {
    /// A search placed in one region.
    Search(Region),
    Quote {
        vehicle: VehicleId,
        canonical_body: String,
    },
}

fn now_secs(p: &impl Platform) -> i64 {
    i64::try_from(p.now_ms() / 1000).unwrap_or(i64::MAX)
}

/// A well-formed incoming id is kept (so a client's trace spans both tiers); anything else
/// is replaced, so logs never carry attacker-chosen bytes.
fn request_id(req: &Request) -> String {
    if let Some(id) = req.header("x-request-id") {
        let ok = !id.is_empty()
            && id.len() <= 128
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
        if ok {
            return id.to_owned();
        }
    }
    let mut bytes = [0u8; 16];
    if getrandom::getrandom(&mut bytes).is_err() {
        // No entropy source: an id is for tracing only, a constant is better than failing.
        return "edge-no-entropy".into();
    }
    hex::encode(bytes)
}

/// A fresh nonce for a request signature: 16 random bytes in hex. Without an entropy source
/// (never seen on either host) the clock and a per-isolate counter stand in: still unique per
/// isolate, and the request id beside it in the signed string is random per request.
fn nonce(now_ms: u64) -> String {
    let mut bytes = [0u8; 16];
    if getrandom::getrandom(&mut bytes).is_ok() {
        return hex::encode(bytes);
    }
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{now_ms:016x}{n:016x}")
}

/// The IETF RateLimit headers (draft 7's fields, as the rest of the API). `RateLimit-Limit`
/// is the window's limit; `RateLimit-Remaining` counts what would still pass right now, the
/// window's room plus the burst's tokens; `RateLimit-Policy` names the window and, when on,
/// the burst (`domain::ratelimit::burst`): `100;w=60, 83;w=10;burst=68` is 100 per 60 s, and
/// 83 in 10 s (five times the rate) of which up to 68 from a bucket beyond the window.
fn rate_headers(resp: &mut Response, outcome: &Outcome) {
    let d = &outcome.decision;
    resp.set_header("ratelimit-limit", outcome.limit.limit.to_string());
    resp.set_header("ratelimit-remaining", d.remaining.to_string());
    resp.set_header("ratelimit-reset", d.reset_ms.div_ceil(1000).to_string());
    resp.set_header(
        "ratelimit-policy",
        policy(&outcome.limit, outcome.burst.as_ref()),
    );
    if !d.allowed {
        resp.set_header("retry-after", d.retry_after_secs().to_string());
    }
}

/// The `RateLimit-Policy` value for a window and its burst allowance.
pub fn policy(limit: &RateLimit, burst: Option<&Burst>) -> String {
    let window = format!("{};w={}", limit.limit, limit.window_ms / 1000);
    match burst {
        Some(b) => format!(
            "{window}, {};w={};burst={}",
            b.quota(limit),
            b.secs,
            b.capacity
        ),
        None => window,
    }
}

/// 403: the client is on the deny list (`domain::deny`). The answer names what is denied —
/// the address, the user or the app's key — but not the entry's reason, which is for ops.
fn denied(field: &str) -> Response {
    let what = if field.starts_with("u:") {
        "this user"
    } else if field.starts_with(domain::deny::KEY_FIELD_PREFIX) {
        "this app's API key"
    } else {
        "this client address"
    };
    problem::problem(
        403,
        "denied",
        "Forbidden",
        &format!("{what} is on the deny list"),
    )
}

/// The presented API key cannot be used: 401 (unknown, revoked, expired), or 403 when the
/// key is fine but not for this browser origin.
fn key_refused(outcome: &Outcome) -> Response {
    let id = outcome
        .key
        .as_ref()
        .map_or_else(String::new, |k| format!(" {}", k.key_id));
    match outcome.key_refused {
        Some(KeyRefusal::Origin) => problem::problem(
            403,
            "origin-not-allowed",
            "Forbidden",
            &format!("API key{id} is not allowed from this origin"),
        ),
        Some(KeyRefusal::Revoked) => problem::bad_api_key(&format!("API key{id} has been revoked")),
        Some(KeyRefusal::Expired) => problem::bad_api_key(&format!("API key{id} has expired")),
        Some(KeyRefusal::Unknown) | None => problem::bad_api_key("unknown API key"),
    }
}

fn too_many(outcome: &Outcome) -> Response {
    let mut r = problem::problem(
        429,
        "rate-limited",
        "Too many requests",
        &format!(
            "rate limit of {} requests per {} s exceeded; retry after {} s",
            outcome.limit.limit,
            outcome.limit.window_ms / 1000,
            outcome.decision.retry_after_secs()
        ),
    );
    rate_headers(&mut r, outcome);
    r
}

impl Edge {
    /// Builds an edge from the platform's variables.
    pub fn new(p: &impl Platform, runtime: &'static str) -> Result<Self, config::ConfigError> {
        let config = EdgeConfig::from_platform(p)?;
        let per_region = |f: fn(&str, Region) -> String| -> Vec<String> {
            Region::ALL
                .iter()
                .map(|r| f(&config.key_prefix, *r))
                .collect()
        };
        Ok(Edge {
            deny_keys: per_region(domain::deny::hash_key),
            api_key_keys: per_region(domain::api_key::hash_key),
            outbox: config
                .share_limits
                .then(|| Outbox::new(&config.key_prefix, config.region)),
            config,
            blocked: BlockedCache::default(),
            runtime,
            in_flight: Rc::new(Cell::new(0)),
        })
    }

    fn redis(&self) -> Upstash<'_> {
        Upstash {
            url: &self.config.upstash_url,
            token: &self.config.upstash_token,
            timeout_ms: self.config.redis_timeout_ms,
        }
    }

    /// Handles one request; never fails (every error is a problem response). Writes one
    /// access line ([`trace`]).
    pub async fn handle(&self, p: &impl Platform, mut req: Request) -> Response {
        let started = p.now_ms();
        let rid = request_id(&req);
        // The trace this request continues or starts; what is forwarded carries the edge's span.
        let trace = trace::EdgeTrace::of(&req);
        match &trace {
            Some(trace) => trace.apply(&mut req),
            None => req.headers.retain(|(k, _)| {
                !k.eq_ignore_ascii_case("traceparent") && !k.eq_ignore_ascii_case("tracestate")
            }),
        }
        let mut user = None;
        let mut resp = if self.in_flight.get() >= self.config.max_in_flight {
            problem::overloaded(self.config.retry_after_secs, self.config.max_in_flight)
        } else {
            self.in_flight.set(self.in_flight.get() + 1);
            let _counted = InFlight(self.in_flight.clone());
            self.dispatch(p, &req, &rid, &mut user).await
        };
        if let Some(trace) = &trace {
            resp.set_header("traceresponse", trace.forwarded.to_string());
        }
        trace::Access {
            method: &req.method,
            path: &req.path,
            status: resp.status,
            duration_ms: p.now_ms().saturating_sub(started),
            request_id: &rid,
            trace: trace.as_ref(),
            region: self.config.region.code(),
            runtime: self.runtime,
            cache: resp.header("x-edge-cache"),
            user: user.as_deref(),
        }
        .log(p);
        resp.set_header("x-request-id", rid);
        resp.set_header("x-edge-region", self.config.region.code());
        resp.set_header("x-edge-runtime", self.runtime);
        resp
    }

    /// A limit per window, and its burst allowance.
    fn check(&self, subject: Subject, id: String, per_window: u32) -> Check {
        let limit = RateLimit {
            limit: per_window,
            window_ms: self.config.rate_limit_window_secs.saturating_mul(1000),
        };
        Check {
            subject,
            id,
            limit,
            burst: Burst::new(&limit, self.config.rate_limit_burst_secs),
        }
    }

    /// Serves one request; `user` gets the verified caller's id (for the access line).
    async fn dispatch(
        &self,
        p: &impl Platform,
        req: &Request,
        rid: &str,
        user: &mut Option<String>,
    ) -> Response {
        if req.path == "/healthz" {
            let body = serde_json::json!({
                "status": "ok",
                "runtime": self.runtime,
                "region": self.config.region.code(),
            });
            return Response {
                status: 200,
                headers: vec![("content-type".into(), "application/json".into())],
                body: serde_json::to_vec(&body).unwrap_or_default(),
            };
        }
        let Some((version, rest)) = req
            .path
            .strip_prefix("/v1/")
            .map(|r| ("v1", r))
            .or_else(|| req.path.strip_prefix("/v2/").map(|r| ("v2", r)))
        else {
            return problem::problem(
                404,
                "no-route",
                "No such route",
                &format!("no route for {} {}", req.method, req.path),
            );
        };
        if !FORWARDED_METHODS.contains(&req.method.as_str()) {
            // Not every host can send an arbitrary method (workerd's fetch refuses `QUERY`),
            // and the origin routes none of these: answer as the origin would, without it.
            let mut resp = problem::problem(
                405,
                "method-not-allowed",
                "Method not allowed",
                &format!("the edge does not forward {} requests", req.method),
            );
            resp.set_header("allow", FORWARDED_METHODS.join(", "));
            return resp;
        }
        if req.body.len() > MAX_BODY_BYTES {
            return problem::problem(
                413,
                "payload-too-large",
                "Payload too large",
                &format!("request body exceeds {MAX_BODY_BYTES} bytes"),
            );
        }
        // The platform's address (never a header the client chose), an IPv6 one by its /64.
        let ip = req.client_ip.as_deref().unwrap_or("unknown");
        let ip_check = self.check(
            Subject::Ip,
            address_bucket(ip),
            self.config.ip_limit_per_min,
        );
        // The limiter's clock: behind the wall clock in later regions when limits are shared
        // (`domain::ratelimit::shared`: room the sliding window frees reaches one region at a
        // time).
        let now = match self.outbox {
            Some(_) => domain::ratelimit::shared::clock(self.config.region, p.now_ms()),
            None => p.now_ms(),
        };

        // 1. Who is calling. A bad token still counts against its address, so a flood of
        //    garbage tokens is limited like anything else.
        let claims = match self.authenticate(p, req) {
            Ok(claims) => claims,
            Err(detail) => {
                let mut resp = problem::unauthorized(&detail);
                let deny = DenyRead {
                    keys: self.deny_keys.clone(),
                    fields: domain::deny::candidates(req.client_ip.as_deref(), None),
                };
                match ratelimit::apply(
                    p,
                    &self.redis(),
                    &self.config.key_prefix,
                    self.outbox.as_ref(),
                    &self.blocked,
                    std::slice::from_ref(&ip_check),
                    None,
                    &deny,
                    None,
                    now,
                )
                .await
                {
                    Ok((outcome, _)) if outcome.denied.is_some() => {
                        return denied(outcome.denied.as_deref().unwrap_or_default())
                    }
                    Ok((outcome, _)) if !outcome.decision.allowed => return too_many(&outcome),
                    Ok((outcome, _)) => rate_headers(&mut resp, &outcome),
                    Err(e) => p.log(&format!("rate limit check failed (allowed): {e}")),
                }
                return resp;
            }
        };

        *user = Some(claims.sub.clone());

        // The app's key, if it sent one: checked and limited in the same round trip below.
        let key = match req.header("x-api-key").map(str::trim) {
            Some(secret) if domain::api_key::plausible_secret(secret) => Some(KeyRead {
                keys: self.api_key_keys.clone(),
                hash: domain::api_key::secret_hash(secret),
                origin: req
                    .header("origin")
                    .and_then(|o| domain::api_key::parse_origin(o).ok())
                    .unwrap_or_default(),
            }),
            Some(_) => {
                return problem::bad_api_key("the X-Api-Key header does not hold an API key")
            }
            None if self.config.require_api_key => {
                return problem::bad_api_key(
                    "this edge requires an app's API key in the X-Api-Key header",
                )
            }
            None => None,
        };

        // 2. What it asks for, and which cache generations that needs.
        let route = route(&req.method, rest);
        // Which origin(s): `regions.rs`; a search across a boundary and the booking list are
        // merged from several (`fanout.rs`).
        let placement = regions::place(&self.config, &route, &req.method, rest, &req.query);
        let cached = match route {
            Route::Search => match placement {
                Placement::One(region) => Some(Cached::Search(region)),
                _ => None,
            },
            Route::Quote => serde_json::from_slice::<Value>(&req.body)
                .ok()
                .and_then(|body| {
                    let vehicle = body.get("vehicle_id")?.as_str()?.parse().ok()?;
                    Some(Cached::Quote {
                        vehicle,
                        canonical_body: canonical(&body),
                    })
                }),
            _ => None,
        };
        let prefix = &self.config.key_prefix;
        let read = cached.as_ref().map(|cached| match cached {
            Cached::Search(_) => CacheRead {
                gen_keys: Region::ALL
                    .iter()
                    .map(|r| cache::region_gen_key(prefix, *r))
                    .collect(),
                key: cache::search_key_parts(prefix, version, &req.query),
            },
            Cached::Quote {
                vehicle,
                canonical_body,
            } => CacheRead {
                gen_keys: vec![cache::vehicle_gen_key(prefix, vehicle)],
                key: cache::quote_key_parts(
                    prefix,
                    version,
                    vehicle,
                    &claims.sub,
                    claims.membership.as_deref().unwrap_or(""),
                    canonical_body,
                ),
            },
        });

        // 3. Rate limits, and the cache entry if they allow the request: one round trip.
        let user_check = self.check(
            Subject::User,
            claims.sub.clone(),
            self.config.user_limit_per_min,
        );
        let checks = [user_check, ip_check];
        // The deny list rides on the same script: the fields that would deny this request.
        let deny = DenyRead {
            keys: self.deny_keys.clone(),
            fields: domain::deny::candidates(req.client_ip.as_deref(), Some(&claims.sub)),
        };
        let (outcome, found) = match ratelimit::apply(
            p,
            &self.redis(),
            prefix,
            self.outbox.as_ref(),
            &self.blocked,
            &checks,
            read.as_ref(),
            &deny,
            key.as_ref(),
            now,
        )
        .await
        {
            Ok((outcome, _)) if outcome.denied.is_some() => {
                return denied(outcome.denied.as_deref().unwrap_or_default())
            }
            Ok((outcome, _)) if outcome.key_refused.is_some() => {
                return key_refused(&outcome);
            }
            Ok((outcome, _)) if !outcome.decision.allowed => return too_many(&outcome),
            Ok((outcome, found)) => (Some(outcome), found),
            Err(e) => {
                p.log(&format!("rate limit check failed (allowed): {e}"));
                (None, None)
            }
        };

        // 4. Serve.
        let mut resp = match (placement, cached, found) {
            (Placement::Refused(resp), _, _) => resp,
            (Placement::Search(regions), _, _) => {
                self.fan_out(p, req, rid, version, fanout::Kind::Search, &regions)
                    .await
            }
            (Placement::List(regions), _, _) => {
                self.fan_out(p, req, rid, version, fanout::Kind::List, &regions)
                    .await
            }
            (Placement::One(_), Some(cached), Some(found)) => {
                self.cached_read(p, req, rid, cached, found).await
            }
            (Placement::One(placed), _, _) => self.forward_route(p, req, rid, &route, placed).await,
        };
        if let Some(outcome) = outcome {
            rate_headers(&mut resp, &outcome);
        }
        resp
    }

    fn authenticate(&self, p: &impl Platform, req: &Request) -> Result<Claims, String> {
        let Some(value) = req.header("authorization") else {
            return Err("missing bearer token".into());
        };
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| "expected Authorization: Bearer <token>".to_owned())?;
        self.config
            .jwt
            .verify(token.trim(), now_secs(p))
            .map_err(|e: AuthError| e.to_string())
    }

    /// Which region's origin answers this route; `placed` is where `regions::place` put a
    /// route that names no id.
    fn region_of(
        &self,
        req: &Request,
        route: &Route,
        placed: Region,
    ) -> (Region, Option<VehicleId>) {
        match route {
            Route::BookingAction(id) | Route::BookingRead(id) => (id.region, None),
            Route::CreateBooking => serde_json::from_slice::<Value>(&req.body)
                .ok()
                .and_then(|b| b.get("quote_token")?.as_str().map(str::to_owned))
                .and_then(|t| quote_token_target(&t))
                .unwrap_or((self.config.region, None)),
            Route::Quote => serde_json::from_slice::<Value>(&req.body)
                .ok()
                .and_then(|b| b.get("vehicle_id")?.as_str()?.parse::<VehicleId>().ok())
                .map(|v| (v.region, Some(v)))
                .unwrap_or((self.config.region, None)),
            // Joining a waitlist goes to the vehicle's region, as its quotes and holds do, or,
            // for a class at a bay, to the bay's (`region`).
            Route::Other
                if req.method == "POST" && req.path.trim_end_matches('/') == "/v1/waitlist" =>
            {
                let body = serde_json::from_slice::<Value>(&req.body).ok();
                let by_vehicle = body
                    .as_ref()
                    .and_then(|b| b.get("vehicle_id")?.as_str()?.parse::<VehicleId>().ok())
                    .map(|v| v.region);
                let by_region = || {
                    body.as_ref()
                        .and_then(|b| b.get("region")?.as_str()?.parse::<Region>().ok())
                };
                (by_vehicle.or_else(by_region).unwrap_or(placed), None)
            }
            Route::Search | Route::Other => (placed, None),
        }
    }

    async fn forward(
        &self,
        p: &impl Platform,
        req: &Request,
        rid: &str,
        region: Region,
    ) -> Result<Response, FetchError> {
        let path = uri_safe(&req.path, false);
        let query = uri_safe(&req.query, true);
        let mut url = format!("{}{path}", self.config.origin(region));
        if !query.is_empty() {
            url.push('?');
            url.push_str(&query);
        }
        // Fetch (workerd) refuses a body on GET and HEAD, and the origin ignores one there:
        // it is never forwarded, on any runtime.
        let body = if matches!(req.method.as_str(), "GET" | "HEAD") {
            Vec::new()
        } else {
            req.body.clone()
        };
        let mut headers = vec![("x-request-id".to_owned(), rid.to_owned())];
        for name in [
            "authorization",
            "content-type",
            "idempotency-key",
            "accept",
            // Set by `handle` (`trace.rs`): the edge's span as the parent.
            "traceparent",
            "tracestate",
        ] {
            if let Some(v) = req.header(name) {
                headers.push((name.to_owned(), v.to_owned()));
            }
        }
        // Proof for the origin that this request came through an edge: exactly the bytes
        // sent (path, query, body), this edge's region and the request id, signed.
        let hash = edge_auth::body_sha256(&body);
        let parts = edge_auth::RequestParts {
            method: &req.method,
            path: &path,
            query: &query,
            body_sha256: &hash,
            request_id: rid,
            region: self.config.region.code(),
        };
        let signature = self
            .config
            .signer
            .sign(&parts, now_secs(p), &nonce(p.now_ms()));
        headers.push((edge_auth::SIGNATURE_HEADER.to_owned(), signature));
        headers.push((
            edge_auth::REGION_HEADER.to_owned(),
            self.config.region.code().to_owned(),
        ));
        let resp = p
            .fetch(Outbound {
                method: req.method.clone(),
                url,
                headers,
                body,
                timeout_ms: self.config.origin_timeout_ms,
            })
            .await?;
        let headers = resp
            .headers
            .into_iter()
            .filter(|(k, _)| PASSED_BACK.iter().any(|h| k.eq_ignore_ascii_case(h)))
            .collect();
        Ok(Response {
            status: resp.status,
            headers,
            body: resp.body,
        })
    }

    /// Uncached routes: forward, bump generations after a successful write, 503 when the
    /// origin cannot be reached.
    async fn forward_route(
        &self,
        p: &impl Platform,
        req: &Request,
        rid: &str,
        route: &Route,
        placed: Region,
    ) -> Response {
        let (region, vehicle) = self.region_of(req, route, placed);
        match self.forward(p, req, rid, region).await {
            Ok(mut resp) => {
                let write = is_write(&req.method) && !matches!(route, Route::Quote);
                if write && (200..300).contains(&resp.status) {
                    let vehicle = serde_json::from_slice::<Value>(&resp.body)
                        .ok()
                        .and_then(|b| b.get("vehicle_id")?.as_str()?.parse().ok())
                        .or(vehicle);
                    self.bump(p, region, vehicle.as_ref()).await;
                }
                resp.set_header("x-edge-cache", "bypass");
                resp
            }
            Err(e) => {
                p.log(&format!("origin {} unreachable: {e}", region.code()));
                let detail = if is_write(&req.method) {
                    "the booking service of this region is unreachable; nothing was changed \
                     unless a retry with the same Idempotency-Key says otherwise"
                } else {
                    "the booking service of this region is unreachable and no cached answer exists"
                };
                problem::origin_unavailable(self.config.retry_after_secs, detail)
            }
        }
    }

    /// Bumps the region's (and the vehicle's) cache generation: every cached search of the
    /// region and quote of the vehicle becomes unreachable at once.
    async fn bump(&self, p: &impl Platform, region: Region, vehicle: Option<&VehicleId>) {
        let cmds = cache::bump_commands(&self.config.key_prefix, region, vehicle)
            .into_iter()
            .map(|cmd| cmd.into_iter().map(arg).collect())
            .collect();
        if let Err(e) = self.redis().pipeline(p, cmds).await {
            p.log(&format!("cache generation bump failed: {e}"));
        }
    }

    /// A cached route whose entry (if any) the rate-limit round trip has read: serve it when
    /// fresh, else ask the origin and store its answer.
    async fn cached_read(
        &self,
        p: &impl Platform,
        req: &Request,
        rid: &str,
        cached: Cached,
        found: CacheFound,
    ) -> Response {
        let (region, ttl_secs, route) = match &cached {
            Cached::Search(region) => (*region, self.config.search_ttl_secs, Route::Search),
            Cached::Quote { vehicle, .. } => {
                (vehicle.region, self.config.quote_ttl_secs, Route::Quote)
            }
        };
        let key = found.key;
        let now = p.now_ms();
        let entry: Option<Entry> = found
            .entry
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok());
        if let Some(entry) = &entry {
            if entry.f > now {
                return Self::from_entry(entry, "hit", now);
            }
        }
        let forwarded = self.forward(p, req, rid, region).await;
        match forwarded {
            Ok(resp) if resp.status < 500 => {
                let cacheable = match route {
                    Route::Quote => resp.status == 201,
                    _ => resp.status == 200,
                };
                if cacheable {
                    self.store(p, &key, &resp, now, ttl_secs).await;
                }
                let mut resp = resp;
                resp.set_header("x-edge-cache", "miss");
                resp
            }
            other => {
                let usable = entry.filter(|e| e.u.is_none_or(|u| u > now));
                match (usable, other) {
                    (Some(entry), _) => Self::from_entry(&entry, "stale", now),
                    (None, Ok(resp)) => resp,
                    (None, Err(e)) => {
                        p.log(&format!("origin {} unreachable: {e}", region.code()));
                        problem::origin_unavailable(
                            self.config.retry_after_secs,
                            "the booking service of this region is unreachable and no cached \
                             answer exists",
                        )
                    }
                }
            }
        }
    }

    async fn store(&self, p: &impl Platform, key: &str, resp: &Response, now: u64, ttl: u64) {
        let body = String::from_utf8_lossy(&resp.body).into_owned();
        // A quote is only worth serving while its token is valid.
        let usable_until = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|b| b.get("expires_at")?.as_str().map(str::to_owned))
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            .and_then(|t| u64::try_from(t.timestamp_millis()).ok());
        let entry = Entry {
            s: resp.status,
            ct: resp
                .header("content-type")
                .unwrap_or("application/json")
                .to_owned(),
            b: body,
            f: now + ttl * 1000,
            u: usable_until,
        };
        let Ok(value) = serde_json::to_string(&entry) else {
            return;
        };
        let keep_ms = (ttl + self.config.stale_secs) * 1000;
        let cmd = vec![
            arg("SET"),
            arg(key),
            arg(value),
            arg("PX"),
            arg(keep_ms.to_string()),
        ];
        if let Err(e) = self.redis().command(p, cmd).await {
            p.log(&format!("edge cache write failed: {e}"));
        }
    }

    fn from_entry(entry: &Entry, state: &str, now: u64) -> Response {
        let mut resp = Response {
            status: entry.s,
            headers: vec![("content-type".into(), entry.ct.clone())],
            body: entry.b.clone().into_bytes(),
        };
        resp.set_header("x-edge-cache", state);
        if state == "stale" {
            resp.set_header("warning", "110 - \"Response is Stale\"");
            let age = now.saturating_sub(entry.f) / 1000;
            resp.set_header("age", age.to_string());
        }
        resp
    }
}

/// Handles a request with an edge built for it (Spin: one instance per request). A
/// configuration error is a 500 problem naming the variable, never its value.
pub async fn handle_once(p: &impl Platform, runtime: &'static str, req: Request) -> Response {
    match Edge::new(p, runtime) {
        Ok(edge) => edge.handle(p, req).await,
        Err(e) => {
            p.log(&format!("edge misconfigured: {e}"));
            problem::problem(
                500,
                "edge-misconfigured",
                "Edge misconfigured",
                &format!("the edge is misconfigured: {e}"),
            )
        }
    }
}

#[cfg(test)]
mod tests;
