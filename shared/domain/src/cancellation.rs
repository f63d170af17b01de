//! Cancellation fees.
//!
//! The fee depends only on how long before the start the booking is cancelled and on its
//! status, with `now` passed in. Tiers, with the default policy:
//!
//! * a `RESERVING` hold (not yet confirmed) — and anything before a hold — cancels **free**:
//!   the customer has not committed yet;
//! * 24 h or more before the start — **free**;
//! * between 2 h and 24 h before the start — **late**, 25 % of the price;
//! * under 2 h before the start, or after the start — **very late**, 50 %.
//!
//! The fee is rounded half-even (see [`crate::money`]) and the refund is the rest, so
//! `fee + refund == price` always holds and no minor unit is lost or invented.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::money::{round_div_half_even, Money};
use crate::state::BookingStatus;

/// When cancellation starts to cost, and how much.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancellationPolicy {
    /// Cancelling at least this long before the start is free.
    pub free_before: Duration,
    /// Fee in basis points of the price for a late cancellation.
    pub late_fee_bp: u32,
    /// Cancelling less than this long before the start (or after it) is very late.
    pub very_late_before: Duration,
    /// Fee in basis points of the price for a very late cancellation.
    pub very_late_fee_bp: u32,
}

impl Default for CancellationPolicy {
    /// Free until 24 h before, 25 % until 2 h before, 50 % after that.
    fn default() -> Self {
        CancellationPolicy {
            free_before: Duration::hours(24),
            late_fee_bp: 2_500,
            very_late_before: Duration::hours(2),
            very_late_fee_bp: 5_000,
        }
    }
}

/// Which fee tier a cancellation fell into (shown to the customer and stored for audit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeeTier {
    /// No fee.
    Free,
    /// Late cancellation fee.
    Late,
    /// Very late cancellation fee.
    VeryLate,
}

/// The split of the paid price into fee and refund.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancellationFee {
    /// Amount kept.
    pub fee: Money,
    /// Amount returned; `fee + refund == price`.
    pub refund: Money,
    /// Tier that decided the fee.
    pub tier: FeeTier,
}

impl CancellationPolicy {
    /// Fee for cancelling a booking of `price` starting at `start`, at `now`, in `status`.
    ///
    /// Only confirmed and in-progress bookings can owe a fee; every other status cancels free
    /// (whether the cancellation is allowed at all is the state machine's decision).
    pub fn fee(
        &self,
        price: Money,
        start: DateTime<Utc>,
        now: DateTime<Utc>,
        status: BookingStatus,
    ) -> CancellationFee {
        let tier = match status {
            BookingStatus::Confirmed | BookingStatus::InProgress => {
                let lead = start - now;
                if lead >= self.free_before {
                    FeeTier::Free
                } else if lead >= self.very_late_before {
                    FeeTier::Late
                } else {
                    FeeTier::VeryLate
                }
            }
            _ => FeeTier::Free,
        };
        let bp = match tier {
            FeeTier::Free => 0,
            FeeTier::Late => self.late_fee_bp,
            FeeTier::VeryLate => self.very_late_fee_bp,
        }
        .min(10_000);
        let fee_i128 = round_div_half_even(i128::from(price.minor) * i128::from(bp), 10_000);
        // |fee| <= |price| because bp <= 100 %, so the conversion cannot fail.
        let fee_minor = i64::try_from(fee_i128).unwrap_or(price.minor);
        let refund_minor = price.minor - fee_minor;
        CancellationFee {
            fee: Money::new(fee_minor, price.currency),
            refund: Money::new(refund_minor, price.currency),
            tier,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::Currency;
    use chrono::TimeZone;

    fn start() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2027, 6, 10, 12, 0, 0).unwrap()
    }

    fn fee_at(
        hours_before: i64,
        minutes: i64,
        status: BookingStatus,
        minor: i64,
    ) -> CancellationFee {
        let now = start() - Duration::hours(hours_before) - Duration::minutes(minutes);
        CancellationPolicy::default().fee(Money::new(minor, Currency::EUR), start(), now, status)
    }

    #[test]
    fn tiers_follow_the_lead_time() {
        use BookingStatus::Confirmed;
        assert_eq!(fee_at(24, 0, Confirmed, 1000).tier, FeeTier::Free);
        assert_eq!(fee_at(23, 59, Confirmed, 1000).tier, FeeTier::Late);
        assert_eq!(fee_at(2, 0, Confirmed, 1000).tier, FeeTier::Late);
        assert_eq!(fee_at(1, 59, Confirmed, 1000).tier, FeeTier::VeryLate);
        assert_eq!(
            fee_at(-3, 0, BookingStatus::InProgress, 1000).tier,
            FeeTier::VeryLate
        );
    }

    #[test]
    fn a_reserving_hold_always_cancels_free() {
        let f = fee_at(-1, 0, BookingStatus::Reserving, 1000);
        assert_eq!(f.tier, FeeTier::Free);
        assert_eq!(f.fee.minor, 0);
        assert_eq!(f.refund.minor, 1000);
    }

    #[test]
    fn fee_is_rounded_half_even_and_refund_is_the_rest() {
        // 25 % of 10.10 = 2.525 -> 2.52
        let f = fee_at(5, 0, BookingStatus::Confirmed, 1010);
        assert_eq!((f.fee.minor, f.refund.minor), (252, 758));
        // 25 % of 10.30 = 2.575 -> 2.58
        let f = fee_at(5, 0, BookingStatus::Confirmed, 1030);
        assert_eq!((f.fee.minor, f.refund.minor), (258, 772));
        // 50 % of 0.01 = 0.005 -> 0.00
        let f = fee_at(1, 0, BookingStatus::Confirmed, 1);
        assert_eq!((f.fee.minor, f.refund.minor), (0, 1));
        assert_eq!(f.fee.currency, Currency::EUR);
    }
}
