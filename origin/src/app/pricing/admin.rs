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
//!
//! This module decides; the statements are in `store/pricing_admin.rs`. Refusals are
//! [`AdminError`]s, which `http/error.rs` turns into 422 (naming the field) and 404.

use chrono::{DateTime, Utc};
use domain::region::Region;
use domain::vehicle::VehicleClass;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::store::pricing_admin::{
    self as store, AuditEntry, DiscountFields, DiscountWrite, TimeMultiplierFields,
};

/// Why a change was not made. The HTTP layer (`http/error.rs`) maps each to its answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdminError {
    /// The change breaks a rule; `field` names the culprit.
    #[error("{detail}")]
    Invalid { field: &'static str, detail: String },
    /// The rule to replace or delete does not exist in that region.
    #[error("{0}")]
    NotFound(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Result of an admin operation.
pub(crate) type AdminResult<T> = Result<T, AdminError>;
/// Sane range of a time-of-day multiplier: ×0.5 … ×3.0.
pub(crate) const TIME_MULTIPLIER_BP: std::ops::RangeInclusive<i32> = 5_000..=30_000;

/// `PUT …/base-rates/{class}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BaseRateBody {
    /// Must be the region's currency (EUR for EUW, SEK for EUN).
    #[schema(pattern = "^(EUR|SEK)$")]
    pub currency: String,
    /// Price of a started hour, minor units, 1 … 10 000 000.
    #[schema(minimum = 1, maximum = 10_000_000)]
    pub per_hour_minor: i64,
    /// Price of a day, minor units, at least one hour's price, at most 100 000 000.
    #[schema(minimum = 1, maximum = 100_000_000)]
    pub per_day_minor: i64,
}

/// `PUT …/vehicle-config/{class}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct VehicleConfigBody {
    /// Lowest total, minor units, ≥ 0.
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub floor_minor: i64,
    /// Highest total, minor units, ≥ floor, at most 1 000 000 000.
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub ceiling_minor: i64,
    /// Minutes a vehicle of the class stays unbookable after each booking (cleaning,
    /// charging), 0–1440. Absent: unchanged (0 for a new class). Applies to bookings made from
    /// now on; existing bookings keep the buffer they were made with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 1440)]
    pub turnaround_minutes: Option<i32>,
}

/// `POST …/time-multipliers`, `PUT …/time-multipliers/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TimeMultiplierBody {
    /// Local weekdays, bit 0 = Monday … bit 6 = Sunday (1 … 127).
    #[schema(minimum = 1, maximum = 127)]
    pub days_mask: i16,
    /// First local hour covered, 0 … 23.
    #[schema(minimum = 0, maximum = 23)]
    pub start_hour: i16,
    /// Hour after the last one covered, start_hour + 1 … 24.
    #[schema(minimum = 1, maximum = 24)]
    pub end_hour: i16,
    /// 5 000 … 30 000 basis points (×0.5 … ×3.0).
    #[schema(minimum = 5_000, maximum = 30_000)]
    pub multiplier_bp: i32,
    #[serde(default)]
    #[schema(max_length = 100)]
    pub label: Option<String>,
}

