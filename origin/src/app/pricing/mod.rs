//! Pricing service: builds a region and class's pricing context from its rate card, time
//! multipliers and discount rules (read by `store::pricing`) and hands it to the pure
//! calculator in `domain::pricing`. Failures are [`PricingError`]s; which status each becomes
//! is the HTTP layer's business.
//!
//! Surge and risk reach the calculator through [`Signals`]: the orchestrator in [`fetch`]
//! gathers them (AI inference API, surge grid) in parallel with the base price under one
//! deadline, [`validate`] checks the result before a quote leaves, and [`admin`] is the ops
//! side that changes the tables (audited, caches invalidated at once).

pub(crate) mod admin;
pub(crate) mod fetch;
pub(crate) mod validate;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use domain::multiplier::Multiplier;
use domain::pricing::{
    applicable_discounts, price, DiscountContext, DiscountRule, HourOfWeekTable, PriceBreakdown,
    PriceInput, RateCard, TimeMultiplierRule,
};
use domain::region::Region;
use domain::vehicle::VehicleClass;
use domain::window::TimeWindow;
use sqlx::PgConnection;

use crate::store;

/// Why a price could not be given. Only [`PricingError::UnknownPromoCode`] is the caller's
/// fault; the HTTP layer (`http/error.rs`) decides what each becomes.
#[derive(Debug, thiserror::Error)]
pub enum PricingError {
    /// A promo code was given that no currently valid promotion has.
    #[error("unknown or expired promo code")]
    UnknownPromoCode,
    /// The region's pricing tables cannot price this (a missing rate card, rules the calculator
    /// refuses, a bay's unknown time zone): an operator's fix.
    #[error("pricing configuration: {0}")]
    Config(String),
    /// Reading the tables failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

fn config_error(what: impl std::fmt::Display) -> PricingError {
    PricingError::Config(what.to_string())
}

/// Everything the calculator needs for one region and vehicle class.
#[derive(Debug, Clone)]
pub struct PricingContext {
    pub rate: RateCard,
    pub time_table: HourOfWeekTable,
    /// The rules `time_table` was built from (what L2 caches).
    pub time_rules: Vec<TimeMultiplierRule>,
    pub discounts: Vec<DiscountRule>,
}

/// Demand/surge and risk multipliers for one quote.
#[derive(Debug, Clone, Copy)]
pub struct Signals {
    pub surge: Multiplier,
    pub risk: Multiplier,
}

impl Signals {
    /// No surge, no risk loading.
    pub const NEUTRAL: Signals = Signals {
        surge: Multiplier::ONE,
        risk: Multiplier::ONE,
    };
}

/// Loads the whole context for a region and class from PostgreSQL (`store::pricing`).
pub async fn context(
    conn: &mut PgConnection,
    region: Region,
    class: VehicleClass,
) -> Result<PricingContext, PricingError> {
    let time_rules = store::pricing::time_rules(conn, region).await?;
    let rate = store::pricing::rate_card(conn, region, class)
        .await?
        .ok_or_else(|| config_error(format!("no rate for {region} {class}")))?;
    Ok(PricingContext {
        rate,
        time_table: HourOfWeekTable::from_rules(&time_rules).map_err(config_error)?,
        time_rules,
        discounts: store::pricing::discount_rules(conn, region).await?,
    })
}

/// Who is asking, for discounts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Customer<'a> {
    pub promo_code: Option<&'a str>,
    pub membership_tier: Option<&'a str>,
}

/// Prices a window with the context's rules: the quote path.
pub fn quote_price(
    ctx: &PricingContext,
    window: &TimeWindow,
    tz: Tz,
    signals: Signals,
    customer: Customer<'_>,
    now: DateTime<Utc>,
) -> Result<PriceBreakdown, PricingError> {
    let discounts = applicable_discounts(
        &ctx.discounts,
        &DiscountContext {
            promo_code: customer.promo_code,
            membership_tier: customer.membership_tier,
            duration_minutes: window.duration_minutes(),
            now,
        },
    )
    .map_err(|e| match e {
        domain::pricing::PricingError::UnknownPromoCode => PricingError::UnknownPromoCode,
        other => config_error(other),
    })?;
    price(&PriceInput {
        rate: &ctx.rate,
        window,
        tz,
        time_table: &ctx.time_table,
        surge: signals.surge,
        risk: signals.risk,
        discounts: &discounts,
    })
    .map_err(config_error)
}

/// The indicative price shown in search: rate × time of day, no surge, risk or discounts.
pub fn indicative_price(
    ctx: &PricingContext,
    window: &TimeWindow,
    tz: Tz,
) -> Result<i64, PricingError> {
    price(&PriceInput {
        rate: &ctx.rate,
        window,
        tz,
        time_table: &ctx.time_table,
        surge: Multiplier::ONE,
        risk: Multiplier::ONE,
        discounts: &[],
    })
    .map(|b| b.total.minor)
    .map_err(config_error)
}

/// Parses a bay's IANA time zone.
pub fn parse_tz(name: &str) -> Result<Tz, PricingError> {
    name.parse::<Tz>()
        .map_err(|_| config_error(format!("unknown time zone {name}")))
}
