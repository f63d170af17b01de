//! Time-of-day multipliers are evaluated in the bay's local time, across DST changes.
//!
//! All cases use a rate card of 10.00 per started hour and 100.00 per day (so the base is
//! simply hours × 1000 minor units), no surge, risk or discounts, so the expected totals can be
//! checked by hand. Europe/Berlin and Europe/Stockholm share the EU transition rules:
//! 2027-03-28 02:00 CET → 03:00 CEST (spring forward) and 2027-10-31 03:00 CEST → 02:00 CET
//! (fall back), both Sundays.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a panic is the failure report"
)]

use chrono::{DateTime, Duration, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use domain::money::Currency;
use domain::multiplier::Multiplier;
use domain::pricing::{
    price, HourOfWeekTable, PriceBreakdown, PriceInput, RateCard, TimeMultiplierRule,
};
use domain::window::TimeWindow;

const ZONES: [(Tz, Currency); 2] = [
    (chrono_tz::Europe::Berlin, Currency::EUR),
    (chrono_tz::Europe::Stockholm, Currency::SEK),
];

fn card(currency: Currency) -> RateCard {
    RateCard {
        currency,
        per_hour_minor: 1_000,
        per_day_minor: 10_000,
        floor_minor: 0,
        ceiling_minor: 10_000_000,
    }
}

fn rule(day: Weekday, start: u8, end: u8, bp: u32) -> HourOfWeekTable {
    HourOfWeekTable::from_rules(&[TimeMultiplierRule {
        days: TimeMultiplierRule::day_bit(day),
        start_hour: start,
        end_hour: end,
        multiplier: Multiplier::from_bp(bp),
    }])
    .unwrap()
}

fn utc(y: i32, mo: u32, d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, 0, 0).unwrap()
}

fn local(tz: Tz, y: i32, mo: u32, d: u32, h: u32) -> DateTime<Utc> {
    tz.with_ymd_and_hms(y, mo, d, h, 0, 0)
        .single()
        .unwrap()
        .with_timezone(&Utc)
}

