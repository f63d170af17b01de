//! The reference models: small, explainable, deterministic functions of booking history.
//! A real ML service replaces them by speaking the same HTTP contract; these exist so the
//! project runs end to end with numbers that respond to what customers actually do.
//!
//! # Risk
//!
//! From the user's own history: the share of bookings they **cancelled**, of holds they let
//! **expire**, of trips they returned **late** (completed after the booked end), and how
//! **new** the account is (first booking). Each rate is shrunk towards a population prior
//! (a Beta prior: `(count + prior × k) / (n + k)` with k = 5), so one cancellation out of one
//! booking is not a 100 % canceller, and a user without history gets the prior:
//!
//! `score = 0.6·cancel + 0.8·expired + 1.0·late + 0.1·newness`, clamped to `0..=1`, where
//! `newness = 1 / (1 + account_age_days / 30)`. A brand-new user scores ≈ 0.19, a year-old
//! user with twenty clean trips ≈ 0.03, a serial canceller ≥ 0.4.
//!
//! # Demand
//!
//! Per zone (H3 cell) and local **hour of week** (the zone's bays' time zone, DST included):
//! bookings made in the last [`DEMAND_WEEKS`] weeks whose window starts in that hour of week,
//! **exponentially smoothed** by age in weeks (weight `α(1−α)^weeks_ago`, α = 0.5), i.e. the
//! expected number of bookings starting in that hour in one week. Supply is the active vehicles
//! parked in the zone now.

use chrono::{DateTime, Datelike, Timelike, Utc};
use chrono_tz::Tz;

/// Weeks of history the demand model reads.
pub const DEMAND_WEEKS: i64 = 8;
/// Smoothing factor of the weekly counts.
pub const ALPHA: f64 = 0.5;
/// Prior weight (pseudo-bookings) of the risk rates.
const PRIOR_N: f64 = 5.0;
const PRIOR_CANCEL: f64 = 0.05;
const PRIOR_EXPIRED: f64 = 0.05;
const PRIOR_LATE: f64 = 0.02;

/// Model version reported with every answer.
pub const MODEL_VERSION: &str = "reference-1";

/// A user's booking history, as counted by the store.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct History {
    /// Bookings ever made (any status).
    pub bookings: u32,
    pub cancelled: u32,
    /// Holds that expired unconfirmed (`FAILED`).
    pub expired: u32,
    pub completed: u32,
    /// Completed after the booked end.
    pub late: u32,
    /// Days since the first booking (0 for none).
    pub account_age_days: f64,
}

fn shrunk(count: u32, n: u32, prior: f64) -> f64 {
    (f64::from(count) + prior * PRIOR_N) / (f64::from(n) + PRIOR_N)
}

/// The risk score of a history; see the module docs.
pub fn risk_score(h: &History) -> f64 {
    let cancel = shrunk(h.cancelled, h.bookings, PRIOR_CANCEL);
    let expired = shrunk(h.expired, h.bookings, PRIOR_EXPIRED);
    let late = shrunk(h.late, h.completed, PRIOR_LATE);
    let age = if h.account_age_days.is_finite() {
        h.account_age_days.max(0.0)
    } else {
        0.0
    };
    let newness = 1.0 / (1.0 + age / 30.0);
    (0.6 * cancel + 0.8 * expired + 1.0 * late + 0.1 * newness).clamp(0.0, 1.0)
}

/// Local hour of week (0 = Monday 00:00 … 167 = Sunday 23:00) of an instant in `tz`.
pub fn hour_of_week(at: DateTime<Utc>, tz: Tz) -> u32 {
    let local = at.with_timezone(&tz);
    local.weekday().num_days_from_monday() * 24 + local.hour()
}

