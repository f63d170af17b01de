//! Property tests of the booking aggregate: the rules that must hold for every booking, action
//! and instant, not just the examples of the unit tests.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a panic is the failure report"
)]

use chrono::{DateTime, Duration, TimeZone, Utc};
use chrono_tz::Tz;
use domain::booking::{Action, Booking, BookingError, ExtensionPricing, Rules};
use domain::cancellation::CancellationPolicy;
use domain::ids::{BookingId, VehicleId};
use domain::money::{Currency, Money};
use domain::multiplier::Multiplier;
use domain::pricing::{DiscountKind, DiscountRule, HourOfWeekTable, RateCard, TimeMultiplierRule};
use domain::quote_token::QuoteClaims;
use domain::region::Region;
use domain::state::{BookingEvent, BookingStatus};
use domain::window::{BookingPolicy, TimeWindow};
use proptest::prelude::*;
use uuid::Uuid;

fn epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2027, 4, 1, 6, 0, 0).unwrap()
}

fn at(minute: i64) -> DateTime<Utc> {
    epoch() + Duration::minutes(minute)
}

fn rules() -> Rules {
    Rules::new(
        BookingPolicy::default(),
        CancellationPolicy::default(),
        Duration::minutes(10),
    )
}

/// The statuses a stored booking can have: all but the two before a hold, which are never
/// stored.
fn stored() -> Vec<BookingStatus> {
    BookingStatus::ALL
        .into_iter()
        .filter(|s| !matches!(s, BookingStatus::Searching | BookingStatus::PriceQuoted))
        .collect()
}

fn booking(
    status: BookingStatus,
    start: i64,
    len: i64,
    price: i64,
    hold_left: Option<i64>,
) -> Booking {
    Booking {
        id: BookingId::new(Region::Euw, Uuid::from_u128(1)),
        vehicle_id: VehicleId::new(Region::Euw, Uuid::from_u128(2)),
        user_id: "u".into(),
        bay_id: Uuid::from_u128(3),
        destination_bay_id: None,
        window: TimeWindow::new(at(start), at(start + len)).unwrap(),
        status,
        price: Money::new(price, Currency::EUR),
        breakdown: Vec::new(),
        extensions: Vec::new(),
        reschedules: Vec::new(),
        quote_id: Uuid::from_u128(4),
        hold_expires_at: (status == BookingStatus::Reserving).then(|| at(hold_left.unwrap_or(10))),
        cancellation_fee: None,
        created_at: epoch(),
        updated_at: epoch(),
    }
}

fn arb_booking() -> impl Strategy<Value = Booking> {
    (
        proptest::sample::select(stored()),
        -600..3_000i64,
        1..5_000i64,
        0..1_000_000i64,
        -60..60i64,
    )
        .prop_map(|(status, start, len, price, hold)| {
            booking(status, start, len, price, Some(hold))
        })
}

fn arb_rate(currency: Currency) -> impl Strategy<Value = RateCard> {
    (1..50_000i64, 1..500_000i64, 0..1_000i64).prop_map(move |(hour, day, floor)| RateCard {
        currency,
        per_hour_minor: hour,
        per_day_minor: day,
        floor_minor: floor,
        ceiling_minor: floor + 100_000_000,
    })
}

fn arb_table() -> impl Strategy<Value = HourOfWeekTable> {
    proptest::option::of((1u8..128, 0u8..23, 1u8..=24, 5_000u32..30_000)).prop_map(|rule| {
        let rules: Vec<TimeMultiplierRule> = rule
            .filter(|(_, start, end, _)| start < end)
            .map(|(days, start_hour, end_hour, bp)| TimeMultiplierRule {
                days,
                start_hour,
                end_hour,
                multiplier: Multiplier::try_from_bp(bp).unwrap(),
            })
            .into_iter()
            .collect();
        HourOfWeekTable::from_rules(&rules).unwrap()
    })
}

fn arb_discounts() -> impl Strategy<Value = Vec<DiscountRule>> {
    proptest::collection::vec((60..5_000i64, 1..5_000u32), 0..3).prop_map(|rules| {
        rules
            .into_iter()
            .enumerate()
            .map(|(i, (min, bp))| DiscountRule {
                id: Uuid::from_u128(i as u128 + 10),
                kind: DiscountKind::LongDuration,
                code: None,
                percent_bp: bp,
                min_duration_minutes: Some(min),
                membership_tier: None,
                valid_from: None,
                valid_until: None,
            })
            .collect()
    })
}

