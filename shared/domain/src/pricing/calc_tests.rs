//! Worked examples of the calculator; each expected amount is derived in a comment.

use super::*;
use crate::pricing::{DiscountKind, TimeMultiplierRule};
use chrono::{TimeZone, Weekday};
use uuid::Uuid;

fn card() -> RateCard {
    RateCard {
        currency: Currency::EUR,
        per_hour_minor: 1_000,
        per_day_minor: 6_000,
        floor_minor: 0,
        ceiling_minor: 1_000_000,
    }
}

fn window(hours: i64) -> TimeWindow {
    // Wednesday 2027-06-02 10:00 UTC.
    let start = Utc.with_ymd_and_hms(2027, 6, 2, 10, 0, 0).unwrap();
    TimeWindow::new(start, start + Duration::hours(hours)).unwrap()
}

fn discount(kind: DiscountKind, bp: u32) -> DiscountRule {
    DiscountRule {
        id: Uuid::nil(),
        kind,
        code: Some("X".into()),
        percent_bp: bp,
        min_duration_minutes: None,
        membership_tier: None,
        valid_from: None,
        valid_until: None,
    }
}

fn run(
    rate: &RateCard,
    w: &TimeWindow,
    surge: u32,
    risk: u32,
    discounts: &[&DiscountRule],
) -> PriceBreakdown {
    let table = HourOfWeekTable::neutral();
    price(&PriceInput {
        rate,
        window: w,
        tz: chrono_tz::Europe::Berlin,
        time_table: &table,
        surge: Multiplier::from_bp(surge),
        risk: Multiplier::from_bp(risk),
        discounts,
    })
    .unwrap()
}

fn sum(b: &PriceBreakdown) -> i64 {
    b.lines.iter().map(|l| l.amount_minor).sum()
}

#[test]
fn base_takes_the_cheaper_of_hours_and_a_day_for_the_remainder() {
    // 3 h = 3 × 10.00
    assert_eq!(
        run(&card(), &window(3), 10_000, 10_000, &[]).total.minor,
        3_000
    );
    // 7 h = 70.00 > day 60.00 -> 60.00
    assert_eq!(
        run(&card(), &window(7), 10_000, 10_000, &[]).total.minor,
        6_000
    );
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
    assert_eq!(
        amounts,
        [
            (LineKind::Base, 3000),
            (LineKind::Surge, 750),
            (LineKind::Risk, 375),
            (LineKind::Discount, -619),
            (LineKind::Discount, -412)
        ]
    );
    assert_eq!(br.total, Money::new(3_094, Currency::EUR));
    assert_eq!(sum(&br), 3_094);
    assert_eq!(br.discount_bp, 2_500);
    assert_eq!(br.time_multiplier, Multiplier::ONE);
}

#[test]
fn rounding_happens_on_the_exact_cumulative_amount_half_even() {
    // base 1 h at 0.05 = 5; ×1.5 = 7.5 -> 8 (even); ×1.1 on exact 7.5 = 8.25 -> 8 (not 8.8 from rounded 8)
    let rate = RateCard {
        per_hour_minor: 5,
        per_day_minor: 100,
        ..card()
    };
    let br = run(&rate, &window(1), 15_000, 11_000, &[]);
    assert_eq!(br.total.minor, 8);
    assert_eq!(
        br.lines.iter().map(|l| l.amount_minor).collect::<Vec<_>>(),
        [5, 3]
    );
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
    assert!(
        br.lines.last().unwrap().label.contains("(capped)"),
        "{:?}",
        br.lines
    );
    assert_eq!(sum(&br), 1_500);
}

#[test]
fn floor_and_ceiling_clamp_with_their_own_lines() {
    let rate = RateCard {
        floor_minor: 5_000,
        ceiling_minor: 5_500,
        ..card()
    };
    let low = run(&rate, &window(3), 10_000, 10_000, &[]);
    assert_eq!(low.total.minor, 5_000);
    assert_eq!(low.lines.last().unwrap().kind, LineKind::Floor);
    let high = run(&rate, &window(3), 20_000, 10_000, &[]);
    assert_eq!(high.total.minor, 5_500);
    assert_eq!(
        high.lines.last().unwrap(),
        &PriceLine {
            kind: LineKind::Ceiling,
            label: "Maximum price".into(),
            amount_minor: -500
        }
    );
    assert_eq!(sum(&high), 5_500);
}

