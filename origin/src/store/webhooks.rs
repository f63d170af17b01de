//! The webhooks repository: `webhook_endpoints` (what ops registered) and `webhook_deliveries`
//! (one row per endpoint and event, worked through by the dispatcher, `crate::webhooks`).
//!
//! The dispatcher's queue is this table, not a broker topic: a delivery needs per-endpoint
//! state a topic cannot hold (its attempts, its next time, its lease, the log ops read), and
//! the events reach it exactly once because the fan-out runs in the consumer's dedupe
//! transaction (`crate::events::consumer`).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// A registered endpoint as stored (without its secrets: only the dispatcher reads them,
/// through [`claim`]).
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub id: Uuid,
    pub region: String,
    pub url: String,
    pub event_types: Vec<String>,
    pub previous_until: Option<DateTime<Utc>>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub failing_since: Option<DateTime<Utc>>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A new endpoint.
#[derive(Debug)]
pub(crate) struct NewEndpoint<'a> {
    pub id: Uuid,
    pub region: &'a str,
    pub url: &'a str,
    pub event_types: &'a [String],
    pub secret: &'a str,
    pub created_by: &'a str,
}

/// One delivery, for the log.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct Delivery {
    pub id: Uuid,
    /// The event's id: also the delivery's `webhook-id` header, the same on every attempt.
    pub event_id: Uuid,
    pub topic: String,
    pub vehicle_id: String,
    pub sequence: i64,
    /// `pending`, `delivered` or `failed` (retries ran out).
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub give_up_at: DateTime<Utc>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// The receiver's last HTTP status (none: no answer).
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// A delivery the dispatcher claimed, with what it needs to send it.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    pub id: Uuid,
    pub endpoint_id: Uuid,
    pub event_id: Uuid,
    pub vehicle: String,
    pub sequence: i64,
    pub payload: serde_json::Value,
    pub attempts: i32,
    pub url: String,
    pub secret: String,
    /// The previous secret while its rotation overlap lasts.
    pub previous_secret: Option<String>,
    /// Claimed after waiting for an earlier event of its vehicle that never came.
    pub past_gap: bool,
}

#[tracing::instrument(level = "debug", name = "db.webhooks.create", skip_all)]
pub(crate) async fn create(
    conn: &mut PgConnection,
    new: &NewEndpoint<'_>,
) -> sqlx::Result<Endpoint> {
    sqlx::query_as!(
        Endpoint,
        r#"insert into webhook_endpoints (id, region, url, event_types, secret, created_by)
           values ($1, $2, $3, $4, $5, $6)
           returning id, region, url, event_types, previous_until,
                     enabled, disabled_reason, failing_since, created_by, created_at, updated_at"#,
        new.id,
        new.region,
        new.url,
        new.event_types,
        new.secret,
        new.created_by,
    )
    .fetch_one(conn)
    .await
}

#[tracing::instrument(level = "debug", name = "db.webhooks.list", skip_all)]
pub(crate) async fn list(db: &PgPool, region: &str, limit: i64) -> sqlx::Result<Vec<Endpoint>> {
    sqlx::query_as!(
        Endpoint,
        r#"select id, region, url, event_types, previous_until,
                  enabled, disabled_reason, failing_since, created_by, created_at, updated_at
           from webhook_endpoints where region = $1
           order by created_at desc, id limit $2"#,
        region,
        limit,
    )
    .fetch_all(db)
    .await
}

#[tracing::instrument(level = "debug", name = "db.webhooks.get", skip_all)]
pub(crate) async fn get(db: &PgPool, id: Uuid) -> sqlx::Result<Option<Endpoint>> {
    sqlx::query_as!(
        Endpoint,
        r#"select id, region, url, event_types, previous_until,
                  enabled, disabled_reason, failing_since, created_by, created_at, updated_at
           from webhook_endpoints where id = $1"#,
        id,
    )
    .fetch_optional(db)
    .await
}

