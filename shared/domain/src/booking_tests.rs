//! Unit tests of the booking aggregate: one test per rule, each written so that breaking the
//! rule fails it.

use chrono::{DateTime, Duration, TimeZone, Utc};
use chrono_tz::Tz;
use serde_json::json;
use uuid::Uuid;

use super::*;
use crate::cancellation::FeeTier;
use crate::pricing::{price, DiscountKind, LineKind};

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2027, 6, 1, 9, 0, 0).unwrap()
}

fn minutes(n: i64) -> Duration {
    Duration::minutes(n)
}

fn window(start: DateTime<Utc>, len_minutes: i64) -> TimeWindow {
    TimeWindow::new(start, start + minutes(len_minutes)).unwrap()
}

fn rules() -> Rules {
    Rules::new(
        BookingPolicy::default(),
        CancellationPolicy::default(),
        minutes(10),
    )
}

fn booking_id() -> BookingId {
    BookingId::new(Region::Euw, Uuid::from_u128(0xb0))
}

fn quote(window: TimeWindow) -> QuoteClaims {
    QuoteClaims {
        quote_id: Uuid::from_u128(0x9),
        user_id: "user-1".into(),
        vehicle_id: VehicleId::new(Region::Euw, Uuid::from_u128(0x7e)),
        region: Region::Euw,
        window,
        total: Money::new(4_200, Currency::EUR),
        breakdown: vec![PriceLine {
            kind: LineKind::Base,
            label: "Base (3 h)".into(),
            amount_minor: 4_200,
        }],
        destination_bay_id: None,
        issued_at: now() - minutes(1),
        expires_at: now() + minutes(10),
    }
}

/// A hold made at `now()` for a window starting `lead` minutes later, `len` minutes long.
fn held(lead: i64, len: i64) -> Booking {
    Booking::hold(
        &quote(window(now() + minutes(lead), len)),
        booking_id(),
        &rules(),
        now(),
    )
    .unwrap()
    .booking
}

/// The same booking, confirmed.
fn confirmed(lead: i64, len: i64) -> Booking {
    held(lead, len)
        .act(Action::Confirm, &rules(), now())
        .unwrap()
        .booking
}

fn rate(currency: Currency) -> RateCard {
    RateCard {
        currency,
        per_hour_minor: 1_000,
        per_day_minor: 6_000,
        floor_minor: 0,
        ceiling_minor: 1_000_000_000,
    }
}

fn long_duration_discount(min_minutes: i64, bp: u32) -> DiscountRule {
    DiscountRule {
        id: Uuid::from_u128(0xd1),
        kind: DiscountKind::LongDuration,
        code: None,
        percent_bp: bp,
        min_duration_minutes: Some(min_minutes),
        membership_tier: None,
        valid_from: None,
        valid_until: None,
    }
}

fn extend_to(
    booking: &Booking,
    new_end: DateTime<Utc>,
    rate: &RateCard,
    discounts: &[DiscountRule],
    at: DateTime<Utc>,
) -> Result<Transition, BookingError> {
    let table = HourOfWeekTable::neutral();
    let pricing = ExtensionPricing {
        rate,
        time_table: &table,
        tz: Tz::Europe__Berlin,
        discounts,
    };
    booking.act(Action::Extend { new_end, pricing }, &rules(), at)
}

#[test]
fn a_hold_is_a_reserving_booking_at_the_quote_price_that_expires_after_the_ttl() {
    let q = quote(window(now() + minutes(60), 180));
    let t = Booking::hold(&q, booking_id(), &rules(), now()).unwrap();
    assert_eq!(t.from, BookingStatus::PriceQuoted);
    assert_eq!(t.booking.status, BookingStatus::Reserving);
    assert_eq!(t.booking.price, q.total);
    assert_eq!(t.booking.breakdown, q.breakdown);
    assert_eq!(t.booking.window, q.window);
    assert_eq!(t.booking.user_id, "user-1");
    assert_eq!(t.booking.vehicle_id, q.vehicle_id);
    assert_eq!(t.booking.quote_id, q.quote_id);
    assert_eq!(t.booking.hold_expires_at, Some(now() + minutes(10)));
    assert_eq!((t.booking.created_at, t.booking.updated_at), (now(), now()));
    assert_eq!(t.record.event, "hold");
    assert_eq!(t.record.reason, None);
    assert_eq!(t.record.details, json!({ "quote_id": q.quote_id }));
    assert_eq!(
        t.events,
        [EventKind::BookingCreated, EventKind::VehicleReserved]
    );
}