#[test]
fn time_of_day_multiplier_is_minute_weighted() {
    // Wednesday 10:00–13:00 UTC = 12:00–15:00 Berlin (CEST). Rule Wed 12–13 local ×2.0.
    let rule = TimeMultiplierRule {
        days: TimeMultiplierRule::day_bit(Weekday::Wed),
        start_hour: 12,
        end_hour: 13,
        multiplier: Multiplier::from_bp(20_000),
    };
    let table = HourOfWeekTable::from_rules(&[rule]).unwrap();
    let w = window(3);
    let br = price(&PriceInput {
        rate: &card(),
        window: &w,
        tz: chrono_tz::Europe::Berlin,
        time_table: &table,
        surge: Multiplier::ONE,
        risk: Multiplier::ONE,
        discounts: &[],
    })
    .unwrap();
    // (60×2 + 120×1)/180 = 1.3333 -> 13333 bp; 3000 × 4/3 = 4000
    assert_eq!(br.time_multiplier, Multiplier::from_bp(13_333));
    assert_eq!(br.total.minor, 4_000);
    assert_eq!(
        br.lines[1],
        PriceLine {
            kind: LineKind::TimeOfDay,
            label: "Time of day ×1.3333".into(),
            amount_minor: 1_000
        }
    );
}

#[test]
fn invalid_inputs_are_rejected() {
    let table = HourOfWeekTable::neutral();
    let w = window(2);
    let bad = RateCard {
        per_hour_minor: 0,
        ..card()
    };
    let input = PriceInput {
        rate: &bad,
        window: &w,
        tz: chrono_tz::UTC,
        time_table: &table,
        surge: Multiplier::ONE,
        risk: Multiplier::ONE,
        discounts: &[],
    };
    assert!(matches!(
        price(&input),
        Err(PricingError::InvalidRateCard(_))
    ));
    let good = card();
    let input = PriceInput {
        rate: &good,
        surge: Multiplier::from_bp(0),
        ..input
    };
    assert_eq!(price(&input), Err(PricingError::InvalidMultiplier));
    let huge = RateCard {
        per_hour_minor: i64::MAX,
        per_day_minor: i64::MAX,
        ceiling_minor: i64::MAX,
        ..card()
    };
    let long = TimeWindow::new(w.start(), w.start() + Duration::days(30)).unwrap();
    let input = PriceInput {
        rate: &huge,
        window: &long,
        surge: Multiplier::from_bp(100_000),
        risk: Multiplier::from_bp(100_000),
        ..input
    };
    assert_eq!(price(&input), Err(PricingError::Overflow));
}

#[test]
fn extension_is_the_delta_of_full_window_prices() {
    let table = HourOfWeekTable::neutral();
    let rate = card();
    let old_w = window(5); // 50.00
    let new_w = window(8); // 8 h capped at one day = 60.00
    let mk = |w| PriceInput {
        rate: &rate,
        window: w,
        tz: chrono_tz::Europe::Berlin,
        time_table: &table,
        surge: Multiplier::ONE,
        risk: Multiplier::ONE,
        discounts: &[],
    };
    assert_eq!(
        extension_price(&mk(&old_w), &mk(&new_w)).unwrap(),
        Money::new(1_000, Currency::EUR)
    );
    // Never negative.
    assert_eq!(
        extension_price(&mk(&new_w), &mk(&old_w)).unwrap(),
        Money::new(0, Currency::EUR)
    );
    let sek = RateCard {
        currency: Currency::SEK,
        ..card()
    };
    let other = PriceInput {
        rate: &sek,
        ..mk(&new_w)
    };
    assert_eq!(
        extension_price(&mk(&old_w), &other),
        Err(PricingError::CurrencyMismatch)
    );
}
