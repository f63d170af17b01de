//! No secret or token in the logs: run traffic that touches every credential the origin holds
//! or receives, with logging at `debug` in the production (JSON) format, capture every line,
//! and grep it.
//!
//! What must never appear: the JWT HMAC secret, the quote signing keys, any bearer token (or
//! its signature, the part that makes it usable), any quote token's signature, the
//! Authorization header's value. The traffic includes the paths most likely to leak: refused
//! tokens (401s describe why), tampered quote tokens, idempotency replays and conflicts,
//! validation errors that quote the input, cached quotes.
//!
//! The capture is a process-wide subscriber: nextest runs each test in its own process, so it
//! sees exactly this test's origin (under `cargo test` it may see others' lines too, which only
//! widens the search).

use std::io::Write;
use std::sync::{Arc, Mutex};

use e2e::*;
use serde_json::{json, Value};
use sqlx::PgPool;

/// The captured log; `on` is switched off when the test ends, so under `cargo test` (one
/// process) the global subscriber stops buffering the other tests' lines.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>, Arc<std::sync::atomic::AtomicBool>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.1.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(mut v) = self.0.lock() {
                v.extend_from_slice(buf);
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

const QUOTE_KEYS: [&str; 2] = [
    "quote-key-one-quote-key-one-quote-key-one",
    "old-quote-key-old-quote-key-old-quote",
];