/// Smoothed weekly demand from booking observations `(window start, created at)` of one zone,
/// for the local hour of week of `bucket`, seen at `now`.
pub fn smoothed_demand(
    observations: &[(DateTime<Utc>, DateTime<Utc>)],
    bucket: DateTime<Utc>,
    tz: Tz,
    now: DateTime<Utc>,
) -> f64 {
    let wanted = hour_of_week(bucket, tz);
    observations
        .iter()
        .filter(|(start, _)| hour_of_week(*start, tz) == wanted)
        .filter_map(|(_, created)| {
            let weeks_ago = now.signed_duration_since(*created).num_weeks();
            (0..DEMAND_WEEKS)
                .contains(&weeks_ago)
                .then(|| ALPHA * (1.0 - ALPHA).powi(weeks_ago as i32))
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_new_user_gets_the_prior_and_history_moves_the_score_both_ways() {
        let new = risk_score(&History::default());
        assert!((0.15..0.25).contains(&new), "{new}");
        let clean = risk_score(&History {
            bookings: 20,
            completed: 20,
            account_age_days: 365.0,
            ..History::default()
        });
        assert!(clean < 0.05, "{clean}");
        let canceller = risk_score(&History {
            bookings: 10,
            cancelled: 6,
            expired: 2,
            completed: 2,
            account_age_days: 60.0,
            ..History::default()
        });
        assert!(canceller > 0.35, "{canceller}");
        let late = risk_score(&History {
            bookings: 10,
            completed: 10,
            late: 5,
            account_age_days: 365.0,
            ..History::default()
        });
        assert!(late > clean + 0.2, "{late}");
        let worst = risk_score(&History {
            bookings: 1000,
            cancelled: 1000,
            expired: 1000,
            completed: 1000,
            late: 1000,
            account_age_days: 0.0,
        });
        assert!(worst <= 1.0);
    }

    #[test]
    fn hour_of_week_is_local_time_across_dst() -> Result<(), String> {
        let berlin: Tz = "Europe/Berlin".parse().map_err(|e| format!("{e}"))?;
        // Monday 2026-03-23 08:00 UTC = 09:00 CET (winter) … Monday 2026-03-30 08:00 UTC = 10:00 CEST.
        let winter = Utc
            .with_ymd_and_hms(2026, 3, 23, 8, 0, 0)
            .single()
            .ok_or("time")?;
        let summer = Utc
            .with_ymd_and_hms(2026, 3, 30, 8, 0, 0)
            .single()
            .ok_or("time")?;
        assert_eq!(hour_of_week(winter, berlin), 9);
        assert_eq!(hour_of_week(summer, berlin), 10);
        Ok(())
    }

    #[test]
    fn recent_bookings_weigh_more_and_old_ones_not_at_all() -> Result<(), String> {
        let tz: Tz = "Europe/Stockholm".parse().map_err(|e| format!("{e}"))?;
        let now = Utc
            .with_ymd_and_hms(2026, 11, 25, 12, 0, 0)
            .single()
            .ok_or("time")?;
        let bucket = Utc
            .with_ymd_and_hms(2026, 11, 30, 7, 0, 0)
            .single()
            .ok_or("time")?; // Mon 08:00 local
        let same_hour = bucket - chrono::Duration::weeks(1);
        let other_hour = bucket + chrono::Duration::hours(1);
        let this_week = now - chrono::Duration::days(1);
        let three_weeks = now - chrono::Duration::weeks(3);
        let ancient = now - chrono::Duration::weeks(20);
        let obs = [
            (same_hour, this_week),
            (same_hour, three_weeks),
            (same_hour, ancient),
            (other_hour, this_week),
        ];
        let d = smoothed_demand(&obs, bucket, tz, now);
        assert!((d - (0.5 + 0.5 * 0.125)).abs() < 1e-9, "{d}");
        assert_eq!(smoothed_demand(&[], bucket, tz, now), 0.0);
        assert!(
            smoothed_demand(&obs[..1], bucket, tz, now)
                > smoothed_demand(&obs[1..2], bucket, tz, now)
        );
        Ok(())
    }
}
