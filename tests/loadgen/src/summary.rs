//! The benchmark report: several runs (files written by `loadgen run`, named by what they
//! measure) checked against the targets, each figure as a ratio to the box's ceiling
//! measured in the same session by `limits.sh` — absolute numbers on a shared machine move by
//! ±15 % between runs, ratios much less.
//!
//! Run names `scripts/bench.sh` uses and what is read from them:
//! `holds` (closed loop; 2xx/s vs `pg_hold_tps`), `cached-quote-max` (closed loop; 2xx/s vs
//! `http_hello_rps`), `cached-quote-half` (open loop at half that rate; p99), `mixed` (open
//! loop; req/s vs `http_hello_rps`, p95, 5xx, origin RSS), `burst` (open loop with a 5× step;
//! 5xx, timeouts, admitted p99 in and after the step vs before it), `contention`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;

/// One checked target.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    pub figure: String,
    pub ceiling: Option<String>,
    pub ratio: Option<f64>,
    pub goal: String,
    /// `None` when the run or the ceiling is missing.
    pub met: Option<bool>,
    /// The run's throughput (what the plot's bars show), per second.
    pub throughput: Option<f64>,
    /// The run's p99 latency, ms.
    pub p99_ms: Option<f64>,
    /// The origin's CPU time per request answered, µs (`/proc/<pid>/stat` around the run).
    pub cpu_us_per_request: Option<f64>,
    /// The same target measured on the code before the change (runs named `before-<run>`),
    /// in the same session.
    pub before: Option<Box<Target>>,
    /// `throughput / before.throughput`.
    pub vs_before: Option<f64>,
}

impl Target {
    fn new(name: &str, run: &Value, figure: String, goal: &str) -> Self {
        Target {
            name: name.into(),
            figure,
            ceiling: None,
            ratio: None,
            goal: goal.into(),
            met: None,
            throughput: None,
            p99_ms: f(run, &["all", "p99_ms"]),
            cpu_us_per_request: f(run, &["origin_cpu_us_per_request"]),
            before: None,
            vs_before: None,
        }
    }
}

/// Parses `limits.sh` output: "name value unit" lines.
pub fn parse_limits(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let name = parts.next()?;
            let value = parts.next()?.parse().ok()?;
            Some((name.to_owned(), value))
        })
        .collect()
}

fn f(run: &Value, path: &[&str]) -> Option<f64> {
    let mut v = run;
    for p in path {
        v = v.get(*p)?;
    }
    v.as_f64()
}

/// Whether `x` is at least `times` × `ceiling` (on the exact figures: the printed ratio is
/// rounded).
fn at_least(x: Option<f64>, times: f64, ceiling: Option<f64>) -> Option<bool> {
    match (x, ceiling) {
        (Some(x), Some(c)) if c > 0.0 => Some(x >= times * c),
        _ => None,
    }
}

fn ratio(x: Option<f64>, ceiling: Option<f64>) -> Option<f64> {
    match (x, ceiling) {
        (Some(x), Some(c)) if c > 0.0 => Some((x / c * 1000.0).round() / 1000.0),
        _ => None,
    }
}

/// 5xx answers of a run, the load shedder's 503s included.
fn all_5xx(run: &Value) -> f64 {
    f(run, &["errors", "server_5xx"]).unwrap_or(0.0)
        + f(run, &["errors", "shed_503"]).unwrap_or(0.0)
}

/// The goals for an edge run, by the runtime its name says: (× the code before,
/// p99 ms).
fn edge_goal(name: &str) -> (f64, f64) {
    if name.contains("spin") || name.contains("wasmtime") {
        (2.0, 30.0)
    } else {
        (2.5, 50.0)
    }
}

