//! Pricing administration (ops role): base rates, vehicle config (floor/ceiling), time-of-day
//! multipliers and discount rules — validated, audited and effective at once.
//!
//! * **Validated** before any SQL: ranges a human can get wrong (a multiplier of ×30 instead
//!   of ×3.0), the region's currency, and **no overlapping time-of-day windows** (two rules for
//!   the same hour of the week would make the price depend on row order; the calculator refuses
//!   such a table, so accepting it would take quoting down). The overlap check runs under a
//!   per-region advisory lock, so two operators cannot each add half of an overlap.
//! * **Audited**: every change writes a `pricing_audit` row (who, when, action, before/after
//!   as JSON, request id) in the same transaction as the change.
//! * **Effective at once**: after the commit the region's L2 pricing contexts are deleted and
//!   the pricing-wide L1 generation is bumped, so the next quote anywhere is computed from the
//!   new tables (see `cache.rs`).

use chrono::{DateTime, Utc};
use domain::region::Region;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::http::error::{ApiError, ApiResult};

/// Vehicle classes the fleet knows (the `vehicles.class` check).
pub const CLASSES: [&str; 5] = ["compact", "sedan", "suv", "van", "premium"];
/// Sane range of a time-of-day multiplier: ×0.5 … ×3.0.
pub const TIME_MULTIPLIER_BP: std::ops::RangeInclusive<i32> = 5_000..=30_000;

/// `PUT …/base-rates/{class}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BaseRateBody {
    /// Must be the region's currency (EUR for EUW, SEK for EUN).
    pub currency: String,
    /// Price of a started hour, minor units, 1 … 10 000 000.
    pub per_hour_minor: i64,
    /// Price of a day, minor units, at least one hour's price, at most 100 000 000.
    pub per_day_minor: i64,
}

/// `PUT …/vehicle-config/{class}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VehicleConfigBody {
    /// Lowest total, minor units, ≥ 0.
    pub floor_minor: i64,
    /// Highest total, minor units, ≥ floor, at most 1 000 000 000.
    pub ceiling_minor: i64,
}

/// `POST …/time-multipliers`, `PUT …/time-multipliers/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeMultiplierBody {
    /// Local weekdays, bit 0 = Monday … bit 6 = Sunday (1 … 127).
    pub days_mask: i16,
    /// First local hour covered, 0 … 23.
    pub start_hour: i16,
    /// Hour after the last one covered, start_hour + 1 … 24.
    pub end_hour: i16,
    /// 5 000 … 30 000 basis points (×0.5 … ×3.0).
    pub multiplier_bp: i32,
    #[serde(default)]
    pub label: Option<String>,
}

/// `POST …/discount-rules`, `PUT …/discount-rules/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiscountBody {
    /// `promo`, `long_duration` or `membership`.
    pub kind: String,
    /// Promo code (promo rules), 1 … 64 characters, unique per region.
    #[serde(default)]
    pub code: Option<String>,
    /// 1 … 5 000 basis points (at most 50 %).
    pub percent_bp: i32,
    /// Minimum booking length (long-duration rules), > 0.
    #[serde(default)]
    pub min_duration_minutes: Option<i64>,
    /// Membership tier (membership rules).
    #[serde(default)]
    pub membership_tier: Option<String>,
    #[serde(default)]
    pub valid_from: Option<DateTime<Utc>>,
    #[serde(default)]
    pub valid_until: Option<DateTime<Utc>>,
    /// Defaults to true.
    #[serde(default)]
    pub active: Option<bool>,
}

/// One audited change: what it was, and the row before and after (JSON, `null` when absent).
#[derive(Debug, Clone)]
pub struct Change {
    pub action: &'static str,
    pub entity: &'static str,
    pub key: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

fn check(ok: bool, field: &str, detail: impl Into<String>) -> ApiResult<()> {
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(field, detail))
    }
}

/// A class named in a path.
pub fn check_class(class: &str) -> ApiResult<()> {
    check(
        CLASSES.contains(&class),
        "class",
        format!(
            "unknown vehicle class {class:?} (expected one of {})",
            CLASSES.join(", ")
        ),
    )
}

