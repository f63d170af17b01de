//! The API-key repository: `api_keys` (keys, never deleted: a revocation is recorded, so the
//! table is the audit log; the secret is not in it, only its hash) and `api_key_versions`
//! (each region's key-set version, moved by every change in the change's transaction; see
//! `crate::redis::key_sync`).
//!
//! Rows become domain values here: a key's limits are a [`Plan`], checked again on the way
//! out, so a row the domain refuses is a decode error ([`super::corrupt`]), never a plan that
//! reaches the edges.

use chrono::{DateTime, Utc};
use domain::api_key::{Plan, Published};
use domain::ids::ApiKeyId;
use domain::region::Region;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::corrupt;

/// How long a revoked or expired key stays published, so an edge can tell an app its key was
/// revoked (or has expired) rather than that it is unknown.
pub(crate) const PUBLISHED_AFTER_END_DAYS: i32 = 7;

/// A key as stored (never its secret).
#[derive(Debug, Clone)]
pub(crate) struct Key {
    pub id: Uuid,
    pub region: Region,
    pub name: String,
    /// The secret's first characters (`domain::api_key::display_prefix`).
    pub secret_prefix: String,
    pub plan: Plan,
    /// Canonical origins; empty: any.
    pub allowed_origins: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
}

impl Key {
    /// The public id, `key_<region>_<hex>`.
    pub(crate) fn public_id(&self) -> ApiKeyId {
        ApiKeyId::new(self.region, self.id)
    }
}

/// A row as PostgreSQL gives it, before it becomes a [`Key`].
struct Row {
    id: Uuid,
    region: String,
    name: String,
    secret_prefix: String,
    per_minute: i32,
    per_day: i32,
    burst_secs: i32,
    allowed_origins: Vec<String>,
    created_at: DateTime<Utc>,
    created_by: String,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    revoked_by: Option<String>,
}

/// The plan of stored limits, or a decode error.
fn plan_of(per_minute: i32, per_day: i32, burst_secs: i32) -> sqlx::Result<Plan> {
    let per_minute = u32::try_from(per_minute).map_err(corrupt)?;
    let per_day = u32::try_from(per_day).map_err(corrupt)?;
    let burst_secs = u64::try_from(burst_secs).map_err(corrupt)?;
    Plan::new(per_minute, per_day, burst_secs).map_err(corrupt)
}

impl TryFrom<Row> for Key {
    type Error = sqlx::Error;

    fn try_from(row: Row) -> sqlx::Result<Key> {
        Ok(Key {
            id: row.id,
            region: row.region.parse().map_err(corrupt)?,
            name: row.name,
            secret_prefix: row.secret_prefix,
            plan: plan_of(row.per_minute, row.per_day, row.burst_secs)?,
            allowed_origins: row.allowed_origins,
            created_at: row.created_at,
            created_by: row.created_by,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
            revoked_by: row.revoked_by,
        })
    }
}

/// A new key: its hash and display prefix, never its secret.
#[derive(Debug)]
pub(crate) struct NewKey<'a> {
    pub id: Uuid,
    pub region: Region,
    pub name: &'a str,
    pub secret_hash: &'a str,
    pub secret_prefix: &'a str,
    pub plan: Plan,
    pub allowed_origins: &'a [String],
    pub expires_at: Option<DateTime<Utc>>,
    pub created_by: &'a str,
}

/// What the edges get: the region's version and each published key by its secret's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub version: i64,
    pub keys: Vec<(String, Published)>,
}