/// Checks the targets on the runs present.
pub fn targets(runs: &BTreeMap<String, Value>, limits: &BTreeMap<String, f64>) -> Vec<Target> {
    let mut out = Vec::new();
    let hello = limits.get("http_hello_rps").copied();
    let pg_hold = limits.get("pg_hold_tps").copied();
    let hello_ceiling = hello.map(|c| format!("http_hello_rps {c:.0}"));
    if let Some(run) = runs.get("holds") {
        let ok = f(run, &["ok_per_s"]);
        let r = ratio(ok, pg_hold);
        let figure = format!(
            "{:.0} holds/s, p50 {:.1} ms, p99 {:.1} ms",
            ok.unwrap_or(0.0),
            f(run, &["all", "p50_ms"]).unwrap_or(0.0),
            f(run, &["all", "p99_ms"]).unwrap_or(0.0)
        );
        out.push(Target {
            ceiling: pg_hold.map(|c| format!("pg_hold_tps {c:.0}")),
            ratio: r,
            met: at_least(ok, 0.6, pg_hold),
            throughput: ok,
            ..Target::new(
                "holds through the API (closed loop)",
                run,
                figure,
                "≥ 0.6 × pg_hold_tps",
            )
        });
    }
    if let Some(run) = runs.get("cached-quote-max") {
        let ok = f(run, &["ok_per_s"]);
        let r = ratio(ok, hello);
        let figure = format!(
            "{:.0} quotes/s (x-cache hit {:.2}), p99 {:.1} ms",
            ok.unwrap_or(0.0),
            run["endpoints"][0]["x_cache_hit_ratio"]
                .as_f64()
                .unwrap_or(0.0),
            f(run, &["all", "p99_ms"]).unwrap_or(0.0)
        );
        out.push(Target {
            ceiling: hello_ceiling.clone(),
            ratio: r,
            // Informational: loadgen's own client costs the box more CPU per request than
            // wrk, so the target is checked on the wrk row.
            met: None,
            throughput: ok,
            ..Target::new(
                "cached quote, max rate under loadgen (closed 64)",
                run,
                figure,
                "– (the target is checked under wrk)",
            )
        });
    }
    if let Some(run) = runs.get("cached-quote-wrk") {
        let ok = f(run, &["ok_per_s"]);
        let r = ratio(ok, hello);
        let bad = f(run, &["non_2xx"]).unwrap_or(0.0);
        let figure = format!(
            "{:.0} quotes/s, p99 {:.1} ms, non-2xx {bad:.0}",
            ok.unwrap_or(0.0),
            f(run, &["all", "p99_ms"]).unwrap_or(0.0)
        );
        out.push(Target {
            ceiling: hello_ceiling.clone(),
            ratio: r,
            met: at_least(ok, 0.5, hello).map(|m| m && bad == 0.0),
            throughput: ok,
            ..Target::new(
                "cached quote at the origin (wrk -t2 -c64)",
                run,
                figure,
                "≥ 0.5 × http_hello_rps, no non-2xx",
            )
        });
    }
    if let Some(run) = runs.get("cached-quote-half") {
        let p99 = f(run, &["all", "p99_ms"]);
        let rate = f(run, &["target_ops_per_s"]);
        let shed = f(run, &["errors", "shed_503"]);
        let clean = f(run, &["errors", "server_5xx"]) == Some(0.0) && shed == Some(0.0);
        let figure = format!(
            "{:.0} quotes/s offered, achieved {:.0}; p99 {:.2} ms; 503 {:.0}",
            rate.unwrap_or(0.0),
            f(run, &["ok_per_s"]).unwrap_or(0.0),
            p99.unwrap_or(0.0),
            shed.unwrap_or(0.0)
        );
        out.push(Target {
            ceiling: hello_ceiling.clone(),
            ratio: ratio(rate, hello),
            met: p99.map(|p| p <= 10.0 && clean),
            throughput: f(run, &["ok_per_s"]),
            ..Target::new(
                "cached quote at half its max rate (open loop)",
                run,
                figure,
                "p99 ≤ 10 ms, 0 × 503, no 5xx",
            )
        });
    }
    if let Some(run) = runs.get("mixed-max") {
        let rps = f(run, &["requests_per_s"]);
        let p95 = f(run, &["all", "p95_ms"]);
        let errors5 = all_5xx(run);
        let r = ratio(rps, hello);
        let figure = format!(
            "{:.0} req/s, p95 {:.1} ms, p99 {:.1} ms, 5xx {errors5:.0}",
            rps.unwrap_or(0.0),
            p95.unwrap_or(0.0),
            f(run, &["all", "p99_ms"]).unwrap_or(0.0)
        );
        out.push(Target {
            ceiling: hello_ceiling.clone(),
            ratio: r,
            met: at_least(rps, 0.075, hello)
                .zip(p95)
                .map(|(m, p)| m && p < 200.0 && errors5 == 0.0),
            throughput: rps,
            ..Target::new(
                "seed mix (95 % search + quote, 5 % writes), max (closed 64)",
                run,
                figure,
                "≥ 0.075 × http_hello_rps, p95 < 200 ms, 0 5xx",
            )
        });
    }
    if let Some(run) = runs.get("mixed") {
        let rps = f(run, &["requests_per_s"]);
        let p95 = f(run, &["all", "p95_ms"]);
        let errors5 = all_5xx(run);
        let figure = format!(
            "{:.0} req/s ({:.0} ops/s offered), p95 {:.1} ms, p99 {:.1} ms, 5xx {errors5:.0}",
            rps.unwrap_or(0.0),
            f(run, &["target_ops_per_s"]).unwrap_or(0.0),
            p95.unwrap_or(0.0),
            f(run, &["all", "p99_ms"]).unwrap_or(0.0)
        );
        out.push(Target {
            ceiling: hello_ceiling.clone(),
            ratio: ratio(rps, hello),
            met: p95.map(|p| p < 200.0 && errors5 == 0.0),
            throughput: rps,
            ..Target::new(
                "seed mix at 80 % of its max (open loop)",
                run,
                figure,
                "p95 < 200 ms and no 5xx (ratio: req/s to hello-world)",
            )
        });
        if let Some(rss) = run.get("origin_rss").filter(|r| !r.is_null()) {
            let max = f(rss, &["max_mib"]).unwrap_or(0.0);
            let growth = f(rss, &["growth_mib"]).unwrap_or(0.0);
            let figure = format!(
                "RSS max {max:.0} MiB, growth {growth:+.1} MiB over {:.0} s",
                f(run, &["duration_s"]).unwrap_or(0.0)
            );
            out.push(Target {
                // Growth only means something over minutes: caches fill during the first ones.
                met: (f(run, &["duration_s"]).unwrap_or(0.0) >= 300.0)
                    .then_some(max < 256.0 && growth < 0.1 * max.max(1.0)),
                p99_ms: None,
                cpu_us_per_request: None,
                ..Target::new(
                    "origin memory under mixed",
                    run,
                    figure,
                    "< 256 MiB and flat over a 10-minute run (MIXED_SECS=600)",
                )
            });
        }
    }
    if let Some(run) = runs.get("burst") {
        let phases = run["phases"].as_array().cloned().unwrap_or_default();
        let steady = phases.first().and_then(|p| f(p, &["admitted", "p99_ms"]));
        let worst = phases
            .iter()
            .skip(1)
            .filter_map(|p| f(p, &["admitted", "p99_ms"]))
            .fold(0.0, f64::max);
        let server = f(run, &["errors", "server_5xx"]).unwrap_or(0.0);
        let timeouts = f(run, &["errors", "timeout"]).unwrap_or(0.0)
            + f(run, &["errors", "transport"]).unwrap_or(0.0);
        let shed = f(run, &["errors", "shed_503"]).unwrap_or(0.0)
            + f(run, &["errors", "rate_limited_429"]).unwrap_or(0.0);
        let no_retry = f(run, &["errors", "missing_retry_after"]).unwrap_or(0.0);
        let r = steady.filter(|s| *s > 0.0).map(|s| worst / s);
        let figure = format!(
            "steady admitted p99 {:.1} ms, step/after {worst:.1} ms; 503/429 {shed:.0} (load shedder {:.0}, without Retry-After {no_retry:.0}), other 5xx {server:.0}, timeouts {timeouts:.0}",
            steady.unwrap_or(0.0),
            f(run, &["errors", "overloaded_503"]).unwrap_or(0.0)
        );
        out.push(Target {
            ratio: r.map(|r| (r * 100.0).round() / 100.0),
            met: Some(
                server == 0.0 && timeouts == 0.0 && no_retry == 0.0 && r.is_some_and(|r| r <= 2.0),
            ),
            ..Target::new(
                "burst (5× step)",
                run,
                figure,
                "no 5xx but fast 503, no timeout, admitted p99 ≤ 2× steady",
            )
        });
    }
    // Edge runs (`scripts/bench-edge.sh`, or `BENCH_EDGE_URLS`): `edge-<runtime>-cached-quote`
    // (wrk), `edge-<runtime>-mixed`, `edge-<runtime>-burst`, and the JavaScript way beside the
    // Cloudflare worker as `edge-<runtime>-js-cached-quote`.
    for (run_name, run) in runs {
        let Some(rest) = run_name.strip_prefix("edge-") else {
            continue;
        };
        if rest.contains("-js-") {
            continue;
        }
        if rest.ends_with("-burst") {
            out.push(edge_burst(rest, run));
            continue;
        }
        let ok = f(run, &["ok_per_s"]);
        let p99 = f(run, &["all", "p99_ms"]);
        let edge_cpu = f(run, &["edge_cpu_us_per_request"]);
        let mut figure = format!(
            "{:.0} 2xx/s, p99 {:.1} ms, 5xx {:.0}, 429 {:.0}",
            ok.unwrap_or(0.0),
            p99.unwrap_or(0.0),
            all_5xx(run),
            f(run, &["errors", "rate_limited_429"]).unwrap_or(0.0)
        );
        if let Some(cpu) = edge_cpu {
            figure += &format!(", runtime CPU {cpu:.0} µs/request");
        }
        if let Some(u) = f(run, &["upstash_requests_per_request"]) {
            figure += &format!(", {u:.2} Upstash requests/request");
        }
        let (times, p99_goal) = edge_goal(rest);
        let cached = rest.ends_with("-cached-quote");
        // workerd's CPU per cached read: ≤ 0.5 ms (the figure for the Cloudflare worker).
        let cpu_goal = (cached && !rest.contains("spin")).then_some(500.0);
        let goal = match (cached, cpu_goal) {
            (true, Some(c)) => format!(
                "≥ {times} × the code before (same run), p99 ≤ {p99_goal} ms, ≤ {c:.0} µs runtime CPU/request"
            ),
            (true, None) => format!("≥ {times} × the code before (same run), p99 ≤ {p99_goal} ms"),
            _ => "no 5xx (ratio: 2xx/s to hello-world)".to_owned(),
        };
        let met = if cached {
            let fast = p99.map(|p| p <= p99_goal && all_5xx(run) == 0.0);
            match (cpu_goal, edge_cpu) {
                (Some(c), Some(e)) => fast.map(|m| m && e <= c),
                // CPU not measured (a loadgen run through `BENCH_EDGE_URLS`): only a miss is known.
                (Some(_), None) => fast.and_then(|m| (!m).then_some(false)),
                (None, _) => fast,
            }
        } else {
            Some(all_5xx(run) == 0.0)
        };
        out.push(Target {
            ceiling: hello_ceiling.clone(),
            ratio: ratio(ok, hello),
            // The "× before" half is added in `write` when a `before-` run is there.
            met,
            throughput: ok,
            // The runtime's CPU (wrk rows); the origin's CPU behind an edge run is not the
            // edge's cost.
            cpu_us_per_request: edge_cpu,
            ..Target::new(&format!("edge {rest}"), run, figure, &goal)
        });
        let js = runs.get(&format!(
            "edge-{}-js-cached-quote",
            rest.trim_end_matches("-cached-quote")
        ));
        if let (true, Some(js)) = (cached, js) {
            out.push(versus_javascript(rest, run, js));
        }
    }
    out
}

