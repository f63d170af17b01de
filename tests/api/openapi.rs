//! The OpenAPI document matches the router.

use e2e::*;
use sqlx::PgPool;

#[sqlx::test(migrations = "../migrations")]
async fn the_openapi_document_lists_every_route_and_each_exists(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let doc = app.get("/openapi.json", None).await?;
    assert_eq!(doc.status.as_u16(), 200);
    let paths = doc.body["paths"].as_object().cloned().unwrap_or_default();
    let mut documented: Vec<String> = Vec::new();
    for (path, item) in &paths {
        for method in item
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    documented.sort();
    let mut expected: Vec<String> = [
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /v1/vehicles/search",
        "GET /v2/vehicles/search",
        "POST /v1/quotes",
        "POST /v2/quotes",
        "POST /v1/bookings",
        "POST /v2/bookings",
        "GET /v1/bookings",
        "GET /v2/bookings",
        "GET /v1/bookings/{id}",
        "GET /v2/bookings/{id}",
        // Pricing (issue 6): surge grid and the ops role's pricing admin.
        "GET /v1/surge",
        "POST /v1/admin/surge/recompute",
        "GET /v1/admin/pricing/{region}",
        "GET /v1/admin/pricing-audit",
        "PUT /v1/admin/pricing/{region}/base-rates/{class}",
        "PUT /v1/admin/pricing/{region}/vehicle-config/{class}",
        "POST /v1/admin/pricing/{region}/time-multipliers",
        "PUT /v1/admin/pricing/{region}/time-multipliers/{id}",
        "DELETE /v1/admin/pricing/{region}/time-multipliers/{id}",
        "POST /v1/admin/pricing/{region}/discount-rules",
        "PUT /v1/admin/pricing/{region}/discount-rules/{id}",
        "DELETE /v1/admin/pricing/{region}/discount-rules/{id}",
        "POST /v1/admin/vehicles/{vehicle_id}/blocks",
        "GET /v1/admin/vehicles/{vehicle_id}/blocks",
        "PUT /v1/admin/vehicles/{vehicle_id}/blocks/{block_id}",
        "DELETE /v1/admin/vehicles/{vehicle_id}/blocks/{block_id}",
        "POST /v1/admin/deny-list",
        "GET /v1/admin/deny-list",
        "GET /v1/admin/deny-list/{entry_id}",
        "DELETE /v1/admin/deny-list/{entry_id}",
        "POST /v1/admin/api-keys",
        "GET /v1/admin/api-keys",
        "GET /v1/admin/api-keys/{key_id}",
        "DELETE /v1/admin/api-keys/{key_id}",
        "POST /v1/admin/webhooks",
        "GET /v1/admin/webhooks",
        "GET /v1/admin/webhooks/{webhook_id}",
        "DELETE /v1/admin/webhooks/{webhook_id}",
        "POST /v1/admin/webhooks/{webhook_id}/rotate",
        "POST /v1/admin/webhooks/{webhook_id}/enable",
        "GET /v1/admin/webhooks/{webhook_id}/deliveries",
        "POST /v1/admin/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
        "POST /v1/waitlist",
        "GET /v1/waitlist/{waitlist_id}",
        "DELETE /v1/waitlist/{waitlist_id}",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(
        [
            "confirm",
            "cancel",
            "extend",
            "reschedule",
            "start",
            "complete",
        ]
        .iter()
        .flat_map(|a| ["v1", "v2"].map(|v| format!("POST /{v}/bookings/{{id}}/{a}"))),
    )
    .collect();
    expected.sort();
    assert_eq!(documented, expected);

    // Each documented route is served: no "no-route" or 405 answer for any of them.
    for route in &documented {
        let (method, path) = route.split_once(' ').unwrap_or_default();
        let path = path
            .replace("{id}", "bkg_euw_00000000000000000000000000000000")
            .replace("{region}", "EUW")
            .replace("{class}", "compact")
            .replace("{vehicle_id}", "veh_euw_00000000000000000000000000000000")
            .replace("{block_id}", "00000000-0000-0000-0000-000000000000");
        let req = match method {
            "GET" => app.client.get(format!("{}{path}", app.base)),
            "PUT" => app
                .client
                .put(format!("{}{path}", app.base))
                .json(&serde_json::json!({})),
            "DELETE" => app.client.delete(format!("{}{path}", app.base)),
            _ => app
                .client
                .post(format!("{}{path}", app.base))
                .json(&serde_json::json!({})),
        };
        let reply = req.send().await?;
        let status = reply.status().as_u16();
        let body: serde_json::Value = reply.json().await.unwrap_or_default();
        assert_ne!(body["type"], "/problems/no-route", "{route}");
        assert_ne!(status, 405, "{route}");
        assert!(status < 500, "{route}: {status}");
    }
    // The event schemas are documented for consumers.
    assert!(doc.body["components"]["schemas"]["Event"].is_object());
    assert!(doc.body["components"]["schemas"]["BlockEvent"].is_object());
    // Every schema reference resolves (a nested type utoipa did not collect would dangle).
    let mut refs = Vec::new();
    collect_refs(&doc.body, &mut refs);
    assert!(refs.iter().any(|r| r.ends_with("/EventWindow")), "{refs:?}");
    for r in &refs {
        let pointer = r.trim_start_matches('#');
        assert!(doc.body.pointer(pointer).is_some(), "dangling $ref {r}");
    }
    app.stop().await
}

fn collect_refs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v.as_str()) {
                    ("$ref", Some(r)) => out.push(r.to_owned()),
                    _ => collect_refs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}
