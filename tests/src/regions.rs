//! A two-region world on one machine: EUW (Frankfurt) and EUN (Sweden), each a full stack of
//! its own, and an edge per region in front of both — the deployment the README prescribes,
//! small enough for a test.
//!
//! Per region: a PostgreSQL cluster of its own (`initdb` into a temporary directory, its own
//! port — not just another database on the machine's server, so stopping it stops only that
//! region), a `redis-server` of its own, migrated and seeded with only that region's demo
//! fleet (the demo crate seeds both cities; the other city's rows are deleted, so a
//! mis-routed read finds nothing instead of a copy), and an origin *process* with
//! `ORIGIN_REGIONS=<region>` (a process, so a test can SIGKILL it mid-run and start it again on
//! the same port). Shared by both regions: the broker at `KAFKA_BROKERS` (each region's relay
//! publishes its own outbox to it; the events carry their region) and the Upstash REST gateway
//! with one key prefix for both edges (in production each edge has an Upstash database near it;
//! here one Redis plays both, which only makes rate limits global) — or, with
//! [`WorldOptions::edge_database_per_region`], a prefix per region, which is a database per
//! region as far as the edges can tell.
//!
//! Two edges on one runtime (`EDGE_REGION=EUW` and `EUN`): each reaches its own region's
//! origin directly and the other region's origin through a [`LatencyProxy`] adding the
//! inter-region round trip (`REGION_RTT_MS`, default 25 ms; see `latency_proxy` for why it is
//! a userspace proxy and not `tc netem`).
//!
//! Ports are free ports chosen at start, so several worlds (both runtimes) run in parallel.
//! Dropping the world stops every process it started; [`TwoRegions::stop`] also removes its
//! directory (a failed test leaves it, with the origins' logs, under the temporary directory).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use sqlx::PgPool;

use crate::cluster::{ensure_origin_bin_is_current, OriginProcess, PrivatePg, PrivateRedis};
use crate::edge::{free_port, start_edge, EdgeProcess, Runtime, GATEWAY_TOKEN};
use crate::latency_proxy::LatencyProxy;
use crate::{Reply, TestResult, AUDIENCE, FLEET_PER_CITY, ISSUER, JWT_SECRET};

/// The two regions, in the order the world keeps them.
pub const REGIONS: [&str; 2] = ["EUW", "EUN"];

/// How the inter-region round trip is made (printed by the suite).
pub const LATENCY_MECHANISM: &str = "userspace TCP delay line (tests/src/latency_proxy.rs) \
     between each edge and the other region's origin; no netem on this kernel";

/// The injected inter-region round trip: `REGION_RTT_MS`, else 25 ms (Frankfurt–Stockholm).
pub fn region_rtt() -> TestResult<Duration> {
    match std::env::var("REGION_RTT_MS") {
        Ok(v) => Ok(Duration::from_millis(v.trim().parse().with_context(
            || format!("REGION_RTT_MS={v:?} is not a number of ms"),
        )?)),
        Err(_) => Ok(Duration::from_millis(25)),
    }
}

/// What a world is started with beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct WorldOptions {
    /// The inter-region round trip (None: [`region_rtt`]).
    pub rtt: Option<Duration>,
    /// Extra variables for both edges (e.g. `SERVICE_AREAS`, a short quote TTL).
    pub edge_vars: Vec<(String, String)>,
    /// Extra variables for both origins (e.g. `SERVICE_AREAS`).
    pub origin_vars: Vec<(String, String)>,
    /// SQL run on a region's cluster after the seed, before its origin starts (e.g. moving
    /// the fleet next to a test boundary): (region, statement).
    pub setup_sql: Vec<(&'static str, String)>,
    /// Give each region's edge a database of its own (a key prefix of its own behind the
    /// gateway), as in production, with its counts shared across regions
    /// (`EDGE_SHARE_LIMITS=true`, each origin copying to the other's database). Off: one
    /// database for both edges.
    pub edge_database_per_region: bool,
}

/// A plain HTTP endpoint (an edge or an origin) and a client for it.
#[derive(Debug, Clone)]
pub struct Http {
    pub base: String,
    pub client: reqwest::Client,
    /// Signs each request as an edge does: for an origin called directly.
    signer: Option<crate::edge_signing::TestSigner>,
}

impl Http {
    fn new(base: String) -> TestResult<Self> {
        Ok(Http {
            base,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            signer: None,
        })
    }