/// The design's 5× burst through an edge: every answer 2xx, 429 or 503 with Retry-After; no
/// other 5xx and no dropped connection or timeout.
fn edge_burst(rest: &str, run: &Value) -> Target {
    let server = f(run, &["errors", "server_5xx"]).unwrap_or(0.0);
    let dropped = f(run, &["errors", "timeout"]).unwrap_or(0.0)
        + f(run, &["errors", "transport"]).unwrap_or(0.0);
    let shed = f(run, &["errors", "shed_503"]).unwrap_or(0.0);
    let limited = f(run, &["errors", "rate_limited_429"]).unwrap_or(0.0);
    let no_retry = f(run, &["errors", "missing_retry_after"]).unwrap_or(0.0);
    let figure = format!(
        "{:.0} 2xx/s, 503 {shed:.0}, 429 {limited:.0} (without Retry-After {no_retry:.0}), other 5xx {server:.0}, dropped or timed out {dropped:.0}",
        f(run, &["ok_per_s"]).unwrap_or(0.0)
    );
    Target {
        met: Some(server == 0.0 && dropped == 0.0 && no_retry == 0.0),
        throughput: f(run, &["ok_per_s"]),
        cpu_us_per_request: None,
        ..Target::new(
            &format!("edge {rest} (5× step)"),
            run,
            figure,
            "every answer 2xx, 429 or 503 with Retry-After; no other 5xx, nothing dropped",
        )
    }
}