/// A plan's limit as the integer column holds it (every bounded limit fits).
fn column(value: impl TryInto<i32, Error = std::num::TryFromIntError>) -> sqlx::Result<i32> {
    value
        .try_into()
        .map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

/// Moves the region's key-set version (in the change's transaction).
async fn bump(conn: &mut PgConnection, region: &str) -> sqlx::Result<()> {
    sqlx::query!(
        r#"insert into api_key_versions (region, version) values ($1, 1)
           on conflict (region) do update set version = api_key_versions.version + 1"#,
        region,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Issues a key.
#[tracing::instrument(level = "debug", name = "db.api_keys.insert", skip_all)]
pub(crate) async fn insert(conn: &mut PgConnection, new: &NewKey<'_>) -> sqlx::Result<Key> {
    let row = sqlx::query_as!(
        Row,
        r#"insert into api_keys (id, region, name, secret_hash, secret_prefix, per_minute,
                                 per_day, burst_secs, allowed_origins, expires_at, created_by)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
           returning id, region, name, secret_prefix, per_minute, per_day, burst_secs,
                     allowed_origins, created_at, created_by, expires_at, revoked_at, revoked_by"#,
        new.id,
        new.region.code(),
        new.name,
        new.secret_hash,
        new.secret_prefix,
        column(new.plan.per_minute)?,
        column(new.plan.per_day)?,
        column(new.plan.burst_secs)?,
        new.allowed_origins,
        new.expires_at,
        new.created_by,
    )
    .fetch_one(&mut *conn)
    .await?;
    bump(conn, new.region.code()).await?;
    Key::try_from(row)
}

/// Records the revocation of a key that is not revoked yet; `None` when there is no such key
/// in the region (or it was revoked before). An expired key can still be revoked.
#[tracing::instrument(level = "debug", name = "db.api_keys.revoke", skip_all)]
pub(crate) async fn revoke(
    conn: &mut PgConnection,
    id: &ApiKeyId,
    by: &str,
) -> sqlx::Result<Option<Key>> {
    let row = sqlx::query_as!(
        Row,
        r#"update api_keys set revoked_at = now(), revoked_by = $3
           where id = $1 and region = $2 and revoked_at is null
           returning id, region, name, secret_prefix, per_minute, per_day, burst_secs,
                     allowed_origins, created_at, created_by, expires_at, revoked_at, revoked_by"#,
        id.uuid,
        id.region.code(),
        by,
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    bump(conn, id.region.code()).await?;
    Key::try_from(row).map(Some)
}

/// One key, revoked or not.
#[tracing::instrument(level = "debug", name = "db.api_keys.get", skip_all)]
pub(crate) async fn get(pool: &PgPool, id: &ApiKeyId) -> sqlx::Result<Option<Key>> {
    sqlx::query_as!(
        Row,
        r#"select id, region, name, secret_prefix, per_minute, per_day, burst_secs,
                  allowed_origins, created_at, created_by, expires_at, revoked_at, revoked_by
           from api_keys where id = $1 and region = $2"#,
        id.uuid,
        id.region.code(),
    )
    .fetch_optional(pool)
    .await?
    .map(Key::try_from)
    .transpose()
}

/// A region's keys, newest first: the usable ones (neither revoked nor expired), or (`all`)
/// every key ever issued.
#[tracing::instrument(level = "debug", name = "db.api_keys.list", skip_all)]
pub(crate) async fn list(
    pool: &PgPool,
    region: Region,
    all: bool,
    limit: i64,
) -> sqlx::Result<Vec<Key>> {
    sqlx::query_as!(
        Row,
        r#"select id, region, name, secret_prefix, per_minute, per_day, burst_secs,
                  allowed_origins, created_at, created_by, expires_at, revoked_at, revoked_by
           from api_keys
           where region = $1
             and ($2 or (revoked_at is null and (expires_at is null or expires_at > now())))
           order by created_at desc, id desc
           limit $3"#,
        region.code(),
        all,
        limit,
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(Key::try_from)
    .collect()
}

/// The region's version and the keys the edges should know: the usable ones, and those
/// revoked or expired within [`PUBLISHED_AFTER_END_DAYS`] (so an edge answers "revoked" or
/// "expired", not "unknown"). Both are read in one repeatable-read transaction (one snapshot):
/// a version newer than its keys would let an older set win over the change's own publish.
#[tracing::instrument(level = "debug", name = "db.api_keys.snapshot", skip_all)]
pub(crate) async fn snapshot(pool: &PgPool, region: Region) -> sqlx::Result<Snapshot> {
    let mut tx = pool.begin().await?;
    sqlx::query!("set transaction isolation level repeatable read, read only")
        .execute(&mut *tx)
        .await?;
    let version = sqlx::query_scalar!(
        r#"select coalesce((select version from api_key_versions where region = $1), 0)
             as "version!""#,
        region.code(),
    )
    .fetch_one(&mut *tx)
    .await?;
    let rows = sqlx::query!(
        r#"select id, secret_hash, per_minute, per_day, burst_secs, allowed_origins,
                  expires_at, revoked_at
           from api_keys
           where region = $1
             and ((revoked_at is null
                   and (expires_at is null
                        or expires_at > now() - make_interval(days => $2)))
                  or revoked_at > now() - make_interval(days => $2))
           order by secret_hash"#,
        region.code(),
        PUBLISHED_AFTER_END_DAYS,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let keys = rows
        .into_iter()
        .map(|r| {
            let published = Published {
                key_id: ApiKeyId::new(region, r.id).to_string(),
                plan: plan_of(r.per_minute, r.per_day, r.burst_secs)?,
                expires_ms: epoch_ms(r.expires_at),
                revoked_ms: epoch_ms(r.revoked_at),
                origins: r.allowed_origins,
            };
            Ok((r.secret_hash, published))
        })
        .collect::<sqlx::Result<_>>()?;
    Ok(Snapshot { version, keys })
}

/// A time as the edges compare it: ms since the epoch, `0` for none (and at least 1 for a
/// time there is).
fn epoch_ms(at: Option<DateTime<Utc>>) -> u64 {
    at.map_or(0, |t| {
        u64::try_from(t.timestamp_millis()).unwrap_or(0).max(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_is_ms_since_the_epoch_and_none_is_zero() {
        assert_eq!(epoch_ms(None), 0);
        assert_eq!(
            epoch_ms(DateTime::from_timestamp_millis(1_800_000_000_123)),
            1_800_000_000_123
        );
        assert_eq!(epoch_ms(DateTime::from_timestamp_millis(-5)), 1);
    }

    #[test]
    fn a_stored_plan_the_domain_refuses_is_a_decode_error() {
        assert!(plan_of(10, 100, 5).is_ok());
        assert!(matches!(plan_of(-1, 100, 0), Err(sqlx::Error::Decode(_))));
        assert!(matches!(plan_of(100, 10, 0), Err(sqlx::Error::Decode(_))));
        assert!(matches!(plan_of(1, 1, 61), Err(sqlx::Error::Decode(_))));
    }
}