fn price_of(
    tz: Tz,
    currency: Currency,
    table: &HourOfWeekTable,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> PriceBreakdown {
    let window = TimeWindow::new(start, end).unwrap();
    let rate = card(currency);
    price(&PriceInput {
        rate: &rate,
        window: &window,
        tz,
        time_table: table,
        surge: Multiplier::ONE,
        risk: Multiplier::ONE,
        discounts: &[],
    })
    .unwrap()
}

#[test]
fn spring_forward_night_has_no_local_two_oclock_so_the_rule_never_applies() {
    // Rule: Sunday local 02:00–03:00 ×2.0. That hour does not exist on 2027-03-28.
    let table = rule(Weekday::Sun, 2, 3, 20_000);
    for (tz, cur) in ZONES {
        // Local 00:00 CET = 23:00 UTC (Sat); local 04:00 CEST = 02:00 UTC. Only 3 real hours:
        // local 00, 01, 03. Base 3 × 1000 = 3000, multiplier ×1.0 → 3000.
        let (start, end) = (local(tz, 2027, 3, 28, 0), local(tz, 2027, 3, 28, 4));
        assert_eq!((start, end), (utc(2027, 3, 27, 23), utc(2027, 3, 28, 2)));
        let b = price_of(tz, cur, &table, start, end);
        assert_eq!(b.time_multiplier, Multiplier::ONE, "{tz}");
        assert_eq!(b.total.minor, 3_000, "{tz}");
        assert_eq!(b.total.currency, cur);

        // Four UTC hours 23:00–03:00 = local 00, 01, 03, 04: still neutral, 4000.
        let b = price_of(tz, cur, &table, utc(2027, 3, 27, 23), utc(2027, 3, 28, 3));
        assert_eq!(b.time_multiplier, Multiplier::ONE, "{tz}");
        assert_eq!(b.total.minor, 4_000, "{tz}");
    }
}

#[test]
fn fall_back_night_counts_both_local_two_oclock_hours() {
    let table = rule(Weekday::Sun, 2, 3, 20_000);
    for (tz, cur) in ZONES {
        // Local 00:00 CEST = 22:00 UTC (Sat); local 04:00 CET = 03:00 UTC: 5 real hours,
        // local 00, 01, 02 (CEST, 00:00 UTC), 02 (CET, 01:00 UTC), 03.
        // Multiplier (3 × 1.0 + 2 × 2.0) / 5 = 1.4; base 5 × 1000 = 5000; × 1.4 = 7000.
        let (start, end) = (local(tz, 2027, 10, 31, 0), local(tz, 2027, 10, 31, 4));
        assert_eq!((start, end), (utc(2027, 10, 30, 22), utc(2027, 10, 31, 3)));
        let b = price_of(tz, cur, &table, start, end);
        assert_eq!(b.time_multiplier, Multiplier::from_bp(14_000), "{tz}");
        assert_eq!(b.total.minor, 7_000, "{tz}");

        // Just the two UTC hours 00:00–02:00 are both local 02:xx: ×2.0 on 2000 = 4000.
        let b = price_of(tz, cur, &table, utc(2027, 10, 31, 0), utc(2027, 10, 31, 2));
        assert_eq!(b.time_multiplier, Multiplier::from_bp(20_000), "{tz}");
        assert_eq!(b.total.minor, 4_000, "{tz}");
    }
}

#[test]
fn friday_evening_rule_shifts_by_one_utc_hour_between_summer_and_winter() {
    // Rule: Friday local 16:00–19:00 ×1.5. In summer (UTC+2) that is 14–17 UTC, in winter
    // (UTC+1) 15–18 UTC.
    let table = rule(Weekday::Fri, 16, 19, 15_000);
    for (tz, cur) in ZONES {
        // 2027-07-16 and 2027-01-15 are Fridays.
        // 14:00–15:00 UTC: summer local 16 → ×1.5 → 1500; winter local 15 → ×1.0 → 1000.
        assert_eq!(
            price_of(tz, cur, &table, utc(2027, 7, 16, 14), utc(2027, 7, 16, 15))
                .total
                .minor,
            1_500
        );
        assert_eq!(
            price_of(tz, cur, &table, utc(2027, 1, 15, 14), utc(2027, 1, 15, 15))
                .total
                .minor,
            1_000
        );
        // 17:00–18:00 UTC: summer local 19 → 1000; winter local 18 → 1500.
        assert_eq!(
            price_of(tz, cur, &table, utc(2027, 7, 16, 17), utc(2027, 7, 16, 18))
                .total
                .minor,
            1_000
        );
        assert_eq!(
            price_of(tz, cur, &table, utc(2027, 1, 15, 17), utc(2027, 1, 15, 18))
                .total
                .minor,
            1_500
        );
        // 13:00–17:00 UTC (4 h, base 4000):
        //   summer local 15–19 → hours 16, 17, 18 in the rule: (1 + 3 × 1.5) / 4 = 1.375 → 5500;
        //   winter local 14–18 → hours 16, 17 in the rule:     (2 + 2 × 1.5) / 4 = 1.25  → 5000.
        let summer = price_of(tz, cur, &table, utc(2027, 7, 16, 13), utc(2027, 7, 16, 17));
        assert_eq!(
            (summer.time_multiplier.bp(), summer.total.minor),
            (13_750, 5_500),
            "{tz}"
        );
        let winter = price_of(tz, cur, &table, utc(2027, 1, 15, 13), utc(2027, 1, 15, 17));
        assert_eq!(
            (winter.time_multiplier.bp(), winter.total.minor),
            (12_500, 5_000),
            "{tz}"
        );
    }
}

#[test]
fn partial_hours_are_weighted_by_minutes() {
    // Friday 15:30–16:30 local summer (13:30–14:30 UTC): 30 min ×1.0 + 30 min ×1.5 = ×1.25.
    // One started hour (1000) × 1.25 = 1250.
    let table = rule(Weekday::Fri, 16, 19, 15_000);
    let tz = chrono_tz::Europe::Berlin;
    let start = utc(2027, 7, 16, 13) + Duration::minutes(30);
    let b = price_of(tz, Currency::EUR, &table, start, start + Duration::hours(1));
    assert_eq!((b.time_multiplier.bp(), b.total.minor), (12_500, 1_250));
    // A half-hour zone: Asia/Kolkata (UTC+5:30). 10:30–11:30 UTC = 16:00–17:00 local → ×1.5.
    let kolkata: Tz = chrono_tz::Asia::Kolkata;
    let start = utc(2027, 7, 16, 10) + Duration::minutes(30);
    let b = price_of(
        kolkata,
        Currency::EUR,
        &table,
        start,
        start + Duration::hours(1),
    );
    assert_eq!((b.time_multiplier.bp(), b.total.minor), (15_000, 1_500));
}
