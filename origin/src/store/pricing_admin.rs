//! The pricing tables as the admin API changes them, and their audit trail (`pricing_audit`).
//!
//! Statements only: the rules (ranges, no overlapping time windows, a rate needs its floor and
//! ceiling first) are decided in `app/pricing/admin.rs`, which calls these inside one
//! transaction per change. Rows are snapshotted as JSON (`to_jsonb`) because the audit trail
//! and the API show them whole, exactly as stored.

use chrono::{DateTime, Utc};
use domain::region::Region;
use domain::vehicle::VehicleClass;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// Serialises pricing changes of one region (held until the transaction ends).
#[tracing::instrument(level = "debug", name = "db.pricing_admin.lock_region", skip_all)]
pub(crate) async fn lock_region(conn: &mut PgConnection, region: Region) -> sqlx::Result<()> {
    // The function returns `void`, which the query macros cannot type: declare it as `()`.
    sqlx::query!(
        r#"select pg_advisory_xact_lock(hashtext('pricing-admin:' || $1)) as "locked: ()""#,
        region.code(),
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// One row of a pricing table as JSON (`to_jsonb`), by region and key: the snapshot an
/// audited change takes before and after. The table and key column are literals joined into
/// the statement, so the query macros still check each statement.
macro_rules! row_as_json {
    ($conn:expr, $table:literal, $key_column:literal, $region:expr, $key:expr) => {
        sqlx::query_scalar!(
            r#"select to_jsonb(t) as "row!" from "#
                + $table
                + " t where t.region = $1 and t."
                + $key_column
                + " = $2",
            $region.code(),
            $key,
        )
        .fetch_optional(&mut *$conn)
        .await
    };
}

/// A class's `base_rates` row as JSON.
#[tracing::instrument(level = "debug", name = "db.pricing_admin.base_rate_row", skip_all)]
pub(crate) async fn base_rate_row(
    conn: &mut PgConnection,
    region: Region,
    class: VehicleClass,
) -> sqlx::Result<Option<Value>> {
    row_as_json!(conn, "base_rates", "class", region, class.as_str())
}

/// A class's `vehicle_config` row as JSON.
#[tracing::instrument(
    level = "debug",
    name = "db.pricing_admin.vehicle_config_row",
    skip_all
)]
pub(crate) async fn vehicle_config_row(
    conn: &mut PgConnection,
    region: Region,
    class: VehicleClass,
) -> sqlx::Result<Option<Value>> {
    row_as_json!(conn, "vehicle_config", "class", region, class.as_str())
}

/// A `time_multipliers` row of the region as JSON.
#[tracing::instrument(
    level = "debug",
    name = "db.pricing_admin.time_multiplier_row",
    skip_all
)]
pub(crate) async fn time_multiplier_row(
    conn: &mut PgConnection,
    region: Region,
    id: Uuid,
) -> sqlx::Result<Option<Value>> {
    row_as_json!(conn, "time_multipliers", "id", region, id)
}

/// A `discount_rules` row of the region as JSON.
#[tracing::instrument(level = "debug", name = "db.pricing_admin.discount_row", skip_all)]
pub(crate) async fn discount_row(
    conn: &mut PgConnection,
    region: Region,
    id: Uuid,
) -> sqlx::Result<Option<Value>> {
    row_as_json!(conn, "discount_rules", "id", region, id)
}

