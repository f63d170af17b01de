//! The alert rules (`deploy/prometheus/rules.yml`) and the dashboard
//! (`deploy/grafana/booking.json`) watch metrics a running origin really exports, and the
//! dashboard has the shape Grafana loads. (`promtool check rules` and `promtool test rules`
//! run in scripts/prometheus-check.sh.)

use std::collections::BTreeSet;
use std::path::PathBuf;

use e2e::*;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::inference_fake::FakeInference;
use crate::key_rotation::hold;

fn deploy_file(path: &str) -> TestResult<String> {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
}

/// The `expr:` of every rule in a Prometheus rules file, and the names of the recording rules.
///
/// Hand-written for the one shape our rules file has (an `expr:` is inline or a `|` block, as
/// `promtool check rules` accepts) because the workspace has no YAML crate, and one this
/// narrow is not worth a dependency.
fn rule_exprs(yaml: &str) -> (Vec<String>, BTreeSet<String>) {
    let (mut exprs, mut records) = (Vec::new(), BTreeSet::new());
    let lines: Vec<&str> = yaml.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start().trim_start_matches("- ");
        if let Some(name) = trimmed.strip_prefix("record:") {
            records.insert(name.trim().to_owned());
        }
        if let Some(rest) = trimmed.strip_prefix("expr:") {
            let rest = rest.trim();
            if rest == "|" || rest == ">" {
                let indent = line.len() - line.trim_start().len();
                let mut block = String::new();
                while i + 1 < lines.len() {
                    let next = lines[i + 1];
                    if !next.trim().is_empty() && next.len() - next.trim_start().len() <= indent {
                        break;
                    }
                    block.push_str(next.trim());
                    block.push(' ');
                    i += 1;
                }
                exprs.push(block);
            } else {
                exprs.push(rest.trim_matches('\'').to_owned());
            }
        }
        i += 1;
    }
    (exprs, records)
}

/// The PromQL of every panel target of a Grafana dashboard.
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                exprs.push(expr.to_owned());
            }
        }
    }
    exprs
}

/// The metric names a PromQL expression reads: identifiers outside label matchers (`{…}`),
/// ranges (`[…]`), strings and grouping clauses (`by (…)`), that are not a function or an
/// aggregation (followed by `(`), a keyword or a number. Recording rules (names with `:`) are
/// returned too; the caller checks them against the rules that define them.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Keywords, and the aggregations (which may be followed by `by (…)` instead of `(`).
    const KEYWORDS: [&str; 20] = [
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "limitk",
    ];
    // Blank out the parts that hold no metric names.
    let mut plain = String::with_capacity(expr.len());
    let mut depth_brace = 0;
    let mut depth_bracket = 0;
    let mut in_string = false;
    for c in expr.chars() {
        match c {
            '"' if depth_brace == 0 => in_string = !in_string,
            '{' if !in_string => depth_brace += 1,
            '}' if !in_string => depth_brace -= 1,
            '[' if !in_string => depth_bracket += 1,
            ']' if !in_string => depth_bracket -= 1,
            _ => {}
        }
        let hidden = in_string || depth_brace > 0 || depth_bracket > 0 || "{}[]\"".contains(c);
        plain.push(if hidden { ' ' } else { c });
    }
    let mut names = BTreeSet::new();
    let chars: Vec<char> = plain.chars().collect();
    let mut i = 0;
    let mut after_grouping = false;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            let grouping = [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ]
            .contains(&word.as_str());
            if grouping {
                after_grouping = true;
            } else if next == Some(&'(') || KEYWORDS.contains(&word.to_lowercase().as_str()) {
                // A function or aggregation, or a keyword.
            } else {
                names.insert(word);
            }
            continue;
        }
        if c == '(' && after_grouping {
            // Skip the label list of `by (…)` and friends.
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            after_grouping = false;
        }
        i += 1;
    }
    names
}

/// Metric names (or recording rules) the expressions read that neither the scrape exports nor
/// a recording rule defines.
fn missing(
    exprs: &[String],
    records: &BTreeSet<String>,
    scraped: &BTreeSet<String>,
) -> Vec<String> {
    let mut missing = BTreeSet::new();
    for expr in exprs {
        for name in metric_names(expr) {
            if !scraped.contains(&name) && !records.contains(&name) {
                missing.insert(format!("{name} (in `{expr}`)"));
            }
        }
    }
    missing.into_iter().collect()
}

