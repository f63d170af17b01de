//! Discount rules and the stacking rule.
//!
//! # Stacking rule
//!
//! * A rule is *valid* at `now` when `valid_from <= now < valid_until` (missing bounds are
//!   open).
//! * A **promo** rule applies only when the customer supplied a code equal to the rule's code,
//!   compared case-insensitively after trimming. If a code was supplied and no valid promo rule
//!   has it, the request fails with [`PricingError::UnknownPromoCode`] — silently charging full
//!   price for a mistyped code is worse than telling the customer.
//! * A **long-duration** rule applies when the booking lasts at least its
//!   `min_duration_minutes` (a rule without a threshold never applies).
//! * A **membership** rule applies when the customer's tier equals the rule's tier
//!   (case-insensitive; a rule without a tier never applies).
//! * At most **one rule per kind** applies: the one with the highest percentage (ties broken by
//!   the smallest rule id, so the choice never depends on database row order).
//! * The chosen percentages **add up** (15 % + 10 % = 25 %, not 23.5 %) and the sum is capped at
//!   [`MAX_TOTAL_DISCOUNT_BP`] (50 %). Adding is easier to explain on a receipt than compounding,
//!   and the cap protects the floor of the business from combinations nobody anticipated.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::PricingError;

/// Upper bound of the summed discount, in basis points (50 %).
pub const MAX_TOTAL_DISCOUNT_BP: u32 = 5_000;

/// The families of discounts; at most one of each applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiscountKind {
    /// Customer-entered promotion code.
    Promo,
    /// Automatic discount for long bookings.
    LongDuration,
    /// Automatic discount for a membership tier.
    Membership,
}

impl DiscountKind {
    /// Human label used in breakdown lines.
    pub fn label(self) -> &'static str {
        match self {
            DiscountKind::Promo => "promo",
            DiscountKind::LongDuration => "long rental",
            DiscountKind::Membership => "membership",
        }
    }
}

/// A configured discount (one row of `discount_rules`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscountRule {
    /// Rule id, also the deterministic tie-breaker.
    pub id: Uuid,
    /// Which family the rule belongs to.
    pub kind: DiscountKind,
    /// Promotion code (promo rules only).
    pub code: Option<String>,
    /// Discount in basis points (1500 = 15 %).
    pub percent_bp: u32,
    /// Minimum booking length (long-duration rules only).
    pub min_duration_minutes: Option<i64>,
    /// Membership tier the rule is for (membership rules only).
    pub membership_tier: Option<String>,
    /// First instant the rule is valid (inclusive), if limited.
    pub valid_from: Option<DateTime<Utc>>,
    /// Instant the rule stops being valid (exclusive), if limited.
    pub valid_until: Option<DateTime<Utc>>,
}

impl DiscountRule {
    /// Whether the rule is in its validity period at `now`.
    pub fn is_valid_at(&self, now: DateTime<Utc>) -> bool {
        self.valid_from.is_none_or(|from| from <= now)
            && self.valid_until.is_none_or(|until| now < until)
    }
}

/// What the customer and the booking bring to the discount decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscountContext<'a> {
    /// Promo code as typed by the customer, if any.
    pub promo_code: Option<&'a str>,
    /// The customer's membership tier (from the JWT), if any.
    pub membership_tier: Option<&'a str>,
    /// Length of the booking being priced.
    pub duration_minutes: i64,
    /// Decision time, for validity periods.
    pub now: DateTime<Utc>,
}

fn eq_ci(a: &str, b: &str) -> bool {
    a.trim().to_lowercase() == b.trim().to_lowercase()
}

fn matches(rule: &DiscountRule, ctx: &DiscountContext, promo: Option<&str>) -> bool {
    match rule.kind {
        DiscountKind::Promo => match (rule.code.as_deref(), promo) {
            (Some(code), Some(given)) => eq_ci(code, given),
            _ => false,
        },
        DiscountKind::LongDuration => rule
            .min_duration_minutes
            .is_some_and(|min| ctx.duration_minutes >= min),
        DiscountKind::Membership => match (rule.membership_tier.as_deref(), ctx.membership_tier) {
            (Some(tier), Some(mine)) => eq_ci(tier, mine),
            _ => false,
        },
    }
}

/// Selects the discounts that apply under the stacking rule (see the module docs), at most one
/// per kind, in the order promo, long duration, membership.
pub fn applicable_discounts<'r>(
    rules: &'r [DiscountRule],
    ctx: &DiscountContext,
) -> Result<Vec<&'r DiscountRule>, PricingError> {
    let promo = ctx.promo_code.map(str::trim).filter(|c| !c.is_empty());
    let mut chosen = Vec::with_capacity(3);
    for kind in [
        DiscountKind::Promo,
        DiscountKind::LongDuration,
        DiscountKind::Membership,
    ] {
        let best = rules
            .iter()
            .filter(|r| r.kind == kind && r.is_valid_at(ctx.now) && matches(r, ctx, promo))
            .min_by(|a, b| b.percent_bp.cmp(&a.percent_bp).then(a.id.cmp(&b.id)));
        match best {
            Some(rule) => chosen.push(rule),
            None if kind == DiscountKind::Promo && promo.is_some() => {
                return Err(PricingError::UnknownPromoCode)
            }
            None => {}
        }
    }
    Ok(chosen)
}