/// The Rust worker against the JavaScript way (@upstash/ratelimit) in the same workerd, same
/// run: ≥ 1.5 × its throughput and at most half its p99.
fn versus_javascript(rest: &str, rust: &Value, js: &Value) -> Target {
    let (a, b) = (f(rust, &["ok_per_s"]), f(js, &["ok_per_s"]));
    let (pa, pb) = (f(rust, &["all", "p99_ms"]), f(js, &["all", "p99_ms"]));
    let times = match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some((a / b * 100.0).round() / 100.0),
        _ => None,
    };
    let p99_share = match (pa, pb) {
        (Some(a), Some(b)) if b > 0.0 => Some((a / b * 100.0).round() / 100.0),
        _ => None,
    };
    let figure = format!(
        "{:.0} vs {:.0} 2xx/s ({}×), p99 {:.1} vs {:.1} ms ({}×), runtime CPU {:.0} vs {:.0} µs/request",
        a.unwrap_or(0.0),
        b.unwrap_or(0.0),
        times.map_or("?".into(), |t| t.to_string()),
        pa.unwrap_or(0.0),
        pb.unwrap_or(0.0),
        p99_share.map_or("?".into(), |t| t.to_string()),
        f(rust, &["edge_cpu_us_per_request"]).unwrap_or(0.0),
        f(js, &["edge_cpu_us_per_request"]).unwrap_or(0.0),
    );
    Target {
        ratio: times,
        met: times.zip(p99_share).map(|(t, p)| t >= 1.5 && p <= 0.5),
        throughput: a,
        cpu_us_per_request: f(rust, &["edge_cpu_us_per_request"]),
        ..Target::new(
            &format!("edge {rest} vs the JavaScript way"),
            rust,
            figure,
            "≥ 1.5 × @upstash/ratelimit's 2xx/s and ≤ 0.5 × its p99 (same workerd, same run)",
        )
    }
}