/// Creates or replaces a class's base rate (in the region's currency).
#[tracing::instrument(level = "debug", name = "db.pricing_admin.upsert_base_rate", skip_all)]
pub(crate) async fn upsert_base_rate(
    conn: &mut PgConnection,
    region: Region,
    class: VehicleClass,
    per_hour_minor: i64,
    per_day_minor: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into base_rates (region, class, currency, per_hour_minor, per_day_minor)
         values ($1, $2, $3, $4, $5)
         on conflict (region, class) do update
            set currency = excluded.currency, per_hour_minor = excluded.per_hour_minor,
                per_day_minor = excluded.per_day_minor, updated_at = now()",
        region.code(),
        class.as_str(),
        region.currency().code(),
        per_hour_minor,
        per_day_minor,
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Creates or replaces a class's floor and ceiling, and its turnaround buffer when given
/// (`None` keeps the current one; a new row gets 0).
#[tracing::instrument(
    level = "debug",
    name = "db.pricing_admin.upsert_vehicle_config",
    skip_all
)]
pub(crate) async fn upsert_vehicle_config(
    conn: &mut PgConnection,
    region: Region,
    class: VehicleClass,
    floor_minor: i64,
    ceiling_minor: i64,
    turnaround_minutes: Option<i32>,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into vehicle_config (region, class, floor_minor, ceiling_minor, turnaround_minutes)
         values ($1, $2, $3, $4, coalesce($5, 0))
         on conflict (region, class) do update
            set floor_minor = excluded.floor_minor, ceiling_minor = excluded.ceiling_minor,
                turnaround_minutes = coalesce($5, vehicle_config.turnaround_minutes),
                updated_at = now()",
        region.code(),
        class.as_str(),
        floor_minor,
        ceiling_minor,
        turnaround_minutes,
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The hours of the week a time-of-day rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeWindowRow {
    pub id: Uuid,
    pub days_mask: i16,
    pub start_hour: i16,
    pub end_hour: i16,
}

/// The windows of every time-of-day rule of the region except `except` (the rule being
/// replaced, if any).
#[tracing::instrument(level = "debug", name = "db.pricing_admin.time_windows", skip_all)]
pub(crate) async fn time_windows(
    conn: &mut PgConnection,
    region: Region,
    except: Option<Uuid>,
) -> sqlx::Result<Vec<TimeWindowRow>> {
    sqlx::query_as!(
        TimeWindowRow,
        "select id, days_mask, start_hour, end_hour from time_multipliers
          where region = $1 and ($2::uuid is null or id <> $2)",
        region.code(),
        except,
    )
    .fetch_all(&mut *conn)
    .await
}

/// A time-of-day rule as written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TimeMultiplierFields<'a> {
    pub days_mask: i16,
    pub start_hour: i16,
    pub end_hour: i16,
    pub multiplier_bp: i32,
    /// `None` stores an empty label.
    pub label: Option<&'a str>,
}

/// Creates or replaces the time-of-day rule `id`.
#[tracing::instrument(
    level = "debug",
    name = "db.pricing_admin.upsert_time_multiplier",
    skip_all
)]
pub(crate) async fn upsert_time_multiplier(
    conn: &mut PgConnection,
    region: Region,
    id: Uuid,
    rule: &TimeMultiplierFields<'_>,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into time_multipliers (id, region, days_mask, start_hour, end_hour, multiplier_bp, label)
         values ($1, $2, $3, $4, $5, $6, coalesce($7, ''))
         on conflict (id) do update
            set days_mask = excluded.days_mask, start_hour = excluded.start_hour,
                end_hour = excluded.end_hour, multiplier_bp = excluded.multiplier_bp,
                label = excluded.label, updated_at = now()",
        id,
        region.code(),
        rule.days_mask,
        rule.start_hour,
        rule.end_hour,
        rule.multiplier_bp,
        rule.label,
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Deletes rule `id` of the region from a rule table (`time_multipliers`, `discount_rules`).
macro_rules! delete_rule {
    ($conn:expr, $table:literal, $region:expr, $id:expr) => {
        sqlx::query!(
            "delete from " + $table + " where id = $1 and region = $2",
            $id,
            $region.code(),
        )
        .execute(&mut *$conn)
        .await
        .map(drop)
    };
}

/// Deletes the time-of-day rule `id` of the region.
#[tracing::instrument(
    level = "debug",
    name = "db.pricing_admin.delete_time_multiplier",
    skip_all
)]
pub(crate) async fn delete_time_multiplier(
    conn: &mut PgConnection,
    region: Region,
    id: Uuid,
) -> sqlx::Result<()> {
    delete_rule!(conn, "time_multipliers", region, id)
}

/// A discount rule as written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DiscountFields<'a> {
    /// `promo`, `long_duration` or `membership` (the column's check).
    pub kind: &'a str,
    pub code: Option<&'a str>,
    pub percent_bp: i32,
    pub min_duration_minutes: Option<i64>,
    pub membership_tier: Option<&'a str>,
    pub valid_from: Option<DateTime<Utc>>,
    pub valid_until: Option<DateTime<Utc>>,
    /// `None` stores `true`.
    pub active: Option<bool>,
}

/// How writing a discount rule ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DiscountWrite {
    Written,
    /// Another promo rule of the region has that code (`discount_rules_promo_code`); nothing
    /// was written.
    CodeTaken,
}

