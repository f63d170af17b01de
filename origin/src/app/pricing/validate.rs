//! Price validation: the last check before a quote leaves the origin.
//!
//! The calculator already clamps to floor and ceiling and refuses overflow; this module does
//! not trust that. It re-checks the finished breakdown against the rate card and the region,
//! and compares it with the **previous quote of the same vehicle and window** (kept in L2 for
//! 15 min, under the pricing epoch so an operator's deliberate rate change starts a new
//! baseline): a total more than `PRICE_MAX_JUMP_BP` above it, or below it by the same factor,
//! is a model or data glitch, not a price. A refused price answers 503
//! `/problems/price-refused` (the client did nothing wrong, and retrying later may succeed),
//! counts in `price_refusals_total{reason}` (the alert metric), is recorded in the
//! `price_refusals` table, and leaves nothing in any cache.

use domain::pricing::{PriceBreakdown, RateCard};
use domain::region::Region;
use serde::{Deserialize, Serialize};

/// Why a price was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("the total {0} is negative")]
    Negative(i64),
    #[error("the total {total} is outside [{floor}, {ceiling}]")]
    OutOfBounds {
        total: i64,
        floor: i64,
        ceiling: i64,
    },
    #[error("the currency {got} is not the region's {want}")]
    Currency { got: String, want: String },
    #[error("the breakdown lines add up to {lines}, not the total {total}")]
    Inconsistent { lines: i64, total: i64 },
    #[error(
        "the total {total} jumped from the previous quote's {previous} by more than {max_bp} bp"
    )]
    Jump {
        total: i64,
        previous: i64,
        max_bp: u32,
    },
}

impl Refusal {
    /// Every [`Refusal::reason`], so the counter has each series (at 0) before the first
    /// refusal (`http/metrics.rs`).
    pub(crate) const REASONS: [&'static str; 5] = [
        "negative",
        "out_of_bounds",
        "currency",
        "inconsistent",
        "jump",
    ];

    /// Metric label (one of [`Refusal::REASONS`]).
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Refusal::Negative(_) => "negative",
            Refusal::OutOfBounds { .. } => "out_of_bounds",
            Refusal::Currency { .. } => "currency",
            Refusal::Inconsistent { .. } => "inconsistent",
            Refusal::Jump { .. } => "jump",
        }
    }
}

/// The previous quote's total for a vehicle and window, as L2 keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Baseline {
    pub total_minor: i64,
    /// The pricing epoch it was computed under (see `Caches::pricing_epoch`).
    pub epoch: u64,
}

/// Checks a finished price; `previous` is the baseline of the same epoch, if any.
pub(crate) fn validate(
    breakdown: &PriceBreakdown,
    rate: &RateCard,
    region: Region,
    previous: Option<i64>,
    max_jump_bp: u32,
) -> Result<(), Refusal> {
    let total = breakdown.total.minor;
    if total < 0 {
        return Err(Refusal::Negative(total));
    }
    if total < rate.floor_minor || total > rate.ceiling_minor {
        return Err(Refusal::OutOfBounds {
            total,
            floor: rate.floor_minor,
            ceiling: rate.ceiling_minor,
        });
    }
    let want = region.currency();
    if breakdown.total.currency != want || breakdown.currency != want {
        return Err(Refusal::Currency {
            got: breakdown.total.currency.code().to_owned(),
            want: want.code().to_owned(),
        });
    }
    let lines: i128 = breakdown
        .lines
        .iter()
        .map(|l| i128::from(l.amount_minor))
        .sum();
    if lines != i128::from(total) {
        return Err(Refusal::Inconsistent {
            lines: i64::try_from(lines).unwrap_or(i64::MAX),
            total,
        });
    }
    if let Some(previous) = previous.filter(|p| *p > 0) {
        let (p, t, j) = (
            i128::from(previous),
            i128::from(total),
            i128::from(max_jump_bp),
        );
        // total <= previous × (1 + j) and total × (1 + j) >= previous, in basis points.
        let too_high = t * 10_000 > p * (10_000 + j);
        let too_low = t * (10_000 + j) < p * 10_000;
        if too_high || too_low {
            return Err(Refusal::Jump {
                total,
                previous,
                max_bp: max_jump_bp,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::money::{Currency, Money};
    use domain::multiplier::Multiplier;
    use domain::pricing::{LineKind, PriceLine};

    fn card() -> RateCard {
        RateCard {
            currency: Currency::EUR,
            per_hour_minor: 1_000,
            per_day_minor: 6_000,
            floor_minor: 500,
            ceiling_minor: 50_000,
        }
    }

    fn priced(total: i64, currency: Currency) -> PriceBreakdown {
        PriceBreakdown {
            currency,
            lines: vec![PriceLine {
                kind: LineKind::Base,
                label: "Base".into(),
                amount_minor: total,
            }],
            total: Money::new(total, currency),
            time_multiplier: Multiplier::ONE,
            surge: Multiplier::ONE,
            risk: Multiplier::ONE,
            discount_bp: 0,
        }
    }

    #[test]
    fn a_sane_price_passes() {
        let p = priced(3_000, Currency::EUR);
        assert_eq!(validate(&p, &card(), Region::Euw, None, 10_000), Ok(()));
        assert_eq!(
            validate(&p, &card(), Region::Euw, Some(1_500), 10_000),
            Ok(())
        );
        assert_eq!(
            validate(&p, &card(), Region::Euw, Some(6_000), 10_000),
            Ok(())
        );
    }

    #[test]
    fn bounds_sign_and_currency_are_enforced() {
        let c = card();
        assert_eq!(
            validate(&priced(-1, Currency::EUR), &c, Region::Euw, None, 10_000)
                .map_err(|r| r.reason()),
            Err("negative")
        );
        assert_eq!(
            validate(
                &priced(60_000, Currency::EUR),
                &c,
                Region::Euw,
                None,
                10_000
            )
            .map_err(|r| r.reason()),
            Err("out_of_bounds")
        );
        assert_eq!(
            validate(&priced(100, Currency::EUR), &c, Region::Euw, None, 10_000)
                .map_err(|r| r.reason()),
            Err("out_of_bounds")
        );
        assert_eq!(
            validate(&priced(3_000, Currency::SEK), &c, Region::Euw, None, 10_000)
                .map_err(|r| r.reason()),
            Err("currency")
        );
        let mut broken = priced(3_000, Currency::EUR);
        broken.total = Money::new(3_001, Currency::EUR);
        assert_eq!(
            validate(&broken, &c, Region::Euw, None, 10_000).map_err(|r| r.reason()),
            Err("inconsistent")
        );
    }

    #[test]
    fn a_jump_beyond_the_limit_either_way_is_refused() {
        let c = card();
        let p = priced(3_001, Currency::EUR);
        assert!(matches!(
            validate(&p, &c, Region::Euw, Some(1_500), 10_000),
            Err(Refusal::Jump { .. })
        ));
        let low = priced(1_000, Currency::EUR);
        assert!(validate(&low, &c, Region::Euw, Some(2_001), 10_000).is_err());
        assert!(validate(&low, &c, Region::Euw, Some(2_000), 10_000).is_ok());
        assert!(validate(&p, &c, Region::Euw, Some(2_800), 500).is_err());
        assert!(validate(&p, &c, Region::Euw, Some(2_900), 500).is_ok());
    }
}