/// Pairs each target with the same target measured on the code before (`before`), and
/// for the edge's cached reads folds the "× before" goal into `met`.
fn compare(after: &mut [Target], before: Vec<Target>) {
    for t in after.iter_mut() {
        let Some(b) = before.iter().find(|b| b.name == t.name) else {
            if t.name.starts_with("edge ") && t.name.ends_with("-cached-quote") {
                // Without the code before, only a missed p99 is known.
                t.met = t.met.and_then(|m| (!m).then_some(false));
            }
            continue;
        };
        t.vs_before = match (t.throughput, b.throughput) {
            (Some(a), Some(b)) if b > 0.0 => Some((a / b * 100.0).round() / 100.0),
            _ => None,
        };
        if let Some(runtime) = t
            .name
            .strip_prefix("edge ")
            .filter(|n| n.ends_with("-cached-quote"))
        {
            let (times, _) = edge_goal(runtime);
            let enough = t.vs_before.is_some_and(|v| v >= times);
            // Unknown (no runtime CPU figure) stays unknown unless this half already fails.
            t.met = match t.met {
                Some(m) => Some(m && enough),
                None => (!enough).then_some(false),
            };
        }
        t.before = Some(Box::new(b.clone()));
    }
}

/// Reads the runs and limits, writes `report.json` and `report.md` into `out`, returns the
/// markdown.
pub fn write(
    runs: &[PathBuf],
    limits: Option<&Path>,
    out: &Path,
    note: &str,
) -> anyhow::Result<String> {
    let limits = match limits {
        Some(p) if p.exists() => parse_limits(&std::fs::read_to_string(p)?),
        _ => BTreeMap::new(),
    };
    let mut loaded = BTreeMap::new();
    let mut sections = Vec::new();
    for path in runs {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .context("run file name")?
            .to_owned();
        let value: Value = serde_json::from_slice(
            &std::fs::read(path).with_context(|| format!("read {}", path.display()))?,
        )
        .with_context(|| format!("parse {}", path.display()))?;
        if let Ok(md) = std::fs::read_to_string(path.with_extension("md")) {
            sections.push(format!("#### run `{name}`\n\n{md}"));
        }
        loaded.insert(name, value);
    }
    let (before_runs, after_runs): (BTreeMap<_, _>, BTreeMap<_, _>) = loaded
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .partition(|(k, _)| k.starts_with("before-"));
    let before_runs: BTreeMap<String, Value> = before_runs
        .into_iter()
        .map(|(k, v)| (k.trim_start_matches("before-").to_owned(), v))
        .collect();
    let mut checked = targets(&after_runs, &limits);
    compare(&mut checked, targets(&before_runs, &limits));
    let mut md = String::from("# Benchmark report\n\n");
    if !note.is_empty() {
        md.push_str(&format!("{note}\n\n"));
    }
    if limits.is_empty() {
        md.push_str("No ceilings (limits.sh was not found or failed): figures without ratios.\n\n");
    } else {
        let list: Vec<String> = limits.iter().map(|(k, v)| format!("`{k}` {v}")).collect();
        md.push_str(&format!(
            "Ceilings (limits.sh, same session): {}.\n\n",
            list.join(", ")
        ));
    }
    let dash = || "–".to_owned();
    md.push_str("| target | figure | ceiling | ratio | goal | met | CPU µs/req (origin; the runtime's on edge rows) | before (same session) | × before |\n| --- | --- | --- | ---: | --- | --- | ---: | --- | ---: |\n");
    for t in &checked {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            t.name,
            t.figure,
            t.ceiling.clone().unwrap_or_else(dash),
            t.ratio.map(|r| format!("{r:.3}")).unwrap_or_else(dash),
            t.goal,
            match t.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "–",
            },
            t.cpu_us_per_request
                .map(|c| format!("{c:.0}"))
                .unwrap_or_else(dash),
            t.before
                .as_ref()
                .map(|b| match b.cpu_us_per_request {
                    Some(c) => format!("{} ({c:.0} µs/req)", b.figure),
                    None => b.figure.clone(),
                })
                .unwrap_or_else(dash),
            t.vs_before.map(|v| format!("{v:.2}")).unwrap_or_else(dash),
        ));
    }
    md.push('\n');
    let plotted: Vec<&Target> = checked
        .iter()
        .filter(|t| t.throughput.is_some() && t.p99_ms.is_some())
        .collect();
    if !plotted.is_empty() {
        let svg = out.join("paths.svg");
        std::fs::create_dir_all(out)?;
        crate::plot::paths_svg(&plotted, &svg)?;
        md.push_str("Throughput and p99 per path (before/after when measured): `paths.svg`.\n\n");
    }
    md.push_str(&sections.join("\n"));
    std::fs::create_dir_all(out)?;
    let json = serde_json::json!({
        "note": note,
        "limits": limits,
        "targets": checked,
        "runs": loaded,
    });
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(&json)?)?;
    std::fs::write(out.join("report.md"), &md)?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_lines_parse_into_named_figures() {
        let l = parse_limits("pg_hold_tps 2103.5 tx/s\nhttp_hello_rps 51000.0 req/s\ngarbage\n");
        assert_eq!(l.get("pg_hold_tps"), Some(&2103.5));
        assert_eq!(l.get("http_hello_rps"), Some(&51000.0));
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn holds_target_is_met_only_from_six_tenths_of_the_ceiling() {
        let limits = parse_limits("pg_hold_tps 1000 tx/s");
        let mut runs = BTreeMap::new();
        runs.insert(
            "holds".to_owned(),
            serde_json::json!({ "ok_per_s": 599.0, "all": {} }),
        );
        assert_eq!(targets(&runs, &limits)[0].met, Some(false));
        runs.insert(
            "holds".to_owned(),
            serde_json::json!({ "ok_per_s": 600.0, "all": {} }),
        );
        assert_eq!(targets(&runs, &limits)[0].met, Some(true));
        assert_eq!(targets(&runs, &BTreeMap::new())[0].met, None);
    }

    #[test]
    fn seed_mix_max_is_met_from_three_fortieths_of_hello_with_p95_under_200_ms_and_no_5xx() {
        let limits = parse_limits("http_hello_rps 10000 req/s");
        let run = |rps: f64, p95: f64, shed: f64| {
            let mut runs = BTreeMap::new();
            runs.insert(
                "mixed-max".to_owned(),
                serde_json::json!({ "requests_per_s": rps, "all": { "p95_ms": p95, "p99_ms": 1.0 },
                    "errors": { "server_5xx": 0, "shed_503": shed } }),
            );
            targets(&runs, &limits)[0].met
        };
        assert_eq!(run(750.0, 199.0, 0.0), Some(true));
        assert_eq!(run(749.0, 10.0, 0.0), Some(false));
        assert_eq!(run(900.0, 200.0, 0.0), Some(false));
        assert_eq!(run(900.0, 10.0, 1.0), Some(false));
    }

    #[test]
    fn before_runs_are_paired_by_target_and_an_edge_needs_its_multiple_of_before(
    ) -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("summary-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        let mut runs = Vec::new();
        for (name, ok) in [
            ("holds", 900.0),
            ("before-holds", 600.0),
            ("edge-spin-cached-quote", 3000.0),
            ("before-edge-spin-cached-quote", 1000.0),
            ("edge-cloudflare-cached-quote", 2000.0),
            ("before-edge-cloudflare-cached-quote", 1000.0),
        ] {
            let p = dir.join(format!("{name}.json"));
            let run = serde_json::json!({ "ok_per_s": ok, "requests_per_s": ok,
                "all": { "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0 },
                "errors": { "server_5xx": 0, "shed_503": 0 }, "origin_cpu_us_per_request": 50.0 });
            std::fs::write(&p, serde_json::to_vec(&run)?)?;
            runs.push(p);
        }
        let limits = dir.join("limits.txt");
        std::fs::write(
            &limits,
            "pg_hold_tps 1000 tx/s\nhttp_hello_rps 50000 req/s\n",
        )?;
        write(&runs, Some(&limits), &dir, "test")?;
        let json: Value = serde_json::from_slice(&std::fs::read(dir.join("report.json"))?)?;
        let targets = json["targets"].as_array().cloned().unwrap_or_default();
        let target = |name: &str| {
            targets
                .iter()
                .find(|t| t["name"] == name)
                .cloned()
                .unwrap_or(Value::Null)
        };
        assert_eq!(
            target("holds through the API (closed loop)")["vs_before"],
            1.5
        );
        assert_eq!(target("edge spin-cached-quote")["met"], true, "3× ≥ 2×");
        assert_eq!(
            target("edge cloudflare-cached-quote")["met"],
            false,
            "2× < 2.5×"
        );
        assert_eq!(targets.len(), 3, "before runs are not targets");
        assert!(std::fs::read_to_string(dir.join("paths.svg"))?.contains("<svg"));
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn an_edge_burst_fails_on_any_5xx_but_503_on_a_drop_or_on_a_refusal_without_retry_after() {
        let run = |server: f64, transport: f64, no_retry: f64| {
            let mut runs = BTreeMap::new();
            runs.insert(
                "edge-spin-burst".to_owned(),
                serde_json::json!({ "ok_per_s": 900.0, "all": { "p99_ms": 40.0 },
                    "errors": { "shed_503": 120, "rate_limited_429": 3, "server_5xx": server,
                        "transport": transport, "timeout": 0, "missing_retry_after": no_retry } }),
            );
            let t = targets(&runs, &BTreeMap::new());
            assert_eq!(t.len(), 1);
            assert_eq!(t[0].name, "edge spin-burst (5× step)");
            t[0].met
        };
        assert_eq!(
            run(0.0, 0.0, 0.0),
            Some(true),
            "503s with Retry-After are fine"
        );
        assert_eq!(run(1.0, 0.0, 0.0), Some(false), "a 500");
        assert_eq!(run(0.0, 1.0, 0.0), Some(false), "a dropped connection");
        assert_eq!(run(0.0, 0.0, 1.0), Some(false), "a 503 without Retry-After");
    }

    #[test]
    fn the_cloudflare_worker_is_judged_against_the_javascript_way_and_its_cpu_per_request() {
        let check = |rust: f64, rust_p99: f64, cpu: f64| {
            let mut runs = BTreeMap::new();
            runs.insert(
                "edge-cloudflare-cached-quote".to_owned(),
                serde_json::json!({ "ok_per_s": rust, "all": { "p99_ms": rust_p99 },
                    "edge_cpu_us_per_request": cpu }),
            );
            runs.insert(
                "edge-cloudflare-js-cached-quote".to_owned(),
                serde_json::json!({ "ok_per_s": 1000.0, "all": { "p99_ms": 40.0 },
                    "edge_cpu_us_per_request": 1100.0 }),
            );
            let t = targets(&runs, &BTreeMap::new());
            let names: Vec<&str> = t.iter().map(|t| t.name.as_str()).collect();
            assert_eq!(
                names,
                [
                    "edge cloudflare-cached-quote",
                    "edge cloudflare-cached-quote vs the JavaScript way"
                ],
                "the JavaScript run is a reference, not a target of its own"
            );
            (t[0].met, t[1].met)
        };
        assert_eq!(check(1500.0, 20.0, 400.0), (Some(true), Some(true)));
        assert_eq!(
            check(1400.0, 20.0, 400.0).1,
            Some(false),
            "1.4× the JavaScript way"
        );
        assert_eq!(
            check(1500.0, 21.0, 400.0).1,
            Some(false),
            "p99 over half of it"
        );
        assert_eq!(check(1500.0, 20.0, 600.0).0, Some(false), "600 µs of CPU");
    }
}
