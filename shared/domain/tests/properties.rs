//! Property tests for the rules that combine: pricing, windows, quote tokens, cancellation.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a panic is the failure report"
)]

use chrono::{DateTime, Duration, TimeZone, Utc};
use chrono_tz::Tz;
use domain::cancellation::CancellationPolicy;
use domain::ids::VehicleId;
use domain::money::{Currency, Money};
use domain::multiplier::Multiplier;
use domain::pricing::{
    price, DiscountKind, DiscountRule, HourOfWeekTable, PriceInput, RateCard, TimeMultiplierRule,
    MAX_TOTAL_DISCOUNT_BP,
};
use domain::quote_token::{QuoteClaims, QuoteSigner};
use domain::region::Region;
use domain::state::BookingStatus;
use domain::window::TimeWindow;
use proptest::prelude::*;
use uuid::Uuid;

fn epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap()
}

fn arb_window(max_minutes: i64) -> impl Strategy<Value = TimeWindow> {
    (0..(2 * 365 * 1440i64), 1..=max_minutes).prop_map(|(offset, len)| {
        let start = epoch() + Duration::minutes(offset);
        TimeWindow::new(start, start + Duration::minutes(len)).unwrap()
    })
}

fn arb_rate() -> impl Strategy<Value = RateCard> {
    (
        1..100_000i64,
        1..1_000_000i64,
        0..200_000i64,
        0..10_000_000i64,
        prop::bool::ANY,
    )
        .prop_map(|(hour, day, floor, span, eur)| RateCard {
            currency: if eur { Currency::EUR } else { Currency::SEK },
            per_hour_minor: hour,
            per_day_minor: day,
            floor_minor: floor,
            ceiling_minor: floor + span,
        })
}

fn arb_table() -> impl Strategy<Value = HourOfWeekTable> {
    prop::collection::vec(prop::option::of((0..24u8, 1..=24u8, 1..=100_000u32)), 7).prop_map(
        |days| {
            let rules: Vec<TimeMultiplierRule> = days
                .into_iter()
                .enumerate()
                .filter_map(|(d, r)| {
                    let (start, len, bp) = r?;
                    Some(TimeMultiplierRule {
                        days: 1 << d,
                        start_hour: start,
                        end_hour: (start + len).min(24),
                        multiplier: Multiplier::from_bp(bp),
                    })
                })
                .collect();
            HourOfWeekTable::from_rules(&rules).unwrap()
        },
    )
}

fn arb_discounts() -> impl Strategy<Value = Vec<DiscountRule>> {
    prop::collection::vec((0..3u8, 0..=10_000u32, any::<u128>()), 0..4).prop_map(|v| {
        v.into_iter()
            .map(|(k, bp, id)| DiscountRule {
                id: Uuid::from_u128(id),
                kind: [
                    DiscountKind::Promo,
                    DiscountKind::LongDuration,
                    DiscountKind::Membership,
                ][usize::from(k)],
                code: Some("CODE".into()),
                percent_bp: bp,
                min_duration_minutes: None,
                membership_tier: None,
                valid_from: None,
                valid_until: None,
            })
            .collect()
    })
}