#[sqlx::test(migrations = "../migrations")]
async fn logs_at_debug_hold_no_secret_token_or_signature(pool: PgPool) -> TestResult {
    let capture = Capture::default();
    capture.1.store(true, std::sync::atomic::Ordering::Relaxed);
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "debug,hyper=info,h2=info,rdkafka=info,librdkafka=info",
        ))
        .with_writer(capture.clone())
        .finish();
    anyhow::ensure!(
        tracing::subscriber::set_global_default(subscriber).is_ok(),
        "another subscriber is installed; run this test alone (nextest does)"
    );

    let app = spawn_app_with(pool, &[("LOG_JSON", "true")]).await?;
    let vehicle = app.vehicles("EUW").await?[3].clone();
    let mut presented: Vec<String> = Vec::new();
    let ann = token("ann");
    let ops = ops_token("olga");
    presented.extend([ann.clone(), ops.clone()]);

    // The happy path: quote, hold (with a key), replay, confirm, read, list.
    let w = window(4, 2);
    let quote = app.quote("ann", &vehicle, w).await?;
    let quote_token = quote["quote_token"].as_str().unwrap_or_default().to_owned();
    presented.push(quote_token.clone());
    let body = json!({ "quote_token": quote_token });
    let hold = app
        .post("/v1/bookings", Some(&ann), &body, Some("key-1"))
        .await?;
    anyhow::ensure!(hold.status.as_u16() == 201, "{hold:?}");
    let id = hold.body["id"].as_str().unwrap_or_default().to_owned();
    app.post("/v1/bookings", Some(&ann), &body, Some("key-1"))
        .await?;
    // Same key, other body: 422; the quote used again with a new key: 409.
    app.post(
        "/v1/bookings",
        Some(&ann),
        &json!({ "quote_token": "x" }),
        Some("key-1"),
    )
    .await?;
    app.post("/v1/bookings", Some(&ann), &body, Some("key-2"))
        .await?;
    app.post(
        &format!("/v1/bookings/{id}/confirm"),
        Some(&ann),
        &Value::Null,
        None,
    )
    .await?;
    app.get(&format!("/v2/bookings/{id}"), Some(&ops)).await?;
    app.get("/v1/bookings?user_id=ann", Some(&ops)).await?;

    // Refused tokens: wrong secret, expired, tampered, garbage that looks like a secret.
    let now = chrono::Utc::now().timestamp();
    let expired = token_with("ann", |c| c.exp = now - 3600);
    let mut tampered = ann.clone();
    tampered.push('x');
    for bad in [expired, tampered, format!("Bearer.{JWT_SECRET}.sig")] {
        app.get("/v1/bookings", Some(&bad)).await?;
        presented.push(bad);
    }
    // A tampered quote token and another user's quote token.
    let other_quote = app.quote("bob", &vehicle, window(6, 2)).await?;
    let other_token = other_quote["quote_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    presented.push(other_token.clone());
    app.post(
        "/v1/bookings",
        Some(&ann),
        &json!({ "quote_token": other_token }),
        None,
    )
    .await?;
    let mut bent = quote_token.clone();
    bent.insert(10, 'A');
    app.post(
        "/v1/bookings",
        Some(&ann),
        &json!({ "quote_token": bent }),
        None,
    )
    .await?;
    // Validation errors that quote input back.
    app.post(
        "/v1/quotes",
        Some(&ann),
        &json!({ "vehicle_id": ann }),
        None,
    )
    .await?;

    // A quote served from the L1 cache (the same request again).
    app.quote("ann", &vehicle, window(8, 2)).await?;
    let quote2 = app.quote("ann", &vehicle, window(8, 2)).await?;
    presented.push(
        quote2["quote_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    );
    // An app's API key: issued (with an Idempotency-Key, then replayed), read and revoked.
    // Neither its secret nor its hash may appear (the hash is what finds it at the edges).
    let issue = json!({ "name": "log test app", "per_minute": 10, "per_day": 100 });
    let issued = app
        .post(
            "/v1/admin/api-keys?region=EUW",
            Some(&ops),
            &issue,
            Some("key-3"),
        )
        .await?;
    anyhow::ensure!(issued.status.as_u16() == 201, "{issued:?}");
    app.post(
        "/v1/admin/api-keys?region=EUW",
        Some(&ops),
        &issue,
        Some("key-3"),
    )
    .await?;
    let key_id = issued.body["id"].as_str().unwrap_or_default().to_owned();
    let key_secret = issued.body["secret"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    anyhow::ensure!(key_secret.len() > 12, "{issued:?}");
    app.get(&format!("/v1/admin/api-keys/{key_id}"), Some(&ops))
        .await?;
    app.delete(&format!("/v1/admin/api-keys/{key_id}"), Some(&ops), None)
        .await?;

    app.stop().await?;
    // Let the relay, sweeper and probes log their last lines.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    capture.1.store(false, std::sync::atomic::Ordering::Relaxed);
    let logs = String::from_utf8_lossy(&capture.0.lock().map(|v| v.clone()).unwrap_or_default())
        .into_owned();
    let lines = logs.lines().count();
    // The capture works and saw the traffic (request spans name paths and statuses).
    assert!(lines > 20, "only {lines} log lines captured:\n{logs}");
    assert!(logs.contains("/v1/bookings"), "no request lines captured");

    // The access log (issue 15) is part of what is searched: one line per request above (at
    // least the 16 the test sent), each naming the caller only by a 16-hex pseudonym.
    let access: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "access")
        .collect();
    assert!(
        access.len() >= 16,
        "only {} access lines captured",
        access.len()
    );
    for line in &access {
        let fields = &line["fields"];
        assert!(
            fields["route"].is_string() && fields["status"].is_u64(),
            "{line}"
        );
        if let Some(user) = fields.get("user") {
            let user = user.as_str().unwrap_or_default();
            assert!(
                user.len() == 16 && user.bytes().all(|b| b.is_ascii_hexdigit()),
                "the user is not a pseudonym: {line}"
            );
        }
    }
    assert!(
        access
            .iter()
            .any(|l| l["fields"]["user"] == domain::trace::user_hash("ann").as_str()),
        "no access line names ann's pseudonym"
    );
    for name in ["ann", "bob", "olga"] {
        assert!(
            !access
                .iter()
                .any(|l| l.to_string().contains(&format!("\"{name}\""))),
            "an access line names {name} in clear"
        );
    }

    // Ops' record of the key: who issued and revoked which key, by name.
    for what in ["API key issued", "API key revoked"] {
        assert!(
            logs.lines()
                .any(|l| l.contains(what) && l.contains(&key_id) && l.contains("log test app")),
            "no {what:?} line naming {key_id}"
        );
    }

    let mut secrets: Vec<(String, String)> = vec![
        ("JWT secret".into(), JWT_SECRET.into()),
        // The part of an API key that is not its displayed prefix, and its hash.
        ("API key secret".into(), key_secret[12..].to_owned()),
        (
            "API key hash".into(),
            domain::api_key::secret_hash(&key_secret),
        ),
    ];
    for (i, k) in QUOTE_KEYS.iter().enumerate() {
        secrets.push((format!("quote key {i}"), (*k).to_owned()));
    }
    for (i, t) in presented.iter().enumerate() {
        secrets.push((format!("token {i}"), t.clone()));
        // The signature alone is enough to replay a token: it must not appear either.
        if let Some(sig) = t.rsplit('.').next().filter(|s| s.len() >= 16) {
            secrets.push((format!("signature of token {i}"), sig.to_owned()));
        }
    }
    let leaks: Vec<String> = secrets
        .iter()
        .filter(|(_, s)| !s.is_empty() && logs.contains(s.as_str()))
        .map(|(name, s)| {
            let line = logs.lines().find(|l| l.contains(s.as_str())).unwrap_or("");
            format!("{name} leaked in: {line}")
        })
        .collect();
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
    assert!(
        !logs.to_lowercase().contains("bearer ey"),
        "an Authorization header value was logged"
    );
    Ok(())
}