/// The summed percentage of `discounts`, capped at [`MAX_TOTAL_DISCOUNT_BP`].
pub fn total_discount_bp(discounts: &[&DiscountRule]) -> u32 {
    let sum: u64 = discounts.iter().map(|d| u64::from(d.percent_bp)).sum();
    // The cap is far below u32::MAX, so the conversion cannot fail.
    u32::try_from(sum.min(u64::from(MAX_TOTAL_DISCOUNT_BP))).unwrap_or(MAX_TOTAL_DISCOUNT_BP)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2027, 6, 1, 12, 0, 0).unwrap()
    }

    fn rule(n: u128, kind: DiscountKind, bp: u32) -> DiscountRule {
        DiscountRule {
            id: Uuid::from_u128(n),
            kind,
            code: None,
            percent_bp: bp,
            min_duration_minutes: None,
            membership_tier: None,
            valid_from: None,
            valid_until: None,
        }
    }

    fn promo(n: u128, code: &str, bp: u32) -> DiscountRule {
        DiscountRule {
            code: Some(code.into()),
            ..rule(n, DiscountKind::Promo, bp)
        }
    }

    fn ctx<'a>(code: Option<&'a str>, tier: Option<&'a str>, minutes: i64) -> DiscountContext<'a> {
        DiscountContext {
            promo_code: code,
            membership_tier: tier,
            duration_minutes: minutes,
            now: now(),
        }
    }

    #[test]
    fn promo_matches_case_insensitively_and_unknown_codes_fail() {
        let rules = [promo(1, "SUMMER", 1500)];
        let got = applicable_discounts(&rules, &ctx(Some(" summer "), None, 60)).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(
            applicable_discounts(&rules, &ctx(Some("WINTER"), None, 60)),
            Err(PricingError::UnknownPromoCode)
        );
        assert!(applicable_discounts(&rules, &ctx(None, None, 60))
            .unwrap()
            .is_empty());
        assert!(applicable_discounts(&rules, &ctx(Some("  "), None, 60))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn expired_or_future_promos_count_as_unknown() {
        let expired = DiscountRule {
            valid_until: Some(now()),
            ..promo(1, "OLD", 1000)
        };
        let future = DiscountRule {
            valid_from: Some(now() + chrono::Duration::minutes(1)),
            ..promo(2, "NEW", 1000)
        };
        let rules = [expired, future];
        assert_eq!(
            applicable_discounts(&rules, &ctx(Some("OLD"), None, 60)),
            Err(PricingError::UnknownPromoCode)
        );
        assert_eq!(
            applicable_discounts(&rules, &ctx(Some("NEW"), None, 60)),
            Err(PricingError::UnknownPromoCode)
        );
        let starts_now = DiscountRule {
            valid_from: Some(now()),
            ..promo(3, "NOW", 1000)
        };
        assert_eq!(
            applicable_discounts(
                std::slice::from_ref(&starts_now),
                &ctx(Some("now"), None, 60)
            )
            .unwrap()
            .len(),
            1
        );
    }

    #[test]
    fn one_rule_per_kind_the_best_percent_wins() {
        let long_small = DiscountRule {
            min_duration_minutes: Some(1440),
            ..rule(10, DiscountKind::LongDuration, 500)
        };
        let long_big = DiscountRule {
            min_duration_minutes: Some(2880),
            ..rule(11, DiscountKind::LongDuration, 1000)
        };
        let gold = DiscountRule {
            membership_tier: Some("gold".into()),
            ..rule(12, DiscountKind::Membership, 700)
        };
        let rules = [
            long_small,
            long_big,
            gold,
            promo(13, "A", 300),
            promo(14, "A", 900),
        ];
        let got = applicable_discounts(&rules, &ctx(Some("a"), Some("GOLD"), 3000)).unwrap();
        let ids: Vec<u128> = got.iter().map(|r| r.id.as_u128()).collect();
        assert_eq!(ids, [14, 11, 12]);
        assert_eq!(total_discount_bp(&got), 900 + 1000 + 700);
        let short = applicable_discounts(&rules, &ctx(None, None, 1440)).unwrap();
        assert_eq!(
            short.iter().map(|r| r.id.as_u128()).collect::<Vec<_>>(),
            [10]
        );
    }

    #[test]
    fn ties_are_broken_by_smallest_id_regardless_of_order() {
        let rules = [promo(9, "X", 1000), promo(3, "X", 1000)];
        let got = applicable_discounts(&rules, &ctx(Some("x"), None, 60)).unwrap();
        assert_eq!(got[0].id.as_u128(), 3);
    }

    #[test]
    fn percents_add_and_are_capped_at_fifty_percent() {
        let a = rule(1, DiscountKind::Promo, 3000);
        let b = rule(2, DiscountKind::Membership, 3000);
        assert_eq!(total_discount_bp(&[&a]), 3000);
        assert_eq!(total_discount_bp(&[&a, &b]), MAX_TOTAL_DISCOUNT_BP);
        assert_eq!(total_discount_bp(&[]), 0);
    }
}
