//! The price calculation and its telescoping breakdown.
//!
//! Each step computes the *exact* cumulative amount as a rational number in `i128` and rounds
//! it once with [`round_div_half_even`]; a breakdown line is the difference between two
//! consecutive rounded cumulative amounts. The lines therefore telescope: their sum is always
//! exactly the total, whatever the multipliers.

use chrono::{DateTime, Datelike, Duration, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::discount::{DiscountRule, MAX_TOTAL_DISCOUNT_BP};
use super::rates::{HourOfWeekTable, RateCard};
use super::PricingError;
use crate::money::{round_div_half_even, Currency, Money};
use crate::multiplier::Multiplier;
use crate::window::TimeWindow;

/// 10 000 basis points = 1.
const BP: i128 = 10_000;
const MINUTES_PER_DAY: i64 = 1_440;

/// Everything the calculator needs; gathered by the caller (possibly in parallel from the
/// database, the demand model and the risk model).
#[derive(Debug, Clone, Copy)]
pub struct PriceInput<'a> {
    /// Base rates of the vehicle.
    pub rate: &'a RateCard,
    /// The window being priced.
    pub window: &'a TimeWindow,
    /// The bay's local time zone; time-of-day rules are local time.
    pub tz: Tz,
    /// Compiled time-of-day multipliers.
    pub time_table: &'a HourOfWeekTable,
    /// Demand-based multiplier.
    pub surge: Multiplier,
    /// Risk-based multiplier.
    pub risk: Multiplier,
    /// Discounts to apply, normally the output of
    /// [`applicable_discounts`](super::applicable_discounts).
    pub discounts: &'a [&'a DiscountRule],
}

/// What a breakdown line stands for (stable machine-readable kind; the label is for humans).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// Days and hours at the rate card price.
    Base,
    /// Effect of the time-of-day multiplier.
    TimeOfDay,
    /// Effect of the demand multiplier.
    Surge,
    /// Effect of the risk multiplier.
    Risk,
    /// One applied discount (negative).
    Discount,
    /// Raise to the minimum price.
    Floor,
    /// Cut to the maximum price (negative).
    Ceiling,
}

/// One line of a price breakdown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceLine {
    /// Machine-readable kind.
    pub kind: LineKind,
    /// Human-readable description, e.g. "Surge ×1.25".
    pub label: String,
    /// Signed contribution in minor units.
    pub amount_minor: i64,
}

/// A price with the lines that explain it; `lines` always sum to `total.minor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceBreakdown {
    /// Currency of every amount.
    pub currency: Currency,
    /// Explanation lines (zero lines omitted, except the base).
    pub lines: Vec<PriceLine>,
    /// The amount charged.
    pub total: Money,
    /// Effective (minute-weighted average) time-of-day multiplier, rounded to a basis point.
    /// The calculation itself uses the exact average.
    pub time_multiplier: Multiplier,
    /// Demand multiplier applied.
    pub surge: Multiplier,
    /// Risk multiplier applied.
    pub risk: Multiplier,
    /// Total discount applied after stacking and capping, in basis points.
    pub discount_bp: u32,
}

fn mul(a: i128, b: i128) -> Result<i128, PricingError> {
    a.checked_mul(b).ok_or(PricingError::Overflow)
}

fn to_i64(v: i128) -> Result<i64, PricingError> {
    i64::try_from(v).map_err(|_| PricingError::Overflow)
}

