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

fn ratio(x: Option<f64>, ceiling: Option<f64>) -> Option<f64> {
    match (x, ceiling) {
        (Some(x), Some(c)) if c > 0.0 => Some((x / c * 1000.0).round() / 1000.0),
        _ => None,
    }
}

/// Checks the targets on the runs present.
pub fn targets(runs: &BTreeMap<String, Value>, limits: &BTreeMap<String, f64>) -> Vec<Target> {
    let mut out = Vec::new();
    let hello = limits.get("http_hello_rps").copied();
    let pg_hold = limits.get("pg_hold_tps").copied();
    if let Some(run) = runs.get("holds") {
        let ok = f(run, &["ok_per_s"]);
        let r = ratio(ok, pg_hold);
        out.push(Target {
            name: "holds through the API".into(),
            figure: format!(
                "{:.0} holds/s, p50 {:.1} ms, p99 {:.1} ms",
                ok.unwrap_or(0.0),
                f(run, &["all", "p50_ms"]).unwrap_or(0.0),
                f(run, &["all", "p99_ms"]).unwrap_or(0.0)
            ),
            ceiling: pg_hold.map(|c| format!("pg_hold_tps {c:.0}")),
            ratio: r,
            goal: "≥ 0.6 × pg_hold_tps".into(),
            met: r.map(|r| r >= 0.6),
        });
    }
    if let Some(run) = runs.get("cached-quote-max") {
        let ok = f(run, &["ok_per_s"]);
        let r = ratio(ok, hello);
        out.push(Target {
            name: "cached quote, max rate under loadgen".into(),
            figure: format!(
                "{:.0} quotes/s (x-cache hit {:.2}), p99 {:.1} ms",
                ok.unwrap_or(0.0),
                run["endpoints"][0]["x_cache_hit_ratio"]
                    .as_f64()
                    .unwrap_or(0.0),
                f(run, &["all", "p99_ms"]).unwrap_or(0.0)
            ),
            ceiling: hello.map(|c| format!("http_hello_rps {c:.0}")),
            ratio: r,
            goal: "≥ 0.5 × http_hello_rps".into(),
            met: r.map(|r| r >= 0.5),
        });
    }
    if let Some(run) = runs.get("cached-quote-wrk") {
        let ok = f(run, &["ok_per_s"]);
        let r = ratio(ok, hello);
        let bad = f(run, &["non_2xx"]).unwrap_or(0.0);
        out.push(Target {
            name: "cached quote, max rate under wrk (the ceiling's own client)".into(),
            figure: format!(
                "{:.0} quotes/s, p99 {:.1} ms, non-2xx {bad:.0}",
                ok.unwrap_or(0.0),
                f(run, &["all", "p99_ms"]).unwrap_or(0.0)
            ),
            ceiling: hello.map(|c| format!("http_hello_rps {c:.0}")),
            ratio: r,
            goal: "≥ 0.5 × http_hello_rps".into(),
            met: r.map(|r| r >= 0.5 && bad == 0.0),
        });
    }
    if let Some(run) = runs.get("cached-quote-half") {
        let p99 = f(run, &["all", "p99_ms"]);
        let rate = f(run, &["target_ops_per_s"]);
        let clean = f(run, &["errors", "server_5xx"]) == Some(0.0)
            && f(run, &["errors", "shed_503"]) == Some(0.0);
        out.push(Target {
            name: "cached quote at half the max rate".into(),
            figure: format!(
                "{:.0} quotes/s offered, achieved {:.0}; p99 {:.2} ms",
                rate.unwrap_or(0.0),
                f(run, &["ok_per_s"]).unwrap_or(0.0),
                p99.unwrap_or(0.0)
            ),
            ceiling: hello.map(|c| format!("http_hello_rps {c:.0}")),
            ratio: ratio(rate, hello),
            goal: "p99 ≤ 10 ms, no 5xx".into(),
            met: p99.map(|p| p <= 10.0 && clean),
        });
    }
    if let Some(run) = runs.get("mixed") {
        let rps = f(run, &["requests_per_s"]);
        let p95 = f(run, &["all", "p95_ms"]);
        let errors5 = f(run, &["errors", "server_5xx"]).unwrap_or(0.0)
            + f(run, &["errors", "shed_503"]).unwrap_or(0.0);
        out.push(Target {
            name: "mixed (95 % reads)".into(),
            figure: format!(
                "{:.0} req/s ({:.0} ops/s offered), p95 {:.1} ms, p99 {:.1} ms, 5xx {errors5:.0}",
                rps.unwrap_or(0.0),
                f(run, &["target_ops_per_s"]).unwrap_or(0.0),
                p95.unwrap_or(0.0),
                f(run, &["all", "p99_ms"]).unwrap_or(0.0)
            ),
            ceiling: hello.map(|c| format!("http_hello_rps {c:.0}")),
            ratio: ratio(rps, hello),
            goal: "p95 < 200 ms and no 5xx (ratio: req/s to hello-world)".into(),
            met: p95.map(|p| p < 200.0 && errors5 == 0.0),
        });
        if let Some(rss) = run.get("origin_rss").filter(|r| !r.is_null()) {
            let max = f(rss, &["max_mib"]).unwrap_or(0.0);
            let growth = f(rss, &["growth_mib"]).unwrap_or(0.0);
            out.push(Target {
                name: "origin memory under mixed".into(),
                figure: format!(
                    "RSS max {max:.0} MiB, growth {growth:+.1} MiB over {:.0} s",
                    f(run, &["duration_s"]).unwrap_or(0.0)
                ),
                ceiling: None,
                ratio: None,
                goal: "< 256 MiB and flat over a 10-minute run (MIXED_SECS=600)".into(),
                // Growth only means something over minutes: caches fill during the first ones.
                met: (f(run, &["duration_s"]).unwrap_or(0.0) >= 300.0)
                    .then_some(max < 256.0 && growth < 0.1 * max.max(1.0)),
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
        out.push(Target {
            name: "burst (5× step)".into(),
            figure: format!(
                "steady admitted p99 {:.1} ms, step/after {worst:.1} ms; 503/429 {shed:.0} (load shedder {:.0}, without Retry-After {no_retry:.0}), other 5xx {server:.0}, timeouts {timeouts:.0}",
                steady.unwrap_or(0.0),
                f(run, &["errors", "overloaded_503"]).unwrap_or(0.0)
            ),
            ceiling: None,
            ratio: r.map(|r| (r * 100.0).round() / 100.0),
            goal: "no 5xx but fast 503, no timeout, admitted p99 ≤ 2× steady".into(),
            met: Some(
                server == 0.0 && timeouts == 0.0 && no_retry == 0.0 && r.is_some_and(|r| r <= 2.0),
            ),
        });
    }
    out
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
    let checked = targets(&loaded, &limits);
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
    md.push_str("| target | figure | ceiling | ratio | goal | met |\n| --- | --- | --- | ---: | --- | --- |\n");
    for t in &checked {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            t.name,
            t.figure,
            t.ceiling.clone().unwrap_or_else(|| "–".into()),
            t.ratio
                .map(|r| format!("{r:.2}"))
                .unwrap_or_else(|| "–".into()),
            t.goal,
            match t.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "–",
            }
        ));
    }
    md.push('\n');
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
}