impl BaseRateBody {
    /// Range and currency checks.
    pub fn validate(&self, region: Region) -> ApiResult<()> {
        check(
            self.currency == region.currency().code(),
            "currency",
            format!("region {region} charges {}", region.currency().code()),
        )?;
        check(
            (1..=10_000_000).contains(&self.per_hour_minor),
            "per_hour_minor",
            "must be between 1 and 10000000",
        )?;
        check(
            (self.per_hour_minor..=100_000_000).contains(&self.per_day_minor),
            "per_day_minor",
            "must be at least per_hour_minor and at most 100000000",
        )
    }
}

impl VehicleConfigBody {
    /// Floor ≥ 0, ceiling ≥ floor.
    pub fn validate(&self) -> ApiResult<()> {
        check(self.floor_minor >= 0, "floor_minor", "must be at least 0")?;
        check(
            (self.floor_minor..=1_000_000_000).contains(&self.ceiling_minor),
            "ceiling_minor",
            "must be at least floor_minor and at most 1000000000",
        )
    }
}

impl TimeMultiplierBody {
    /// Ranges (overlap is checked against the database, see [`time_multiplier_upsert`]).
    pub fn validate(&self) -> ApiResult<()> {
        check(
            (1..=127).contains(&self.days_mask),
            "days_mask",
            "bit 0 = Monday … bit 6 = Sunday: 1 to 127",
        )?;
        check(
            (0..=23).contains(&self.start_hour),
            "start_hour",
            "must be between 0 and 23",
        )?;
        check(
            self.end_hour > self.start_hour && self.end_hour <= 24,
            "end_hour",
            "must be after start_hour and at most 24",
        )?;
        check(
            TIME_MULTIPLIER_BP.contains(&self.multiplier_bp),
            "multiplier_bp",
            "must be between 5000 and 30000 (×0.5 to ×3.0)",
        )?;
        check(
            self.label.as_deref().is_none_or(|l| l.len() <= 100),
            "label",
            "at most 100 characters",
        )
    }

    /// Whether two rules cover a common hour of the week.
    pub fn overlaps(&self, days: i16, start: i16, end: i16) -> bool {
        self.days_mask & days != 0 && self.start_hour < end && start < self.end_hour
    }
}

impl DiscountBody {
    /// Kind-specific required fields and ranges.
    pub fn validate(&self) -> ApiResult<()> {
        check(
            matches!(self.kind.as_str(), "promo" | "long_duration" | "membership"),
            "kind",
            "promo, long_duration or membership",
        )?;
        check(
            (1..=5_000).contains(&self.percent_bp),
            "percent_bp",
            "must be between 1 and 5000 (at most 50 %)",
        )?;
        match self.kind.as_str() {
            "promo" => check(
                self.code
                    .as_deref()
                    .is_some_and(|c| !c.trim().is_empty() && c.len() <= 64),
                "code",
                "a promo rule needs a code of 1 to 64 characters",
            )?,
            "long_duration" => check(
                self.min_duration_minutes.is_some_and(|m| m > 0),
                "min_duration_minutes",
                "a long_duration rule needs a positive min_duration_minutes",
            )?,
            _ => check(
                self.membership_tier
                    .as_deref()
                    .is_some_and(|t| !t.trim().is_empty() && t.len() <= 64),
                "membership_tier",
                "a membership rule needs a tier",
            )?,
        }
        if let (Some(from), Some(until)) = (self.valid_from, self.valid_until) {
            check(until > from, "valid_until", "must be after valid_from")?;
        }
        Ok(())
    }
}

async fn snapshot(
    conn: &mut PgConnection,
    sql: &str,
    region: Region,
    key: &str,
) -> ApiResult<Option<Value>> {
    Ok(sqlx::query_scalar(sql)
        .bind(region.code())
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?)
}

