//! The AI inference API: its contract and the origin's client.
//!
//! The inference service belongs to another team (the project ships a reference
//! implementation, `origin/inference`), so the origin treats it as a third party that may be
//! slow or down: every call has a per-call timeout, idempotent calls get a bounded retry with
//! full jitter (only on connection errors and 5xx, never on a timeout: a timeout retried would
//! spend the quote's whole budget), and each endpoint has its own [`CircuitBreaker`], so a
//! broken demand model does not stop risk scores. Replacing the reference service with a real
//! ML service is a matter of pointing `INFERENCE_URL` at anything that speaks this contract.
//!
//! # Contract (types in `inference-api`; also in `/openapi.json`, schemas `RiskRequest` … `DemandResponse`)
//!
//! * `POST /v1/risk-score` — [`RiskRequest`] → [`RiskResponse`]: a score in `0..=1` (0 = no
//!   risk) and the model version.
//! * `POST /v1/demand` — [`DemandRequest`] (a region, H3 cells as zones, hour buckets) →
//!   [`DemandResponse`]: per zone and bucket, the predicted number of bookings starting in
//!   that hour and the vehicles the model expects there (supply).
//!
//! Both are pure reads, hence idempotent and safe to retry.

pub mod breaker;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backoff::{Backoff, Jitter};
use crate::config::PricingConfig;
use crate::inference::breaker::{BreakerSettings, CircuitBreaker};

// The contract's types are defined once, in `inference-api`, and shared with the reference
// service; re-exported here so callers name them with the client.
pub use inference_api::{
    DemandPrediction, DemandRequest, DemandResponse, RiskRequest, RiskResponse,
};

/// Why an inference call gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InferenceError {
    #[error("no inference API configured")]
    NotConfigured,
    #[error("circuit breaker open")]
    BreakerOpen,
    #[error("timed out")]
    Timeout,
    #[error("status {0}")]
    Status(u16),
    #[error("transport: {0}")]
    Transport(String),
    #[error("invalid answer: {0}")]
    Invalid(String),
}

impl InferenceError {
    /// Short label for metrics.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            InferenceError::NotConfigured => "not_configured",
            InferenceError::BreakerOpen => "breaker_open",
            InferenceError::Timeout => "timeout",
            InferenceError::Status(_) => "status",
            InferenceError::Transport(_) => "transport",
            InferenceError::Invalid(_) => "invalid",
        }
    }

    fn retryable(&self) -> bool {
        match self {
            InferenceError::Transport(_) => true,
            InferenceError::Status(s) => *s >= 500,
            _ => false,
        }
    }
}

/// First retry step of an inference call (see [`Backoff`]).
const RETRY_BASE: Duration = Duration::from_millis(10);
/// Largest retry step of an inference call.
const RETRY_CAP: Duration = Duration::from_millis(160);

/// The client: one HTTP connection pool, one breaker per endpoint.
#[derive(Debug, Clone)]
pub(crate) struct InferenceClient {
    base: Option<String>,
    http: reqwest::Client,
    timeout: Duration,
    retries: u32,
    risk_breaker: Arc<CircuitBreaker>,
    demand_breaker: Arc<CircuitBreaker>,
}

impl InferenceClient {
    /// Builds the client from configuration (no I/O).
    pub(crate) fn new(config: &PricingConfig) -> anyhow::Result<Self> {
        let settings = BreakerSettings {
            failures: config.breaker_failures,
            cooldown: config.breaker_cooldown,
        };
        Ok(InferenceClient {
            base: config.inference_url.clone(),
            http: reqwest::Client::builder()
                .connect_timeout(config.inference_timeout)
                .pool_idle_timeout(Duration::from_secs(30))
                .build()?,
            timeout: config.inference_timeout,
            retries: config.inference_retries,
            risk_breaker: CircuitBreaker::new("inference_risk", settings),
            demand_breaker: CircuitBreaker::new("inference_demand", settings),
        })
    }

    /// Whether an inference API is configured at all.
    pub(crate) fn is_configured(&self) -> bool {
        self.base.is_some()
    }

    /// The breakers, for readiness output.
    pub(crate) fn breakers(&self) -> [&Arc<CircuitBreaker>; 2] {
        [&self.risk_breaker, &self.demand_breaker]
    }

