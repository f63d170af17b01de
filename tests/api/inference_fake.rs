//! A fake AI inference API for the pricing tests: a real HTTP server (axum on port 0) speaking
//! the contract of `origin::inference`, whose answers, delay and status the test controls, and
//! which counts the calls it received. The inference API is a third party, so a controllable
//! stand-in is the honest way to drive "slow", "down" and "back" deterministically; the real
//! reference service is tested in `inference_reference.rs`.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use origin::inference::{
    DemandPrediction, DemandRequest, DemandResponse, RiskRequest, RiskResponse,
};

#[derive(Debug)]
struct Knobs {
    delay_ms: AtomicU64,
    status: AtomicU16,
    score: Mutex<f64>,
    demand: Mutex<(f64, f64)>,
    risk_calls: AtomicU64,
    demand_calls: AtomicU64,
}

/// The running fake; dropped with the test (its task ends with the runtime).
#[derive(Debug, Clone)]
pub struct FakeInference {
    pub url: String,
    knobs: Arc<Knobs>,
}

async fn pause(knobs: &Knobs) -> Option<Response> {
    let delay = knobs.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = knobs.status.load(Ordering::SeqCst);
    (status != 200).then(|| {
        StatusCode::from_u16(status)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response()
    })
}

async fn risk(State(knobs): State<Arc<Knobs>>, Json(_req): Json<RiskRequest>) -> Response {
    knobs.risk_calls.fetch_add(1, Ordering::SeqCst);
    if let Some(failed) = pause(&knobs).await {
        return failed;
    }
    let score = *knobs.score.lock().unwrap_or_else(|e| e.into_inner());
    Json(RiskResponse {
        score,
        model_version: "fake-1".into(),
    })
    .into_response()
}

async fn demand(State(knobs): State<Arc<Knobs>>, Json(req): Json<DemandRequest>) -> Response {
    knobs.demand_calls.fetch_add(1, Ordering::SeqCst);
    if let Some(failed) = pause(&knobs).await {
        return failed;
    }
    let (demand, supply) = *knobs.demand.lock().unwrap_or_else(|e| e.into_inner());
    let predictions = req
        .zones
        .iter()
        .flat_map(|zone| {
            req.buckets.iter().map(move |bucket| DemandPrediction {
                zone: zone.clone(),
                bucket: *bucket,
                demand,
                supply,
            })
        })
        .collect();
    Json(DemandResponse {
        predictions,
        model_version: "fake-1".into(),
    })
    .into_response()
}

impl FakeInference {
    /// Starts a healthy fake: score 0.1 (×1.0), demand 0 of supply 4 (×1.0).
    pub async fn start() -> anyhow::Result<Self> {
        let knobs = Arc::new(Knobs {
            delay_ms: AtomicU64::new(0),
            status: AtomicU16::new(200),
            score: Mutex::new(0.1),
            demand: Mutex::new((0.0, 4.0)),
            risk_calls: AtomicU64::new(0),
            demand_calls: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/v1/risk-score", post(risk))
            .route("/v1/demand", post(demand))
            .with_state(Arc::clone(&knobs));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeInference { url, knobs })
    }

    /// Every answer waits this long first.
    pub fn set_delay(&self, delay: Duration) {
        self.knobs
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Every answer has this status (200 = the normal body).
    pub fn set_status(&self, status: u16) {
        self.knobs.status.store(status, Ordering::SeqCst);
    }

    /// The risk score returned.
    pub fn set_score(&self, score: f64) {
        *self.knobs.score.lock().unwrap_or_else(|e| e.into_inner()) = score;
    }

    /// The demand and supply returned for every zone and bucket.
    pub fn set_demand(&self, demand: f64, supply: f64) {
        *self.knobs.demand.lock().unwrap_or_else(|e| e.into_inner()) = (demand, supply);
    }

    /// Calls received by `/v1/risk-score`.
    pub fn risk_calls(&self) -> u64 {
        self.knobs.risk_calls.load(Ordering::SeqCst)
    }

    /// Calls received by `/v1/demand`.
    pub fn demand_calls(&self) -> u64 {
        self.knobs.demand_calls.load(Ordering::SeqCst)
    }
}
