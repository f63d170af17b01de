//! The edge's per-request work on a cached quote, on the host: everything `Edge::handle` does
//! except the runtime's own crossings and the network. The platform answers the one Upstash
//! request (the rate-limit script with the cache read) with a fresh entry from memory, so
//! the figure is the core's CPU cost per cache hit — JWT verification, routing, the quote
//! body's canonical form and key digests, the script command's JSON, the reply's parsing, the
//! entry and the response headers.

use std::cell::Cell;

use criterion::{criterion_group, criterion_main, Criterion};
use edge_core::platform::{FetchError, Outbound, Platform, Request, Response};
use edge_core::Edge;
use serde_json::json;

const SECRET: &str = "bench-secret-bench-secret-bench-secret";
const NOW_MS: u64 = 1_900_000_000_000;

struct Memory {
    reply: Vec<u8>,
    calls: Cell<u64>,
}

impl Platform for Memory {
    async fn fetch(&self, _req: Outbound) -> Result<Response, FetchError> {
        self.calls.set(self.calls.get() + 1);
        Ok(Response {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: self.reply.clone(),
        })
    }
    fn now_ms(&self) -> u64 {
        NOW_MS
    }
    fn var(&self, name: &str) -> Option<String> {
        let v = match name {
            "EDGE_REGION" => "EUW",
            "ORIGIN_EUW_URL" | "ORIGIN_EUN_URL" => "http://127.0.0.1:1",
            "UPSTASH_REDIS_REST_URL" => "http://127.0.0.1:2",
            "UPSTASH_REDIS_REST_TOKEN" => "t",
            "JWT_ISSUER" => "iss",
            "JWT_AUDIENCE" => "aud",
            "JWT_HS256_SECRET" => SECRET,
            "EDGE_SIGNING_KID" => "e1",
            "EDGE_SIGNING_KEY" => "bench-edge-signing-key-bench-edge-signing",
            "EDGE_USER_LIMIT_PER_MIN" | "EDGE_IP_LIMIT_PER_MIN" => "1000000000",
            _ => return None,
        };
        Some(v.to_owned())
    }
    fn log(&self, _line: &str) {}
}

fn quote_request() -> Request {
    let claims = json!({
        "sub": "bench-user", "iss": "iss", "aud": "aud",
        "exp": NOW_MS / 1000 + 3600, "iat": NOW_MS / 1000 - 10,
    });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap_or_default();
    let body = json!({
        "vehicle_id": "veh_euw_0123456789abcdef0123456789abcdef",
        "start": "2030-01-01T10:00:00Z", "end": "2030-01-01T12:00:00Z",
    });
    Request {
        method: "POST".into(),
        path: "/v1/quotes".into(),
        query: String::new(),
        headers: vec![
            ("authorization".into(), format!("Bearer {token}")),
            ("content-type".into(), "application/json".into()),
            ("user-agent".into(), "wrk".into()),
            ("host".into(), "127.0.0.1:8787".into()),
        ],
        body: serde_json::to_vec(&body).unwrap_or_default(),
        client_ip: Some("127.0.0.1".into()),
    }
}

fn cached_quote(c: &mut Criterion) {
    // A quote body of the origin's size (~600 bytes), stored as the edge stores it.
    let quote = json!({
        "quote_token": "v1.k1.".to_owned() + &"x".repeat(300) + ".sig",
        "vehicle_id": "veh_euw_0123456789abcdef0123456789abcdef",
        "price": { "amount_minor": 4250, "currency": "EUR" },
        "expires_at": "2030-01-01T09:00:00Z",
        "region": "EUW",
    });
    let entry = json!({
        "s": 201, "ct": "application/json", "b": quote.to_string(),
        "f": NOW_MS + 60_000, "u": NOW_MS + 600_000,
    });
    // Per limit (user, address): prev, curr, and the burst bucket (not read: the window has room).
    let reply = json!({ "result": [[0, 1, 0, 0, 0, 1, 0, 0], ["3"], entry.to_string()] });
    let p = Memory {
        reply: serde_json::to_vec(&reply).unwrap_or_default(),
        calls: Cell::new(0),
    };
    let Ok(edge) = Edge::new(&p, "bench") else {
        panic!("bench configuration is invalid");
    };
    let req = quote_request();
    let first = futures_executor::block_on(edge.handle(&p, req.clone()));
    assert_eq!(
        first.status,
        201,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert_eq!(first.header("x-edge-cache"), Some("hit"));
    assert_eq!(p.calls.get(), 1, "one Upstash request per hit");
    c.bench_function("edge_cached_quote_hit", |b| {
        b.iter(|| futures_executor::block_on(edge.handle(&p, req.clone())))
    });
}

criterion_group!(benches, cached_quote);
criterion_main!(benches);