    /// A client of an origin, signing like the suite's edges.
    fn signed(base: String) -> TestResult<Self> {
        let mut http = Http::new(base)?;
        http.signer = Some(crate::edge_signing::TestSigner::suite()?);
        Ok(http)
    }

    /// Sends a request with an optional token, JSON body and extra headers.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> TestResult<Reply> {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut req = req.build()?;
        if let Some(signer) = &self.signer {
            signer.sign(&mut req)?;
        }
        let resp = self
            .client
            .execute(req)
            .await
            .with_context(|| format!("send to {}", self.base))?;
        Reply::read(resp).await
    }

    /// GET with an optional token.
    pub async fn get(&self, path: &str, token: Option<&str>) -> TestResult<Reply> {
        self.send(reqwest::Method::GET, path, token, None, &[])
            .await
    }

    /// POST JSON with an optional token and Idempotency-Key.
    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: &Value,
        key: Option<&str>,
    ) -> TestResult<Reply> {
        let headers: Vec<(&str, &str)> = key.map(|k| ("idempotency-key", k)).into_iter().collect();
        self.send(reqwest::Method::POST, path, token, Some(body), &headers)
            .await
    }
}

/// One region's stack: its PostgreSQL, its Redis, its origin process and its vehicles.
#[derive(Debug)]
pub struct Site {
    /// `EUW` or `EUN`.
    pub region: &'static str,
    pub pg: PrivatePg,
    pub redis: PrivateRedis,
    /// A pool on the region's cluster, for the test's own SQL.
    pub pool: PgPool,
    pub origin: OriginProcess,
    /// Public ids of the region's active vehicles, in id order.
    pub vehicles: Vec<String>,
}

impl Site {
    async fn start(
        region: &'static str,
        dir: PathBuf,
        common_env: Vec<(String, String)>,
        setup_sql: Vec<String>,
    ) -> TestResult<Self> {
        let pg = PrivatePg::start(&dir.join("pg"), free_port()?).await?;
        let redis = PrivateRedis::start(free_port()?).await?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&pg.url("postgres"))
            .await
            .with_context(|| format!("connect to {region}'s cluster"))?;
        origin::startup::MIGRATOR.run(&pool).await?;
        demo_fleet::seed_demo(&pool, FLEET_PER_CITY).await?;
        // Only the home fleet: the other city's rows go (vehicles before their bays).
        for table in [
            "vehicles",
            "parking_bays",
            "base_rates",
            "vehicle_config",
            "time_multipliers",
            "discount_rules",
        ] {
            sqlx::query(&format!("delete from {table} where region <> $1"))
                .bind(region)
                .execute(&pool)
                .await
                .with_context(|| format!("keep only {region}'s rows of {table}"))?;
        }
        for sql in &setup_sql {
            sqlx::query(sql)
                .execute(&pool)
                .await
                .with_context(|| format!("{region} setup: {sql}"))?;
        }
        let rows: Vec<(uuid::Uuid,)> = sqlx::query_as(
            "select id from vehicles where region = $1 and status = 'active' order by id",
        )
        .bind(region)
        .fetch_all(&pool)
        .await?;
        let vehicles = rows
            .into_iter()
            .map(|(id,)| format!("veh_{}_{}", region.to_lowercase(), id.simple()))
            .collect();
        let mut env = common_env;
        env.extend(
            [
                ("DATABASE_URL", pg.url("postgres")),
                ("DB_MAX_CONNECTIONS", "8".into()),
                ("REDIS_URL", format!("redis://127.0.0.1:{}", redis.port)),
                ("REDIS_KEY_PREFIX", format!("{}:", region.to_lowercase())),
                ("ORIGIN_REGIONS", region.into()),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
        let origin = OriginProcess::start(free_port()?, env, dir.join("origin.log")).await?;
        Ok(Site {
            region,
            pg,
            redis,
            pool,
            origin,
            vehicles,
        })
    }

    /// The origin, called directly (not through an edge).
    pub fn direct(&self) -> TestResult<Http> {
        Http::signed(self.origin.base())
    }

    /// SIGKILL of the region's origin: in-flight requests die with it.
    pub fn kill_origin(&mut self) {
        self.origin.kill();
    }

    /// Starts the origin again on its port (same database, same Redis).
    pub async fn restart_origin(&mut self) -> TestResult {
        self.origin.up().await
    }

    /// Counts rows of the region's cluster matching `condition` (SQL).
    pub async fn count(&self, table: &str, condition: &str) -> TestResult<i64> {
        let sql = format!("select count(*) from {table} where {condition}");
        Ok(sqlx::query_scalar(&sql).fetch_one(&self.pool).await?)
    }
}

/// Both regions and both edges.
#[derive(Debug)]
pub struct TwoRegions {
    pub runtime: Runtime,
    pub euw: Site,
    pub eun: Site,
    /// The Frankfurt edge (`EDGE_REGION=EUW`).
    pub edge_euw: Http,
    /// The Sweden edge (`EDGE_REGION=EUN`).
    pub edge_eun: Http,
    /// The inter-region round trip every cross-region edge→origin call pays.
    pub rtt: Duration,
    /// EUW edge → EUN origin, and EUN edge → EUW origin.
    pub proxy_to_eun: LatencyProxy,
    pub proxy_to_euw: LatencyProxy,
    /// The edges' Redis key prefix (with a database per region, each region's prefix is
    /// this, then the region and `:`).
    pub edge_prefix: String,
    gateway: Option<upstash_gateway::Running>,
    edges: Vec<EdgeProcess>,
    dir: PathBuf,
}

impl TwoRegions {
    /// Starts both regions (in parallel) and both edges on `runtime`.
    pub async fn start(runtime: Runtime, options: WorldOptions) -> TestResult<Self> {
        ensure_origin_bin_is_current()?;
        let rtt = match options.rtt {
            Some(rtt) => rtt,
            None => region_rtt()?,
        };
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!("regions-{id}"));
        std::fs::create_dir_all(&dir)?;
        let gateway = upstash_gateway::start(
            tokio::net::TcpListener::bind("127.0.0.1:0").await?,
            &crate::test_redis::shared_url(),
            GATEWAY_TOKEN,
        )
        .await?;
        let edge_prefix = format!("test:regions:{id}:");

