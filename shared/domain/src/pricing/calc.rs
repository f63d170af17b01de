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
    if bp % 100 == 0 {
        format!("{}%", bp / 100)
    } else {
        let s = format!("{}.{:02}", bp / 100, bp % 100);
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
    let mut push = |kind: LineKind, label: String, from: i128, to: i128| -> Result<(), PricingError> {
        let amount_minor = to_i64(to - from)?;
        if amount_minor != 0 || kind == LineKind::Base {
            lines.push(PriceLine { kind, label, amount_minor });
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
    let time_bp = u32::try_from(round_div_half_even(weight, m)).map_err(|_| PricingError::Overflow)?;
    let time_multiplier = Multiplier::from_bp(time_bp);
    let n_time = mul(base, weight)?;
    let after_time = round_div_half_even(n_time, den_time);
    push(LineKind::TimeOfDay, format!("Time of day {time_multiplier}"), base, after_time)?;

    // 3. Surge and risk.
    let n_surge = mul(n_time, i128::from(input.surge.bp()))?;
    let den_surge = mul(den_time, BP)?;
    let after_surge = round_div_half_even(n_surge, den_surge);
    push(LineKind::Surge, format!("Demand {}", input.surge), after_time, after_surge)?;

    let n_risk = mul(n_surge, i128::from(input.risk.bp()))?;
    let den_risk = mul(den_surge, BP)?;
    let after_risk = round_div_half_even(n_risk, den_risk);
    push(LineKind::Risk, format!("Risk {}", input.risk), after_surge, after_risk)?;

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
        let after = round_div_half_even(
            mul(n_risk, BP - i128::from(cumulative_bp))?,
            den_discount,
        );
        let capped = if applied < rule.percent_bp { " (capped)" } else { "" };
        let code = rule.code.as_deref().map(|c| format!(" {c}")).unwrap_or_default();
        let label = format!("Discount: {}{code} −{}{capped}", rule.kind.label(), percent(applied));
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
pub fn extension_price(input_old: &PriceInput, input_new: &PriceInput) -> Result<Money, PricingError> {
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
    Ok(Money::new(delta.max(0), new.currency))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pricing::{DiscountKind, TimeMultiplierRule};
    use chrono::{TimeZone, Weekday};
    use uuid::Uuid;

    fn card() -> RateCard {
        RateCard { currency: Currency::EUR, per_hour_minor: 1_000, per_day_minor: 6_000, floor_minor: 0, ceiling_minor: 1_000_000 }
    }

    fn window(hours: i64) -> TimeWindow {
        // Wednesday 2027-06-02 10:00 UTC.
        let start = Utc.with_ymd_and_hms(2027, 6, 2, 10, 0, 0).unwrap();
        TimeWindow::new(start, start + Duration::hours(hours)).unwrap()
    }

    fn discount(kind: DiscountKind, bp: u32) -> DiscountRule {
        DiscountRule { id: Uuid::nil(), kind, code: Some("X".into()), percent_bp: bp, min_duration_minutes: None, membership_tier: None, valid_from: None, valid_until: None }
    }

    fn run(rate: &RateCard, w: &TimeWindow, surge: u32, risk: u32, discounts: &[&DiscountRule]) -> PriceBreakdown {
        let table = HourOfWeekTable::neutral();
        price(&PriceInput { rate, window: w, tz: chrono_tz::Europe::Berlin, time_table: &table, surge: Multiplier::from_bp(surge), risk: Multiplier::from_bp(risk), discounts }).unwrap()
    }

    fn sum(b: &PriceBreakdown) -> i64 {
        b.lines.iter().map(|l| l.amount_minor).sum()
    }

    #[test]
    fn base_takes_the_cheaper_of_hours_and_a_day_for_the_remainder() {
        // 3 h = 3 × 10.00
        assert_eq!(run(&card(), &window(3), 10_000, 10_000, &[]).total.minor, 3_000);
        // 7 h = 70.00 > day 60.00 -> 60.00
        assert_eq!(run(&card(), &window(7), 10_000, 10_000, &[]).total.minor, 6_000);
        // 25 h = 1 day + 1 h = 70.00
        let b = run(&card(), &window(25), 10_000, 10_000, &[]);
        assert_eq!(b.total.minor, 7_000);
        assert_eq!(b.lines[0].label, "Base (1 day + 1 h)");
        // 30 h = 1 day + min(6 h = 60.00, 60.00) = 120.00, shown as 2 days
        let b = run(&card(), &window(30), 10_000, 10_000, &[]);
        assert_eq!(b.total.minor, 12_000);
        assert_eq!(b.lines[0].label, "Base (2 days)");
        // 61 minutes = 2 started hours
        let start = window(1).start();
        let w = TimeWindow::new(start, start + Duration::minutes(61)).unwrap();
        assert_eq!(run(&card(), &w, 10_000, 10_000, &[]).total.minor, 2_000);
    }

    #[test]
    fn multipliers_and_discounts_produce_telescoping_lines() {
        // base 3000; surge ×1.25 -> 3750; risk ×1.1 -> 4125; 15 % + 10 % = 25 % off 4125 = 3093.75 -> 3094
        let a = discount(DiscountKind::Promo, 1_500);
        let b = discount(DiscountKind::Membership, 1_000);
        let br = run(&card(), &window(3), 12_500, 11_000, &[&a, &b]);
        let amounts: Vec<(LineKind, i64)> = br.lines.iter().map(|l| (l.kind, l.amount_minor)).collect();
        // after promo: 4125 × 0.85 = 3506.25 -> 3506 (-619); after both: 3093.75 -> 3094 (-412)
        assert_eq!(amounts, [(LineKind::Base, 3000), (LineKind::Surge, 750), (LineKind::Risk, 375), (LineKind::Discount, -619), (LineKind::Discount, -412)]);
        assert_eq!(br.total, Money::new(3_094, Currency::EUR));
        assert_eq!(sum(&br), 3_094);
        assert_eq!(br.discount_bp, 2_500);
        assert_eq!(br.time_multiplier, Multiplier::ONE);
    }

    #[test]
    fn rounding_happens_on_the_exact_cumulative_amount_half_even() {
        // base 1 h at 0.05 = 5; ×1.5 = 7.5 -> 8 (even); ×1.1 on exact 7.5 = 8.25 -> 8 (not 8.8 from rounded 8)
        let rate = RateCard { per_hour_minor: 5, per_day_minor: 100, ..card() };
        let br = run(&rate, &window(1), 15_000, 11_000, &[]);
        assert_eq!(br.total.minor, 8);
        assert_eq!(br.lines.iter().map(|l| l.amount_minor).collect::<Vec<_>>(), [5, 3]);
        // 0.05 × 1.3 = 6.5 -> 6 (ties to even)
        assert_eq!(run(&rate, &window(1), 13_000, 10_000, &[]).total.minor, 6);
    }

    #[test]
    fn discounts_are_capped_at_fifty_percent() {
        let a = discount(DiscountKind::Promo, 4_000);
        let b = discount(DiscountKind::Membership, 3_000);
        let br = run(&card(), &window(3), 10_000, 10_000, &[&a, &b]);
        assert_eq!(br.total.minor, 1_500);
        assert_eq!(br.discount_bp, 5_000);
        assert!(br.lines.last().unwrap().label.contains("(capped)"), "{:?}", br.lines);
        assert_eq!(sum(&br), 1_500);
    }

    #[test]
    fn floor_and_ceiling_clamp_with_their_own_lines() {
        let rate = RateCard { floor_minor: 5_000, ceiling_minor: 5_500, ..card() };
        let low = run(&rate, &window(3), 10_000, 10_000, &[]);
        assert_eq!(low.total.minor, 5_000);
        assert_eq!(low.lines.last().unwrap().kind, LineKind::Floor);
        let high = run(&rate, &window(3), 20_000, 10_000, &[]);
        assert_eq!(high.total.minor, 5_500);
        assert_eq!(high.lines.last().unwrap(), &PriceLine { kind: LineKind::Ceiling, label: "Maximum price".into(), amount_minor: -500 });
        assert_eq!(sum(&high), 5_500);
    }

    #[test]
    fn time_of_day_multiplier_is_minute_weighted() {
        // Wednesday 10:00–13:00 UTC = 12:00–15:00 Berlin (CEST). Rule Wed 12–13 local ×2.0.
        let rule = TimeMultiplierRule { days: TimeMultiplierRule::day_bit(Weekday::Wed), start_hour: 12, end_hour: 13, multiplier: Multiplier::from_bp(20_000) };
        let table = HourOfWeekTable::from_rules(&[rule]).unwrap();
        let w = window(3);
        let br = price(&PriceInput { rate: &card(), window: &w, tz: chrono_tz::Europe::Berlin, time_table: &table, surge: Multiplier::ONE, risk: Multiplier::ONE, discounts: &[] }).unwrap();
        // (60×2 + 120×1)/180 = 1.3333 -> 13333 bp; 3000 × 4/3 = 4000
        assert_eq!(br.time_multiplier, Multiplier::from_bp(13_333));
        assert_eq!(br.total.minor, 4_000);
        assert_eq!(br.lines[1], PriceLine { kind: LineKind::TimeOfDay, label: "Time of day ×1.3333".into(), amount_minor: 1_000 });
    }

    #[test]
    fn invalid_inputs_are_rejected() {
        let table = HourOfWeekTable::neutral();
        let w = window(2);
        let bad = RateCard { per_hour_minor: 0, ..card() };
        let input = PriceInput { rate: &bad, window: &w, tz: chrono_tz::UTC, time_table: &table, surge: Multiplier::ONE, risk: Multiplier::ONE, discounts: &[] };
        assert!(matches!(price(&input), Err(PricingError::InvalidRateCard(_))));
        let good = card();
        let input = PriceInput { rate: &good, surge: Multiplier::from_bp(0), ..input };
        assert_eq!(price(&input), Err(PricingError::InvalidMultiplier));
        let huge = RateCard { per_hour_minor: i64::MAX, per_day_minor: i64::MAX, ceiling_minor: i64::MAX, ..card() };
        let long = TimeWindow::new(w.start(), w.start() + Duration::days(30)).unwrap();
        let input = PriceInput { rate: &huge, window: &long, surge: Multiplier::from_bp(100_000), risk: Multiplier::from_bp(100_000), ..input };
        assert_eq!(price(&input), Err(PricingError::Overflow));
    }

    #[test]
    fn extension_is_the_delta_of_full_window_prices() {
        let table = HourOfWeekTable::neutral();
        let rate = card();
        let old_w = window(5); // 50.00
        let new_w = window(8); // 8 h capped at one day = 60.00
        let mk = |w| PriceInput { rate: &rate, window: w, tz: chrono_tz::Europe::Berlin, time_table: &table, surge: Multiplier::ONE, risk: Multiplier::ONE, discounts: &[] };
        assert_eq!(extension_price(&mk(&old_w), &mk(&new_w)).unwrap(), Money::new(1_000, Currency::EUR));
        // Never negative.
        assert_eq!(extension_price(&mk(&new_w), &mk(&old_w)).unwrap(), Money::new(0, Currency::EUR));
        let sek = RateCard { currency: Currency::SEK, ..card() };
        let other = PriceInput { rate: &sek, ..mk(&new_w) };
        assert_eq!(extension_price(&mk(&old_w), &other), Err(PricingError::CurrencyMismatch));
    }
}
