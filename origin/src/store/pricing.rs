//! The pricing tables as the quote path reads them: `base_rates` + `vehicle_config` (the rate
//! card), `time_multipliers`, `discount_rules`, and the `price_refusals` record of prices the
//! validator refused.
//!
//! Rows become domain types here, once: a currency, a discount kind or a vehicle class the
//! domain does not know is a decode error of that row ([`super::corrupt`]), not a string that
//! travels on. The changes made by the pricing admin API live in [`super::pricing_admin`].

use chrono::{DateTime, Utc};
use domain::money::Currency;
use domain::multiplier::Multiplier;
use domain::pricing::{DiscountKind, DiscountRule, RateCard, TimeMultiplierRule};
use domain::region::Region;
use domain::vehicle::VehicleClass;
use domain::VehicleId;
use sqlx::{PgConnection, PgPool};

use super::corrupt;

/// The rate card (base rates with floor and ceiling) of a region and class; `None` when either
/// half is missing (such a class cannot be quoted).
#[tracing::instrument(level = "debug", name = "db.pricing.rate_card", skip_all)]
pub(crate) async fn rate_card(
    conn: &mut PgConnection,
    region: Region,
    class: VehicleClass,
) -> sqlx::Result<Option<RateCard>> {
    let row = sqlx::query!(
        "select r.currency, r.per_hour_minor, r.per_day_minor, c.floor_minor, c.ceiling_minor
           from base_rates r
           join vehicle_config c on c.region = r.region and c.class = r.class
          where r.region = $1 and r.class = $2",
        region.code(),
        class.as_str(),
    )
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|row| {
        Ok(RateCard {
            currency: row.currency.parse::<Currency>().map_err(corrupt)?,
            per_hour_minor: row.per_hour_minor,
            per_day_minor: row.per_day_minor,
            floor_minor: row.floor_minor,
            ceiling_minor: row.ceiling_minor,
        })
    })
    .transpose()
}

/// A region's time-of-day multiplier rules.
#[tracing::instrument(level = "debug", name = "db.pricing.time_rules", skip_all)]
pub(crate) async fn time_rules(
    conn: &mut PgConnection,
    region: Region,
) -> sqlx::Result<Vec<TimeMultiplierRule>> {
    let rows = sqlx::query!(
        "select days_mask, start_hour, end_hour, multiplier_bp
           from time_multipliers where region = $1",
        region.code(),
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(TimeMultiplierRule {
                days: u8::try_from(row.days_mask).map_err(corrupt)?,
                start_hour: u8::try_from(row.start_hour).map_err(corrupt)?,
                end_hour: u8::try_from(row.end_hour).map_err(corrupt)?,
                multiplier: Multiplier::try_from_bp(
                    u32::try_from(row.multiplier_bp).map_err(corrupt)?,
                )
                .map_err(corrupt)?,
            })
        })
        .collect()
}

/// A region's active discount rules.
#[tracing::instrument(level = "debug", name = "db.pricing.discount_rules", skip_all)]
pub(crate) async fn discount_rules(
    conn: &mut PgConnection,
    region: Region,
) -> sqlx::Result<Vec<DiscountRule>> {
    let rows = sqlx::query!(
        "select id, kind, code, percent_bp, min_duration_minutes, membership_tier, valid_from,
                valid_until
           from discount_rules where region = $1 and active",
        region.code(),
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(DiscountRule {
                id: row.id,
                kind: discount_kind(&row.kind)?,
                code: row.code,
                percent_bp: u32::try_from(row.percent_bp).map_err(corrupt)?,
                min_duration_minutes: row.min_duration_minutes,
                membership_tier: row.membership_tier,
                valid_from: row.valid_from,
                valid_until: row.valid_until,
            })
        })
        .collect()
}

/// `discount_rules.kind` (the column's check lists the same three).
fn discount_kind(text: &str) -> sqlx::Result<DiscountKind> {
    match text {
        "promo" => Ok(DiscountKind::Promo),
        "long_duration" => Ok(DiscountKind::LongDuration),
        "membership" => Ok(DiscountKind::Membership),
        other => Err(corrupt(format!("discount kind {other:?}"))),
    }
}

/// The (region, class) pairs of `regions` that have a base rate, for cache warming. Only
/// known classes: `base_rates.class` has no check of its own, and a rate for a class no
/// vehicle can have prices nothing.
#[tracing::instrument(level = "debug", name = "db.pricing.priced_classes", skip_all)]
pub(crate) async fn priced_classes(
    pool: &PgPool,
    regions: &[Region],
) -> sqlx::Result<Vec<(Region, VehicleClass)>> {
    let codes: Vec<&str> = regions.iter().map(|r| r.code()).collect();
    let classes: Vec<&str> = VehicleClass::ALL.map(VehicleClass::as_str).to_vec();
    let rows = sqlx::query!(
        "select region, class from base_rates where region = any($1) and class = any($2)",
        &codes as &[&str],
        &classes as &[&str],
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok((
                row.region.parse::<Region>().map_err(corrupt)?,
                row.class.parse::<VehicleClass>().map_err(corrupt)?,
            ))
        })
        .collect()
}

/// A price the validator refused to quote (see `app/pricing/validate.rs`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refused<'a> {
    pub vehicle: &'a VehicleId,
    pub user_id: &'a str,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub total_minor: i64,
    /// The refusal's stable reason (a metric label).
    pub reason: &'a str,
    /// The human explanation.
    pub detail: &'a str,
}

/// Records a refused price in `price_refusals`.
#[tracing::instrument(level = "debug", name = "db.pricing.record_refusal", skip_all)]
pub(crate) async fn record_refusal(pool: &PgPool, refused: &Refused<'_>) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into price_refusals (region, vehicle_id, user_id, period, total_minor, reason, detail)
         values ($1, $2, $3, tstzrange($4, $5, '[)'), $6, $7, $8)",
        refused.vehicle.region.code(),
        refused.vehicle.uuid,
        refused.user_id,
        refused.start,
        refused.end,
        refused.total_minor,
        refused.reason,
        refused.detail,
    )
    .execute(pool)
    .await?;
    Ok(())
}
