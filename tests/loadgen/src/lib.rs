//! `loadgen`: the project's load generator and benchmark report.
//!
//! It drives the origin's HTTP API (or an edge in front of it: the target is only a base URL)
//! with the workloads the design names, and writes what it saw as JSON, a markdown table and,
//! for the burst run, a latency-over-time SVG.
//!
//! # Open loop, wrk2 style
//!
//! In the default **open-loop** mode requests are *scheduled* at a constant arrival rate
//! (piecewise constant for `burst`), whether or not earlier ones have answered, and each
//! latency is measured from the request's **intended** send time. A server stall therefore
//! shows up as the queueing delay every scheduled request suffered, instead of being hidden by a
//! client that politely waited (coordinated omission). **Closed-loop** mode (N workers, each
//! sending its next request when the last one answered) measures the ceiling: how many per
//! second the server completes at a given concurrency.
//!
//! # Why a small tokio + reqwest client and not `goose`
//!
//! `goose` is closed-loop at heart (users looping over tasks, with throttling as a cap), so the
//! intended-send-time accounting that makes an open-loop test honest would have to be bolted
//! on; it also brings its own report format and a large dependency tree to a 2-core box where
//! every compiled crate costs CI minutes. The workloads here need chained requests (quote →
//! hold → confirm → cancel/extend with the ids of the previous answer), Zipf-skewed users and
//! areas over the discovered fleet, and numbers read from the origin's `/metrics`: a few hundred
//! lines over `reqwest` (hyper's pooled client) and `hdrhistogram` do exactly that.

pub mod engine;
pub mod fleet;
pub mod plot;
pub mod report;
pub mod summary;
pub mod workload;

pub use engine::{Load, Phase};
pub use report::RunReport;
pub use workload::WorkloadKind;

use std::time::Duration;

/// JWT settings used to mint bearer tokens, the same way `origin dev-token` does (HS256).
#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub secret: String,
    pub issuer: String,
    pub audience: String,
    pub kid: Option<String>,
}

impl JwtSettings {
    /// The dev defaults of `scripts/dev.sh`, overridable by the origin's own variables
    /// (`JWT_HS256_SECRET`, `JWT_ISSUER`, `JWT_AUDIENCE`, `JWT_HS256_KID`).
    pub fn from_env() -> Self {
        let var =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
        JwtSettings {
            secret: var("JWT_HS256_SECRET", "dev-only-secret-change-me-0123456789"),
            issuer: var("JWT_ISSUER", "booking-dev"),
            audience: var("JWT_AUDIENCE", "booking-api"),
            kid: std::env::var("JWT_HS256_KID").ok(),
        }
    }

    /// A token for `user`, valid for a day.
    pub fn mint(&self, user: &str) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = domain::auth::Claims {
            sub: user.to_owned(),
            iss: self.issuer.clone(),
            aud: serde_json::Value::String(self.audience.clone()),
            exp: now + 24 * 3600,
            nbf: Some(now - 60),
            iat: Some(now),
            roles: vec![],
            membership: None,
        };
        domain::auth::sign_hs256(&claims, self.secret.as_bytes(), self.kid.as_deref())
            .map_err(|e| anyhow::anyhow!("sign a dev JWT: {e}"))
    }
}

/// Everything one run needs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Base URL of the API (an origin, or an edge in front of it).
    pub base_url: String,
    /// Where `/metrics` is read (defaults to the base URL: an edge does not serve it).
    pub metrics_url: Option<String>,
    pub workload: WorkloadKind,
    pub load: Load,
    /// The origin's process id, to sample its RSS from `/proc/<pid>/status`.
    pub origin_pid: Option<u32>,
    pub jwt: JwtSettings,
    /// Seed of every random choice, so two runs send the same sequence.
    pub seed: u64,
    /// Bound on requests in flight (open loop): past it the scheduler waits, and the wait
    /// counts in the latency of what it delays.
    pub max_in_flight: usize,
    /// Client-side timeout of one request (counted as `timeout`, apart from statuses).
    pub timeout: Duration,
    /// Distinct users the workload draws from (Zipf-skewed).
    pub users: usize,
    /// Quotes prepared for a closed-loop `holds` run (an open-loop run prepares what its
    /// schedule needs); the run ends when they are used up.
    pub prepared_holds: usize,
    /// Print a progress line every second on stderr.
    pub progress: bool,
}

impl RunOptions {
    /// Defaults for a base URL, workload and load.
    pub fn new(base_url: impl Into<String>, workload: WorkloadKind, load: Load) -> Self {
        RunOptions {
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            metrics_url: None,
            workload,
            load,
            origin_pid: None,
            jwt: JwtSettings::from_env(),
            seed: 42,
            max_in_flight: 2048,
            timeout: Duration::from_secs(10),
            users: 1000,
            prepared_holds: 6000,
            progress: false,
        }
    }
}

/// Runs one workload and returns its report.
pub async fn run(options: &RunOptions) -> anyhow::Result<RunReport> {
    let client = reqwest::Client::builder()
        .timeout(options.timeout)
        .pool_max_idle_per_host(options.max_in_flight.min(4096))
        .tcp_nodelay(true)
        .build()?;
    let ctx = workload::Context::prepare(client, options).await?;
    let before = report::MetricsSnapshot::scrape(&ctx.client, &ctx.metrics_url).await;
    let rss_sampler = report::RssSampler::start(options.origin_pid);
    let cpu_before = options.origin_pid.and_then(report::cpu_seconds);
    let recorded = engine::drive(&ctx, options).await?;
    let cpu_after = options.origin_pid.and_then(report::cpu_seconds);
    let rss = rss_sampler.finish().await;
    let after = report::MetricsSnapshot::scrape(&ctx.client, &ctx.metrics_url).await;
    Ok(RunReport::build(
        options,
        recorded,
        before,
        after,
        rss,
        cpu_after.zip(cpu_before).map(|(a, b)| a - b),
    ))
}