/// `POST …/discount-rules`, `PUT …/discount-rules/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DiscountBody {
    /// `promo`, `long_duration` or `membership`.
    #[schema(pattern = "^(promo|long_duration|membership)$")]
    pub kind: String,
    /// Promo code (promo rules), 1 … 64 characters, unique per region.
    #[serde(default)]
    pub code: Option<String>,
    /// 1 … 5 000 basis points (at most 50 %).
    #[schema(minimum = 1, maximum = 5_000)]
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
pub(crate) struct Change {
    pub action: &'static str,
    pub entity: &'static str,
    pub key: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

fn check(ok: bool, field: &'static str, detail: impl Into<String>) -> AdminResult<()> {
    if ok {
        Ok(())
    } else {
        Err(AdminError::Invalid {
            field,
            detail: detail.into(),
        })
    }
}

impl BaseRateBody {
    /// Range and currency checks.
    pub(crate) fn validate(&self, region: Region) -> AdminResult<()> {
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
    /// Floor ≥ 0, ceiling ≥ floor, buffer 0–1440 minutes.
    pub(crate) fn validate(&self) -> AdminResult<()> {
        check(self.floor_minor >= 0, "floor_minor", "must be at least 0")?;
        check(
            (self.floor_minor..=1_000_000_000).contains(&self.ceiling_minor),
            "ceiling_minor",
            "must be at least floor_minor and at most 1000000000",
        )?;
        check(
            self.turnaround_minutes
                .is_none_or(|m| (0..=1440).contains(&m)),
            "turnaround_minutes",
            "must be between 0 and 1440",
        )
    }
}

impl TimeMultiplierBody {
    /// Ranges (overlap is checked against the database, see [`time_multiplier_upsert`]).
    pub(crate) fn validate(&self) -> AdminResult<()> {
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
    pub(crate) fn overlaps(&self, days: i16, start: i16, end: i16) -> bool {
        self.days_mask & days != 0 && self.start_hour < end && start < self.end_hour
    }
}

impl DiscountBody {
    /// Kind-specific required fields and ranges.
    pub(crate) fn validate(&self) -> AdminResult<()> {
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

/// Serialises pricing changes of one region (held until the transaction ends).
pub(crate) async fn lock_region(conn: &mut PgConnection, region: Region) -> AdminResult<()> {
    Ok(store::lock_region(conn, region).await?)
}

fn created_or_updated(before: &Option<Value>) -> &'static str {
    if before.is_some() {
        "update"
    } else {
        "create"
    }
}

/// Creates or replaces a class's base rate.
pub(crate) async fn base_rate_put(
    conn: &mut PgConnection,
    region: Region,
    class: VehicleClass,
    body: &BaseRateBody,
) -> AdminResult<Change> {
    let before = store::base_rate_row(conn, region, class).await?;
    // A rate without a floor and ceiling could not be quoted (the rate card joins both).
    if store::vehicle_config_row(conn, region, class)
        .await?
        .is_none()
    {
        return Err(AdminError::Invalid {
            field: "class",
            detail: format!("set /vehicle-config/{class} (floor and ceiling) before its base rate"),
        });
    }
    store::upsert_base_rate(conn, region, class, body.per_hour_minor, body.per_day_minor).await?;
    let after = store::base_rate_row(conn, region, class).await?;
    Ok(Change {
        action: created_or_updated(&before),
        entity: "base_rate",
        key: class.as_str().to_owned(),
        before,
        after,
    })
}

/// Creates or replaces a class's floor and ceiling.
pub(crate) async fn vehicle_config_put(
    conn: &mut PgConnection,
    region: Region,
    class: VehicleClass,
    body: &VehicleConfigBody,
) -> AdminResult<Change> {
    let before = store::vehicle_config_row(conn, region, class).await?;
    store::upsert_vehicle_config(
        conn,
        region,
        class,
        body.floor_minor,
        body.ceiling_minor,
        body.turnaround_minutes,
    )
    .await?;
    let after = store::vehicle_config_row(conn, region, class).await?;
    Ok(Change {
        action: created_or_updated(&before),
        entity: "vehicle_config",
        key: class.as_str().to_owned(),
        before,
        after,
    })
}

/// Creates (`id` = None) or replaces a time-of-day rule, refusing an overlap with any other
/// rule of the region (call [`lock_region`] first).
pub(crate) async fn time_multiplier_upsert(
    conn: &mut PgConnection,
    region: Region,
    id: Option<Uuid>,
    body: &TimeMultiplierBody,
) -> AdminResult<Change> {
    let before = match id {
        Some(id) => Some(
            store::time_multiplier_row(conn, region, id)
                .await?
                .ok_or_else(|| AdminError::NotFound(format!("no time multiplier {id}")))?,
        ),
        None => None,
    };
    let others = store::time_windows(conn, region, id).await?;
    if let Some(other) = others
        .iter()
        .find(|w| body.overlaps(w.days_mask, w.start_hour, w.end_hour))
    {
        return Err(AdminError::Invalid {
            field: "start_hour",
            detail: format!(
                "the window overlaps time multiplier {} on a common day",
                other.id
            ),
        });
    }
    let id = id.unwrap_or_else(Uuid::now_v7);
    let fields = TimeMultiplierFields {
        days_mask: body.days_mask,
        start_hour: body.start_hour,
        end_hour: body.end_hour,
        multiplier_bp: body.multiplier_bp,
        label: body.label.as_deref(),
    };
    store::upsert_time_multiplier(conn, region, id, &fields).await?;
    let after = store::time_multiplier_row(conn, region, id).await?;
    Ok(Change {
        action: created_or_updated(&before),
        entity: "time_multiplier",
        key: id.to_string(),
        before,
        after,
    })
}

/// Deletes a time-of-day rule.
pub(crate) async fn time_multiplier_delete(
    conn: &mut PgConnection,
    region: Region,
    id: Uuid,
) -> AdminResult<Change> {
    let before = store::time_multiplier_row(conn, region, id)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no time multiplier {id}")))?;
    store::delete_time_multiplier(conn, region, id).await?;
    Ok(Change {
        action: "delete",
        entity: "time_multiplier",
        key: id.to_string(),
        before: Some(before),
        after: None,
    })
}

/// Creates (`id` = None) or replaces a discount rule.
pub(crate) async fn discount_upsert(
    conn: &mut PgConnection,
    region: Region,
    id: Option<Uuid>,
    body: &DiscountBody,
) -> AdminResult<Change> {
    let before = match id {
        Some(id) => Some(
            store::discount_row(conn, region, id)
                .await?
                .ok_or_else(|| AdminError::NotFound(format!("no discount rule {id}")))?,
        ),
        None => None,
    };
    let id = id.unwrap_or_else(Uuid::now_v7);
    let fields = DiscountFields {
        kind: &body.kind,
        code: body.code.as_deref().map(str::trim),
        percent_bp: body.percent_bp,
        min_duration_minutes: body.min_duration_minutes,
        membership_tier: body.membership_tier.as_deref(),
        valid_from: body.valid_from,
        valid_until: body.valid_until,
        active: body.active,
    };
    match store::upsert_discount(conn, region, id, &fields).await? {
        DiscountWrite::Written => {}
        DiscountWrite::CodeTaken => {
            return Err(AdminError::Invalid {
                field: "code",
                detail: "another promo rule of this region has that code".into(),
            })
        }
    }
    let after = store::discount_row(conn, region, id).await?;
    Ok(Change {
        action: created_or_updated(&before),
        entity: "discount_rule",
        key: id.to_string(),
        before,
        after,
    })
}

/// Deletes a discount rule.
pub(crate) async fn discount_delete(
    conn: &mut PgConnection,
    region: Region,
    id: Uuid,
) -> AdminResult<Change> {
    let before = store::discount_row(conn, region, id)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no discount rule {id}")))?;
    store::delete_discount(conn, region, id).await?;
    Ok(Change {
        action: "delete",
        entity: "discount_rule",
        key: id.to_string(),
        before: Some(before),
        after: None,
    })
}

/// Writes the audit row of a change (same transaction); returns its id.
pub(crate) async fn audit(
    conn: &mut PgConnection,
    region: Region,
    actor: &str,
    request_id: Option<&str>,
    change: &Change,
) -> AdminResult<i64> {
    let entry = AuditEntry {
        region,
        actor,
        request_id,
        action: change.action,
        entity: change.entity,
        key: &change.key,
        before: change.before.as_ref(),
        after: change.after.as_ref(),
    };
    Ok(store::insert_audit(conn, &entry).await?)
}

/// The region's whole pricing configuration as JSON (for `GET /v1/admin/pricing/{region}`).
pub(crate) async fn overview(conn: &mut PgConnection, region: Region) -> AdminResult<Value> {
    Ok(store::overview(conn, region).await?)
}

/// The newest `limit` audit rows, of one region or all, newest first (a JSON array).
pub(crate) async fn audit_log(
    pool: &PgPool,
    region: Option<Region>,
    limit: u32,
) -> AdminResult<Value> {
    Ok(store::audit_log(pool, region, i64::from(limit)).await?)
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

    fn field(r: AdminResult<()>) -> Option<&'static str> {
        match r {
            Err(AdminError::Invalid { field, .. }) => Some(field),
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
        assert_eq!(field(rule(0, 7, 10, 12_000).validate()), Some("days_mask"));
        assert_eq!(
            field(rule(1, 24, 24, 12_000).validate()),
            Some("start_hour")
        );
        assert_eq!(field(rule(1, 7, 7, 12_000).validate()), Some("end_hour"));
        assert_eq!(
            field(rule(1, 7, 9, 300_000).validate()),
            Some("multiplier_bp")
        );
        assert!(rule(1, 7, 9, 30_000).validate().is_ok());
        let rate = BaseRateBody {
            currency: "SEK".into(),
            per_hour_minor: 100,
            per_day_minor: 1_000,
        };
        assert_eq!(field(rate.validate(Region::Euw)), Some("currency"));
        assert!(rate.validate(Region::Eun).is_ok());
        let cfg = VehicleConfigBody {
            floor_minor: 500,
            ceiling_minor: 100,
            turnaround_minutes: None,
        };
        assert_eq!(field(cfg.validate()), Some("ceiling_minor"));
        for (minutes, ok) in [(-1, false), (0, true), (1440, true), (1441, false)] {
            let cfg = VehicleConfigBody {
                floor_minor: 0,
                ceiling_minor: 100,
                turnaround_minutes: Some(minutes),
            };
            assert_eq!(
                field(cfg.validate()),
                (!ok).then_some("turnaround_minutes"),
                "{minutes}"
            );
        }
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
        assert_eq!(field(promo.validate()), Some("code"));
        let greedy = DiscountBody {
            code: Some("ALL".into()),
            percent_bp: 9_000,
            ..promo
        };
        assert_eq!(field(greedy.validate()), Some("percent_bp"));
    }
}
