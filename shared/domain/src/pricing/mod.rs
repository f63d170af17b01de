//! The price calculator: rate cards, time-of-day multipliers, discounts and the breakdown.
//!
//! The pipeline (see [`price`]) is:
//!
//! 1. **base** — the cheapest combination of whole days and started hours for the duration;
//! 2. **time of day** — the minute-weighted average of hour-of-week multipliers, evaluated in the
//!    bay's *local* time zone (DST included);
//! 3. **surge** and **risk** multipliers (supplied by the demand and risk models);
//! 4. **discounts**, selected by the stacking rule in [`applicable_discounts`], added (not
//!    compounded) and capped at [`MAX_TOTAL_DISCOUNT_BP`];
//! 5. **clamp** to the rate card's floor and ceiling.
//!
//! Everything is exact integer arithmetic; rounding follows the rule in [`crate::money`]. The
//! breakdown lines are differences of the rounded cumulative amounts, so they always add up to
//! the total to the minor unit — the invariant customers and accountants care about.

mod calc;
mod discount;
mod rates;

pub use calc::{
    extension_price, price, price_difference, LineKind, PriceBreakdown, PriceInput, PriceLine,
};
pub use discount::{
    applicable_discounts, total_discount_bp, DiscountContext, DiscountKind, DiscountRule,
    MAX_TOTAL_DISCOUNT_BP,
};
pub use rates::{HourOfWeekTable, RateCard, TimeMultiplierRule};

/// Why a price could not be computed. Configuration errors (rate card, rules) are server
/// faults; `UnknownPromoCode` is the client's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    /// The pricing configuration violates its invariants: rate card (rates > 0,
    /// 0 <= floor <= ceiling) or a malformed time-of-day rule (no days, bad hours). Kept as one
    /// variant so the error set stays exactly the one the adapters map.
    #[error("invalid rate card: {0}")]
    InvalidRateCard(String),
    /// Two time-of-day rules cover the same hour of the week, so the result would depend on
    /// rule order.
    #[error("time multiplier rules overlap")]
    OverlappingTimeRules,
    /// Amounts in different currencies were combined.
    #[error("currency mismatch")]
    CurrencyMismatch,
    /// A promo code was supplied but no currently valid promotion has that code.
    #[error("unknown or expired promo code")]
    UnknownPromoCode,
    /// The amount does not fit the integer range (absurd inputs).
    #[error("price calculation overflowed")]
    Overflow,
    /// A multiplier outside `0 < bp <= 100_000`.
    #[error("invalid multiplier")]
    InvalidMultiplier,
}