/// Names of the samples in a Prometheus text exposition.
fn scraped_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// Everything Grafana needs to load a dashboard JSON (schema v36+): the problems found.
fn dashboard_problems(d: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    for key in ["uid", "title"] {
        if d[key].as_str().is_none_or(str::is_empty) {
            problems.push(format!("no {key}"));
        }
    }
    if d["schemaVersion"].as_u64().is_none_or(|v| v < 36) {
        problems.push("schemaVersion missing or below 36".into());
    }
    for var in d["templating"]["list"].as_array().into_iter().flatten() {
        if var["name"].as_str().is_none() || var["type"].as_str().is_none() {
            problems.push(format!("a template variable without name or type: {var}"));
        }
    }
    let Some(panels) = d["panels"].as_array().filter(|p| !p.is_empty()) else {
        problems.push("no panels".into());
        return problems;
    };
    let mut ids = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or_default();
        if title.is_empty() {
            problems.push(format!("a panel without a title: {p}"));
        }
        match p["id"].as_u64() {
            Some(id) if ids.insert(id) => {}
            _ => problems.push(format!("{title}: missing or duplicate id")),
        }
        let kind = p["type"].as_str().unwrap_or_default();
        if ![
            "row",
            "timeseries",
            "stat",
            "gauge",
            "table",
            "heatmap",
            "text",
        ]
        .contains(&kind)
        {
            problems.push(format!("{title}: unknown panel type {kind:?}"));
        }
        let g = &p["gridPos"];
        let dims: Vec<Option<u64>> = ["h", "w", "x", "y"]
            .iter()
            .map(|k| g[*k].as_u64())
            .collect();
        match dims[..] {
            [Some(h), Some(w), Some(x), Some(_)] if h > 0 && w > 0 && x + w <= 24 => {}
            _ => problems.push(format!(
                "{title}: gridPos needs h, w, x, y within 24 columns"
            )),
        }
        if kind == "row" || kind == "text" {
            continue;
        }
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("{title}: no targets"));
        }
        let mut refs = BTreeSet::new();
        for t in &targets {
            if !t["refId"]
                .as_str()
                .is_some_and(|r| refs.insert(r.to_owned()))
            {
                problems.push(format!("{title}: a target without a unique refId"));
            }
            if t["expr"].as_str().is_none_or(|e| e.trim().is_empty()) {
                problems.push(format!("{title}: a target without expr"));
            }
        }
        if p["datasource"]["type"] != "prometheus" {
            problems.push(format!("{title}: the datasource is not Prometheus"));
        }
    }
    problems
}

#[test]
fn the_dashboard_has_the_shape_grafana_loads_and_a_broken_copy_is_caught() -> TestResult {
    let dashboard: Value = serde_json::from_str(&deploy_file("deploy/grafana/booking.json")?)?;
    assert_eq!(dashboard_problems(&dashboard), Vec::<String>::new());
    // Planted: a panel without a grid position, one with a duplicate id, one without a query.
    let mut broken = dashboard.clone();
    if let Some(panels) = broken["panels"].as_array_mut() {
        panels[1].as_object_mut().map(|p| p.remove("gridPos"));
        panels[2]["id"] = panels[3]["id"].clone();
        panels[4]["targets"] = json!([]);
    }
    let found = dashboard_problems(&broken);
    assert_eq!(found.len(), 3, "{found:?}");
    Ok(())
}

#[test]
fn the_metric_name_extraction_sees_metrics_and_skips_functions_labels_and_groupings() {
    let names = metric_names(
        r#"histogram_quantile(0.95, sum by (route, le) (rate(http_request_duration_seconds_bucket{route!~"/metrics|x{y}"}[5m]))) / on(pod) group_left foo:bar:rate5m > 0.2"#,
    );
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(
        names,
        ["foo:bar:rate5m", "http_request_duration_seconds_bucket"]
    );
    // Planted: a metric no origin exports is reported, a defined recording rule is not.
    let scraped = BTreeSet::from(["http_requests_total".to_owned()]);
    let records = BTreeSet::from(["route:x:rate5m".to_owned()]);
    let exprs =
        ["rate(http_requests_total[5m]) + no_such_metric_total + route:x:rate5m".to_owned()];
    let found = missing(&exprs, &records, &scraped);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("no_such_metric_total"), "{found:?}");
}