/// Removes an endpoint and its delivery log.
#[tracing::instrument(level = "debug", name = "db.webhooks.delete", skip_all)]
pub(crate) async fn delete(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<Endpoint>> {
    sqlx::query_as!(
        Endpoint,
        r#"delete from webhook_endpoints where id = $1
           returning id, region, url, event_types, previous_until,
                     enabled, disabled_reason, failing_since, created_by, created_at, updated_at"#,
        id,
    )
    .fetch_optional(conn)
    .await
}

/// A new secret; the current one stays valid (deliveries signed with both) until
/// `previous_until`.
#[tracing::instrument(level = "debug", name = "db.webhooks.rotate", skip_all)]
pub(crate) async fn rotate(
    conn: &mut PgConnection,
    id: Uuid,
    secret: &str,
    previous_until: DateTime<Utc>,
) -> sqlx::Result<Option<Endpoint>> {
    sqlx::query_as!(
        Endpoint,
        r#"update webhook_endpoints
           set previous_secret = secret, previous_until = $3, secret = $2, updated_at = now()
           where id = $1
           returning id, region, url, event_types, previous_until,
                     enabled, disabled_reason, failing_since, created_by, created_at, updated_at"#,
        id,
        secret,
        previous_until,
    )
    .fetch_optional(conn)
    .await
}

/// Turns an endpoint back on after the dispatcher disabled it (its run of failures forgotten).
#[tracing::instrument(level = "debug", name = "db.webhooks.enable", skip_all)]
pub(crate) async fn enable(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<Endpoint>> {
    sqlx::query_as!(
        Endpoint,
        r#"update webhook_endpoints
           set enabled = true, disabled_reason = null, failing_since = null, updated_at = now()
           where id = $1
           returning id, region, url, event_types, previous_until,
                     enabled, disabled_reason, failing_since, created_by, created_at, updated_at"#,
        id,
    )
    .fetch_optional(conn)
    .await
}

/// An endpoint's deliveries, newest first.
#[tracing::instrument(level = "debug", name = "db.webhooks.deliveries", skip_all)]
pub(crate) async fn deliveries(
    db: &PgPool,
    endpoint: Uuid,
    limit: i64,
) -> sqlx::Result<Vec<Delivery>> {
    sqlx::query_as!(
        Delivery,
        r#"select id, event_id, topic, vehicle as vehicle_id, sequence, state, attempts,
                  next_attempt_at, give_up_at, last_attempt_at, last_status, last_error,
                  created_at, delivered_at
           from webhook_deliveries where endpoint_id = $1
           order by created_at desc, sequence desc limit $2"#,
        endpoint,
        limit,
    )
    .fetch_all(db)
    .await
}

/// Sends a delivery again (whatever its state): due now, with a fresh retry period.
#[tracing::instrument(level = "debug", name = "db.webhooks.redeliver", skip_all)]
pub(crate) async fn redeliver(
    conn: &mut PgConnection,
    endpoint: Uuid,
    delivery: Uuid,
    give_up_at: DateTime<Utc>,
) -> sqlx::Result<Option<Delivery>> {
    sqlx::query_as!(
        Delivery,
        r#"update webhook_deliveries
           set state = 'pending', next_attempt_at = now(), give_up_at = $3, delivered_at = null
           where endpoint_id = $1 and id = $2
           returning id, event_id, topic, vehicle as vehicle_id, sequence, state, attempts,
                     next_attempt_at, give_up_at, last_attempt_at, last_status, last_error,
                     created_at, delivered_at"#,
        endpoint,
        delivery,
        give_up_at,
    )
    .fetch_optional(conn)
    .await
}

/// One event for every enabled endpoint of `region` that asked for `topic`, in the consumer's
/// transaction; the number of deliveries queued.
#[allow(clippy::too_many_arguments)]
#[tracing::instrument(level = "debug", name = "db.webhooks.fan_out", skip_all)]
pub(crate) async fn fan_out(
    conn: &mut PgConnection,
    region: &str,
    topic: &str,
    event_id: Uuid,
    vehicle: &str,
    sequence: i64,
    payload: &serde_json::Value,
    give_up_at: DateTime<Utc>,
) -> sqlx::Result<u64> {
    let done = sqlx::query!(
        r#"insert into webhook_deliveries
               (id, endpoint_id, event_id, topic, vehicle, sequence, payload, give_up_at)
           select gen_random_uuid(), e.id, $3, $2, $4, $5, $6, $7
           from webhook_endpoints e
           where e.region = $1 and e.enabled and $2 = any (e.event_types)
           on conflict (endpoint_id, event_id) do nothing"#,
        region,
        topic,
        event_id,
        vehicle,
        sequence,
        payload,
        give_up_at,
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Notes that the fan-out saw `vehicle`'s event number `sequence` (every event, subscribed or
/// not): advances the vehicle's order watermark (see the migration).
#[tracing::instrument(level = "debug", name = "db.webhooks.note_sequence", skip_all)]
pub(crate) async fn note_sequence(
    conn: &mut PgConnection,
    vehicle: &str,
    sequence: i64,
) -> sqlx::Result<()> {
    // A vehicle not seen before starts from nothing seen: its first event is number 1 (the
    // migration noted every vehicle that had events then).
    sqlx::query!(
        r#"insert into webhook_vehicle_order (vehicle, seen) values ($1, 0)
           on conflict (vehicle) do nothing"#,
        vehicle,
    )
    .execute(&mut *conn)
    .await?;
    let row = sqlx::query!(
        r#"select seen, ahead from webhook_vehicle_order where vehicle = $1 for update"#,
        vehicle,
    )
    .fetch_one(&mut *conn)
    .await?;
    let (seen, ahead) = advance(row.seen, row.ahead, sequence);
    sqlx::query!(
        r#"update webhook_vehicle_order set seen = $2, ahead = $3 where vehicle = $1"#,
        vehicle,
        seen,
        &ahead,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The watermark after seeing `sequence`: `seen` (all up to it seen) moves past every
/// number now contiguous; numbers past a gap wait in `ahead`.
pub(crate) fn advance(mut seen: i64, mut ahead: Vec<i64>, sequence: i64) -> (i64, Vec<i64>) {
    if sequence > seen && !ahead.contains(&sequence) {
        ahead.push(sequence);
    }
    while let Some(at) = ahead.iter().position(|s| *s == seen + 1) {
        ahead.swap_remove(at);
        seen += 1;
    }
    ahead.retain(|s| *s > seen);
    ahead.sort_unstable();
    (seen, ahead)
}

/// Claims up to `limit` due deliveries of enabled endpoints, each the earliest pending one of
/// its vehicle for its endpoint and not ahead of an event of its vehicle the fan-out has not
/// seen yet (unless it was queued before `order_wait_since`), so a vehicle's events reach an
/// endpoint in order; leases them until `lease_until`.
#[tracing::instrument(level = "debug", name = "db.webhooks.claim", skip_all)]
pub(crate) async fn claim(
    db: &PgPool,
    limit: i64,
    lease_until: DateTime<Utc>,
    order_wait_since: DateTime<Utc>,
) -> sqlx::Result<Vec<Claimed>> {
    sqlx::query_as!(
        Claimed,
        r#"with due as (
               select d.id, d.sequence > coalesce(o.seen, 0) as past_gap
               from webhook_deliveries d
               join webhook_endpoints e on e.id = d.endpoint_id
               left join webhook_vehicle_order o on o.vehicle = d.vehicle
               where d.state = 'pending' and d.next_attempt_at <= now() and e.enabled
                 and not exists (
                     select 1 from webhook_deliveries p
                     where p.endpoint_id = d.endpoint_id and p.vehicle = d.vehicle
                       and p.state = 'pending' and p.sequence < d.sequence)
                 and (d.sequence <= coalesce(o.seen, 0) or d.created_at < $3)
               order by d.next_attempt_at
               limit $1
               for update of d skip locked)
           update webhook_deliveries d set next_attempt_at = $2
           from due, webhook_endpoints e
           where d.id = due.id and e.id = d.endpoint_id
           returning d.id, d.endpoint_id, d.event_id, d.vehicle, d.sequence, d.payload,
                     d.attempts, e.url, e.secret,
                     case when e.previous_until > now() then e.previous_secret end
                         as previous_secret,
                     due.past_gap as "past_gap!""#,
        limit,
        lease_until,
        order_wait_since,
    )
    .fetch_all(db)
    .await
}

/// Gives up waiting for the events of `vehicle` before `sequence` (a delivery waited
/// `WEBHOOK_ORDER_WAIT_MS` for them): the watermark moves to it, so the vehicle's later
/// events do not wait again for the same gap.
#[tracing::instrument(level = "debug", name = "db.webhooks.skip_gap", skip_all)]
pub(crate) async fn skip_gap(db: &PgPool, vehicle: &str, sequence: i64) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    let row = sqlx::query!(
        r#"select seen, ahead from webhook_vehicle_order where vehicle = $1 for update"#,
        vehicle,
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(row) = row.filter(|r| r.seen < sequence) {
        let (seen, ahead) = advance(sequence, row.ahead, sequence);
        sqlx::query!(
            r#"update webhook_vehicle_order set seen = $2, ahead = $3 where vehicle = $1"#,
            vehicle,
            seen,
            &ahead,
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// A 2xx: delivered; the endpoint's run of failures is over.
#[tracing::instrument(level = "debug", name = "db.webhooks.delivered", skip_all)]
pub(crate) async fn delivered(db: &PgPool, claimed: &Claimed, status: i32) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query!(
        r#"update webhook_deliveries
           set state = 'delivered', attempts = attempts + 1, last_attempt_at = now(),
               last_status = $2, last_error = null, delivered_at = now()
           where id = $1"#,
        claimed.id,
        status,
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        r#"update webhook_endpoints set failing_since = null
           where id = $1 and failing_since is not null"#,
        claimed.endpoint_id,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// What a failed attempt did to its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Failed {
    /// The delivery ran out of retries (`failed`).
    pub gave_up: bool,
    /// The endpoint had failed for longer than allowed and was disabled.
    pub disabled: bool,
}

/// A failed attempt: tried again at `retry_at`, or given up past its `give_up_at`; the
/// endpoint disabled when it has failed without a success since before `disable_before`.
#[tracing::instrument(level = "debug", name = "db.webhooks.failed", skip_all)]
pub(crate) async fn failed(
    db: &PgPool,
    claimed: &Claimed,
    status: Option<i32>,
    error: &str,
    retry_at: DateTime<Utc>,
    disable_before: DateTime<Utc>,
) -> sqlx::Result<Failed> {
    let mut tx = db.begin().await?;
    let gave_up = sqlx::query_scalar!(
        r#"update webhook_deliveries
           set attempts = attempts + 1, last_attempt_at = now(), last_status = $2,
               last_error = $3, next_attempt_at = $4,
               state = case when $4 > give_up_at then 'failed' else 'pending' end
           where id = $1
           returning state = 'failed' as "gave_up!""#,
        claimed.id,
        status,
        error,
        retry_at,
    )
    .fetch_one(&mut *tx)
    .await?;
    let disabled = sqlx::query_scalar!(
        r#"update webhook_endpoints
           set failing_since = coalesce(failing_since, now()),
               enabled = enabled and coalesce(failing_since, now()) >= $2,
               disabled_reason = case when enabled and coalesce(failing_since, now()) < $2
                   then 'failing since ' || to_char(failing_since at time zone 'UTC',
                                                    'YYYY-MM-DD"T"HH24:MI:SS"Z"')
                        || ': last error ' || $3
                   else disabled_reason end,
               updated_at = now()
           where id = $1
           returning not enabled as "disabled!""#,
        claimed.endpoint_id,
        disable_before,
        error,
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Failed { gave_up, disabled })
}

#[cfg(test)]
mod tests {
    use super::advance;

    #[test]
    fn the_watermark_moves_over_contiguous_numbers_and_keeps_the_ones_past_a_gap() {
        assert_eq!(advance(0, vec![], 1), (1, vec![]));
        assert_eq!(advance(1, vec![], 3), (1, vec![3]));
        assert_eq!(advance(1, vec![3], 4), (1, vec![3, 4]));
        assert_eq!(advance(1, vec![3, 4], 2), (4, vec![]));
        // A repeat or an old number changes nothing.
        assert_eq!(advance(4, vec![6], 3), (4, vec![6]));
        assert_eq!(advance(4, vec![6], 6), (4, vec![6]));
    }
}
