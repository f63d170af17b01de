//! Signed webhooks: the events of a region, delivered to the endpoints ops registered
//! (`/v1/admin/webhooks`, `crate::http::webhooks`), in the
//! [Standard Webhooks](https://www.standardwebhooks.com/) scheme (`domain::webhook`).
//!
//! Two halves, both in the `webhooks` job (roles `all` and `relay`, with the consumer):
//!
//! 1. **Fan-out** ([`FanOut`]): a consumer group of its own (`WEBHOOK_GROUP`) reads every
//!    topic and, in the consumer's dedupe transaction, queues one `webhook_deliveries` row per
//!    enabled endpoint of the event's region that asked for its type. Exactly once per
//!    endpoint and event: a redelivered record is a repeat to the consumer, and the row is
//!    unique by `(endpoint, event)` besides.
//! 2. **Dispatch** ([`dispatch`]): claims due deliveries (`store::webhooks::claim`: a lease
//!    by `next_attempt_at`, `skip locked`, so the replicas of the role share the work and a
//!    dead dispatcher's claims come due again), and POSTs each one's event — the same JSON as
//!    the Kafka record — with `webhook-id` (the event id, the same on every attempt: receivers
//!    dedupe by it), `webhook-timestamp` and `webhook-signature` (one `v1,` signature per
//!    secret in use: two while a rotation overlaps).
//!
//! Rules of delivery:
//! - **Success** is any 2xx within `WEBHOOK_TIMEOUT_MS`. Anything else (another status, a
//!   redirect — never followed —, a timeout, a refused connection) is a failure.
//! - **Retries**: exponential from `WEBHOOK_RETRY_BASE_MS`, doubling to at most
//!   `WEBHOOK_RETRY_MAX_MS` (an hour), equal jitter, until `WEBHOOK_RETRY_FOR_SECS` (24 h)
//!   after the event; then the delivery is `failed` (ops may redeliver it).
//! - **Order**: an endpoint gets one vehicle's events in their order (`sequence`): a later one
//!   waits while an earlier one is pending, and while an earlier event of the vehicle has not
//!   reached the fan-out yet (they come from different topics), for at most
//!   `WEBHOOK_ORDER_WAIT_MS`. Different vehicles do not wait for each other.
//! - **Disable**: an endpoint that has not had one success for `WEBHOOK_DISABLE_AFTER_SECS`
//!   (5 days) of failures is turned off with the reason; ops turn it on again.
//! - **Address rules** ([`guard`]): public addresses only, checked at registration and at
//!   every connection (unless `WEBHOOK_ALLOW_PRIVATE=1`); the receiver's answer is read up to
//!   [`BODY_CAP`] bytes and kept (its start) in the delivery log.

pub(crate) mod guard;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use domain::region::Region;
use domain::webhook::{signature_header, WebhookSecret};
use futures_util::StreamExt;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, Jitter};
use crate::config::WebhookConfig;
use crate::events::consumer::{Handler, Incoming};
use crate::store::webhooks::{self as store, Claimed};

/// How much of a receiver's answer is read (the rest is dropped with the connection).
pub(crate) const BODY_CAP: usize = 64 * 1024;
/// How much of a failed answer's body the delivery log keeps.
const ERROR_EXCERPT: usize = 300;

/// The fan-out handler: the event's deliveries, queued in the consumer's transaction.
pub(crate) struct FanOut {
    pub regions: Vec<Region>,
    pub retry_for: Duration,
}

impl Handler for FanOut {
    fn wants(&self, event: &Incoming) -> bool {
        self.regions.contains(&event.vehicle.region)
    }

    async fn handle(&self, tx: &mut PgConnection, event: &Incoming) -> anyhow::Result<()> {
        let give_up_at = Utc::now()
            + chrono::Duration::from_std(self.retry_for).unwrap_or(chrono::Duration::days(1));
        let vehicle = event.vehicle.to_string();
        store::note_sequence(tx, &vehicle, event.sequence).await?;
        let queued = store::fan_out(
            tx,
            event.vehicle.region.code(),
            event.topic.as_str(),
            event.event_id,
            &vehicle,
            event.sequence,
            &event.payload,
            give_up_at,
        )
        .await?;
        if queued > 0 {
            metrics::counter!("webhook_deliveries_queued_total").increment(queued);
        }
        Ok(())
    }
}

/// The dispatcher's HTTP client: no redirects, no proxies from the environment, names resolved
/// through [`guard::PublicResolver`], the delivery timeout on the whole exchange.
pub(crate) fn client(config: &WebhookConfig) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(guard::PublicResolver {
            allow_private: config.allow_private,
        }))
        .connect_timeout(config.timeout.min(Duration::from_secs(5)))
        .timeout(config.timeout)
        .user_agent(concat!(
            "booking-pricing-webhooks/",
            env!("CARGO_PKG_VERSION")
        ))
        .build()?)
}

