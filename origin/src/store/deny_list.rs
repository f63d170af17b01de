//! The deny-list repository: `deny_list` (entries, never deleted: a removal is recorded, so
//! the table is the audit log) and `deny_list_versions` (each region's list version, moved by
//! every change in the change's transaction; see `crate::redis::deny_sync`).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// An entry as stored.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub id: Uuid,
    pub region: String,
    pub kind: String,
    pub value: String,
    pub reason: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub removed_at: Option<DateTime<Utc>>,
    pub removed_by: Option<String>,
}

/// A new entry (`domain::deny::DenyTarget` gives kind, value and field).
#[derive(Debug)]
pub(crate) struct NewEntry<'a> {
    pub id: Uuid,
    pub region: &'a str,
    pub kind: &'a str,
    pub value: &'a str,
    pub field: &'a str,
    pub reason: &'a str,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_by: &'a str,
}

/// What the edges get: the region's version and its active fields with their expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub version: i64,
    pub fields: Vec<(String, Option<DateTime<Utc>>)>,
}

/// Moves the region's list version (in the change's transaction).
async fn bump(conn: &mut PgConnection, region: &str) -> sqlx::Result<()> {
    sqlx::query!(
        r#"insert into deny_list_versions (region, version) values ($1, 1)
           on conflict (region) do update set version = deny_list_versions.version + 1"#,
        region,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Adds an entry; `None` when the target already has an active entry in the region. An
/// entry of the same target that has expired is first recorded as removed by `expired`.
#[tracing::instrument(level = "debug", name = "db.deny_list.create", skip_all)]
pub(crate) async fn create(
    conn: &mut PgConnection,
    new: &NewEntry<'_>,
) -> sqlx::Result<Option<Entry>> {
    sqlx::query!(
        r#"update deny_list set removed_at = now(), removed_by = 'expired'
           where region = $1 and field = $2 and removed_at is null and expires_at <= now()"#,
        new.region,
        new.field,
    )
    .execute(&mut *conn)
    .await?;
    let made = sqlx::query_as!(
        Entry,
        r#"insert into deny_list (id, region, kind, value, field, reason, expires_at, created_by)
           values ($1, $2, $3, $4, $5, $6, $7, $8)
           on conflict (region, field) where removed_at is null do nothing
           returning id, region, kind, value, reason, expires_at, created_by, created_at,
                     removed_at, removed_by"#,
        new.id,
        new.region,
        new.kind,
        new.value,
        new.field,
        new.reason,
        new.expires_at,
        new.created_by,
    )
    .fetch_optional(&mut *conn)
    .await?;
    if made.is_some() {
        bump(conn, new.region).await?;
    }
    Ok(made)
}

/// Records the removal of an active entry; `None` when there is no such active entry.
#[tracing::instrument(level = "debug", name = "db.deny_list.remove", skip_all)]
pub(crate) async fn remove(
    conn: &mut PgConnection,
    id: Uuid,
    by: &str,
) -> sqlx::Result<Option<Entry>> {
    let removed = sqlx::query_as!(
        Entry,
        r#"update deny_list set removed_at = now(), removed_by = $2
           where id = $1 and removed_at is null
           returning id, region, kind, value, reason, expires_at, created_by, created_at,
                     removed_at, removed_by"#,
        id,
        by,
    )
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(entry) = &removed {
        bump(conn, &entry.region).await?;
    }
    Ok(removed)
}

/// One entry, active or not.
pub(crate) async fn get(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<Entry>> {
    sqlx::query_as!(
        Entry,
        r#"select id, region, kind, value, reason, expires_at, created_by, created_at,
                  removed_at, removed_by
           from deny_list where id = $1"#,
        id,
    )
    .fetch_optional(pool)
    .await
}

/// A region's entries, newest first: the active ones, or (`all`) the whole log.
pub(crate) async fn list(
    pool: &PgPool,
    region: &str,
    all: bool,
    limit: i64,
) -> sqlx::Result<Vec<Entry>> {
    sqlx::query_as!(
        Entry,
        r#"select id, region, kind, value, reason, expires_at, created_by, created_at,
                  removed_at, removed_by
           from deny_list
           where region = $1
             and ($2 or (removed_at is null and (expires_at is null or expires_at > now())))
           order by created_at desc, id desc
           limit $3"#,
        region,
        all,
        limit,
    )
    .fetch_all(pool)
    .await
}

/// The region's version and active entries, read in one statement (one snapshot).
pub(crate) async fn snapshot(pool: &PgPool, region: &str) -> sqlx::Result<Snapshot> {
    let row = sqlx::query!(
        r#"select coalesce((select version from deny_list_versions where region = $1), 0)
                    as "version!",
                  coalesce(array_agg(field order by field)
                           filter (where field is not null), '{}') as "fields!: Vec<String>",
                  coalesce(array_agg(coalesce(floor(extract(epoch from expires_at) * 1000)::bigint, 0)
                           order by field) filter (where field is not null), '{}')
                    as "expiries!: Vec<i64>"
           from (select field, expires_at from deny_list
                 where region = $1 and removed_at is null
                   and (expires_at is null or expires_at > now())) active"#,
        region,
    )
    .fetch_one(pool)
    .await?;
    let fields = row
        .fields
        .into_iter()
        .zip(row.expiries)
        .map(|(field, ms)| {
            (
                field,
                (ms > 0)
                    .then(|| DateTime::from_timestamp_millis(ms))
                    .flatten(),
            )
        })
        .collect();
    Ok(Snapshot {
        version: row.version,
        fields,
    })
}
