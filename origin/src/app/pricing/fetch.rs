//! The parallel fetcher: a quote's three sources under one deadline budget.
//!
//! * **base** — the region and class's pricing context (rate card, floor/ceiling, time-of-day
//!   and discount rules): L2 (5 min), else PostgreSQL. It has no substitute, so it is awaited
//!   (bounded by the request timeout); everything else must not make it wait.
//! * **risk** — `POST /v1/risk-score` of the AI inference API → [`risk_multiplier`].
//! * **demand** — `POST /v1/demand` for the vehicle's H3 cell and the window's first hours →
//!   predicted bookings and supply; with the cell's live holds from the surge grid this is a
//!   pressure, priced by the surge curve ([`crate::app::surge::curve`]).
//!
//! The three run concurrently (`tokio::join!`), so a quote costs its slowest source, not the
//! sum. Risk and demand share one deadline, `PRICING_BUDGET_MS` (default 150 ms) from the start
//! of the fetch. A source that misses it, fails, or sits behind an open circuit breaker takes
//! its **fallback**: the last good value in L2 (a user's risk multiplier for 24 h; the cell's
//! multiplier in the surge grid, 15 min), else **neutral** ×1.0 — and the quote lists the
//! source in `degraded` (`["risk"]`, `["demand"]`). A source that is simply not configured
//! (`INFERENCE_URL` unset) is not degraded: risk is neutral and demand is the grid of live
//! holds, by design.
//!
//! Fresh values are written to L2 only after the quote passed validation (the caller calls
//! [`Fetched::remember`]), so nothing of a refused computation is cached.

use chrono::{DateTime, Duration as ChronoDuration, DurationRound, Utc};
use domain::ids::VehicleId;
use domain::multiplier::Multiplier;
use domain::vehicle::VehicleClass;
use domain::window::TimeWindow;
use h3o::CellIndex;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{PricingContext, PricingError, Signals};
use crate::app::surge;
use crate::inference::{DemandRequest, RiskRequest};
use crate::state::AppState;

/// L2 lifetime of a risk multiplier (the seed's 24 h).
pub(crate) const RISK_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// Hour buckets of a window sent to the demand model (its first hours decide the surge).
pub(crate) const DEMAND_BUCKETS: i64 = 6;

/// A risk score in `0..=1` → multiplier ×0.95 (no risk) … ×1.45 (highest): 9 500 bp +
/// 5 000 bp × score, rounded to a basis point. A score outside the range is clamped (the
/// client already refuses non-numbers).
pub(crate) fn risk_multiplier(score: f64) -> Multiplier {
    let score = if score.is_finite() {
        score.clamp(0.0, 1.0)
    } else {
        0.0
    };
    // 9_500..=14_500, exact after rounding.
    Multiplier::from_bp((9_500.0 + 5_000.0 * score).round() as u32)
}

/// Predicted demand and supply (means over the window's buckets) plus live holds → surge.
pub(crate) fn demand_surge(predicted: f64, supply: f64, live_holds: u32) -> Multiplier {
    surge::curve(surge::pressure(predicted + f64::from(live_holds), supply))
}

/// What the quote needs to know to fetch its inputs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QuoteFacts<'a> {
    pub user: &'a str,
    pub vehicle: &'a VehicleId,
    pub window: &'a TimeWindow,
    pub class: VehicleClass,
    /// The H3 cell of the vehicle's bay.
    pub cell: Option<CellIndex>,
}

/// The inputs of one quote.
#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    pub ctx: PricingContext,
    pub signals: Signals,
    /// Sources that used a fallback: `"risk"`, `"demand"`.
    pub degraded: Vec<&'static str>,
    fresh_risk: Option<(String, StoredRisk)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredRisk {
    bp: u32,
    model_version: String,
}

enum Outcome {
    Fresh,
    NotConfigured,
    Cached,
    Neutral,
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Fresh => "fresh",
            Outcome::NotConfigured => "not_configured",
            Outcome::Cached => "cached",
            Outcome::Neutral => "neutral",
        }
    }

    fn degraded(&self) -> bool {
        matches!(self, Outcome::Cached | Outcome::Neutral)
    }
}

fn risk_key(user: &str) -> String {
    // User ids come from verified tokens, but keep keys printable and bounded.
    let safe: String = user
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .take(128)
        .collect();
    format!("l2:risk:{safe}")
}

impl Fetched {
    /// Stores the fresh values of this quote in L2 (call after validation passed).
    pub(crate) async fn remember(&self, state: &AppState) {
        if let Some((key, value)) = &self.fresh_risk {
            state.caches.l2_put_json(key, value, RISK_TTL).await;
        }
    }
}

/// Fetches base, risk and demand concurrently; see the module docs.
pub(crate) async fn fetch(
    state: &AppState,
    facts: QuoteFacts<'_>,
) -> Result<Fetched, PricingError> {
    let deadline = Instant::now() + state.config.pricing.budget;
    let region = facts.vehicle.region;
    // A pricing read: the replica may serve it (rates change by the admin API, rarely).
    let base = async {
        crate::read_on!(state.reads.stale_ok(), |pool| {
            state.caches.pricing(pool, region, facts.class).await
        })
    };
    let (base, (risk, risk_outcome, fresh_risk), (surge_m, surge_outcome)) = tokio::join!(
        base,
        risk(state, facts, deadline),
        demand(state, facts, deadline)
    );
    let ctx = base?;
    let mut degraded = Vec::new();
    for (name, outcome) in [("risk", &risk_outcome), ("demand", &surge_outcome)] {
        metrics::counter!("pricing_sources_total", "source" => name, "outcome" => outcome.label())
            .increment(1);
        if outcome.degraded() {
            degraded.push(name);
        }
    }
    Ok(Fetched {
        ctx,
        signals: Signals {
            surge: surge_m,
            risk,
        },
        degraded,
        fresh_risk,
    })
}