    /// `POST /v1/risk-score`; the score is checked to be a number in `0..=1`.
    pub(crate) async fn risk_score(
        &self,
        req: &RiskRequest,
    ) -> Result<RiskResponse, InferenceError> {
        let answer: RiskResponse = self
            .call(
                &self.risk_breaker,
                "/v1/risk-score",
                req,
                |r: &RiskResponse| {
                    if r.score.is_finite() && (0.0..=1.0).contains(&r.score) {
                        Ok(())
                    } else {
                        Err(format!("score {} outside 0..=1", r.score))
                    }
                },
            )
            .await?;
        Ok(answer)
    }

    /// `POST /v1/demand`; every number is checked to be finite and non-negative.
    pub(crate) async fn demand(
        &self,
        req: &DemandRequest,
    ) -> Result<DemandResponse, InferenceError> {
        self.call(
            &self.demand_breaker,
            "/v1/demand",
            req,
            |r: &DemandResponse| {
                let usable = |x: f64| x.is_finite() && x >= 0.0;
                let bad = r
                    .predictions
                    .iter()
                    .find(|p| !usable(p.demand) || !usable(p.supply));
                match bad {
                    Some(p) => Err(format!(
                        "zone {} has demand {} supply {}",
                        p.zone, p.demand, p.supply
                    )),
                    None => Ok(()),
                }
            },
        )
        .await
    }

    async fn call<Req, Resp>(
        &self,
        breaker: &Arc<CircuitBreaker>,
        path: &'static str,
        body: &Req,
        check: impl Fn(&Resp) -> Result<(), String>,
    ) -> Result<Resp, InferenceError>
    where
        Req: Serialize,
        Resp: serde::de::DeserializeOwned,
    {
        let Some(base) = &self.base else {
            return Err(InferenceError::NotConfigured);
        };
        let url = format!("{base}{path}");
        let mut attempt = 0;
        // Full jitter over an exponential step: 0..10 ms, 0..20 ms, 0..40 ms, … (at most 160).
        let mut backoff = Backoff::new(RETRY_BASE, RETRY_CAP, Jitter::Full);
        loop {
            let Some(permit) = breaker.try_acquire() else {
                count(breaker.name(), "breaker_open");
                return Err(InferenceError::BreakerOpen);
            };
            let started = Instant::now();
            let result = self.once(&url, body, &check).await;
            metrics::histogram!("inference_call_duration_seconds", "dependency" => breaker.name())
                .record(started.elapsed().as_secs_f64());
            match result {
                Ok(answer) => {
                    permit.success();
                    count(breaker.name(), "ok");
                    return Ok(answer);
                }
                Err(e) => {
                    permit.failure();
                    count(breaker.name(), e.label());
                    if !e.retryable() || attempt >= self.retries {
                        return Err(e);
                    }
                    attempt += 1;
                    tokio::time::sleep(backoff.next_pause()).await;
                }
            }
        }
    }

    async fn once<Req, Resp>(
        &self,
        url: &str,
        body: &Req,
        check: &impl Fn(&Resp) -> Result<(), String>,
    ) -> Result<Resp, InferenceError>
    where
        Req: Serialize,
        Resp: serde::de::DeserializeOwned,
    {
        let span = tracing::debug_span!("inference", url = url, otel.kind = "client");
        // The inference API continues the trace when it records one.
        let traceparent = crate::telemetry::traceparent_of(&span);
        let request = async {
            let mut request = self.http.post(url).json(body);
            if let Some(tp) = traceparent {
                request = request.header("traceparent", tp.to_string());
            }
            let response = request
                .send()
                .await
                .map_err(|e| InferenceError::Transport(e.to_string()))?;
            let status = response.status();
            if !status.is_success() {
                return Err(InferenceError::Status(status.as_u16()));
            }
            let bytes = response
                .bytes()
                .await
                .map_err(|e| InferenceError::Transport(e.to_string()))?;
            let answer: Resp = serde_json::from_slice(&bytes)
                .map_err(|e| InferenceError::Invalid(e.to_string()))?;
            check(&answer).map_err(InferenceError::Invalid)?;
            Ok(answer)
        };
        let bounded = tokio::time::timeout(self.timeout, request);
        match tracing::Instrument::instrument(bounded, span).await {
            Ok(result) => result,
            Err(_) => Err(InferenceError::Timeout),
        }
    }
}

fn count(dependency: &'static str, outcome: &'static str) {
    metrics::counter!("inference_calls_total", "dependency" => dependency, "outcome" => outcome)
        .increment(1);
}