        let signing_keys = format!(
            "{}={}",
            crate::edge_signing::EDGE_KID,
            crate::edge_signing::EDGE_KEY
        );
        let mut common: Vec<(String, String)> = [
            ("JWT_ISSUER", ISSUER),
            ("JWT_AUDIENCE", AUDIENCE),
            ("JWT_HS256_SECRET", JWT_SECRET),
            (
                "QUOTE_SIGNING_KEYS",
                "k1=region-quote-key-region-quote-key-region-quote",
            ),
            ("QUOTE_ACTIVE_KID", "k1"),
            ("SWEEPER_INTERVAL_MS", "200"),
            ("EDGE_CACHE_REST_TOKEN", GATEWAY_TOKEN),
            // Only the edges (and the suite's direct reads, signed like them) get in.
            ("EDGE_SIGNING_KEYS", signing_keys.as_str()),
            ("RUST_LOG", "warn"),
            // The worlds of parallel tests share the broker: no consumer group across them.
            ("EVENT_CONSUMER", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        common.push(("EDGE_CACHE_REST_URL".into(), gateway.url()));
        common.push(("EDGE_CACHE_KEY_PREFIX".into(), edge_prefix.clone()));
        if let Ok(brokers) = std::env::var("KAFKA_BROKERS") {
            common.push(("KAFKA_BROKERS".into(), brokers));
        }
        common.extend(options.origin_vars.iter().cloned());

        let setup = |region: &str| -> Vec<String> {
            options
                .setup_sql
                .iter()
                .filter(|(r, _)| *r == region)
                .map(|(_, sql)| sql.clone())
                .collect()
        };
        // Each region's edge database: its own prefix, or the shared one.
        let db_prefix = |region: &str| -> String {
            if options.edge_database_per_region {
                format!("{edge_prefix}{region}:")
            } else {
                edge_prefix.clone()
            }
        };
        let site_vars = |region: &str| -> Vec<(String, String)> {
            let mut vars = common.clone();
            if options.edge_database_per_region {
                let peer = if region == "EUW" { "EUN" } else { "EUW" };
                vars.retain(|(k, _)| k != "EDGE_CACHE_KEY_PREFIX");
                vars.extend([
                    ("EDGE_CACHE_KEY_PREFIX".to_owned(), db_prefix(region)),
                    (format!("EDGE_PEER_{peer}_REST_URL"), gateway.url()),
                    (
                        format!("EDGE_PEER_{peer}_REST_TOKEN"),
                        GATEWAY_TOKEN.to_owned(),
                    ),
                    (format!("EDGE_PEER_{peer}_KEY_PREFIX"), db_prefix(peer)),
                ]);
            }
            vars
        };
        let euw = tokio::spawn(Site::start(
            "EUW",
            dir.join("euw"),
            site_vars("EUW"),
            setup("EUW"),
        ));
        let eun = tokio::spawn(Site::start(
            "EUN",
            dir.join("eun"),
            site_vars("EUN"),
            setup("EUN"),
        ));
        let (euw, eun) = (euw.await??, eun.await??);

        let proxy_to_eun = LatencyProxy::start(eun.origin.port, rtt).await?;
        let proxy_to_euw = LatencyProxy::start(euw.origin.port, rtt).await?;

        let mut edges = Vec::new();
        let mut bases = Vec::new();
        for region in REGIONS {
            let (euw_url, eun_url) = if region == "EUW" {
                (euw.origin.base(), proxy_to_eun.url())
            } else {
                (proxy_to_euw.url(), eun.origin.base())
            };
            let mut vars: Vec<(String, String)> = [
                ("EDGE_REGION", region.to_owned()),
                ("ORIGIN_EUW_URL", euw_url),
                ("ORIGIN_EUN_URL", eun_url),
                ("UPSTASH_REDIS_REST_URL", gateway.url()),
                ("UPSTASH_REDIS_REST_TOKEN", GATEWAY_TOKEN.to_owned()),
                ("EDGE_KEY_PREFIX", db_prefix(region)),
                (
                    "EDGE_SHARE_LIMITS",
                    options.edge_database_per_region.to_string(),
                ),
                ("JWT_ISSUER", ISSUER.to_owned()),
                ("JWT_AUDIENCE", AUDIENCE.to_owned()),
                ("JWT_HS256_SECRET", JWT_SECRET.to_owned()),
                ("EDGE_ORIGIN_TIMEOUT_MS", "3000".to_owned()),
                ("EDGE_SIGNING_KID", crate::edge_signing::EDGE_KID.to_owned()),
                ("EDGE_SIGNING_KEY", crate::edge_signing::EDGE_KEY.to_owned()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            for (k, v) in &options.edge_vars {
                vars.retain(|(name, _)| name != k);
                vars.push((k.clone(), v.clone()));
            }
            match start_edge(runtime, &vars).await {
                Ok((process, base)) => {
                    edges.push(process);
                    bases.push(base);
                }
                Err(e) => {
                    for edge in edges {
                        edge.stop().await;
                    }
                    gateway.stop().await;
                    return Err(e.context(format!("start the {region} edge")));
                }
            }
        }
        let eun_base = bases.pop().context("the EUN edge")?;
        let euw_base = bases.pop().context("the EUW edge")?;
        Ok(TwoRegions {
            runtime,
            euw,
            eun,
            edge_euw: Http::new(euw_base)?,
            edge_eun: Http::new(eun_base)?,
            rtt,
            proxy_to_eun,
            proxy_to_euw,
            edge_prefix,
            gateway: Some(gateway),
            edges,
            dir,
        })
    }

    /// The region's site (`EUW` or `EUN`).
    pub fn site(&self, region: &str) -> &Site {
        if region == "EUN" {
            &self.eun
        } else {
            &self.euw
        }
    }

    /// The region's site, mutably (to kill or restart its origin).
    pub fn site_mut(&mut self, region: &str) -> &mut Site {
        if region == "EUN" {
            &mut self.eun
        } else {
            &mut self.euw
        }
    }

    /// The edge in `region`.
    pub fn edge(&self, region: &str) -> &Http {
        if region == "EUN" {
            &self.edge_eun
        } else {
            &self.edge_euw
        }
    }

    /// Stops the edges, the gateway, the origins and the clusters; removes what they left.
    pub async fn stop(mut self) -> TestResult {
        for edge in self.edges.drain(..) {
            edge.stop().await;
        }
        if let Some(gw) = self.gateway.take() {
            gw.stop().await;
        }
        let _ =
            crate::test_redis::delete_prefix(&crate::test_redis::shared_url(), &self.edge_prefix)
                .await;
        self.euw.kill_origin();
        self.eun.kill_origin();
        self.euw.pool.close().await;
        self.eun.pool.close().await;
        let _ = self.euw.pg.down();
        let _ = self.eun.pg.down();
        // A failed test never gets here: its origin logs stay in the temporary directory.
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}