#[test]
fn a_hold_is_refused_naming_start_when_the_window_no_longer_meets_the_policy() {
    // Quoted in time, presented when the start is 4 minutes away (5 are required).
    let q = quote(window(now() + minutes(4), 60));
    let err = Booking::hold(&q, booking_id(), &rules(), now()).unwrap_err();
    assert_eq!(
        err,
        BookingError::Window {
            field: "start",
            error: WindowError::TooSoon {
                min_notice_minutes: 5
            }
        }
    );
    assert_eq!(err.to_string(), "start must be at least 5 minutes from now");
}

#[test]
fn confirming_before_the_hold_expires_makes_the_booking_firm() {
    let t = held(60, 60)
        .act(Action::Confirm, &rules(), now() + minutes(9))
        .unwrap();
    assert_eq!(t.from, BookingStatus::Reserving);
    assert_eq!(t.booking.status, BookingStatus::Confirmed);
    assert_eq!(t.booking.hold_expires_at, None);
    assert_eq!(t.booking.updated_at, now() + minutes(9));
    assert_eq!(t.record.event, "confirm");
    assert_eq!(t.record.details, json!({}));
    assert_eq!(t.events, [EventKind::BookingConfirmed]);
}

#[test]
fn confirming_at_or_after_the_hold_expiry_is_refused_as_hold_expired() {
    let hold = held(60, 60);
    for late in [10, 11, 500] {
        let err = hold
            .act(Action::Confirm, &rules(), now() + minutes(late))
            .unwrap_err();
        assert_eq!(err, BookingError::HoldExpired(booking_id()), "{late}");
    }
    assert_eq!(
        BookingError::HoldExpired(booking_id()).to_string(),
        format!(
            "the hold on booking {} expired; make a new booking",
            booking_id()
        )
    );
}

#[test]
fn an_illegal_step_is_refused_by_the_state_machine_before_any_other_rule() {
    let cancelled = held(60, 60)
        .act(Action::Cancel, &rules(), now())
        .unwrap()
        .booking;
    // Expired as well, but the lifecycle speaks first.
    let err = cancelled
        .act(Action::Confirm, &rules(), now() + minutes(30))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot confirm a booking that is CANCELLED"
    );
    let err = held(60, 60)
        .act(Action::Start, &rules(), now() + minutes(50))
        .unwrap_err();
    assert_eq!(err.to_string(), "cannot start a booking that is RESERVING");
    let err = held(60, 60)
        .act(Action::Complete, &rules(), now())
        .unwrap_err();
    assert!(matches!(err, BookingError::InvalidTransition(_)), "{err}");
}

#[test]
fn a_booking_can_be_started_from_fifteen_minutes_before_its_start_until_its_end() {
    let booking = confirmed(60, 60);
    let start = booking.window.start();
    for (at, ok) in [
        (start - minutes(16), false),
        (start - minutes(15), true),
        (start, true),
        (start + minutes(59), true),
        (start + minutes(60), false),
    ] {
        let result = booking.act(Action::Start, &rules(), at);
        assert_eq!(result.is_ok(), ok, "{at}: {result:?}");
        if let Err(err) = result {
            assert_eq!(
                err.to_string(),
                "a booking can be started from 15 minutes before its start until its end"
            );
        }
    }
    let t = booking.act(Action::Start, &rules(), start).unwrap();
    assert_eq!(t.booking.status, BookingStatus::InProgress);
    assert_eq!(t.events, [EventKind::BookingStarted]);
    assert_eq!(t.record.event, "start");
}