/// Creates or replaces the discount rule `id`.
///
/// A taken promo code fails the statement, which aborts the caller's transaction: roll it back
/// after [`DiscountWrite::CodeTaken`].
#[tracing::instrument(level = "debug", name = "db.pricing_admin.upsert_discount", skip_all)]
pub(crate) async fn upsert_discount(
    conn: &mut PgConnection,
    region: Region,
    id: Uuid,
    rule: &DiscountFields<'_>,
) -> sqlx::Result<DiscountWrite> {
    let written = sqlx::query!(
        "insert into discount_rules (id, region, kind, code, percent_bp, min_duration_minutes,
                                     membership_tier, valid_from, valid_until, active)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, coalesce($10, true))
         on conflict (id) do update
            set kind = excluded.kind, code = excluded.code, percent_bp = excluded.percent_bp,
                min_duration_minutes = excluded.min_duration_minutes,
                membership_tier = excluded.membership_tier, valid_from = excluded.valid_from,
                valid_until = excluded.valid_until, active = excluded.active, updated_at = now()",
        id,
        region.code(),
        rule.kind,
        rule.code,
        rule.percent_bp,
        rule.min_duration_minutes,
        rule.membership_tier,
        rule.valid_from,
        rule.valid_until,
        rule.active,
    )
    .execute(&mut *conn)
    .await;
    match written {
        Ok(_) => Ok(DiscountWrite::Written),
        Err(sqlx::Error::Database(db)) if db.constraint() == Some("discount_rules_promo_code") => {
            Ok(DiscountWrite::CodeTaken)
        }
        Err(e) => Err(e),
    }
}

/// Deletes the discount rule `id` of the region.
#[tracing::instrument(level = "debug", name = "db.pricing_admin.delete_discount", skip_all)]
pub(crate) async fn delete_discount(
    conn: &mut PgConnection,
    region: Region,
    id: Uuid,
) -> sqlx::Result<()> {
    delete_rule!(conn, "discount_rules", region, id)
}

/// One `pricing_audit` row to write.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AuditEntry<'a> {
    pub region: Region,
    pub actor: &'a str,
    pub request_id: Option<&'a str>,
    /// `create`, `update` or `delete`.
    pub action: &'a str,
    /// `base_rate`, `vehicle_config`, `time_multiplier` or `discount_rule`.
    pub entity: &'a str,
    /// The class or rule id.
    pub key: &'a str,
    pub before: Option<&'a Value>,
    pub after: Option<&'a Value>,
}

/// Writes an audit row (in the change's transaction); returns its id.
#[tracing::instrument(level = "debug", name = "db.pricing_admin.insert_audit", skip_all)]
pub(crate) async fn insert_audit(
    conn: &mut PgConnection,
    entry: &AuditEntry<'_>,
) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        "insert into pricing_audit (region, actor, action, entity, entity_key, before, after, request_id)
         values ($1, $2, $3, $4, $5, $6, $7, $8) returning id",
        entry.region.code(),
        entry.actor,
        entry.action,
        entry.entity,
        entry.key,
        entry.before,
        entry.after,
        entry.request_id,
    )
    .fetch_one(&mut *conn)
    .await
}

/// The region's whole pricing configuration as one JSON object.
#[tracing::instrument(level = "debug", name = "db.pricing_admin.overview", skip_all)]
pub(crate) async fn overview(conn: &mut PgConnection, region: Region) -> sqlx::Result<Value> {
    sqlx::query_scalar!(
        r#"select jsonb_build_object(
            'region', $1::text,
            'base_rates', coalesce((select jsonb_agg(to_jsonb(t) order by t.class) from base_rates t where t.region = $1), '[]'),
            'vehicle_config', coalesce((select jsonb_agg(to_jsonb(t) order by t.class) from vehicle_config t where t.region = $1), '[]'),
            'time_multipliers', coalesce((select jsonb_agg(to_jsonb(t) order by t.days_mask, t.start_hour) from time_multipliers t where t.region = $1), '[]'),
            'discount_rules', coalesce((select jsonb_agg(to_jsonb(t) order by t.kind, t.id) from discount_rules t where t.region = $1), '[]'))
            as "overview!""#,
        region.code(),
    )
    .fetch_one(&mut *conn)
    .await
}

/// The newest `limit` audit rows (of one region, or all), newest first, as a JSON array.
#[tracing::instrument(level = "debug", name = "db.pricing_admin.audit_log", skip_all)]
pub(crate) async fn audit_log(
    pool: &PgPool,
    region: Option<Region>,
    limit: i64,
) -> sqlx::Result<Value> {
    sqlx::query_scalar!(
        r#"select coalesce(jsonb_agg(to_jsonb(a) order by a.id desc), '[]') as "items!"
             from (select * from pricing_audit where $1::text is null or region = $1
                    order by id desc limit $2) a"#,
        region.map(Region::code),
        limit,
    )
    .fetch_one(pool)
    .await
}