#[sqlx::test(migrations = "../migrations")]
async fn every_metric_the_rules_and_the_dashboard_read_is_exported_by_a_running_origin(
    pool: PgPool,
) -> TestResult {
    let brokers = std::env::var("KAFKA_BROKERS").map_err(|_| {
        anyhow::anyhow!(
            "KAFKA_BROKERS is not set: the outbox metrics need the relay (scripts/broker.sh)"
        )
    })?;
    let inference = FakeInference::start().await?;
    let url = format!(
        "postgres://{}@{}:{}/{}",
        pool.connect_options().get_username(),
        pool.connect_options().get_host(),
        pool.connect_options().get_port(),
        pool.connect_options().get_database().unwrap_or("postgres")
    );
    // The edges' databases, one per region behind a real gateway: with a peer, the copy of
    // the rate-limit counts (`jobs::limit_sync`) runs and exports its series.
    let gateway = upstash_gateway::start(
        tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        &e2e::test_redis::shared_url(),
        e2e::edge::GATEWAY_TOKEN,
    )
    .await?;
    let edge_root = format!("test:observe:{}:", uuid::Uuid::new_v4().simple());
    let (euw_db, eun_db) = (format!("{edge_root}EUW:"), format!("{edge_root}EUN:"));
    // Every role's metrics: `all` (routes, relay, sweeper; EUW only, so a search in EUN's area
    // is misdirected), and a `jobs` replica (the leader).
    let app = spawn_app_with(
        pool.clone(),
        &[
            ("KAFKA_BROKERS", &brokers),
            ("INFERENCE_URL", &inference.url),
            ("ORIGIN_REGIONS", "EUW"),
            ("EDGE_CACHE_REST_URL", &gateway.url()),
            ("EDGE_CACHE_REST_TOKEN", e2e::edge::GATEWAY_TOKEN),
            ("EDGE_CACHE_KEY_PREFIX", &euw_db),
            ("EDGE_PEER_EUN_REST_URL", &gateway.url()),
            ("EDGE_PEER_EUN_REST_TOKEN", e2e::edge::GATEWAY_TOKEN),
            ("EDGE_PEER_EUN_KEY_PREFIX", &eun_db),
        ],
    )
    .await?;
    let jobs = spawn_app_with(
        pool.clone(),
        &[
            ("ORIGIN_ROLE", "jobs"),
            ("DATABASE_URL", &url),
            ("SWEEPER_INTERVAL_MS", "100"),
        ],
    )
    .await?;

    // Traffic: a search, quotes (twice: a cache hit), a hold, and a second hold on the same
    // window, which the exclusion constraint refuses (23P01).
    let vehicle = app.vehicles("EUW").await?[0].clone();
    let w = window(1, 2);
    let (s, e) = (
        w.0.to_rfc3339().replace('+', "%2B"),
        w.1.to_rfc3339().replace('+', "%2B"),
    );
    let search = app
        .get(
            &format!("/v1/vehicles/search?lat=50.1109&lon=8.6821&radius_m=30000&limit=5&start={s}&end={e}"),
            Some(&token("alice")),
        )
        .await?;
    assert_eq!(search.status.as_u16(), 200, "{search:?}");
    let stockholm = app
        .get(
            &format!(
                "/v1/vehicles/search?lat=59.33&lon=18.06&radius_m=3000&limit=5&start={s}&end={e}"
            ),
            Some(&token("alice")),
        )
        .await?;
    stockholm.assert_problem(421);
    let first = app.quote("alice", &vehicle, w).await?;
    let second = app.quote("bob", &vehicle, w).await?;
    let quote_of = |q: &Value| q["quote_token"].as_str().unwrap_or_default().to_owned();
    let held = hold(&app, &token("alice"), &quote_of(&first)).await?;
    assert_eq!(held.status.as_u16(), 201, "{held:?}");
    let before = overlap_rejections(&app).await?;
    let refused = hold(&app, &token("bob"), &quote_of(&second)).await?;
    refused.assert_problem(409);
    assert!(
        overlap_rejections(&app).await? > before,
        "the 23P01 refusal of a double booking is counted"
    );

    // The relay reports the outbox lag within its first round and publishes the hold's events;
    // the leader is elected within a poll.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let scraped = loop {
        let text = app.metrics_text().await?;
        let scraped = scraped_names(&text);
        let ready = [
            "outbox_oldest_unpublished_age_seconds",
            "jobs_leader",
            "outbox_relay_published_total",
            "edge_limit_sync_spends_total",
        ]
        .iter()
        .all(|m| scraped.contains(*m));
        if ready || std::time::Instant::now() > until {
            break scraped;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };

    let (mut exprs, records) = rule_exprs(&deploy_file("deploy/prometheus/rules.yml")?);
    assert!(
        exprs.len() >= 10 && records.len() >= 5,
        "rules parsed: {exprs:?} {records:?}"
    );
    let dashboard: Value = serde_json::from_str(&deploy_file("deploy/grafana/booking.json")?)?;
    exprs.extend(dashboard_exprs(&dashboard));
    let found = missing(&exprs, &records, &scraped);
    assert!(
        found.is_empty(),
        "read by the rules or the dashboard, not exported: {found:#?}"
    );
    jobs.stop().await?;
    app.stop().await?;
    gateway.stop().await;
    e2e::test_redis::delete_prefix(&e2e::test_redis::shared_url(), &edge_root).await?;
    Ok(())
}

/// The origin's count of double bookings the exclusion constraint refused.
async fn overlap_rejections(app: &TestApp) -> TestResult<f64> {
    let text = app.metrics_text().await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("booking_overlap_rejections_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0))
}
