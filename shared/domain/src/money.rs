//! Money as integer minor units plus an ISO 4217 currency.
//!
//! Floating point never touches an amount. Amounts are `i64` minor units (cents, öre) and
//! every price computation is done exactly in `i128`.
//!
//! # The rounding rule
//!
//! All intermediate arithmetic is exact integer / fixed-point arithmetic in `i128`
//! (multipliers are basis points, discounts are basis points). A value is rounded to minor
//! units only at a *breakdown step boundary* (after the base, after the time-of-day multiplier,
//! after surge, after risk, after each discount), and it is always the exact rational
//! `numerator / denominator` of the *cumulative* amount that is rounded, once, with
//! [`round_div_half_even`] (round half to even, "banker's rounding"). Because each step
//! rounds the exact cumulative value rather than the previous rounded value, rounding errors
//! never accumulate across steps, and because the breakdown lines are differences of those
//! rounded cumulative amounts they always sum exactly to the total. Half-even is used because
//! it is unbiased: over many bookings ties round up as often as down.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// ISO 4217 currency of a price. Only the currencies of our regions exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Currency {
    /// Euro, charged in region EUW.
    EUR,
    /// Swedish krona, charged in region EUN.
    SEK,
}

impl Currency {
    /// The ISO 4217 code.
    pub fn code(self) -> &'static str {
        match self {
            Currency::EUR => "EUR",
            Currency::SEK => "SEK",
        }
    }

    /// Number of decimal digits of the minor unit (cents / öre), needed to display amounts.
    pub fn minor_units(self) -> u32 {
        match self {
            Currency::EUR | Currency::SEK => 2,
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// The currency code is not one we charge in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported currency {0:?}: expected EUR or SEK")]
pub struct UnknownCurrency(pub String);

impl FromStr for Currency {
    type Err = UnknownCurrency;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "EUR" => Ok(Currency::EUR),
            "SEK" => Ok(Currency::SEK),
            other => Err(UnknownCurrency(other.to_owned())),
        }
    }
}

/// Why two amounts could not be combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// Adding EUR to SEK is always a bug; it is refused instead of silently converted.
    #[error("currency mismatch: {left} vs {right}")]
    CurrencyMismatch {
        /// Currency of the left operand.
        left: Currency,
        /// Currency of the right operand.
        right: Currency,
    },
    /// The result does not fit in `i64` minor units.
    #[error("amount overflow")]
    Overflow,
}

/// An amount of money in integer minor units of a currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    /// Amount in minor units (e.g. cents); may be negative for credits and discount lines.
    pub minor: i64,
    /// Currency the amount is denominated in.
    pub currency: Currency,
}

impl Money {
    /// An amount of `minor` minor units of `currency`.
    pub const fn new(minor: i64, currency: Currency) -> Self {
        Money { minor, currency }
    }

    /// Zero in `currency`, the neutral start for sums.
    pub const fn zero(currency: Currency) -> Self {
        Money { minor: 0, currency }
    }

    /// `self + other`, refusing mixed currencies and overflow.
    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let minor = self
            .minor
            .checked_add(other.minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money::new(minor, self.currency))
    }

    /// `self - other`, refusing mixed currencies and overflow.
    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let minor = self
            .minor
            .checked_sub(other.minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money::new(minor, self.currency))
    }

    fn same_currency(self, other: Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch {
                left: self.currency,
                right: other.currency,
            })
        }
    }
}

impl fmt::Display for Money {
    /// "12.50 EUR", "-0.05 SEK": the amount with the currency's minor digits, then the code.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.currency.minor_units();
        let scale = 10u64.pow(digits);
        let abs = self.minor.unsigned_abs();
        let sign = if self.minor < 0 { "-" } else { "" };
        let (major, minor) = (abs / scale, abs % scale);
        if digits == 0 {
            write!(f, "{sign}{major} {}", self.currency)
        } else {
            write!(
                f,
                "{sign}{major}.{minor:0width$} {}",
                self.currency,
                width = digits as usize
            )
        }
    }
}