/// Serialises pricing changes of one region (held until the transaction ends).
pub async fn lock_region(conn: &mut PgConnection, region: Region) -> ApiResult<()> {
    sqlx::query("select pg_advisory_xact_lock(hashtext('pricing-admin:' || $1))")
        .bind(region.code())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

const BASE_RATE_ROW: &str =
    "select to_jsonb(t) from base_rates t where t.region = $1 and t.class = $2";
const CONFIG_ROW: &str =
    "select to_jsonb(t) from vehicle_config t where t.region = $1 and t.class = $2";
const TIME_ROW: &str =
    "select to_jsonb(t) from time_multipliers t where t.region = $1 and t.id::text = $2";
const DISCOUNT_ROW: &str =
    "select to_jsonb(t) from discount_rules t where t.region = $1 and t.id::text = $2";

/// Creates or replaces a class's base rate.
pub async fn base_rate_put(
    conn: &mut PgConnection,
    region: Region,
    class: &str,
    body: &BaseRateBody,
) -> ApiResult<Change> {
    let before = snapshot(conn, BASE_RATE_ROW, region, class).await?;
    // A rate without a floor and ceiling could not be quoted (the rate card joins both).
    if snapshot(conn, CONFIG_ROW, region, class).await?.is_none() {
        return Err(ApiError::field(
            "class",
            format!("set /vehicle-config/{class} (floor and ceiling) before its base rate"),
        ));
    }
    sqlx::query(
        "insert into base_rates (region, class, currency, per_hour_minor, per_day_minor)
         values ($1, $2, $3, $4, $5)
         on conflict (region, class) do update
            set currency = excluded.currency, per_hour_minor = excluded.per_hour_minor,
                per_day_minor = excluded.per_day_minor, updated_at = now()",
    )
    .bind(region.code())
    .bind(class)
    .bind(&body.currency)
    .bind(body.per_hour_minor)
    .bind(body.per_day_minor)
    .execute(&mut *conn)
    .await?;
    let after = snapshot(conn, BASE_RATE_ROW, region, class).await?;
    Ok(Change {
        action: if before.is_some() { "update" } else { "create" },
        entity: "base_rate",
        key: class.to_owned(),
        before,
        after,
    })
}

/// Creates or replaces a class's floor and ceiling.
pub async fn vehicle_config_put(
    conn: &mut PgConnection,
    region: Region,
    class: &str,
    body: &VehicleConfigBody,
) -> ApiResult<Change> {
    let before = snapshot(conn, CONFIG_ROW, region, class).await?;
    sqlx::query(
        "insert into vehicle_config (region, class, floor_minor, ceiling_minor)
         values ($1, $2, $3, $4)
         on conflict (region, class) do update
            set floor_minor = excluded.floor_minor, ceiling_minor = excluded.ceiling_minor,
                updated_at = now()",
    )
    .bind(region.code())
    .bind(class)
    .bind(body.floor_minor)
    .bind(body.ceiling_minor)
    .execute(&mut *conn)
    .await?;
    let after = snapshot(conn, CONFIG_ROW, region, class).await?;
    Ok(Change {
        action: if before.is_some() { "update" } else { "create" },
        entity: "vehicle_config",
        key: class.to_owned(),
        before,
        after,
    })
}

/// Creates (`id` = None) or replaces a time-of-day rule, refusing an overlap with any other
/// rule of the region (call [`lock_region`] first).
pub async fn time_multiplier_upsert(
    conn: &mut PgConnection,
    region: Region,
    id: Option<Uuid>,
    body: &TimeMultiplierBody,
) -> ApiResult<Change> {
    let before = match id {
        Some(id) => Some(
            snapshot(conn, TIME_ROW, region, &id.to_string())
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("no time multiplier {id}")))?,
        ),
        None => None,
    };
    let others: Vec<(Uuid, i16, i16, i16)> = sqlx::query_as(
        "select id, days_mask, start_hour, end_hour from time_multipliers
          where region = $1 and ($2::uuid is null or id <> $2)",
    )
    .bind(region.code())
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    if let Some((other, ..)) = others
        .iter()
        .find(|(_, days, start, end)| body.overlaps(*days, *start, *end))
    {
        return Err(ApiError::field(
            "start_hour",
            format!("the window overlaps time multiplier {other} on a common day"),
        ));
    }
    let id = id.unwrap_or_else(Uuid::now_v7);
    sqlx::query(
        "insert into time_multipliers (id, region, days_mask, start_hour, end_hour, multiplier_bp, label)
         values ($1, $2, $3, $4, $5, $6, coalesce($7, ''))
         on conflict (id) do update
            set days_mask = excluded.days_mask, start_hour = excluded.start_hour,
                end_hour = excluded.end_hour, multiplier_bp = excluded.multiplier_bp,
                label = excluded.label, updated_at = now()",
    )
    .bind(id)
    .bind(region.code())
    .bind(body.days_mask)
    .bind(body.start_hour)
    .bind(body.end_hour)
    .bind(body.multiplier_bp)
    .bind(&body.label)
    .execute(&mut *conn)
    .await?;
    let after = snapshot(conn, TIME_ROW, region, &id.to_string()).await?;
    Ok(Change {
        action: if before.is_some() { "update" } else { "create" },
        entity: "time_multiplier",
        key: id.to_string(),
        before,
        after,
    })
}

