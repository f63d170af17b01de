//! Key rotation without downtime, as the README's runbook does it ("Rotating keys without
//! downtime"): three rollouts of the origin on one database — old keys only; old and new (the
//! new quote key signing); new only — with JWTs and quote tokens of both keys.

use e2e::jwt_forge::{rs256, sign, ED_PRIVATE, FIXTURES};
use e2e::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use sqlx::PgPool;

const OLD_QUOTE_KEY: &str = "old=old-quote-key-old-quote-key-old-quote-key-0";
const NEW_QUOTE_KEY: &str = "new=new-quote-key-new-quote-key-new-quote-key-1";

/// One rollout's keys: JWT verifiers (RS256 `old`, EdDSA `new`) and quote keys.
async fn rollout(pool: &PgPool, old: bool, new: bool, signer: &str) -> TestResult<TestApp> {
    let rs = format!("old={FIXTURES}/rs256_public.pem");
    let ed = format!("new={FIXTURES}/ed25519_public.pem");
    let quote_keys = match (old, new) {
        (true, true) => format!("{NEW_QUOTE_KEY},{OLD_QUOTE_KEY}"),
        (true, false) => OLD_QUOTE_KEY.to_owned(),
        _ => NEW_QUOTE_KEY.to_owned(),
    };
    spawn_app_with(
        pool.clone(),
        &[
            // No HS256 secret: production-like, keys by kid only.
            ("JWT_HS256_SECRET", ""),
            ("JWT_RS256_PUBLIC_KEYS", if old { &rs } else { "" }),
            ("JWT_EDDSA_PUBLIC_KEYS", if new { &ed } else { "" }),
            ("QUOTE_SIGNING_KEYS", &quote_keys),
            ("QUOTE_ACTIVE_KID", signer),
        ],
    )
    .await
}

fn old_jwt(sub: &str) -> TestResult<String> {
    Ok(rs256(
        Some("old"),
        &serde_json::to_value(e2e::jwt_forge::claims(sub))?,
    ))
}

fn new_jwt(sub: &str) -> TestResult<String> {
    let key = EncodingKey::from_ed_pem(ED_PRIVATE)?;
    Ok(sign(
        Algorithm::EdDSA,
        Some("new"),
        &serde_json::to_value(e2e::jwt_forge::claims(sub))?,
        &key,
    ))
}

async fn quote(app: &TestApp, jwt: &str, vehicle: &str, days: i64) -> TestResult<String> {
    let w = window(days, 2);
    let reply = app
        .post(
            "/v1/quotes",
            Some(jwt),
            &json!({ "vehicle_id": vehicle, "start": w.0, "end": w.1 }),
            None,
        )
        .await?;
    anyhow::ensure!(reply.status.as_u16() == 201, "quote: {reply:?}");
    Ok(reply.body["quote_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

/// Holds with a quote token (and a fresh Idempotency-Key) as `jwt`'s user.
pub(crate) async fn hold(app: &TestApp, jwt: &str, quote_token: &str) -> TestResult<Reply> {
    app.post(
        "/v1/bookings",
        Some(jwt),
        &json!({ "quote_token": quote_token }),
        Some(&uuid::Uuid::new_v4().to_string()),
    )
    .await
}

async fn list_status(app: &TestApp, jwt: &str) -> TestResult<u16> {
    Ok(app.get("/v1/bookings", Some(jwt)).await?.status.as_u16())
}

#[sqlx::test(migrations = "../migrations")]
async fn a_rotation_adds_the_new_keys_verifies_both_then_drops_the_old_whose_tokens_fail(
    pool: PgPool,
) -> TestResult {
    let (alice_old, alice_new) = (old_jwt("alice")?, new_jwt("alice")?);

    // 1. Old keys only: old JWTs work, new ones are 401; quotes are signed with `old`.
    let app = rollout(&pool, true, false, "old").await?;
    let vehicles = app.vehicles("EUW").await?;
    assert_eq!(list_status(&app, &alice_old).await?, 200);
    assert_eq!(list_status(&app, &alice_new).await?, 401);
    let old_quote_a = quote(&app, &alice_old, &vehicles[0], 1).await?;
    let old_quote_b = quote(&app, &alice_old, &vehicles[1], 1).await?;
    assert!(old_quote_a.contains(".old."), "{old_quote_a}");
    app.stop().await?;

    // 2. Both: tokens of either key verify; `new` signs; an old quote still buys a hold.
    let app = rollout(&pool, true, true, "new").await?;
    assert_eq!(list_status(&app, &alice_old).await?, 200);
    assert_eq!(list_status(&app, &alice_new).await?, 200);
    let held = hold(&app, &alice_new, &old_quote_a).await?;
    assert_eq!(held.status.as_u16(), 201, "{held:?}");
    let new_quote = quote(&app, &alice_new, &vehicles[2], 1).await?;
    assert!(new_quote.contains(".new."), "{new_quote}");
    app.stop().await?;

    // 3. New keys only: old JWTs are 401, old quotes are invalid; new ones keep working.
    let app = rollout(&pool, false, true, "new").await?;
    let refused = app.get("/v1/bookings", Some(&alice_old)).await?;
    refused.assert_problem(401);
    assert_eq!(list_status(&app, &alice_new).await?, 200);
    let stale = hold(&app, &alice_new, &old_quote_b).await?;
    stale.assert_problem(422);
    assert_eq!(stale.problem_type(), "/problems/quote-invalid");
    let held: Value = hold(&app, &alice_new, &new_quote).await?.body;
    assert!(held["id"].is_string(), "a new-key quote holds: {held}");
    app.stop().await
}