fn arb_tz() -> impl Strategy<Value = Tz> {
    prop::sample::select(vec![
        chrono_tz::Europe::Berlin,
        chrono_tz::Europe::Stockholm,
        chrono_tz::UTC,
        chrono_tz::Asia::Kolkata,
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn breakdown_lines_sum_to_the_total_and_the_total_respects_floor_and_ceiling(
        rate in arb_rate(),
        window in arb_window(30 * 1440),
        tz in arb_tz(),
        table in arb_table(),
        surge in 1..=100_000u32,
        risk in 1..=100_000u32,
        discounts in arb_discounts(),
    ) {
        let refs: Vec<&DiscountRule> = discounts.iter().collect();
        let input = PriceInput {
            rate: &rate, window: &window, tz, time_table: &table,
            surge: Multiplier::from_bp(surge), risk: Multiplier::from_bp(risk), discounts: &refs,
        };
        let b = price(&input).unwrap();
        let sum: i64 = b.lines.iter().map(|l| l.amount_minor).sum();
        prop_assert_eq!(sum, b.total.minor);
        prop_assert!(b.total.minor >= rate.floor_minor && b.total.minor <= rate.ceiling_minor);
        prop_assert_eq!(b.total.currency, rate.currency);
        prop_assert!(b.discount_bp <= MAX_TOTAL_DISCOUNT_BP);
        prop_assert!(b.lines.iter().skip(1).all(|l| l.amount_minor != 0));
        // Deterministic: same input, same output.
        prop_assert_eq!(price(&input).unwrap(), b);
    }

    #[test]
    fn overlap_is_symmetric_and_half_open(a in arb_window(3 * 1440), b in arb_window(3 * 1440)) {
        prop_assert_eq!(a.overlaps(&b), b.overlaps(&a));
        let shared = a.start().max(b.start()) < a.end().min(b.end());
        prop_assert_eq!(a.overlaps(&b), shared);
        prop_assert_eq!(a.overlaps(&b), a.contains(b.start()) || b.contains(a.start()));
        let touching = TimeWindow::new(a.end(), a.end() + Duration::minutes(1)).unwrap();
        prop_assert!(!a.overlaps(&touching) && !touching.overlaps(&a));
        prop_assert!(a.overlaps(&a));
    }

    #[test]
    fn cancellation_fee_plus_refund_is_the_price(
        minor in -1_000_000_000_000i64..1_000_000_000_000i64,
        lead_minutes in -10_000i64..10_000,
        late in 0..=20_000u32,
        very_late in 0..=20_000u32,
        status in prop::sample::select(BookingStatus::ALL.to_vec()),
    ) {
        let policy = CancellationPolicy { late_fee_bp: late, very_late_fee_bp: very_late, ..CancellationPolicy::default() };
        let start = epoch() + Duration::days(10);
        let now = start - Duration::minutes(lead_minutes);
        let price = Money::new(minor, Currency::SEK);
        let f = policy.fee(price, start, now, status);
        prop_assert_eq!(f.fee.minor + f.refund.minor, minor);
        prop_assert_eq!(f.fee.currency, Currency::SEK);
        prop_assert!(f.fee.minor.unsigned_abs() <= minor.unsigned_abs());
    }
}

fn claims(user: &str, total: i64) -> QuoteClaims {
    let start = epoch() + Duration::days(3);
    QuoteClaims {
        quote_id: Uuid::from_u128(1),
        user_id: user.into(),
        vehicle_id: VehicleId::new(Region::Eun, Uuid::from_u128(2)),
        region: Region::Eun,
        window: TimeWindow::new(start, start + Duration::hours(2)).unwrap(),
        total: Money::new(total, Currency::SEK),
        breakdown: vec![],
        destination_bay_id: Some(Uuid::from_u128(3)),
        issued_at: epoch(),
        expires_at: epoch() + Duration::minutes(10),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn quote_token_rejects_any_tampered_byte(
        user in "[a-z0-9-]{1,24}",
        total in 0..10_000_000i64,
        pos in any::<prop::sample::Index>(),
        value in any::<u8>(),
    ) {
        let signer = QuoteSigner::new("k1", vec![("k1".into(), vec![7; 32])]).unwrap();
        let token = signer.sign(&claims(&user, total));
        prop_assert!(signer.verify(&token, epoch()).is_ok());
        let mut bytes = token.clone().into_bytes();
        let i = pos.index(bytes.len());
        prop_assume!(bytes[i] != value);
        bytes[i] = value;
        if let Ok(tampered) = String::from_utf8(bytes) {
            prop_assert!(signer.verify(&tampered, epoch()).is_err());
        }
    }

    #[test]
    fn quote_token_from_another_key_or_kid_is_rejected(user in "[a-z]{1,8}", secret in prop::collection::vec(any::<u8>(), 32..64)) {
        prop_assume!(secret != vec![7; 32]);
        let ours = QuoteSigner::new("k1", vec![("k1".into(), vec![7; 32])]).unwrap();
        let same_kid = QuoteSigner::new("k1", vec![("k1".into(), secret.clone())]).unwrap();
        let other_kid = QuoteSigner::new("k9", vec![("k9".into(), vec![7; 32])]).unwrap();
        prop_assert!(ours.verify(&same_kid.sign(&claims(&user, 1)), epoch()).is_err());
        prop_assert!(ours.verify(&other_kid.sign(&claims(&user, 1)), epoch()).is_err());
    }
}