/// `num / den` rounded to the nearest integer, ties to the even neighbour (banker's rounding).
///
/// This is the single rounding primitive of the crate (see the module docs). `den` must be
/// positive; a negative `den` is normalised by negating both operands, and `den == 0` (a caller
/// bug) yields 0 rather than panicking inside a request.
pub fn round_div_half_even(num: i128, den: i128) -> i128 {
    debug_assert!(den != 0, "round_div_half_even: zero denominator");
    if den == 0 {
        return 0;
    }
    let (num, den) = if den < 0 {
        (num.wrapping_neg(), den.wrapping_neg())
    } else {
        (num, den)
    };
    let q = num.div_euclid(den);
    let r = num.rem_euclid(den); // 0 <= r < den, so q is the floor
    let rest = den - r; // distance to the next integer, no overflow
    let round_up = match r.cmp(&rest) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => q & 1 == 1, // a tie: go to the even neighbour
    };
    if round_up {
        q + 1
    } else {
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_half_even_rounds_ties_to_the_even_neighbour() {
        assert_eq!(round_div_half_even(5, 2), 2); // 2.5 -> 2
        assert_eq!(round_div_half_even(7, 2), 4); // 3.5 -> 4
        assert_eq!(round_div_half_even(1, 2), 0); // 0.5 -> 0
        assert_eq!(round_div_half_even(3, 2), 2); // 1.5 -> 2
        assert_eq!(round_div_half_even(250, 100), 2);
        assert_eq!(round_div_half_even(350, 100), 4);
    }

    #[test]
    fn round_half_even_rounds_non_ties_to_nearest() {
        assert_eq!(round_div_half_even(10, 3), 3); // 3.33
        assert_eq!(round_div_half_even(20, 3), 7); // 6.67
        assert_eq!(round_div_half_even(251, 100), 3);
        assert_eq!(round_div_half_even(249, 100), 2);
        assert_eq!(round_div_half_even(9, 3), 3);
        assert_eq!(round_div_half_even(0, 7), 0);
    }

    #[test]
    fn round_half_even_is_symmetric_for_negatives() {
        assert_eq!(round_div_half_even(-5, 2), -2); // -2.5 -> -2
        assert_eq!(round_div_half_even(-7, 2), -4); // -3.5 -> -4
        assert_eq!(round_div_half_even(-1, 2), 0);
        assert_eq!(round_div_half_even(-10, 3), -3);
        assert_eq!(round_div_half_even(-20, 3), -7);
        assert_eq!(round_div_half_even(-251, 100), -3);
        for n in -1000..1000 {
            assert_eq!(
                round_div_half_even(-n, 7),
                -round_div_half_even(n, 7),
                "n={n}"
            );
        }
    }

    #[test]
    fn round_half_even_normalises_negative_denominators() {
        assert_eq!(round_div_half_even(5, -2), -2);
        assert_eq!(round_div_half_even(-7, -2), 4);
    }

    #[test]
    fn round_half_even_handles_extremes_without_overflow() {
        assert_eq!(round_div_half_even(i128::MAX, i128::MAX), 1);
        assert_eq!(round_div_half_even(i128::MAX, 1), i128::MAX);
        assert_eq!(round_div_half_even(i128::MIN + 1, i128::MAX), -1);
    }

    #[test]
    fn money_displays_with_two_decimals_and_code() {
        assert_eq!(Money::new(1250, Currency::EUR).to_string(), "12.50 EUR");
        assert_eq!(Money::new(5, Currency::SEK).to_string(), "0.05 SEK");
        assert_eq!(Money::new(-5, Currency::SEK).to_string(), "-0.05 SEK");
        assert_eq!(Money::new(0, Currency::EUR).to_string(), "0.00 EUR");
        assert!(Money::new(i64::MIN, Currency::EUR)
            .to_string()
            .starts_with('-'));
    }

    #[test]
    fn money_arithmetic_refuses_mixed_currencies_and_overflow() {
        let eur = Money::new(100, Currency::EUR);
        let sek = Money::new(100, Currency::SEK);
        assert_eq!(
            eur.checked_add(sek),
            Err(MoneyError::CurrencyMismatch {
                left: Currency::EUR,
                right: Currency::SEK
            })
        );
        assert_eq!(eur.checked_add(eur), Ok(Money::new(200, Currency::EUR)));
        assert_eq!(eur.checked_sub(eur), Ok(Money::zero(Currency::EUR)));
        assert_eq!(
            Money::new(i64::MAX, Currency::EUR).checked_add(eur),
            Err(MoneyError::Overflow)
        );
        assert_eq!(
            Money::new(i64::MIN, Currency::EUR).checked_sub(eur),
            Err(MoneyError::Overflow)
        );
    }

    #[test]
    fn currency_round_trips_through_serde_and_from_str() {
        assert_eq!(serde_json::to_string(&Currency::SEK).unwrap(), "\"SEK\"");
        assert_eq!("EUR".parse::<Currency>(), Ok(Currency::EUR));
        assert!("eur".parse::<Currency>().is_err());
        assert_eq!(Currency::EUR.minor_units(), 2);
        let m: Money = serde_json::from_str(r#"{"minor":1250,"currency":"EUR"}"#).unwrap();
        assert_eq!(m, Money::new(1250, Currency::EUR));
    }
}