/// Deletes a time-of-day rule.
pub async fn time_multiplier_delete(
    conn: &mut PgConnection,
    region: Region,
    id: Uuid,
) -> ApiResult<Change> {
    let before = snapshot(conn, TIME_ROW, region, &id.to_string())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no time multiplier {id}")))?;
    sqlx::query("delete from time_multipliers where id = $1 and region = $2")
        .bind(id)
        .bind(region.code())
        .execute(&mut *conn)
        .await?;
    Ok(Change {
        action: "delete",
        entity: "time_multiplier",
        key: id.to_string(),
        before: Some(before),
        after: None,
    })
}

/// Creates (`id` = None) or replaces a discount rule.
pub async fn discount_upsert(
    conn: &mut PgConnection,
    region: Region,
    id: Option<Uuid>,
    body: &DiscountBody,
) -> ApiResult<Change> {
    let before = match id {
        Some(id) => Some(
            snapshot(conn, DISCOUNT_ROW, region, &id.to_string())
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("no discount rule {id}")))?,
        ),
        None => None,
    };
    let id = id.unwrap_or_else(Uuid::now_v7);
    let written = sqlx::query(
        "insert into discount_rules (id, region, kind, code, percent_bp, min_duration_minutes,
                                     membership_tier, valid_from, valid_until, active)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, coalesce($10, true))
         on conflict (id) do update
            set kind = excluded.kind, code = excluded.code, percent_bp = excluded.percent_bp,
                min_duration_minutes = excluded.min_duration_minutes,
                membership_tier = excluded.membership_tier, valid_from = excluded.valid_from,
                valid_until = excluded.valid_until, active = excluded.active, updated_at = now()",
    )
    .bind(id)
    .bind(region.code())
    .bind(&body.kind)
    .bind(body.code.as_deref().map(str::trim))
    .bind(body.percent_bp)
    .bind(body.min_duration_minutes)
    .bind(&body.membership_tier)
    .bind(body.valid_from)
    .bind(body.valid_until)
    .bind(body.active)
    .execute(&mut *conn)
    .await;
    if let Err(sqlx::Error::Database(db)) = &written {
        if db.constraint() == Some("discount_rules_promo_code") {
            return Err(ApiError::field(
                "code",
                "another promo rule of this region has that code",
            ));
        }
    }
    written?;
    let after = snapshot(conn, DISCOUNT_ROW, region, &id.to_string()).await?;
    Ok(Change {
        action: if before.is_some() { "update" } else { "create" },
        entity: "discount_rule",
        key: id.to_string(),
        before,
        after,
    })
}

/// Deletes a discount rule.
pub async fn discount_delete(
    conn: &mut PgConnection,
    region: Region,
    id: Uuid,
) -> ApiResult<Change> {
    let before = snapshot(conn, DISCOUNT_ROW, region, &id.to_string())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no discount rule {id}")))?;
    sqlx::query("delete from discount_rules where id = $1 and region = $2")
        .bind(id)
        .bind(region.code())
        .execute(&mut *conn)
        .await?;
    Ok(Change {
        action: "delete",
        entity: "discount_rule",
        key: id.to_string(),
        before: Some(before),
        after: None,
    })
}

