//! The authorization matrix: every route × {anonymous, another user, ops, the owner} → the
//! status each must get.
//!
//! Why a matrix: access rules drift one handler at a time (a new route forgets its extractor,
//! a refactor lets ops act on users' bookings). One table makes every decision visible and
//! reviewable, and the test fails if `/openapi.json` documents a route the table does not
//! list, so a new route cannot ship without someone deciding who may call it.
//!
//! Each route gets fresh fixtures owned by `ann`; the principals run in the order anonymous,
//! `bob`, ops, `ann`, and a refused request must leave the booking exactly as it was.

use std::collections::BTreeSet;

use chrono::{Duration, DurationRound, Utc};
use e2e::*;
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

/// What a route needs to exist before it is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    Nothing,
    /// A fresh quote of ann's (the body of a booking POST).
    Quote,
    /// One of ann's holds (RESERVING).
    Hold,
    /// One of ann's confirmed bookings, days ahead.
    Confirmed,
    /// One of ann's confirmed bookings starting in ten minutes (startable now).
    ConfirmedSoon,
    /// One of ann's bookings in progress.
    Started,
    /// A time-of-day multiplier rule (created by ops), for the admin routes.
    TimeMultiplier,
    /// A discount rule (created by ops), for the admin routes.
    Discount,
    /// A maintenance block of the row's vehicle (created by ops).
    Block,
    /// A webhook endpoint of EUW (registered by ops).
    Webhook,
    /// A webhook endpoint with one delivery in its log.
    Delivery,
    /// ann waiting in line for a window another user (carl) booked.
    Waitlist,
    /// A deny-list entry of EUW (added by ops).
    DenyEntry,
    /// An API key of EUW (issued by ops).
    ApiKey,
}

/// One row: the route as documented, what it needs, and the expected status for
/// [anonymous, bob (another user), olga (ops), ann (the owner)].
struct Row {
    method: Method,
    path: &'static str,
    needs: Needs,
    expect: [u16; 4],
}

const PRINCIPALS: [&str; 4] = ["anonymous", "another user", "ops", "owner"];

