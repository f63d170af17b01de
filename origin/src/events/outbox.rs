//! The `outbox` table as the relay reads and marks it (rows are written by the transactions
//! that change bookings, in `store::bookings`).
//!
//! A batch is locked `for update` (not `skip locked`: see the relay's module docs for why a
//! second relay must wait rather than skip), sent, and marked in the same transaction.
//!
//! Each row carries its vehicle's `sequence`, numbered by a trigger in commit order
//! (migration `20261202071500_outbox_vehicle_sequence.sql`); a batch holds, for every vehicle
//! in it, the next rows of that vehicle in `sequence` order, never a later row without the
//! earlier ones (see [`lock_batch`]).

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// One unpublished outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OutboxRow {
    pub(crate) id: i64,
    pub(crate) event_id: Uuid,
    pub(crate) topic: String,
    pub(crate) partition_key: String,
    /// The event's number among its vehicle's events: 1, 2, … in commit order, no holes.
    pub(crate) sequence: i64,
    /// The event's JSON, as text (the record's value).
    pub(crate) payload: String,
    /// The `traceparent` of the span that wrote the row (sent as a record header).
    pub(crate) traceparent: Option<String>,
}

/// Locks and returns up to `limit` unpublished rows of `lane` (of `lanes`), ordered by
/// vehicle and `sequence`; the lock lasts until the caller's transaction ends.
///
/// Vehicles are taken oldest first (by the id of their oldest waiting row, so no vehicle
/// waits behind a busy one), and each with its waiting rows in `sequence` order, so the
/// `limit` cuts at most the last vehicle's rows short, keeping their first ones. Why that is
/// a prefix of the vehicle's events: a row's sequence was taken under a lock its transaction
/// held until commit, so a row this statement sees implies every lower sequence of its
/// vehicle committed earlier and is seen too; rows are marked published only as a per-vehicle
/// prefix (the relay's `publish_batch`); so the rows seen waiting are exactly the next ones.
/// Ordering by `id` instead would publish a row that committed later but drew a lower id
/// first.
pub(crate) async fn lock_batch(
    conn: &mut PgConnection,
    lanes: i32,
    lane: i32,
    limit: i64,
) -> sqlx::Result<Vec<OutboxRow>> {
    // `::int8` before `abs`: abs(int4 minimum) would overflow. The window function picks the
    // rows; `for update` cannot be combined with it, so the outer query locks them by id (and
    // re-checks `published_at` after waiting on a lock another relay held).
    sqlx::query_as!(
        OutboxRow,
        r#"select id, event_id, topic, partition_key, sequence, payload::text as "payload!",
                  traceparent
             from outbox
            where id = any(array(
                      select id
                        from (select id, sequence,
                                     min(id) over (partition by partition_key) as oldest
                                from outbox
                               where published_at is null
                                 and abs(hashtext(partition_key)::int8) % $1 = $2) waiting
                       order by oldest, sequence
                       limit $3))
              and published_at is null
            order by partition_key, sequence
              for update"#,
        i64::from(lanes),
        i64::from(lane),
        limit,
    )
    .fetch_all(&mut *conn)
    .await
}

/// Marks rows as published (the broker acknowledged them).
pub(crate) async fn mark_published(conn: &mut PgConnection, ids: &[i64]) -> sqlx::Result<()> {
    sqlx::query!(
        "update outbox set published_at = now() where id = any($1)",
        ids,
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// How many rows wait to be published (a count over the partial index of unpublished rows).
pub(crate) async fn backlog(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar!(r#"select count(*) as "count!" from outbox where published_at is null"#)
        .fetch_one(pool)
        .await
}

/// How old the oldest unpublished row is, in seconds (0 when every row is published): the
/// outbox lag, read from the head of the partial index of unpublished rows.
pub(crate) async fn oldest_unpublished_age(pool: &PgPool) -> sqlx::Result<f64> {
    let age = sqlx::query_scalar!(
        r#"select extract(epoch from now() - created_at)::float8 as "age!"
           from outbox where published_at is null order by id limit 1"#
    )
    .fetch_optional(pool)
    .await?;
    Ok(age.unwrap_or(0.0).max(0.0))
}
