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
//! `score = 0.6·cancel + 0.8·expired + 1.0·late + 0.1·newness + class`, clamped to `0..=1`,
//! where `newness = 1 / (1 + account_age_days / 30)` and `class` is the vehicle's exposure
//! ([`class_loading`]: 0 for a compact … 0.08 for a premium car — what a damage costs). A
//! brand-new user scores ≈ 0.19 on a compact, a year-old user with twenty clean trips ≈ 0.03, a
//! serial canceller ≥ 0.4.
//!
//! # Demand
//!
//! Per zone (H3 cell) and local **hour of week** (the zone's bays' time zone, DST included):
//! bookings made in the last [`DEMAND_WEEKS`] weeks whose window starts in that hour of week,
//! **exponentially smoothed** by age in weeks (weight `α(1−α)^weeks_ago`, α = 0.5), i.e. the
//! expected number of bookings starting in that hour in one week — blended with a **prior**
//! (`0.3 × prior + 0.7 × observed`): the zone's supply × a stated car-sharing day profile
//! ([`prior_rate`]: weekday commute peaks, weekend middays, quiet nights), so a zone without
//! history still gets a plausible, hour-dependent number. Supply is the active vehicles parked
//! in the zone now.

use chrono::{DateTime, Datelike, Timelike, Utc};
use chrono_tz::Tz;

/// Weight of the prior in the demand blend (the rest is the observed, smoothed history).
pub const PRIOR_WEIGHT: f64 = 0.3;

/// Weight of the observed history in the demand blend.
pub const OBSERVED_WEIGHT: f64 = 1.0 - PRIOR_WEIGHT;

/// Bookings per vehicle starting in a local hour of week (0 = Monday 00:00), the demand prior:
/// weekday commute peaks (07–09 h 0.35, 16–19 h 0.30), weekday daytime 0.15, evenings 0.10,
/// weekend 10–18 h 0.25, and 0.03–0.05 at night.
pub fn prior_rate(hour_of_week: u32) -> f64 {
    let (day, hour) = (hour_of_week / 24, hour_of_week % 24);
    if day < 5 {
        match hour {
            7..=9 => 0.35,
            16..=19 => 0.30,
            10..=15 => 0.15,
            20..=22 => 0.10,
            _ => 0.03,
        }
    } else {
        match hour {
            10..=18 => 0.25,
            19..=22 => 0.10,
            _ => 0.05,
        }
    }
}

/// Risk added by the vehicle's class: what a damage or a no-show of that car costs.
pub fn class_loading(class: &str) -> f64 {
    match class {
        "sedan" => 0.02,
        "suv" => 0.04,
        "van" => 0.05,
        "premium" => 0.08,
        _ => 0.0,
    }
}

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

/// The risk score of a history for a vehicle class; see the module docs.
pub fn risk_score(h: &History, class: &str) -> f64 {
    let cancel = shrunk(h.cancelled, h.bookings, PRIOR_CANCEL);
    let expired = shrunk(h.expired, h.bookings, PRIOR_EXPIRED);
    let late = shrunk(h.late, h.completed, PRIOR_LATE);
    let age = if h.account_age_days.is_finite() {
        h.account_age_days.max(0.0)
    } else {
        0.0
    };
    let newness = 1.0 / (1.0 + age / 30.0);
    (0.6 * cancel + 0.8 * expired + 1.0 * late + 0.1 * newness + class_loading(class))
        .clamp(0.0, 1.0)
}

/// Local hour of week (0 = Monday 00:00 … 167 = Sunday 23:00) of an instant in `tz`.
pub fn hour_of_week(at: DateTime<Utc>, tz: Tz) -> u32 {
    let local = at.with_timezone(&tz);
    local.weekday().num_days_from_monday() * 24 + local.hour()
}

/// Predicted bookings of a zone with `supply` vehicles in the hour of `bucket`: the prior and
/// the observed, smoothed history blended (see the module docs).
pub fn predicted_demand(
    observations: &[(DateTime<Utc>, DateTime<Utc>)],
    supply: f64,
    bucket: DateTime<Utc>,
    tz: Tz,
    now: DateTime<Utc>,
) -> f64 {
    PRIOR_WEIGHT * supply.max(0.0) * prior_rate(hour_of_week(bucket, tz))
        + OBSERVED_WEIGHT * smoothed_demand(observations, bucket, tz, now)
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
        let new = risk_score(&History::default(), "compact");
        assert!((0.15..0.25).contains(&new), "{new}");
        let clean = risk_score(
            &History {
                bookings: 20,
                completed: 20,
                account_age_days: 365.0,
                ..History::default()
            },
            "compact",
        );
        assert!(clean < 0.05, "{clean}");
        let canceller = risk_score(
            &History {
                bookings: 10,
                cancelled: 6,
                expired: 2,
                completed: 2,
                account_age_days: 60.0,
                ..History::default()
            },
            "compact",
        );
        assert!(canceller > 0.35, "{canceller}");
        let late = risk_score(
            &History {
                bookings: 10,
                completed: 10,
                late: 5,
                account_age_days: 365.0,
                ..History::default()
            },
            "compact",
        );
        assert!(late > clean + 0.2, "{late}");
        let worst = risk_score(
            &History {
                bookings: 1000,
                cancelled: 1000,
                expired: 1000,
                completed: 1000,
                late: 1000,
                account_age_days: 0.0,
            },
            "premium",
        );
        assert!(worst <= 1.0);
        let premium = risk_score(&History::default(), "premium");
        assert!((premium - new - 0.08).abs() < 1e-9, "{premium} vs {new}");
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

    #[test]
    fn without_history_demand_follows_supply_and_the_local_day_profile() -> Result<(), String> {
        let tz: Tz = "Europe/Berlin".parse().map_err(|e| format!("{e}"))?;
        let now = Utc
            .with_ymd_and_hms(2026, 11, 25, 12, 0, 0)
            .single()
            .ok_or("time")?;
        // Monday 30 Nov 2026: 07:00 UTC = 08:00 local (peak), 02:00 UTC = 03:00 local (night).
        let peak = Utc
            .with_ymd_and_hms(2026, 11, 30, 7, 0, 0)
            .single()
            .ok_or("time")?;
        let night = Utc
            .with_ymd_and_hms(2026, 11, 30, 2, 0, 0)
            .single()
            .ok_or("time")?;
        let at_peak = predicted_demand(&[], 6.0, peak, tz, now);
        assert!((at_peak - 0.3 * 6.0 * 0.35).abs() < 1e-9, "{at_peak}");
        assert!(predicted_demand(&[], 6.0, night, tz, now) < at_peak);
        assert!(predicted_demand(&[], 2.0, peak, tz, now) < at_peak);
        assert_eq!(predicted_demand(&[], 0.0, peak, tz, now), 0.0);
        let booked = predicted_demand(
            &[(peak - chrono::Duration::weeks(1), now)],
            6.0,
            peak,
            tz,
            now,
        );
        assert!((booked - at_peak - 0.7 * 0.5).abs() < 1e-9, "{booked}");
        Ok(())
    }
}