fn matrix() -> Vec<Row> {
    let row = |method: Method, path, needs, expect| Row {
        method,
        path,
        needs,
        expect,
    };
    let mut rows = vec![
        // Public: probes, metrics scraping, the API description.
        row(Method::GET, "/healthz", Needs::Nothing, [200; 4]),
        row(Method::GET, "/readyz", Needs::Nothing, [200; 4]),
        row(Method::GET, "/metrics", Needs::Nothing, [200; 4]),
        row(Method::GET, "/openapi.json", Needs::Nothing, [200; 4]),
    ];
    // Pricing administration and surge: reading the surge is for any signed-in user, changing
    // pricing is for ops only (the owner column is a plain user here).
    let admin = [401, 403, 200, 403];
    rows.extend([
        row(
            Method::GET,
            "/v1/surge",
            Needs::Nothing,
            [401, 200, 200, 200],
        ),
        row(
            Method::POST,
            "/v1/admin/surge/recompute",
            Needs::Nothing,
            admin,
        ),
        row(
            Method::GET,
            "/v1/admin/pricing/{region}",
            Needs::Nothing,
            admin,
        ),
        row(
            Method::GET,
            "/v1/admin/pricing-audit",
            Needs::Nothing,
            admin,
        ),
        row(
            Method::PUT,
            "/v1/admin/pricing/{region}/base-rates/{class}",
            Needs::Nothing,
            admin,
        ),
        row(
            Method::PUT,
            "/v1/admin/pricing/{region}/vehicle-config/{class}",
            Needs::Nothing,
            admin,
        ),
        row(
            Method::POST,
            "/v1/admin/pricing/{region}/time-multipliers",
            Needs::Nothing,
            [401, 403, 201, 403],
        ),
        row(
            Method::PUT,
            "/v1/admin/pricing/{region}/time-multipliers/{id}",
            Needs::TimeMultiplier,
            admin,
        ),
        row(
            Method::DELETE,
            "/v1/admin/pricing/{region}/time-multipliers/{id}",
            Needs::TimeMultiplier,
            admin,
        ),
        row(
            Method::POST,
            "/v1/admin/pricing/{region}/discount-rules",
            Needs::Nothing,
            [401, 403, 201, 403],
        ),
        row(
            Method::PUT,
            "/v1/admin/pricing/{region}/discount-rules/{id}",
            Needs::Discount,
            admin,
        ),
        row(
            Method::DELETE,
            "/v1/admin/pricing/{region}/discount-rules/{id}",
            Needs::Discount,
            admin,
        ),
        // Maintenance blocks: ops only.
        row(
            Method::POST,
            "/v1/admin/vehicles/{vehicle_id}/blocks",
            Needs::Nothing,
            [401, 403, 201, 403],
        ),
        row(
            Method::GET,
            "/v1/admin/vehicles/{vehicle_id}/blocks",
            Needs::Nothing,
            admin,
        ),
        row(
            Method::PUT,
            "/v1/admin/vehicles/{vehicle_id}/blocks/{block_id}",
            Needs::Block,
            admin,
        ),
        row(
            Method::DELETE,
            "/v1/admin/vehicles/{vehicle_id}/blocks/{block_id}",
            Needs::Block,
            admin,
        ),
        // Webhooks: ops only.
        row(
            Method::POST,
            "/v1/admin/webhooks",
            Needs::Nothing,
            [401, 403, 201, 403],
        ),
        row(Method::GET, "/v1/admin/webhooks", Needs::Nothing, admin),
        row(
            Method::GET,
            "/v1/admin/webhooks/{webhook_id}",
            Needs::Webhook,
            admin,
        ),
        row(
            Method::DELETE,
            "/v1/admin/webhooks/{webhook_id}",
            Needs::Webhook,
            admin,
        ),
        row(
            Method::POST,
            "/v1/admin/webhooks/{webhook_id}/rotate",
            Needs::Webhook,
            admin,
        ),
        row(
            Method::POST,
            "/v1/admin/webhooks/{webhook_id}/enable",
            Needs::Webhook,
            admin,
        ),
        row(
            Method::GET,
            "/v1/admin/webhooks/{webhook_id}/deliveries",
            Needs::Webhook,
            admin,
        ),
        row(
            Method::POST,
            "/v1/admin/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
            Needs::Delivery,
            [401, 403, 202, 403],
        ),
        // The deny list: ops only.
        row(
            Method::POST,
            "/v1/admin/deny-list",
            Needs::Nothing,
            [401, 403, 201, 403],
        ),
        row(Method::GET, "/v1/admin/deny-list", Needs::Nothing, admin),
        row(
            Method::GET,
            "/v1/admin/deny-list/{entry_id}",
            Needs::DenyEntry,
            admin,
        ),
        row(
            Method::DELETE,
            "/v1/admin/deny-list/{entry_id}",
            Needs::DenyEntry,
            admin,
        ),
        // API keys for apps: ops only.
        row(
            Method::POST,
            "/v1/admin/api-keys",
            Needs::Nothing,
            [401, 403, 201, 403],
        ),
        row(Method::GET, "/v1/admin/api-keys", Needs::Nothing, admin),
        row(
            Method::GET,
            "/v1/admin/api-keys/{key_id}",
            Needs::ApiKey,
            admin,
        ),
        row(
            Method::DELETE,
            "/v1/admin/api-keys/{key_id}",
            Needs::ApiKey,
            admin,
        ),
    ]);
    // The waitlist: any signed-in user joins (here for ann's booked window); an entry is read
    // by its owner and ops, withdrawn by its owner only (as bookings are acted on).
    rows.extend([
        row(
            Method::POST,
            "/v1/waitlist",
            Needs::Confirmed,
            [401, 201, 201, 201],
        ),
        row(
            Method::GET,
            "/v1/waitlist/{waitlist_id}",
            Needs::Waitlist,
            [401, 404, 200, 200],
        ),
        row(
            Method::DELETE,
            "/v1/waitlist/{waitlist_id}",
            Needs::Waitlist,
            [401, 404, 404, 200],
        ),
    ]);
    for v in ["/v1", "/v2"] {
        let p = |s: &str| -> &'static str { Box::leak(format!("{v}{s}").into_boxed_str()) };
        rows.extend([
            // Any signed-in user may search and get quotes.
            row(
                Method::GET,
                p("/vehicles/search"),
                Needs::Nothing,
                [401, 200, 200, 200],
            ),
            row(
                Method::POST,
                p("/quotes"),
                Needs::Nothing,
                [401, 201, 201, 201],
            ),
            // A quote is bound to the user it was issued to: nobody else may book with it,
            // ops included.
            row(
                Method::POST,
                p("/bookings"),
                Needs::Quote,
                [401, 403, 403, 201],
            ),
            // Listing another user's bookings (`user_id=ann`) is for ops and ann only.
            row(
                Method::GET,
                p("/bookings"),
                Needs::Confirmed,
                [401, 403, 200, 200],
            ),
            // Reading: the owner and ops; to anyone else the booking does not exist.
            row(
                Method::GET,
                p("/bookings/{id}"),
                Needs::Confirmed,
                [401, 404, 200, 200],
            ),
            // Acting: the owner only; ops may read but not act (404, nothing leaks).
            row(
                Method::POST,
                p("/bookings/{id}/confirm"),
                Needs::Hold,
                [401, 404, 404, 200],
            ),
            row(
                Method::POST,
                p("/bookings/{id}/cancel"),
                Needs::Confirmed,
                [401, 404, 404, 200],
            ),
            row(
                Method::POST,
                p("/bookings/{id}/extend"),
                Needs::Confirmed,
                [401, 404, 404, 200],
            ),
            row(
                Method::POST,
                p("/bookings/{id}/reschedule"),
                Needs::Confirmed,
                [401, 404, 404, 200],
            ),
            row(
                Method::POST,
                p("/bookings/{id}/start"),
                Needs::ConfirmedSoon,
                [401, 404, 404, 200],
            ),
            row(
                Method::POST,
                p("/bookings/{id}/complete"),
                Needs::Started,
                [401, 404, 404, 200],
            ),
        ]);
    }
    rows
}