/// Writes the audit row of a change (same transaction); returns its id.
pub async fn audit(
    conn: &mut PgConnection,
    region: Region,
    actor: &str,
    request_id: Option<&str>,
    change: &Change,
) -> ApiResult<i64> {
    Ok(sqlx::query_scalar(
        "insert into pricing_audit (region, actor, action, entity, entity_key, before, after, request_id)
         values ($1, $2, $3, $4, $5, $6, $7, $8) returning id",
    )
    .bind(region.code())
    .bind(actor)
    .bind(change.action)
    .bind(change.entity)
    .bind(&change.key)
    .bind(&change.before)
    .bind(&change.after)
    .bind(request_id)
    .fetch_one(&mut *conn)
    .await?)
}

/// The region's whole pricing configuration as JSON (for `GET /v1/admin/pricing/{region}`).
pub async fn overview(conn: &mut PgConnection, region: Region) -> ApiResult<Value> {
    let value: Value = sqlx::query_scalar(
        "select jsonb_build_object(
            'region', $1::text,
            'base_rates', coalesce((select jsonb_agg(to_jsonb(t) order by t.class) from base_rates t where t.region = $1), '[]'),
            'vehicle_config', coalesce((select jsonb_agg(to_jsonb(t) order by t.class) from vehicle_config t where t.region = $1), '[]'),
            'time_multipliers', coalesce((select jsonb_agg(to_jsonb(t) order by t.days_mask, t.start_hour) from time_multipliers t where t.region = $1), '[]'),
            'discount_rules', coalesce((select jsonb_agg(to_jsonb(t) order by t.kind, t.id) from discount_rules t where t.region = $1), '[]'))",
    )
    .bind(region.code())
    .fetch_one(&mut *conn)
    .await?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(days: i16, start: i16, end: i16, bp: i32) -> TimeMultiplierBody {
        TimeMultiplierBody {
            days_mask: days,
            start_hour: start,
            end_hour: end,
            multiplier_bp: bp,
            label: None,
        }
    }

    fn field(r: ApiResult<()>) -> Option<String> {
        match r {
            Err(ApiError::Validation { field, .. }) => field,
            _ => None,
        }
    }

    #[test]
    fn time_windows_overlap_only_on_a_common_day_and_hour() {
        let weekday_morning = rule(0b001_1111, 7, 10, 12_000);
        assert!(weekday_morning.overlaps(0b000_0001, 9, 11));
        assert!(
            !weekday_morning.overlaps(0b000_0001, 10, 12),
            "half-open hours"
        );
        assert!(!weekday_morning.overlaps(0b110_0000, 7, 10), "weekend");
    }

    #[test]
    fn each_bad_value_names_its_field() {
        assert_eq!(
            field(rule(0, 7, 10, 12_000).validate()).as_deref(),
            Some("days_mask")
        );
        assert_eq!(
            field(rule(1, 24, 24, 12_000).validate()).as_deref(),
            Some("start_hour")
        );
        assert_eq!(
            field(rule(1, 7, 7, 12_000).validate()).as_deref(),
            Some("end_hour")
        );
        assert_eq!(
            field(rule(1, 7, 9, 300_000).validate()).as_deref(),
            Some("multiplier_bp")
        );
        assert!(rule(1, 7, 9, 30_000).validate().is_ok());
        let rate = BaseRateBody {
            currency: "SEK".into(),
            per_hour_minor: 100,
            per_day_minor: 1_000,
        };
        assert_eq!(
            field(rate.validate(Region::Euw)).as_deref(),
            Some("currency")
        );
        assert!(rate.validate(Region::Eun).is_ok());
        let cfg = VehicleConfigBody {
            floor_minor: 500,
            ceiling_minor: 100,
        };
        assert_eq!(field(cfg.validate()).as_deref(), Some("ceiling_minor"));
        let promo = DiscountBody {
            kind: "promo".into(),
            code: None,
            percent_bp: 1_000,
            min_duration_minutes: None,
            membership_tier: None,
            valid_from: None,
            valid_until: None,
            active: None,
        };
        assert_eq!(field(promo.validate()).as_deref(), Some("code"));
        let greedy = DiscountBody {
            code: Some("ALL".into()),
            percent_bp: 9_000,
            ..promo
        };
        assert_eq!(field(greedy.validate()).as_deref(), Some("percent_bp"));
    }
}
