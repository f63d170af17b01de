//! Test harness: a real origin on an ephemeral port, in front of a database of its own.
//!
//! Each test gets a fresh database from `#[sqlx::test]` (created on the machine's PostgreSQL
//! and dropped afterwards), a small demo fleet, and an origin bound to port 0, so tests run in
//! parallel and never depend on what earlier runs left on the server. The origin runs on a
//! multi-thread runtime of its own ([`origin_runtime`]), as in production, whatever runtime the
//! test itself runs on.

use std::collections::BTreeMap;

use anyhow::Context;
use chrono::{DateTime, Duration, DurationRound, Utc};
use domain::auth::{sign_hs256, Claims};
use origin::config::Config;
use origin::startup::Running;
use origin_runtime::OriginRuntime;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

pub mod broker;
pub mod cluster;
pub mod edge;
pub mod edge_signing;
pub mod fault_proxy;
pub mod history;
pub mod jwt_forge;
pub mod latency_proxy;
pub mod origin_runtime;
pub mod otlp;
pub mod recorder;
pub mod redis_ha;
pub mod regions;
pub mod replica;
pub mod test_redis;

/// Test result alias.
pub type TestResult<T = ()> = anyhow::Result<T>;

pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret!";
pub const ISSUER: &str = "booking-test";
pub const AUDIENCE: &str = "booking-api";
/// Vehicles per city in the test fleet.
pub const FLEET_PER_CITY: usize = 12;

/// A response: status, headers and JSON body (Null when empty or not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    /// Reads a response whole: its status, headers and JSON body.
    pub async fn read(resp: reqwest::Response) -> TestResult<Reply> {
        let status = resp.status();
        let headers = resp.headers().clone();
        let content_type = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = resp.bytes().await?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Reply {
            status,
            content_type,
            headers,
            body,
        })
    }

    /// The problem `type` of an error body.
    pub fn problem_type(&self) -> &str {
        self.body["type"].as_str().unwrap_or("")
    }

    /// Asserts an RFC 9457 problem body with this status.
    pub fn assert_problem(&self, status: u16) -> &Self {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        assert!(
            self.content_type.starts_with("application/problem+json"),
            "content type {} for {}",
            self.content_type,
            self.body
        );
        assert_eq!(self.body["status"].as_u64(), Some(u64::from(status)));
        assert!(
            self.problem_type().starts_with("/problems/"),
            "{}",
            self.body
        );
        assert!(self.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
        self
    }
}

/// A running origin with its own database.
#[derive(Debug)]
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub pool: PgPool,
    /// The Redis this app uses and its key prefix (unique per app; removed by `stop`).
    pub redis_url: String,
    pub redis_prefix: String,
    /// The topology at `redis_url` (`cluster` when the run sets `E2E_REDIS_CLUSTER`).
    pub redis_mode: origin::config::RedisMode,
    running: Option<Running>,
    /// Signs every request this app sends, as an edge, when the origin was started without
    /// `ORIGIN_ALLOW_DIRECT` (the edge suites' origins); `None` for origins tested alone.
    pub signer: Option<edge_signing::TestSigner>,
    /// The origin's own pool (opened on its runtime; the test's is `pool`).
    origin_pool: PgPool,
    /// Declared last: dropped after `running`, whose tasks live on it.
    runtime: Option<OriginRuntime>,
}

/// Configuration overrides for [`spawn_app_with`].
pub type Overrides<'a> = &'a [(&'a str, &'a str)];

/// Starts an origin on `pool`'s database with the test fleet.
pub async fn spawn_app(pool: PgPool) -> TestResult<TestApp> {
    spawn_app_with(pool, &[]).await
}