/// Cheapest combination of whole days and started hours: `days × per_day + min(hours ×
/// per_hour, per_day)`. Returns the amount and a label.
fn base_amount(rate: &RateCard, minutes: i64) -> Result<(i128, String), PricingError> {
    let days = minutes / MINUTES_PER_DAY;
    let rest = minutes % MINUTES_PER_DAY;
    let hours = (rest + 59) / 60;
    let per_day = i128::from(rate.per_day_minor);
    let hours_price = mul(i128::from(hours), i128::from(rate.per_hour_minor))?;
    let (partial, label) = if hours == 0 {
        (0, plural(days, "day"))
    } else if hours_price >= per_day {
        (per_day, plural(days + 1, "day"))
    } else if days == 0 {
        (hours_price, format!("{hours} h"))
    } else {
        (hours_price, format!("{} + {hours} h", plural(days, "day")))
    };
    let amount = mul(i128::from(days), per_day)?
        .checked_add(partial)
        .ok_or(PricingError::Overflow)?;
    Ok((amount, format!("Base ({label})")))
}

fn plural(n: i64, unit: &str) -> String {
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

/// Σ minutes × bp over the window, where each minute's multiplier is looked up by the
/// weekday and hour of that minute in the local zone `tz`.
///
/// The window is walked in UTC, in segments that end at the next *local* hour boundary (or the
/// window end). For Europe/Berlin and Europe/Stockholm local hour boundaries are UTC hour
/// boundaries, but walking by local boundaries keeps the function right for half-hour zones
/// too. Because each segment is converted from UTC to local time, DST needs no special case:
/// on the spring-forward night no instant maps to local 02:xx, and on the fall-back night two
/// different UTC hours both map to local 02:xx and both are counted.
fn time_weight(window: &TimeWindow, tz: Tz, table: &HourOfWeekTable) -> Result<i128, PricingError> {
    let end: DateTime<Utc> = window.end();
    let mut t = window.start();
    let mut sum: i128 = 0;
    while t < end {
        let local = t.with_timezone(&tz);
        let to_boundary = 60 - i64::from(local.minute());
        let next = (t + Duration::minutes(to_boundary)).min(end);
        let minutes = i128::from((next - t).num_minutes());
        let m = table.get(local.weekday(), local.hour());
        sum = sum
            .checked_add(mul(minutes, i128::from(m.bp()))?)
            .ok_or(PricingError::Overflow)?;
        t = next;
    }
    Ok(sum)
}

fn percent(bp: u32) -> String {
    let (whole, frac) = (bp / 100, bp % 100);
    if frac == 0 {
        format!("{whole}%")
    } else {
        let s = format!("{whole}.{frac:02}");
        format!("{}%", s.trim_end_matches('0'))
    }
}

/// Prices a window; see the [module docs](crate::pricing) for the pipeline and
/// [`crate::money`] for the rounding rule.
pub fn price(input: &PriceInput) -> Result<PriceBreakdown, PricingError> {
    let rate = input.rate;
    rate.validate()?;
    if !input.surge.is_valid() || !input.risk.is_valid() {
        return Err(PricingError::InvalidMultiplier);
    }
    let minutes = input.window.duration_minutes();
    let mut lines = Vec::with_capacity(8);
    let mut push =
        |kind: LineKind, label: String, from: i128, to: i128| -> Result<(), PricingError> {
            let amount_minor = to_i64(to - from)?;
            if amount_minor != 0 || kind == LineKind::Base {
                lines.push(PriceLine {
                    kind,
                    label,
                    amount_minor,
                });
            }
            Ok(())
        };

    // 1. Base.
    let (base, base_label) = base_amount(rate, minutes)?;
    push(LineKind::Base, base_label, 0, base)?;

    // 2. Time of day: exact factor = weight / (minutes × 10⁴).
    let weight = time_weight(input.window, input.tz, input.time_table)?;
    let m = i128::from(minutes);
    let den_time = mul(m, BP)?;
    let time_bp =
        u32::try_from(round_div_half_even(weight, m)).map_err(|_| PricingError::Overflow)?;
    let time_multiplier = Multiplier::from_bp(time_bp);
    let n_time = mul(base, weight)?;
    let after_time = round_div_half_even(n_time, den_time);
    push(
        LineKind::TimeOfDay,
        format!("Time of day {time_multiplier}"),
        base,
        after_time,
    )?;

    // 3. Surge and risk.
    let n_surge = mul(n_time, i128::from(input.surge.bp()))?;
    let den_surge = mul(den_time, BP)?;
    let after_surge = round_div_half_even(n_surge, den_surge);
    push(
        LineKind::Surge,
        format!("Demand {}", input.surge),
        after_time,
        after_surge,
    )?;

    let n_risk = mul(n_surge, i128::from(input.risk.bp()))?;
    let den_risk = mul(den_surge, BP)?;
    let after_risk = round_div_half_even(n_risk, den_risk);
    push(
        LineKind::Risk,
        format!("Risk {}", input.risk),
        after_surge,
        after_risk,
    )?;

    // 4. Discounts: percentages add up to the cap, each applied to the multiplied subtotal.
    let den_discount = mul(den_risk, BP)?;
    let mut cumulative_bp: u32 = 0;
    let mut current = after_risk;
    for rule in input.discounts {
        let next_bp = cumulative_bp
            .saturating_add(rule.percent_bp)
            .min(MAX_TOTAL_DISCOUNT_BP);
        let applied = next_bp - cumulative_bp;
        cumulative_bp = next_bp;
        let after = round_div_half_even(mul(n_risk, BP - i128::from(cumulative_bp))?, den_discount);
        let capped = if applied < rule.percent_bp {
            " (capped)"
        } else {
            ""
        };
        let code = rule
            .code
            .as_deref()
            .map(|c| format!(" {c}"))
            .unwrap_or_default();
        let label = format!(
            "Discount: {}{code} −{}{capped}",
            rule.kind.label(),
            percent(applied)
        );
        push(LineKind::Discount, label, current, after)?;
        current = after;
    }

    // 5. Clamp to the rate card's floor and ceiling.
    let floor = i128::from(rate.floor_minor);
    let ceiling = i128::from(rate.ceiling_minor);
    let total = current.clamp(floor, ceiling);
    if total > current {
        push(LineKind::Floor, "Minimum price".into(), current, total)?;
    } else if total < current {
        push(LineKind::Ceiling, "Maximum price".into(), current, total)?;
    }

    Ok(PriceBreakdown {
        currency: rate.currency,
        lines,
        total: Money::new(to_i64(total)?, rate.currency),
        time_multiplier,
        surge: input.surge,
        risk: input.risk,
        discount_bp: cumulative_bp,
    })
}

/// Price of extending a booking from `input_old.window` to `input_new.window`.
///
/// The extra time is priced as `price(new window) − price(old window)`, both at *today's* rules
/// (the caller passes the same rate card, tables, multipliers and discounts with the two
/// windows), never below zero. Pricing the added hours as a window of their own would charge
/// hourly rates for hours that, in the combined booking, fall under the day cap — the delta of
/// full-window prices keeps day caps fair, and a booking extended in steps costs the same as
/// one booked at full length under the same rules.
pub fn extension_price(
    input_old: &PriceInput,
    input_new: &PriceInput,
) -> Result<Money, PricingError> {
    let delta = price_difference(input_old, input_new)?;
    Ok(Money::new(delta.minor.max(0), delta.currency))
}

/// `price(new window) − price(old window)` under the same rules, negative when the new window
/// is cheaper: what moving a booking ([`crate::booking::Action::Reschedule`]) adds or refunds.
/// [`extension_price`] is this, never below zero.
pub fn price_difference(
    input_old: &PriceInput,
    input_new: &PriceInput,
) -> Result<Money, PricingError> {
    let old = price(input_old)?;
    let new = price(input_new)?;
    if old.currency != new.currency {
        return Err(PricingError::CurrencyMismatch);
    }
    let delta = new
        .total
        .minor
        .checked_sub(old.total.minor)
        .ok_or(PricingError::Overflow)?;
    Ok(Money::new(delta, new.currency))
}

#[cfg(test)]
#[path = "calc_tests.rs"]
mod tests;