/// Routes the router serves outside the OpenAPI document (the document itself).
const UNDOCUMENTED: &[&str] = &["GET /openapi.json"];

#[sqlx::test(migrations = "../migrations")]
async fn every_documented_route_is_in_the_authorization_matrix(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let doc = app.get("/openapi.json", None).await?.body;
    let mut documented = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().into_iter().flatten() {
        for method in ops.as_object().into_iter().flatten().map(|(m, _)| m) {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                documented.insert(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    let listed: BTreeSet<String> = matrix()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .filter(|r| !UNDOCUMENTED.contains(&r.as_str()))
        .collect();
    let missing: Vec<_> = documented.difference(&listed).collect();
    let stale: Vec<_> = listed.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "documented routes missing from the matrix: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "matrix rows that are not documented: {stale:?}"
    );
    assert!(documented.len() >= 20, "{documented:?}");
    app.stop().await
}

/// A window starting ten minutes from now on a whole minute: startable at once.
fn soon() -> (chrono::DateTime<Utc>, chrono::DateTime<Utc>) {
    let start = (Utc::now() + Duration::minutes(10))
        .duration_trunc(Duration::minutes(1))
        .unwrap_or_else(|_| Utc::now());
    (start, start + Duration::hours(1))
}

/// A webhook endpoint registered by ops and one delivery in its log (written as the fan-out
/// writes it: the consumer does not run here): their ids.
async fn webhook_fixture(app: &TestApp, vehicle: &str) -> TestResult<(String, String)> {
    let made = app
        .post(
            "/v1/admin/webhooks?region=EUW",
            Some(&ops_token("olga")),
            &json!({ "url": "http://127.0.0.1:9/hook", "event_types": ["booking.created"] }),
            None,
        )
        .await?;
    anyhow::ensure!(made.status.as_u16() == 201, "webhook: {made:?}");
    let id = made.body["webhook"]["id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no webhook id in {made:?}"))?
        .to_owned();
    let uuid = uuid::Uuid::try_parse(id.rsplit('_').next().unwrap_or_default())?;
    let delivery = uuid::Uuid::new_v4();
    sqlx::query(
        "insert into webhook_deliveries (id, endpoint_id, event_id, topic, vehicle, sequence, payload, give_up_at, state)
         values ($1, $2, $3, 'booking.created', $4, 1, '{}', now() + interval '1 day', 'failed')",
    )
    .bind(delivery)
    .bind(uuid)
    .bind(uuid::Uuid::new_v4())
    .bind(vehicle)
    .execute(&app.pool)
    .await?;
    Ok((id, delivery.to_string()))
}

#[sqlx::test(migrations = "../migrations")]
async fn every_route_answers_each_principal_with_the_status_in_the_matrix(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app(pool).await?;
    let mut vehicles = app.vehicles("EUW").await?;
    vehicles.extend(app.vehicles("EUN").await?);
    let owner = token("ann");
    let tokens = [
        None,
        Some(token("bob")),
        Some(ops_token("olga")),
        Some(owner.clone()),
    ];
    let rows = matrix();
    let mut failures = Vec::new();
    let mut checked = 0;
    for (k, row) in rows.iter().enumerate() {
        // Windows on different days, so rows sharing a vehicle never collide.
        let vehicle = &vehicles[k % vehicles.len()];
        let days = 2 + i64::try_from(k)?;
        // Fixtures: everything belongs to ann.
        let booking = match row.needs {
            Needs::Nothing
            | Needs::Quote
            | Needs::TimeMultiplier
            | Needs::Discount
            | Needs::Block
            | Needs::Webhook
            | Needs::Delivery
            | Needs::DenyEntry
            | Needs::ApiKey => None,
            Needs::Waitlist => Some(app.confirmed("carl", vehicle, window(days, 2)).await?),
            Needs::Hold => {
                let hold = app.hold("ann", vehicle, window(days, 2)).await?;
                anyhow::ensure!(hold.status.as_u16() == 201, "hold: {hold:?}");
                hold.body["id"].as_str().map(str::to_owned)
            }
            Needs::Confirmed => Some(app.confirmed("ann", vehicle, window(days, 2)).await?),
            Needs::ConfirmedSoon | Needs::Started => {
                let id = app.confirmed("ann", vehicle, soon()).await?;
                if row.needs == Needs::Started {
                    let started = app
                        .post(
                            &format!("/v1/bookings/{id}/start"),
                            Some(&owner),
                            &Value::Null,
                            None,
                        )
                        .await?;
                    anyhow::ensure!(started.status.as_u16() == 200, "start: {started:?}");
                }
                Some(id)
            }
        };
        let rule = match row.needs {
            Needs::TimeMultiplier => {
                Some(admin_create(&app, "time-multipliers", &time_multiplier_body()).await?)
            }
            Needs::Discount => Some(admin_create(&app, "discount-rules", &discount_body()).await?),
            _ => None,
        };
        let (w_start, w_end) = window(days, 2);
        let block_body = json!({ "start": w_start, "end": w_end, "reason": "authz" });
        let block = match row.needs {
            Needs::Block => {
                let made = app
                    .post(
                        &format!("/v1/admin/vehicles/{vehicle}/blocks"),
                        Some(&ops_token("olga")),
                        &block_body,
                        None,
                    )
                    .await?;
                anyhow::ensure!(made.status.as_u16() == 201, "block: {made:?}");
                made.body["block"]["id"].as_str().map(str::to_owned)
            }
            _ => None,
        };
        let (webhook, delivery) = match row.needs {
            Needs::Webhook | Needs::Delivery => {
                let (id, delivery) = webhook_fixture(&app, vehicle).await?;
                (Some(id), Some(delivery))
            }
            _ => (None, None),
        };
        let entry = match row.needs {
            Needs::Waitlist => {
                let (start, end) = window(days, 2);
                let joined = app
                    .post(
                        "/v1/waitlist",
                        Some(&owner),
                        &json!({ "vehicle_id": vehicle, "start": start, "end": end }),
                        None,
                    )
                    .await?;
                anyhow::ensure!(joined.status.as_u16() == 201, "waitlist: {joined:?}");
                joined.body["id"].as_str().map(str::to_owned)
            }
            _ => None,
        };
        let deny_entry = match row.needs {
            Needs::DenyEntry => {
                let made = app
                    .post(
                        "/v1/admin/deny-list?region=EUW",
                        Some(&ops_token("olga")),
                        &json!({ "kind": "user", "value": format!("authz-{k}"), "reason": "authz" }),
                        None,
                    )
                    .await?;
                anyhow::ensure!(made.status.as_u16() == 201, "deny entry: {made:?}");
                made.body["id"].as_str().map(str::to_owned)
            }
            _ => None,
        };
        let api_key = match row.needs {
            Needs::ApiKey => {
                let made = app
                    .post(
                        "/v1/admin/api-keys?region=EUW",
                        Some(&ops_token("olga")),
                        &json!({ "name": format!("authz-{k}"), "per_minute": 10, "per_day": 100 }),
                        None,
                    )
                    .await?;
                anyhow::ensure!(made.status.as_u16() == 201, "API key: {made:?}");
                made.body["id"].as_str().map(str::to_owned)
            }
            _ => None,
        };
        let quote = match row.needs {
            Needs::Quote => Some(app.quote("ann", vehicle, window(days, 2)).await?),
            _ => None,
        };
        let path = match (&booking, &rule) {
            (Some(id), _) | (None, Some(id)) => row.path.replace("{id}", id),
            (None, None) => row.path.to_owned(),
        }
        .replace("{region}", "EUW")
        .replace("{class}", "compact")
        .replace("{vehicle_id}", vehicle)
        .replace("{block_id}", block.as_deref().unwrap_or_default())
        .replace("{webhook_id}", webhook.as_deref().unwrap_or_default())
        .replace("{delivery_id}", delivery.as_deref().unwrap_or_default())
        .replace("{waitlist_id}", entry.as_deref().unwrap_or_default())
        .replace("{entry_id}", deny_entry.as_deref().unwrap_or_default())
        .replace("{key_id}", api_key.as_deref().unwrap_or_default());
        let (path, body) = match (&row.method, row.path) {
            (_, p) if p.ends_with("/vehicles/search") => (
                format!(
                    "{path}?lat=50.11&lon=8.68&radius_m=5000&start={}&end={}",
                    w_start.format("%Y-%m-%dT%H:%M:%SZ"),
                    w_end.format("%Y-%m-%dT%H:%M:%SZ")
                ),
                Value::Null,
            ),
            (_, p) if p.ends_with("/quotes") => (
                path,
                json!({ "vehicle_id": vehicle, "start": w_start, "end": w_end }),
            ),
            (&Method::POST, p) if p.ends_with("/bookings") => (
                path,
                json!({ "quote_token": quote.as_ref().map(|q| q["quote_token"].clone()) }),
            ),
            (&Method::GET, p) if p.ends_with("/bookings") => {
                (format!("{path}?user_id=ann"), Value::Null)
            }
            (&Method::POST, "/v1/waitlist") => (
                path,
                json!({ "vehicle_id": vehicle, "start": w_start, "end": w_end }),
            ),
            (&Method::POST, "/v1/admin/deny-list") => (
                format!("{path}?region=EUW"),
                json!({ "kind": "network", "value": format!("198.51.100.{k}"), "reason": "authz" }),
            ),
            (&Method::GET, "/v1/admin/deny-list") => (format!("{path}?region=EUW"), Value::Null),
            (&Method::POST, "/v1/admin/api-keys") => (
                format!("{path}?region=EUW"),
                json!({ "name": format!("authz {k}"), "per_minute": 10, "per_day": 100 }),
            ),
            (&Method::GET, "/v1/admin/api-keys") => (format!("{path}?region=EUW"), Value::Null),
            (&Method::POST, "/v1/admin/webhooks") => (
                format!("{path}?region=EUW"),
                json!({ "url": "http://127.0.0.1:9/hook", "event_types": ["booking.created"] }),
            ),
            (_, p) if p.ends_with("/rotate") => (path, json!({})),
            (_, "/v1/surge") | (_, "/v1/admin/surge/recompute") | (_, "/v1/admin/webhooks") => {
                (format!("{path}?region=EUW"), Value::Null)
            }
            (_, p) if p.ends_with("/base-rates/{class}") => (
                path,
                json!({ "currency": "EUR", "per_hour_minor": 1000, "per_day_minor": 5000 }),
            ),
            (_, p) if p.ends_with("/vehicle-config/{class}") => (
                path,
                json!({ "floor_minor": 500, "ceiling_minor": 1_000_000 }),
            ),
            (&Method::DELETE, _) => (path, Value::Null),
            (m, p) if p.contains("/blocks") && *m != Method::GET => (path, block_body.clone()),
            (_, p) if p.contains("/time-multipliers") => (path, time_multiplier_body()),
            (_, p) if p.contains("/discount-rules") => (path, discount_body()),
            (_, p) if p.ends_with("/extend") => {
                (path, json!({ "end": w_end + Duration::hours(1) }))
            }
            (_, p) if p.ends_with("/reschedule") => (
                path,
                json!({ "start": w_start + Duration::days(7), "end": w_end + Duration::days(7) }),
            ),
            _ => (path, Value::Null),
        };
        let mut before = snapshot(&app).await?;
        for (who, (tok, expected)) in tokens.iter().zip(row.expect).enumerate() {
            let reply = call(&app, &row.method, &path, tok.as_deref(), &body).await?;
            checked += 1;
            if reply.status.as_u16() != expected {
                failures.push(format!(
                    "{} {} as {}: expected {expected}, got {} {}",
                    row.method, row.path, PRINCIPALS[who], reply.status, reply.body
                ));
                continue;
            }
            if expected >= 400 {
                reply.assert_problem(expected);
                if expected == 401 {
                    assert_eq!(
                        reply
                            .headers
                            .get("www-authenticate")
                            .and_then(|v| v.to_str().ok()),
                        Some("Bearer")
                    );
                }
                // A refusal changes nothing.
                assert_eq!(
                    snapshot(&app).await?,
                    before,
                    "{} {} as {} changed data",
                    row.method,
                    row.path,
                    PRINCIPALS[who]
                );
            } else {
                before = snapshot(&app).await?;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} cells wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(checked, rows.len() * 4);
    app.stop().await
}

/// Any method, with a fresh Idempotency-Key on writes (a replay must not mask a decision).
async fn call(
    app: &TestApp,
    method: &Method,
    path: &str,
    token: Option<&str>,
    body: &Value,
) -> TestResult<Reply> {
    if *method == Method::GET {
        return app.get(path, token).await;
    }
    if *method == Method::POST {
        let key = uuid::Uuid::new_v4().to_string();
        return app.post(path, token, body, Some(&key)).await;
    }
    let mut req = app
        .client
        .request(method.clone(), format!("{}{path}", app.base));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if !body.is_null() {
        req = req.json(body);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let content_type = headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = serde_json::from_slice(&resp.bytes().await?).unwrap_or(Value::Null);
    Ok(Reply {
        status,
        content_type,
        headers,
        body,
    })
}

/// A time-of-day rule in a slot of its own: the demo fleet's rules leave 10:00–16:00 free,
/// and rules of a region may not overlap, so each call takes the next free hour.
fn time_multiplier_body() -> Value {
    use std::sync::atomic::{AtomicI16, Ordering};
    static NEXT: AtomicI16 = AtomicI16::new(10);
    let hour = NEXT.fetch_add(1, Ordering::Relaxed);
    json!({ "days_mask": 1, "start_hour": hour, "end_hour": hour + 1, "multiplier_bp": 11000 })
}

/// A promo discount with a code of its own.
fn discount_body() -> Value {
    let code = format!("AUTHZ{}", uuid::Uuid::new_v4().simple());
    json!({ "kind": "promo", "code": &code[..12], "percent_bp": 1000 })
}

/// Creates a pricing rule as ops and returns its id.
async fn admin_create(app: &TestApp, what: &str, body: &Value) -> TestResult<String> {
    let created = app
        .post(
            &format!("/v1/admin/pricing/EUW/{what}"),
            Some(&ops_token("olga")),
            body,
            None,
        )
        .await?;
    anyhow::ensure!(created.status.as_u16() == 201, "create {what}: {created:?}");
    Ok(created.body["key"].as_str().unwrap_or_default().to_owned())
}

/// Every booking's state, window and history length, the outbox size and the pricing audit
/// size and the maintenance blocks: what a refused request must not change.
async fn snapshot(app: &TestApp) -> TestResult<Vec<(String, String, i64)>> {
    let mut rows: Vec<(String, String, i64)> = sqlx::query_as(
        "select b.id::text, b.status || ' ' || b.period::text,
                (select count(*) from booking_history h where h.booking_id = b.id)
           from bookings b order by b.id",
    )
    .fetch_all(&app.pool)
    .await?;
    rows.push((
        "outbox".into(),
        String::new(),
        app.count("outbox", "true").await?,
    ));
    rows.push((
        "pricing_audit".into(),
        String::new(),
        app.count("pricing_audit", "true").await?,
    ));
    rows.push((
        "vehicle_blocks".into(),
        String::new(),
        app.count("vehicle_blocks", "true").await?,
    ));
    // Webhooks: endpoints (with their secrets and switches) and deliveries (with their state).
    let (hooks, deliveries): (Option<String>, Option<String>) = sqlx::query_as(
        "select (select string_agg(id::text || enabled || secret || coalesce(previous_secret, ''), ',' order by id)
                   from webhook_endpoints),
                (select string_agg(id::text || state || next_attempt_at::text, ',' order by id)
                   from webhook_deliveries)",
    )
    .fetch_one(&app.pool)
    .await?;
    rows.push(("webhooks".into(), format!("{hooks:?} {deliveries:?}"), 0));
    let waitlist: Option<String> = sqlx::query_scalar(
        "select string_agg(id::text || state || updated_at::text, ',' order by id) from waitlist_entries",
    )
    .fetch_one(&app.pool)
    .await?;
    rows.push(("waitlist".into(), format!("{waitlist:?}"), 0));
    let denied: Option<String> = sqlx::query_scalar(
        "select string_agg(id::text || coalesce(removed_by, ''), ',' order by id) from deny_list",
    )
    .fetch_one(&app.pool)
    .await?;
    rows.push(("deny_list".into(), format!("{denied:?}"), 0));
    let keys: Option<String> = sqlx::query_scalar(
        "select string_agg(id::text || coalesce(revoked_by, ''), ',' order by id) from api_keys",
    )
    .fetch_one(&app.pool)
    .await?;
    rows.push(("api_keys".into(), format!("{keys:?}"), 0));
    Ok(rows)
}