async fn risk(
    state: &AppState,
    facts: QuoteFacts<'_>,
    deadline: Instant,
) -> (Multiplier, Outcome, Option<(String, StoredRisk)>) {
    if !state.inference.is_configured() {
        return (Multiplier::ONE, Outcome::NotConfigured, None);
    }
    let request = RiskRequest {
        user_id: facts.user.to_owned(),
        vehicle_id: facts.vehicle.to_string(),
        region: facts.vehicle.region.code().to_owned(),
        start: facts.window.start(),
        end: facts.window.end(),
    };
    let key = risk_key(facts.user);
    match tokio::time::timeout_at(deadline, state.inference.risk_score(&request)).await {
        Ok(Ok(answer)) => {
            let m = risk_multiplier(answer.score);
            let stored = StoredRisk {
                bp: m.bp(),
                model_version: answer.model_version,
            };
            (m, Outcome::Fresh, Some((key, stored)))
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "risk score unavailable; falling back");
            risk_fallback(state, &key).await
        }
        Err(_) => risk_fallback(state, &key).await,
    }
}

async fn risk_fallback(
    state: &AppState,
    key: &str,
) -> (Multiplier, Outcome, Option<(String, StoredRisk)>) {
    match state.caches.l2_get_json::<StoredRisk>("risk", key).await {
        Some(stored) => match Multiplier::try_from_bp(stored.bp) {
            Ok(m) => (m, Outcome::Cached, None),
            Err(_) => (Multiplier::ONE, Outcome::Neutral, None),
        },
        None => (Multiplier::ONE, Outcome::Neutral, None),
    }
}

/// The window's first hour buckets (whole UTC hours), at most [`DEMAND_BUCKETS`].
pub(crate) fn buckets(window: &TimeWindow) -> Vec<DateTime<Utc>> {
    let first = window
        .start()
        .duration_trunc(ChronoDuration::hours(1))
        .unwrap_or(window.start());
    (0..DEMAND_BUCKETS)
        .map(|h| first + ChronoDuration::hours(h))
        .filter(|b| *b < window.end())
        .collect()
}

async fn demand(
    state: &AppState,
    facts: QuoteFacts<'_>,
    deadline: Instant,
) -> (Multiplier, Outcome) {
    let region = facts.vehicle.region;
    let Some(cell) = facts.cell else {
        return (Multiplier::ONE, Outcome::NotConfigured);
    };
    if !state.inference.is_configured() {
        // No model: the grid of live holds is the demand signal.
        let m = match state.surge.grid(region).await {
            Some(grid) => grid.multiplier(cell),
            None => Multiplier::ONE,
        };
        return (m, Outcome::NotConfigured);
    }
    let request = DemandRequest {
        region: region.code().to_owned(),
        zones: vec![cell.to_string()],
        buckets: buckets(facts.window),
    };
    match tokio::time::timeout_at(deadline, state.inference.demand(&request)).await {
        Ok(Ok(answer)) if !answer.predictions.is_empty() => {
            let n = answer.predictions.len() as f64;
            let predicted = answer.predictions.iter().map(|p| p.demand).sum::<f64>() / n;
            let supply = answer.predictions.iter().map(|p| p.supply).sum::<f64>() / n;
            let holds = state.surge.local(region).map_or(0, |g| g.holds(cell));
            (demand_surge(predicted, supply, holds), Outcome::Fresh)
        }
        other => {
            if let Ok(Err(e)) = &other {
                tracing::debug!(error = %e, "demand prediction unavailable; falling back");
            }
            match state.surge.grid(region).await {
                Some(grid) => (grid.multiplier(cell), Outcome::Cached),
                None => (Multiplier::ONE, Outcome::Neutral),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn risk_scores_map_linearly_onto_the_stated_range() {
        assert_eq!(risk_multiplier(0.0).bp(), 9_500);
        assert_eq!(risk_multiplier(0.1).bp(), 10_000);
        assert_eq!(risk_multiplier(0.5).bp(), 12_000);
        assert_eq!(risk_multiplier(1.0).bp(), 14_500);
        assert_eq!(risk_multiplier(7.0).bp(), 14_500);
        assert_eq!(risk_multiplier(f64::NAN).bp(), 9_500);
    }

    #[test]
    fn demand_and_holds_against_supply_give_the_surge() {
        assert_eq!(demand_surge(0.0, 4.0, 0), Multiplier::ONE);
        assert_eq!(demand_surge(3.0, 4.0, 1).bp(), 20_000);
        assert_eq!(demand_surge(50.0, 1.0, 0), surge::SURGE_CAP);
        assert_eq!(demand_surge(0.0, 0.0, 0), Multiplier::ONE);
    }

    #[test]
    fn buckets_cover_the_first_hours_of_the_window() -> Result<(), Box<dyn std::error::Error>> {
        let start = DateTime::from_timestamp(1_800_000_000 + 1800, 0).ok_or("time")?;
        let short = TimeWindow::new(start, start + ChronoDuration::minutes(90))?;
        assert_eq!(buckets(&short).len(), 2);
        let long = TimeWindow::new(start, start + ChronoDuration::days(2))?;
        assert_eq!(buckets(&long).len(), DEMAND_BUCKETS as usize);
        Ok(())
    }
}