/// Starts an origin with configuration overrides (e.g. a short hold TTL).
pub async fn spawn_app_with(pool: PgPool, overrides: Overrides<'_>) -> TestResult<TestApp> {
    let mut env: BTreeMap<String, String> = [
        ("DATABASE_URL", "postgres://unused"),
        ("BIND_ADDR", "127.0.0.1:0"),
        ("JWT_ISSUER", ISSUER),
        ("JWT_AUDIENCE", AUDIENCE),
        ("JWT_HS256_SECRET", JWT_SECRET),
        (
            "QUOTE_SIGNING_KEYS",
            "k1=quote-key-one-quote-key-one-quote-key-one,k0=old-quote-key-old-quote-key-old-quote",
        ),
        ("QUOTE_ACTIVE_KID", "k1"),
        ("SWEEPER_INTERVAL_MS", "200"),
        // An origin tested alone: no edge signs its requests. The edge suites override this
        // with `EDGE_SIGNING_KEYS` and `ORIGIN_ALLOW_DIRECT=0`, proving their edges sign.
        ("ORIGIN_ALLOW_DIRECT", "1"),
        // The availability consumer is off unless a test turns it on (`EVENT_CONSUMER=1`, with
        // `KAFKA_BROKERS`): tests share one broker, and a consumer per app would only add group
        // joins. Its group is the app's own (set below), never shared with another test's.
        ("EVENT_CONSUMER", "0"),
        // Webhook receivers in tests listen on 127.0.0.1 (the address rule has its own test,
        // which turns this off).
        ("WEBHOOK_ALLOW_PRIVATE", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    // Tests share one Redis and their databases hold the same vehicle ids: a prefix per app.
    // `E2E_REDIS_CLUSTER` (seed node URLs, comma-separated: scripts/test.sh runs a subset of
    // the suite so, see README "Scaling out") puts every app on a Redis Cluster instead.
    match std::env::var("E2E_REDIS_CLUSTER") {
        Ok(nodes) if !nodes.trim().is_empty() => {
            env.insert("REDIS_URL".into(), nodes);
            env.insert("REDIS_MODE".into(), "cluster".into());
        }
        _ => {
            env.insert("REDIS_URL".into(), test_redis::shared_url());
        }
    }
    env.insert(
        "REDIS_KEY_PREFIX".into(),
        format!("test:{}:", uuid::Uuid::new_v4().simple()),
    );
    env.insert(
        "CONSUMER_GROUP".into(),
        format!("e2e-availability-{}", uuid::Uuid::new_v4().simple()),
    );
    env.insert(
        "WEBHOOK_GROUP".into(),
        format!("e2e-webhooks-{}", uuid::Uuid::new_v4().simple()),
    );
    // Through PgBouncer (`E2E_PGBOUNCER_PORT`: scripts/test.sh runs a subset of the suite so,
    // see README "Scaling out"): the origin's pool goes through the pooler (session pooling),
    // its session-level locks and migrations straight to the test's database
    // (`DATABASE_SESSION_URL`, so that path is exercised too).
    let bouncer = std::env::var("E2E_PGBOUNCER_PORT")
        .ok()
        .and_then(|p| p.trim().parse::<u16>().ok())
        .filter(|_| !overrides.iter().any(|(k, _)| *k == "DATABASE_URL"));
    if bouncer.is_some() {
        let direct = pool.connect_options();
        env.insert(
            "DATABASE_SESSION_URL".into(),
            format!(
                "postgres://{}@{}:{}/{}",
                direct.get_username(),
                direct.get_host(),
                direct.get_port(),
                direct.get_database().unwrap_or("postgres")
            ),
        );
    }
    if overrides.iter().any(|(k, _)| *k == "REDIS_URL") {
        // A test's own Redis (one it kills, a sentinel set): its mode comes with it.
        env.remove("REDIS_MODE");
    }
    for (k, v) in overrides {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    let config = Config::from(&env)?;
    let signer = match config.front_door.edge_keys.first() {
        Some((kid, secret)) if !config.front_door.allow_direct => Some(
            edge_signing::TestSigner::new(kid, &String::from_utf8_lossy(&secret.0), "EUW")?,
        ),
        _ => None,
    };
    let redis_url = config.redis.url();
    let redis_prefix = config.redis.key_prefix.clone();
    let redis_mode = config.redis.mode.clone();
    origin::startup::MIGRATOR.run(&pool).await?;
    demo_fleet::seed_demo(&pool, FLEET_PER_CITY).await?;
    // The origin's pool and tasks live on its own runtime (see `origin_runtime`), on the
    // test's database, with the pool settings the origin uses in production.
    let runtime = OriginRuntime::new().context("start the origin's runtime")?;
    // The test's database, unless the test named one (`DATABASE_URL`: the replica tests'
    // PgBouncer) or the run goes through a pooler.
    let own_url = overrides.iter().any(|(k, _)| *k == "DATABASE_URL");
    let mut options = (*pool.connect_options()).clone();
    if let Some(port) = bouncer {
        options = options.port(port);
    }
    let (running, origin_pool) = runtime
        .handle()
        .spawn(async move {
            let origin_pool = if own_url {
                origin::startup::connect(&config).await?
            } else {
                origin::startup::pool_options(&config)
                    .connect_with(options)
                    .await
                    .context("open the origin's pool")?
            };
            let running = origin::startup::start(config, origin_pool.clone(), false).await?;
            anyhow::Ok((running, origin_pool))
        })
        .await
        .context("the origin's start-up task")??;
    Ok(TestApp {
        base: format!("http://{}", running.addr),
        client: reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()?,
        pool,
        redis_url,
        redis_prefix,
        redis_mode,
        running: Some(running),
        signer,
        origin_pool,
        runtime: Some(runtime),
    })
}

/// Mints a token with the given claims tweaks.
pub fn token_with(sub: &str, f: impl FnOnce(&mut Claims)) -> String {
    let now = Utc::now().timestamp();
    let mut claims = Claims {
        sub: sub.to_owned(),
        iss: ISSUER.to_owned(),
        aud: Value::String(AUDIENCE.to_owned()),
        exp: now + 3600,
        nbf: Some(now - 10),
        iat: Some(now),
        roles: vec![],
        membership: None,
    };
    f(&mut claims);
    sign_hs256(&claims, JWT_SECRET.as_bytes(), None).unwrap_or_default()
}

/// A valid user token.
pub fn token(sub: &str) -> String {
    token_with(sub, |_| {})
}

/// A valid ops token.
pub fn ops_token(sub: &str) -> String {
    token_with(sub, |c| c.roles = vec!["ops".into()])
}

/// A window `days` from now at a whole hour, lasting `hours`.
pub fn window(days: i64, hours: i64) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = (Utc::now() + Duration::days(days))
        .duration_trunc(Duration::hours(1))
        .unwrap_or_else(|_| Utc::now());
    (start, start + Duration::hours(hours))
}

/// The sum of a metric's samples in Prometheus text whose label set contains `labels`
/// (e.g. `result="ok"`; empty: every sample).
pub fn metric_sum(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

impl TestApp {
    /// The origin's `/metrics` text.
    pub async fn metrics_text(&self) -> TestResult<String> {
        Ok(self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await?
            .text()
            .await?)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> TestResult<Reply> {
        let resp = self.execute(req).await?;
        Reply::read(resp).await
    }

    /// Sends a request built on any client, signed as an edge when this origin needs it.
    pub async fn execute(&self, req: reqwest::RequestBuilder) -> TestResult<reqwest::Response> {
        let (client, req) = req.build_split();
        let mut req = req.context("build request")?;
        if let Some(signer) = &self.signer {
            signer.sign(&mut req)?;
        }
        client.execute(req).await.context("send request")
    }

    /// GET with an optional bearer token.
    pub async fn get(&self, path: &str, token: Option<&str>) -> TestResult<Reply> {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        self.send(req).await
    }

    /// A write (`method`, an optional JSON body) with an optional token and Idempotency-Key.
    async fn write(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> TestResult<Reply> {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        self.send(req).await
    }

    /// POST a JSON body with an optional token and Idempotency-Key.
    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: &Value,
        key: Option<&str>,
    ) -> TestResult<Reply> {
        self.write(reqwest::Method::POST, path, token, Some(body), key)
            .await
    }

    /// PUT a JSON body with an optional token and Idempotency-Key.
    pub async fn put(
        &self,
        path: &str,
        token: Option<&str>,
        body: &Value,
        key: Option<&str>,
    ) -> TestResult<Reply> {
        self.write(reqwest::Method::PUT, path, token, Some(body), key)
            .await
    }

    /// DELETE with an optional token and Idempotency-Key.
    pub async fn delete(
        &self,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
    ) -> TestResult<Reply> {
        self.write(reqwest::Method::DELETE, path, token, None, key)
            .await
    }

    /// POST raw bytes with a content type.
    pub async fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> TestResult<Reply> {
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        self.send(req).await
    }

    /// Active vehicle ids of a region ("EUW"/"EUN"), in a stable order.
    pub async fn vehicles(&self, region: &str) -> TestResult<Vec<String>> {
        let rows: Vec<(uuid::Uuid,)> = sqlx::query_as(
            "select id from vehicles where region = $1 and status = 'active' order by id",
        )
        .bind(region)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id,)| format!("veh_{}_{}", region.to_lowercase(), id.simple()))
            .collect())
    }

    /// A v1 quote for `user`; fails the test unless it is 201.
    pub async fn quote(
        &self,
        user: &str,
        vehicle: &str,
        (start, end): (DateTime<Utc>, DateTime<Utc>),
    ) -> TestResult<Value> {
        let reply = self
            .post(
                "/v1/quotes",
                Some(&token(user)),
                &json!({ "vehicle_id": vehicle, "start": start, "end": end }),
                None,
            )
            .await?;
        anyhow::ensure!(reply.status == StatusCode::CREATED, "quote: {reply:?}");
        Ok(reply.body)
    }

    /// Quote then hold; returns the hold reply (any status).
    pub async fn hold(
        &self,
        user: &str,
        vehicle: &str,
        window: (DateTime<Utc>, DateTime<Utc>),
    ) -> TestResult<Reply> {
        let quote = self.quote(user, vehicle, window).await?;
        self.post(
            "/v1/bookings",
            Some(&token(user)),
            &json!({ "quote_token": quote["quote_token"] }),
            Some(&uuid::Uuid::new_v4().to_string()),
        )
        .await
    }

    /// A hold with a quote got earlier (a fresh Idempotency-Key); the reply, any status.
    pub async fn hold_with(&self, user: &str, quote: &Value) -> TestResult<Reply> {
        self.post(
            "/v1/bookings",
            Some(&token(user)),
            &json!({ "quote_token": quote["quote_token"] }),
            Some(&uuid::Uuid::new_v4().to_string()),
        )
        .await
    }

    /// A confirmed booking's id.
    pub async fn confirmed(
        &self,
        user: &str,
        vehicle: &str,
        window: (DateTime<Utc>, DateTime<Utc>),
    ) -> TestResult<String> {
        let hold = self.hold(user, vehicle, window).await?;
        anyhow::ensure!(hold.status == StatusCode::CREATED, "hold: {hold:?}");
        let id = hold.body["id"].as_str().context("booking id")?.to_owned();
        let confirm = self
            .post(
                &format!("/v1/bookings/{id}/confirm"),
                Some(&token(user)),
                &Value::Null,
                None,
            )
            .await?;
        anyhow::ensure!(confirm.status == StatusCode::OK, "confirm: {confirm:?}");
        Ok(id)
    }

    /// Pairs of occupying bookings of one vehicle whose periods overlap: always 0, or the
    /// system double-booked.
    pub async fn overlapping_pairs(&self) -> TestResult<i64> {
        Ok(sqlx::query_scalar(
            "select count(*) from bookings a join bookings b
                on a.vehicle_id = b.vehicle_id and a.id < b.id and a.period && b.period
             where a.status in ('RESERVING','CONFIRMED','IN_PROGRESS')
               and b.status in ('RESERVING','CONFIRMED','IN_PROGRESS')",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// Whether a Frankfurt search (20 km) over `w` lists `vehicle`.
    pub async fn search_lists(
        &self,
        vehicle: &str,
        (start, end): (DateTime<Utc>, DateTime<Utc>),
    ) -> TestResult<bool> {
        let fmt = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let reply = self
            .get(
                &format!(
                    "/v1/vehicles/search?lat=50.1109&lon=8.6821&radius_m=20000&start={}&end={}&limit=100",
                    fmt(start),
                    fmt(end)
                ),
                Some(&token("sue")),
            )
            .await?;
        anyhow::ensure!(reply.status == StatusCode::OK, "search: {reply:?}");
        Ok(reply.body["items"]
            .as_array()
            .is_some_and(|items| items.iter().any(|i| i["vehicle_id"] == vehicle)))
    }

    /// Counts rows of a table matching an SQL condition.
    pub async fn count(&self, table: &str, condition: &str) -> TestResult<i64> {
        let sql = format!("select count(*) from {table} where {condition}");
        Ok(sqlx::query_scalar(&sql).fetch_one(&self.pool).await?)
    }

    /// The origin's runtime: multi-thread with [`origin_runtime::WORKERS`] workers.
    pub fn origin_runtime(&self) -> TestResult<&tokio::runtime::Handle> {
        Ok(self.runtime.as_ref().context("origin stopped")?.handle())
    }

    /// Stops the server (drained as on SIGTERM), closes its pool and ends its runtime.
    pub async fn stop(mut self) -> TestResult {
        if let Some(r) = self.running.take() {
            r.stop().await?;
        }
        self.origin_pool.close().await;
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown().await;
        }
        // Best effort: the test may have taken this Redis down on purpose.
        let _ = test_redis::delete_prefix(&self.redis_url, &self.redis_prefix).await;
        Ok(())
    }
}

/// The uuid inside a public id (`bkg_euw_<hex>`).
pub fn uuid_of(public_id: &str) -> TestResult<uuid::Uuid> {
    let hex = public_id.rsplit('_').next().context("id")?;
    Ok(uuid::Uuid::try_parse(hex)?)
}
