//! The AI inference API's contract, defined once.
//!
//! The inference service belongs to another team; the origin calls it (`origin::inference`)
//! and the project ships a reference implementation (`origin/inference`). Both sides use these
//! types, so a field renamed on one side is a compile error on the other instead of a
//! silently neutral risk score. The origin documents them in its `/openapi.json` (feature
//! `openapi`), schemas `RiskRequest` … `DemandResponse`.
//!
//! * `POST /v1/risk-score` — [`RiskRequest`] → [`RiskResponse`]
//! * `POST /v1/demand` — [`DemandRequest`] → [`DemandResponse`]

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Body of `POST /v1/risk-score`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RiskRequest {
    /// The customer (JWT subject).
    pub user_id: String,
    /// Public vehicle id, e.g. `veh_euw_…`.
    pub vehicle_id: String,
    /// `EUW` or `EUN`.
    pub region: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// Answer of `POST /v1/risk-score`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RiskResponse {
    /// 0 (no risk) to 1 (highest risk).
    pub score: f64,
    pub model_version: String,
}

/// Body of `POST /v1/demand`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DemandRequest {
    /// `EUW` or `EUN` (its time zone gives the local hour of week).
    pub region: String,
    /// H3 cell indexes (hex strings) of the zones asked about.
    pub zones: Vec<String>,
    /// Starts of the hour buckets asked about (UTC, whole hours).
    pub buckets: Vec<DateTime<Utc>>,
}

/// One zone and bucket of a [`DemandResponse`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DemandPrediction {
    pub zone: String,
    pub bucket: DateTime<Utc>,
    /// Expected bookings starting in that hour in that zone (≥ 0).
    pub demand: f64,
    /// Vehicles expected to be offered there (≥ 0).
    pub supply: f64,
}

/// Answer of `POST /v1/demand`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DemandResponse {
    pub predictions: Vec<DemandPrediction>,
    pub model_version: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_risk_request_has_the_documented_wire_names() -> Result<(), serde_json::Error> {
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let request = RiskRequest {
            user_id: "u".into(),
            vehicle_id: "veh_euw_x".into(),
            region: "EUW".into(),
            start: at,
            end: at,
        };
        let json = serde_json::to_value(&request)?;
        let mut keys: Vec<&str> = json
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        keys.sort_unstable();
        assert_eq!(keys, ["end", "region", "start", "user_id", "vehicle_id"]);
        assert_eq!(serde_json::from_value::<RiskRequest>(json)?, request);
        Ok(())
    }

    #[test]
    fn a_demand_answer_round_trips_through_json() -> Result<(), serde_json::Error> {
        let text = r#"{"predictions":[{"zone":"881f1d4","bucket":"2027-01-15T08:00:00Z","demand":1.5,"supply":3.0}],"model_version":"m1"}"#;
        let answer: DemandResponse = serde_json::from_str(text)?;
        assert_eq!(answer.predictions[0].demand, 1.5);
        assert_eq!(serde_json::to_string(&answer)?, text);
        Ok(())
    }
}