/// The lifecycle actions and their state-machine events (extension is not a lifecycle step).
const STEPS: [(BookingEvent, Action<'static>); 5] = [
    (BookingEvent::Confirm, Action::Confirm),
    (BookingEvent::Cancel, Action::Cancel),
    (BookingEvent::Start, Action::Start),
    (BookingEvent::Complete, Action::Complete),
    (BookingEvent::Fail, Action::Expire),
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// The state machine is the only source of legal steps: an action the table refuses is an
    /// `InvalidTransition`, and an accepted one lands exactly where the table says.
    #[test]
    fn every_lifecycle_action_lands_where_the_state_machine_says_or_is_refused_by_it(
        b in arb_booking(),
        step in 0..STEPS.len(),
        now in -600..6_000i64,
    ) {
        let (event, action) = STEPS[step];
        let result = b.act(action, &rules(), at(now));
        match b.status.apply(event) {
            Err(refused) => prop_assert_eq!(result, Err(BookingError::InvalidTransition(refused))),
            Ok(next) => {
                if let Ok(t) = result {
                    prop_assert_eq!(t.from, b.status);
                    prop_assert_eq!(t.booking.status, next);
                    prop_assert_eq!(t.booking.hold_expires_at, None);
                    prop_assert!(!t.events.is_empty());
                    prop_assert_eq!(t.record.event, event.as_str());
                }
            }
        }
    }

    /// An action changes the state, the hold, the fee, the window and the price, and never who
    /// or what was booked.
    #[test]
    fn an_action_never_changes_the_identity_of_a_booking(
        b in arb_booking(),
        step in 0..STEPS.len(),
        now in -600..6_000i64,
    ) {
        if let Ok(t) = b.act(STEPS[step].1, &rules(), at(now)) {
            let after = t.booking;
            prop_assert_eq!(
                (after.id, after.vehicle_id, &after.user_id, after.bay_id, after.quote_id, after.created_at),
                (b.id, b.vehicle_id, &b.user_id, b.bay_id, b.quote_id, b.created_at)
            );
            prop_assert_eq!(after.window, b.window);
            prop_assert_eq!(after.price, b.price);
            prop_assert_eq!(after.updated_at, at(now));
            prop_assert_eq!(t.at, at(now));
        }
    }

    /// A hold can be confirmed exactly while it has not expired.
    #[test]
    fn a_hold_can_be_confirmed_exactly_until_it_expires(hold in -60..60i64, now in -60..60i64) {
        let b = booking(BookingStatus::Reserving, 600, 60, 100, Some(hold));
        let result = b.act(Action::Confirm, &rules(), at(now));
        if now < hold {
            prop_assert!(result.is_ok());
        } else {
            prop_assert_eq!(result, Err(BookingError::HoldExpired(b.id)));
        }
    }

    /// A confirmed booking starts exactly inside `[start − 15 min, end)`.
    #[test]
    fn a_booking_starts_exactly_inside_its_start_window(len in 1..600i64, now in -100..700i64) {
        let b = booking(BookingStatus::Confirmed, 0, len, 100, None);
        let result = b.act(Action::Start, &rules(), at(now));
        prop_assert_eq!(result.is_ok(), (-15..len).contains(&now), "{:?}", result);
    }

    /// Whatever the tier, the fee and the refund split the price exactly and the fee is stored.
    #[test]
    fn a_cancellation_splits_the_price_into_fee_and_refund(b in arb_booking(), now in -600..6_000i64) {
        if let Ok(t) = b.act(Action::Cancel, &rules(), at(now)) {
            let fee = t.cancellation.unwrap();
            prop_assert_eq!(fee.fee.minor + fee.refund.minor, b.price.minor);
            prop_assert!(fee.fee.minor >= 0 && fee.refund.minor >= 0);
            prop_assert_eq!(t.booking.cancellation_fee, Some(fee.fee));
            prop_assert_eq!(t.booking.status, BookingStatus::Cancelled);
        }
    }

    /// An extension never costs less than nothing, the new total is the old plus exactly the
    /// extension's amount, and the extension records the old and the new end.
    #[test]
    fn an_extension_adds_exactly_its_non_negative_amount(
        len in 30..3_000i64,
        by in 1..3_000i64,
        price in 0..1_000_000i64,
        rate in arb_rate(Currency::EUR),
        table in arb_table(),
        discounts in arb_discounts(),
    ) {
        let b = booking(BookingStatus::Confirmed, 60, len, price, None);
        let pricing = ExtensionPricing { rate: &rate, time_table: &table, tz: Tz::Europe__Berlin, discounts: &discounts };
        let new_end = b.window.end() + Duration::minutes(by);
        let t = b.act(Action::Extend { new_end, pricing }, &rules(), epoch()).unwrap();
        let extension = t.extension.unwrap();
        prop_assert!(extension.amount_minor >= 0);
        prop_assert_eq!(t.booking.price.minor, price + extension.amount_minor);
        prop_assert_eq!((extension.from, extension.to), (b.window.end(), new_end));
        prop_assert_eq!(t.booking.extensions.last(), Some(&extension));
        prop_assert_eq!(t.booking.window, TimeWindow::new(b.window.start(), new_end).unwrap());
    }

    /// Without time-of-day effects or discounts a longer booking never costs less, so extending
    /// in two steps costs exactly what extending in one step does (day caps included).
    #[test]
    fn extending_in_two_steps_costs_the_same_as_extending_once(
        len in 30..3_000i64,
        first in 1..3_000i64,
        second in 1..3_000i64,
        rate in arb_rate(Currency::SEK),
    ) {
        let mut b = booking(BookingStatus::InProgress, 0, len, 0, None);
        b.price = Money::new(0, Currency::SEK);
        let table = HourOfWeekTable::neutral();
        let pricing = ExtensionPricing { rate: &rate, time_table: &table, tz: Tz::Europe__Stockholm, discounts: &[] };
        let end = b.window.end();
        let extend = |b: &Booking, to: DateTime<Utc>| {
            b.act(Action::Extend { new_end: to, pricing }, &rules(), epoch()).unwrap().booking
        };
        let once = extend(&b, end + Duration::minutes(first + second));
        let twice = extend(&extend(&b, end + Duration::minutes(first)), end + Duration::minutes(first + second));
        prop_assert_eq!(once.price, twice.price);
        prop_assert_eq!(twice.extensions.len(), 2);
    }

    /// An extension is accepted only when it is priced in the booking's currency.
    #[test]
    fn an_extension_is_refused_unless_priced_in_the_bookings_currency(
        currency in proptest::sample::select(vec![Currency::EUR, Currency::SEK]),
        rate in arb_rate(Currency::SEK),
    ) {
        let mut b = booking(BookingStatus::Confirmed, 60, 60, 1_000, None);
        b.price = Money::new(1_000, currency);
        let table = HourOfWeekTable::neutral();
        let pricing = ExtensionPricing { rate: &rate, time_table: &table, tz: Tz::Europe__Stockholm, discounts: &[] };
        let result = b.act(Action::Extend { new_end: b.window.end() + Duration::hours(1), pricing }, &rules(), epoch());
        if currency == Currency::SEK {
            prop_assert!(result.is_ok());
        } else {
            prop_assert_eq!(
                result,
                Err(BookingError::CurrencyMismatch { booking: Currency::EUR, extension: Currency::SEK })
            );
        }
    }

    /// A hold is made exactly when the booking policy accepts the quoted window now, and then
    /// carries the quote's price and expires one TTL later.
    #[test]
    fn a_hold_is_made_exactly_when_the_policy_accepts_the_window(
        lead in -30..(200 * 1_440i64),
        len in 1..(40 * 1_440i64),
        total in 0..1_000_000i64,
    ) {
        let window = TimeWindow::new(at(lead), at(lead + len)).unwrap();
        let quote = QuoteClaims {
            quote_id: Uuid::from_u128(5),
            user_id: "u".into(),
            vehicle_id: VehicleId::new(Region::Eun, Uuid::from_u128(6)),
            region: Region::Eun,
            window,
            total: Money::new(total, Currency::SEK),
            breakdown: Vec::new(),
            destination_bay_id: Some(Uuid::from_u128(7)),
            issued_at: epoch(),
            expires_at: epoch(),
        };
        let id = BookingId::new(Region::Eun, Uuid::from_u128(8));
        let result = Booking::hold(&quote, id, &rules(), epoch());
        prop_assert_eq!(result.is_ok(), BookingPolicy::default().check(&window, epoch()).is_ok());
        if let Ok(t) = result {
            prop_assert_eq!(t.booking.price, quote.total);
            prop_assert_eq!(t.booking.hold_expires_at, Some(epoch() + Duration::minutes(10)));
            prop_assert_eq!(t.booking.destination_bay_id, quote.destination_bay_id);
            prop_assert_eq!(t.booking.id, id);
        }
    }
}