#[test]
fn cancelling_a_hold_is_free_and_releases_the_vehicle() {
    let t = held(60, 60).act(Action::Cancel, &rules(), now()).unwrap();
    let fee = t.cancellation.unwrap();
    assert_eq!(fee.tier, FeeTier::Free);
    assert_eq!((fee.fee.minor, fee.refund.minor), (0, 4_200));
    assert_eq!(t.booking.status, BookingStatus::Cancelled);
    assert_eq!(
        t.booking.cancellation_fee,
        Some(Money::new(0, Currency::EUR))
    );
    assert_eq!(t.booking.hold_expires_at, None);
    assert_eq!(
        t.events,
        [EventKind::BookingCancelled, EventKind::VehicleReleased]
    );
    assert_eq!(
        t.record.details,
        json!({ "fee_minor": 0, "refund_minor": 4_200 })
    );
}

#[test]
fn cancelling_a_confirmed_booking_late_costs_the_policy_fee_and_records_it() {
    // Starts in 3 hours: late tier, 25 % of 42.00.
    let t = confirmed(180, 60)
        .act(Action::Cancel, &rules(), now())
        .unwrap();
    let fee = t.cancellation.unwrap();
    assert_eq!(fee.tier, FeeTier::Late);
    assert_eq!((fee.fee.minor, fee.refund.minor), (1_050, 3_150));
    assert_eq!(
        t.booking.cancellation_fee,
        Some(Money::new(1_050, Currency::EUR))
    );
    assert_eq!(
        t.record.details,
        json!({ "fee_minor": 1_050, "refund_minor": 3_150 })
    );
    // An hour before the start: very late, 50 %.
    let fee = confirmed(180, 60)
        .act(Action::Cancel, &rules(), now() + minutes(120))
        .unwrap()
        .cancellation
        .unwrap();
    assert_eq!((fee.tier, fee.fee.minor), (FeeTier::VeryLate, 2_100));
}

#[test]
fn completing_a_trip_releases_the_vehicle() {
    let booking = confirmed(60, 60);
    let started = booking
        .act(Action::Start, &rules(), booking.window.start())
        .unwrap()
        .booking;
    let t = started
        .act(Action::Complete, &rules(), booking.window.end())
        .unwrap();
    assert_eq!(t.from, BookingStatus::InProgress);
    assert_eq!(t.booking.status, BookingStatus::Completed);
    assert_eq!(
        t.events,
        [EventKind::BookingCompleted, EventKind::VehicleReleased]
    );
}

#[test]
fn an_extension_costs_the_difference_of_both_windows_at_todays_prices() {
    let booking = confirmed(60, 180);
    let new_end = booking.window.end() + minutes(120);
    let card = rate(Currency::EUR);
    // The 5-hour window earns a 10 % long-duration discount the 3-hour one did not.
    let discounts = [long_duration_discount(300, 1_000)];
    let t = extend_to(&booking, new_end, &card, &discounts, now()).unwrap();
    // Old: 3 h × 10.00 = 30.00. New: 5 h × 10.00 = 50.00, −10 % = 45.00. Difference 15.00.
    let extension = t.extension.clone().unwrap();
    assert_eq!(extension.amount_minor, 1_500);
    assert_eq!(
        (extension.from, extension.to),
        (booking.window.end(), new_end)
    );
    assert_eq!(t.booking.price, Money::new(4_200 + 1_500, Currency::EUR));
    assert_eq!(t.booking.window.end(), new_end);
    assert_eq!(t.booking.window.start(), booking.window.start());
    assert_eq!(t.booking.extensions, vec![extension]);
    assert_eq!(t.booking.status, BookingStatus::Confirmed);
    assert_eq!(t.from, BookingStatus::Confirmed);
    assert_eq!(t.record.event, "extend");
    assert_eq!(t.record.reason, Some("extended"));
    assert_eq!(
        t.record.details,
        json!({ "from": booking.window.end(), "to": new_end, "amount_minor": 1_500 })
    );
    assert_eq!(t.events, [EventKind::BookingExtended]);

    // Exactly what the calculator says for the two windows.
    let table = HourOfWeekTable::neutral();
    let price_of = |w: &TimeWindow, d: &[&DiscountRule]| {
        price(&PriceInput {
            rate: &card,
            window: w,
            tz: Tz::Europe__Berlin,
            time_table: &table,
            surge: Multiplier::ONE,
            risk: Multiplier::ONE,
            discounts: d,
        })
        .unwrap()
        .total
        .minor
    };
    assert_eq!(
        price_of(&t.booking.window, &[&discounts[0]]) - price_of(&booking.window, &[]),
        1_500
    );
}

