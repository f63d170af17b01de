//! Pricing adapter: loads a region's rate card, time multipliers and discount rules from
//! PostgreSQL and hands them to the pure calculator in `domain::pricing`.
//!
//! Surge and risk reach the calculator through [`Signals`]: the orchestrator in [`fetch`]
//! gathers them (AI inference API, surge grid) in parallel with the base price under one
//! deadline, [`validate`] checks the result before a quote leaves, and [`admin`] is the ops
//! side that changes the tables (audited, caches invalidated at once).

pub mod admin;
pub mod fetch;
pub mod validate;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use domain::money::Currency;
use domain::multiplier::Multiplier;
use domain::pricing::{
    applicable_discounts, price, DiscountContext, DiscountKind, DiscountRule, HourOfWeekTable,
    PriceBreakdown, PriceInput, RateCard, TimeMultiplierRule,
};
use domain::region::Region;
use domain::window::TimeWindow;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::http::error::{ApiError, ApiResult};

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

fn config_error(what: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(anyhow::anyhow!("pricing configuration: {what}"))
}

/// Loads the rate card (base rates + floor/ceiling) for a class.
pub async fn rate_card(
    conn: &mut PgConnection,
    region: Region,
    class: &str,
) -> ApiResult<RateCard> {
    let row: Option<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "select r.currency, r.per_hour_minor, r.per_day_minor, c.floor_minor, c.ceiling_minor
           from base_rates r
           join vehicle_config c on c.region = r.region and c.class = r.class
          where r.region = $1 and r.class = $2",
    )
    .bind(region.code())
    .bind(class)
    .fetch_optional(&mut *conn)
    .await?;
    let (currency, per_hour, per_day, floor, ceiling) =
        row.ok_or_else(|| config_error(format!("no rate for {region} {class}")))?;
    let currency: Currency = currency.parse().map_err(config_error)?;
    Ok(RateCard {
        currency,
        per_hour_minor: per_hour,
        per_day_minor: per_day,
        floor_minor: floor,
        ceiling_minor: ceiling,
    })
}

/// Loads a region's time-of-day multiplier rules.
pub async fn time_rules(
    conn: &mut PgConnection,
    region: Region,
) -> ApiResult<Vec<TimeMultiplierRule>> {
    let rows: Vec<(i16, i16, i16, i32)> = sqlx::query_as(
        "select days_mask, start_hour, end_hour, multiplier_bp from time_multipliers where region = $1",
    )
    .bind(region.code())
    .fetch_all(&mut *conn)
    .await?;
    let rules = rows
        .into_iter()
        .map(|(days, start, end, bp)| {
            Ok(TimeMultiplierRule {
                days: u8::try_from(days).map_err(config_error)?,
                start_hour: u8::try_from(start).map_err(config_error)?,
                end_hour: u8::try_from(end).map_err(config_error)?,
                multiplier: Multiplier::try_from_bp(u32::try_from(bp).map_err(config_error)?)
                    .map_err(config_error)?,
            })
        })
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(rules)
}

type DiscountRow = (
    Uuid,
    String,
    Option<String>,
    i32,
    Option<i64>,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

/// Loads a region's active discount rules.
pub async fn discount_rules(
    conn: &mut PgConnection,
    region: Region,
) -> ApiResult<Vec<DiscountRule>> {
    let rows: Vec<DiscountRow> = sqlx::query_as(
        "select id, kind, code, percent_bp, min_duration_minutes, membership_tier, valid_from, valid_until
           from discount_rules where region = $1 and active",
    )
    .bind(region.code())
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|(id, kind, code, bp, min_dur, tier, from, until)| {
            let kind = match kind.as_str() {
                "promo" => DiscountKind::Promo,
                "long_duration" => DiscountKind::LongDuration,
                "membership" => DiscountKind::Membership,
                other => return Err(config_error(format!("discount kind {other}"))),
            };
            Ok(DiscountRule {
                id,
                kind,
                code,
                percent_bp: u32::try_from(bp).map_err(config_error)?,
                min_duration_minutes: min_dur,
                membership_tier: tier,
                valid_from: from,
                valid_until: until,
            })
        })
        .collect()
}

/// Loads the whole context for a region and class.
pub async fn context(
    conn: &mut PgConnection,
    region: Region,
    class: &str,
) -> ApiResult<PricingContext> {
    let time_rules = time_rules(conn, region).await?;
    Ok(PricingContext {
        rate: rate_card(conn, region, class).await?,
        time_table: HourOfWeekTable::from_rules(&time_rules).map_err(config_error)?,
        time_rules,
        discounts: discount_rules(conn, region).await?,
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
) -> ApiResult<PriceBreakdown> {
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
        domain::pricing::PricingError::UnknownPromoCode => {
            ApiError::field("promo_code", "unknown or expired promo code")
        }
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
pub fn indicative_price(ctx: &PricingContext, window: &TimeWindow, tz: Tz) -> ApiResult<i64> {
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
pub fn parse_tz(name: &str) -> ApiResult<Tz> {
    name.parse::<Tz>()
        .map_err(|_| config_error(format!("unknown time zone {name}")))
}
