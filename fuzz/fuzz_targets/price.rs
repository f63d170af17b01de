//! The price calculator on arbitrary rate cards, windows, time zones, multipliers and
//! discounts: never panics (overflow is an error, not a crash), and every price it returns is
//! within the card's floor and ceiling, in the card's currency, and its breakdown lines sum
//! exactly to the total.
#![no_main]

use arbitrary::Arbitrary;
use chrono::{Duration, TimeZone, Utc};
use domain::money::Currency;
use domain::multiplier::Multiplier;
use domain::pricing::{
    price, DiscountKind, DiscountRule, HourOfWeekTable, PriceInput, RateCard, TimeMultiplierRule,
};
use domain::window::TimeWindow;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    sek: bool,
    per_hour: i64,
    per_day: i64,
    floor: i64,
    ceiling: i64,
    start_minute: u32,
    length_minutes: u32,
    tz: u8,
    rules: Vec<(u8, u8, u8, u32)>,
    surge_bp: u32,
    risk_bp: u32,
    discounts: Vec<(u8, u32)>,
}

fuzz_target!(|input: Input| {
    let rate = RateCard {
        currency: if input.sek { Currency::SEK } else { Currency::EUR },
        per_hour_minor: input.per_hour,
        per_day_minor: input.per_day,
        floor_minor: input.floor,
        ceiling_minor: input.ceiling,
    };
    let epoch = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("date");
    // Up to ~4 years of starts, up to 60 days long (past the 30-day policy on purpose).
    let start = epoch + Duration::minutes(i64::from(input.start_minute % (4 * 366 * 1440)));
    let len = 1 + i64::from(input.length_minutes % (60 * 1440));
    let Ok(window) = TimeWindow::new(start, start + Duration::minutes(len)) else {
        return;
    };
    let tz = match input.tz % 3 {
        0 => chrono_tz::Europe::Berlin,
        1 => chrono_tz::Europe::Stockholm,
        _ => chrono_tz::UTC,
    };
    let rules: Vec<TimeMultiplierRule> = input
        .rules
        .iter()
        .take(8)
        .filter_map(|&(days, start_hour, end_hour, bp)| {
            Some(TimeMultiplierRule {
                days,
                start_hour,
                end_hour,
                multiplier: Multiplier::try_from_bp(bp).ok()?,
            })
        })
        .collect();
    let Ok(table) = HourOfWeekTable::from_rules(&rules) else {
        return;
    };
    let (Ok(surge), Ok(risk)) = (
        Multiplier::try_from_bp(input.surge_bp),
        Multiplier::try_from_bp(input.risk_bp),
    ) else {
        return;
    };
    let discounts: Vec<DiscountRule> = input
        .discounts
        .iter()
        .take(6)
        .enumerate()
        .map(|(i, &(kind, percent_bp))| DiscountRule {
            id: uuid::Uuid::from_u128(i as u128 + 1),
            kind: match kind % 3 {
                0 => DiscountKind::Promo,
                1 => DiscountKind::LongDuration,
                _ => DiscountKind::Membership,
            },
            code: None,
            percent_bp,
            min_duration_minutes: None,
            membership_tier: None,
            valid_from: None,
            valid_until: None,
        })
        .collect();
    let refs: Vec<&DiscountRule> = discounts.iter().collect();
    let input = PriceInput {
        rate: &rate,
        window: &window,
        tz,
        time_table: &table,
        surge,
        risk,
        discounts: &refs,
    };
    if let Ok(b) = price(&input) {
        assert_eq!(b.total.currency, rate.currency);
        assert!(
            rate.floor_minor <= b.total.minor && b.total.minor <= rate.ceiling_minor,
            "total {} outside [{}, {}]",
            b.total.minor,
            rate.floor_minor,
            rate.ceiling_minor
        );
        let sum: i128 = b.lines.iter().map(|l| i128::from(l.amount_minor)).sum();
        assert_eq!(sum, i128::from(b.total.minor), "breakdown does not sum to the total");
    }
});