/// Claims and sends due deliveries until `stop`.
pub(crate) async fn dispatch(db: PgPool, config: WebhookConfig, stop: CancellationToken) {
    let client = match client(&config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhook dispatcher: no HTTP client; deliveries wait");
            stop.cancelled().await;
            return;
        }
    };
    let limit = i64::try_from(config.concurrency).unwrap_or(16);
    // A claim outlives the attempt's timeout, so no other dispatcher takes it meanwhile.
    let lease = config.timeout + Duration::from_secs(10);
    while !stop.is_cancelled() {
        let now = Utc::now();
        let lease_until = now + chrono::Duration::from_std(lease).unwrap_or_default();
        let order_wait_since =
            now - chrono::Duration::from_std(config.order_wait).unwrap_or_default();
        let claimed = match store::claim(&db, limit, lease_until, order_wait_since).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "webhook dispatcher: claim failed");
                Vec::new()
            }
        };
        if claimed.is_empty() {
            tokio::select! {
                () = tokio::time::sleep(config.poll) => {}
                () = stop.cancelled() => break,
            }
            continue;
        }
        for c in claimed.iter().filter(|c| c.past_gap) {
            tracing::warn!(vehicle = %c.vehicle, sequence = c.sequence, "webhook order: an earlier event of the vehicle never reached the fan-out; delivering past it");
            if let Err(e) = store::skip_gap(&db, &c.vehicle, c.sequence).await {
                tracing::warn!(error = %e, "webhook order: gap not recorded");
            }
        }
        // Attempts already sent are seen through (a stop waits for them: each is bounded by the
        // timeout, within the shutdown grace); the claim of anything not sent lapses.
        futures_util::stream::iter(claimed)
            .for_each_concurrent(config.concurrency, |c| {
                let (client, db, config) = (&client, &db, &config);
                async move { attempt(client, db, config, c).await }
            })
            .await;
    }
}

/// What one attempt came to.
enum Outcome {
    Delivered(u16),
    Failed(Option<u16>, String),
}

/// One attempt at one delivery, recorded.
async fn attempt(client: &reqwest::Client, db: &PgPool, config: &WebhookConfig, c: Claimed) {
    let started = std::time::Instant::now();
    let outcome = send(client, config, &c).await;
    let elapsed = started.elapsed().as_secs_f64();
    let recorded = match &outcome {
        Outcome::Delivered(status) => {
            metrics::counter!("webhook_attempts_total", "outcome" => "delivered").increment(1);
            store::delivered(db, &c, i32::from(*status)).await
        }
        Outcome::Failed(status, error) => {
            metrics::counter!("webhook_attempts_total", "outcome" => "failed").increment(1);
            let step = u32::try_from(c.attempts).unwrap_or(0);
            let pause = Backoff::new(config.retry_base, config.retry_max, Jitter::Equal)
                .at_step(step)
                .next_pause();
            let now = Utc::now();
            let retry_at = now + chrono::Duration::from_std(pause).unwrap_or_default();
            let disable_before = now
                - chrono::Duration::from_std(config.disable_after)
                    .unwrap_or(chrono::Duration::days(5));
            match store::failed(
                db,
                &c,
                status.map(i32::from),
                error,
                retry_at,
                disable_before,
            )
            .await
            {
                Ok(f) => {
                    if f.gave_up {
                        metrics::counter!("webhook_deliveries_failed_total").increment(1);
                        tracing::warn!(delivery = %c.id, endpoint = %c.endpoint_id, "webhook delivery gave up: its retry period is over");
                    }
                    if f.disabled {
                        tracing::warn!(endpoint = %c.endpoint_id, "webhook endpoint disabled after sustained failure");
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
    };
    metrics::histogram!("webhook_attempt_seconds").record(elapsed);
    if let Err(e) = recorded {
        // The lease lapses and the delivery is tried again: at least once, never lost.
        tracing::warn!(error = %e, delivery = %c.id, "webhook attempt not recorded");
    }
}

/// Signs and POSTs one delivery.
async fn send(client: &reqwest::Client, config: &WebhookConfig, c: &Claimed) -> Outcome {
    let secrets: Vec<WebhookSecret> = [Some(&c.secret), c.previous_secret.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|s| WebhookSecret::parse(s).ok())
        .collect();
    if secrets.is_empty() {
        return Outcome::Failed(None, "the endpoint's secret does not parse".into());
    }
    let url = match reqwest::Url::parse(&c.url) {
        Ok(u) => u,
        Err(e) => return Outcome::Failed(None, format!("the endpoint's URL does not parse: {e}")),
    };
    if let Some(ip) = guard::host_literal(&url) {
        if !guard::literal_allowed(ip, config.allow_private) {
            return Outcome::Failed(None, format!("{ip} is not a public address"));
        }
    }
    let body = match serde_json::to_vec(&c.payload) {
        Ok(b) => b,
        Err(e) => return Outcome::Failed(None, format!("encode: {e}")),
    };
    let id = c.event_id.to_string();
    let timestamp = Utc::now().timestamp();
    let signature = signature_header(&secrets, &id, timestamp, &body);
    let sent = client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await;
    let mut response = match sent {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(None, describe(&e)),
    };
    let status = response.status();
    // Read the answer, bounded (a receiver cannot make the dispatcher buffer without limit).
    let mut answer = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = BODY_CAP.saturating_sub(answer.len());
                answer.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if answer.len() >= BODY_CAP {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) if status.is_success() => {
                // The status is the receiver's verdict; a body cut short does not undo it.
                tracing::debug!(error = %e, "webhook answer body cut short");
                break;
            }
            Err(e) => return Outcome::Failed(Some(status.as_u16()), describe(&e)),
        }
    }
    if status.is_success() {
        Outcome::Delivered(status.as_u16())
    } else {
        let text = String::from_utf8_lossy(&answer);
        let excerpt: String = text.chars().take(ERROR_EXCERPT).collect();
        Outcome::Failed(
            Some(status.as_u16()),
            format!("HTTP {}: {}", status.as_u16(), excerpt.trim()),
        )
    }
}

/// A transport error for the log, with its causes (reqwest's own text is often just "error
/// sending request").
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.chars().take(ERROR_EXCERPT).collect()
}