#[test]
fn an_extension_that_a_discount_makes_cheaper_costs_nothing() {
    let booking = confirmed(60, 240);
    let card = rate(Currency::EUR);
    // 4 h = 40.00; 5 h with 30 % off = 35.00: the longer window is cheaper, the extension free.
    let discounts = [long_duration_discount(300, 3_000)];
    let t = extend_to(
        &booking,
        booking.window.end() + minutes(60),
        &card,
        &discounts,
        now(),
    )
    .unwrap();
    assert_eq!(t.extension.unwrap().amount_minor, 0);
    assert_eq!(t.booking.price, booking.price);
}

#[test]
fn an_extension_priced_in_another_currency_than_the_booking_is_refused() {
    let booking = confirmed(60, 60);
    let err = extend_to(
        &booking,
        booking.window.end() + minutes(60),
        &rate(Currency::SEK),
        &[],
        now(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        BookingError::CurrencyMismatch {
            booking: Currency::EUR,
            extension: Currency::SEK
        }
    );
}

#[test]
fn only_a_confirmed_or_running_booking_that_has_not_ended_can_be_extended() {
    let card = rate(Currency::EUR);
    let hold = held(60, 60);
    let err = extend_to(&hold, hold.window.end() + minutes(60), &card, &[], now()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "only a CONFIRMED or IN_PROGRESS booking can be extended; this one is RESERVING"
    );
    let booking = confirmed(60, 60);
    let end = booking.window.end();
    let err = extend_to(&booking, end + minutes(60), &card, &[], end).unwrap_err();
    assert_eq!(err, BookingError::Ended);
    assert_eq!(err.to_string(), "the booking has already ended");
    assert!(extend_to(&booking, end + minutes(60), &card, &[], end - minutes(1)).is_ok());
}

#[test]
fn an_extension_must_move_the_end_later_and_stay_within_the_maximum_duration() {
    let card = rate(Currency::EUR);
    let booking = confirmed(60, 60);
    let end = booking.window.end();
    for bad in [end, end - minutes(15)] {
        let err = extend_to(&booking, bad, &card, &[], now()).unwrap_err();
        assert_eq!(
            err,
            BookingError::Window {
                field: "end",
                error: WindowError::NotLater
            }
        );
    }
    let err = extend_to(&booking, end + Duration::seconds(30), &card, &[], now()).unwrap_err();
    assert_eq!(
        err,
        BookingError::Window {
            field: "end",
            error: WindowError::NotWholeMinute
        }
    );
    let max = BookingPolicy::default().max_duration;
    let longest = booking.window.start() + max;
    assert!(extend_to(&booking, longest, &card, &[], now()).is_ok());
    let err = extend_to(&booking, longest + minutes(1), &card, &[], now()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("a booking may last at most {} minutes", max.num_minutes())
    );
}

#[test]
fn an_extension_with_a_broken_rate_card_is_a_pricing_error() {
    let booking = confirmed(60, 60);
    let mut card = rate(Currency::EUR);
    card.per_hour_minor = 0;
    let err = extend_to(
        &booking,
        booking.window.end() + minutes(60),
        &card,
        &[],
        now(),
    )
    .unwrap_err();
    assert!(matches!(err, BookingError::Pricing(_)), "{err:?}");
}

#[test]
fn an_expired_hold_fails_with_its_reason_and_releases_the_vehicle() {
    let hold = held(60, 60);
    let t = hold.expire(now() + minutes(10)).unwrap();
    assert_eq!(t.booking.status, BookingStatus::Failed);
    assert_eq!(t.booking.hold_expires_at, None);
    assert_eq!(t.record.event, "fail");
    assert_eq!(t.record.reason, Some("hold_expired"));
    assert_eq!(
        t.record.details,
        json!({ "hold_expires_at": now() + minutes(10) })
    );
    assert_eq!(
        t.events,
        [EventKind::BookingFailed, EventKind::VehicleReleased]
    );
    // Through `act` as well.
    assert_eq!(
        hold.act(Action::Expire, &rules(), now() + minutes(10))
            .unwrap(),
        t
    );
}

#[test]
fn a_hold_that_has_not_expired_or_a_firm_booking_cannot_be_expired() {
    let err = held(60, 60).expire(now() + minutes(9)).unwrap_err();
    assert_eq!(err, BookingError::HoldNotExpired(booking_id()));
    let err = confirmed(60, 60).expire(now() + minutes(30)).unwrap_err();
    assert_eq!(err.to_string(), "cannot fail a booking that is CONFIRMED");
}

fn move_to(
    booking: &Booking,
    to: TimeWindow,
    rate: &RateCard,
    at: DateTime<Utc>,
) -> Result<Transition, BookingError> {
    let table = HourOfWeekTable::neutral();
    let pricing = ExtensionPricing {
        rate,
        time_table: &table,
        tz: Tz::Europe__Berlin,
        discounts: &[],
    };
    booking.act(
        Action::Reschedule {
            window: to,
            pricing,
        },
        &rules(),
        at,
    )
}

#[test]
fn a_move_replaces_the_window_and_pays_todays_difference_between_the_two() {
    // Confirmed 3 days ahead for 3 h at 42.00; moved to a 5 h window a week later.
    let b = confirmed(3 * 24 * 60, 180);
    let to = window(now() + minutes(7 * 24 * 60), 300);
    let t = move_to(&b, to, &rate(Currency::EUR), now()).unwrap();
    // Today's rate card: 3 h = 30.00, 5 h = 50.00 → +20.00; no fee three days ahead.
    assert_eq!(t.booking.window, to);
    assert_eq!(t.booking.price, Money::new(4_200 + 2_000, Currency::EUR));
    assert_eq!(t.booking.status, BookingStatus::Confirmed);
    assert_eq!(t.from, BookingStatus::Confirmed);
    assert_eq!(t.events, [EventKind::BookingRescheduled]);
    let r = t.reschedule.clone().unwrap();
    assert_eq!((r.from, r.to), (b.window, to));
    assert_eq!((r.difference_minor, r.fee_minor), (2_000, 0));
    assert_eq!(t.booking.reschedules, vec![r]);
    assert_eq!(t.record.event, "reschedule");
    assert_eq!(t.record.details["difference_minor"], json!(2_000));
    assert_eq!(t.record.details["from"]["start"], json!(b.window.start()));

    // A shorter window refunds the difference: 3 h → 1 h is −20.00.
    let shorter = window(now() + minutes(3 * 24 * 60), 60);
    let t = move_to(&b, shorter, &rate(Currency::EUR), now()).unwrap();
    assert_eq!(t.booking.price.minor, 4_200 - 2_000);
    assert_eq!(t.reschedule.unwrap().difference_minor, -2_000);
}

#[test]
fn a_move_never_makes_the_price_negative() {
    // The quote was cheap (42.00 for 3 h) and today's rates are ten times higher: moving to a
    // one-hour window is −200.00 at today's rates, but the booking cannot pay out more than it cost.
    let b = confirmed(3 * 24 * 60, 180);
    let dear = RateCard {
        per_hour_minor: 10_000,
        per_day_minor: 60_000,
        ..rate(Currency::EUR)
    };
    let t = move_to(&b, window(now() + minutes(4 * 24 * 60), 60), &dear, now()).unwrap();
    assert_eq!(t.booking.price.minor, 0);
    assert_eq!(t.reschedule.unwrap().difference_minor, -20_000);
}

#[test]
fn a_late_move_pays_what_cancelling_would_cost() {
    // 10 h before the start: the late tier (25 % of 42.00 = 10.50) on top of the difference.
    let b = confirmed(10 * 60, 180);
    let to = window(now() + minutes(3 * 24 * 60), 180);
    let t = move_to(&b, to, &rate(Currency::EUR), now()).unwrap();
    let r = t.reschedule.unwrap();
    assert_eq!((r.difference_minor, r.fee_minor), (0, 1_050));
    assert_eq!(t.booking.price.minor, 4_200 + 1_050);
    // 1 h before: the very late tier, 50 %.
    let b = confirmed(60, 180);
    let r = move_to(&b, to, &rate(Currency::EUR), now())
        .unwrap()
        .reschedule
        .unwrap();
    assert_eq!(r.fee_minor, 2_100);
    // Exactly 24 h before: still free.
    let b = confirmed(24 * 60, 180);
    let r = move_to(&b, to, &rate(Currency::EUR), now())
        .unwrap()
        .reschedule
        .unwrap();
    assert_eq!(r.fee_minor, 0);
    // A hold moves free whatever its start, and keeps its expiry.
    let h = held(60, 180);
    let t = move_to(&h, to, &rate(Currency::EUR), now()).unwrap();
    assert_eq!(t.reschedule.unwrap().fee_minor, 0);
    assert_eq!(t.booking.status, BookingStatus::Reserving);
    assert_eq!(t.booking.hold_expires_at, h.hold_expires_at);
}

#[test]
fn only_live_holds_and_confirmed_bookings_move_to_another_window_the_policy_accepts() {
    let to = window(now() + minutes(3 * 24 * 60), 180);
    let card = rate(Currency::EUR);
    // An expired hold.
    let h = held(24 * 60, 180);
    let late = h.hold_expires_at.unwrap();
    assert_eq!(
        move_to(&h, to, &card, late).unwrap_err(),
        BookingError::HoldExpired(h.id)
    );
    // Started, cancelled, completed.
    let b = confirmed(10, 180);
    let started = b.act(Action::Start, &rules(), now()).unwrap().booking;
    assert_eq!(
        move_to(&started, to, &card, now()).unwrap_err(),
        BookingError::NotReschedulable(BookingStatus::InProgress)
    );
    let cancelled = b.act(Action::Cancel, &rules(), now()).unwrap().booking;
    assert_eq!(
        move_to(&cancelled, to, &card, now()).unwrap_err(),
        BookingError::NotReschedulable(BookingStatus::Cancelled)
    );
    // The same window.
    assert_eq!(
        move_to(&b, b.window, &card, now()).unwrap_err(),
        BookingError::SameWindow
    );
    // A window the policy refuses for a new booking: in the past, too long.
    let past = window(now() - minutes(60), 60);
    assert!(matches!(
        move_to(&b, past, &card, now()).unwrap_err(),
        BookingError::Window { field: "start", .. }
    ));
    let long = window(now() + minutes(24 * 60), 60 * 24 * 40);
    assert!(matches!(
        move_to(&b, long, &card, now()).unwrap_err(),
        BookingError::Window { field: "start", .. }
    ));
}

#[test]
fn a_withdrawn_booking_is_cancelled_with_everything_refunded_even_when_a_cancel_would_cost() {
    // An hour before the start a customer's cancel pays the very late tier; a withdrawal by
    // operations refunds the whole price and says why.
    let b = confirmed(60, 60);
    let t = b.act(Action::Withdraw, &rules(), now()).unwrap();
    let fee = t.cancellation.unwrap();
    assert_eq!(fee.tier, FeeTier::Free);
    assert_eq!((fee.fee.minor, fee.refund.minor), (0, 4_200));
    assert_eq!(t.booking.status, BookingStatus::Cancelled);
    assert_eq!(t.record.reason, Some(crate::booking::WITHDRAWN));
    assert_eq!(
        t.events,
        [EventKind::BookingCancelled, EventKind::VehicleReleased]
    );
    assert_eq!(
        t.record.details,
        json!({ "fee_minor": 0, "refund_minor": 4_200 })
    );
    let hold = held(60, 60).act(Action::Withdraw, &rules(), now()).unwrap();
    assert_eq!(hold.booking.status, BookingStatus::Cancelled);
}

#[test]
fn a_trip_under_way_cannot_be_withdrawn() {
    let b = confirmed(10, 60);
    let started = b.act(Action::Start, &rules(), now()).unwrap().booking;
    assert!(matches!(
        started.act(Action::Withdraw, &rules(), now()),
        Err(BookingError::InvalidTransition(_))
    ));
}
