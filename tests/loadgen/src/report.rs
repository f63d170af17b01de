//! What a run reports: latency percentiles per endpoint, achieved vs target rate, outcomes by
//! status (409 and 429 apart from 5xx, 503 sheds apart from other 5xx), the origin's cache hit
//! ratios per layer and events/s (deltas of its `/metrics` counters over the run), the
//! origin's resident memory sampled from `/proc/<pid>/status`, and the origin's CPU time per
//! request (`/proc/<pid>/stat` utime + stime before and after the run): on a shared 2-core box
//! the CPU a request costs moves much less than the requests per second it allows.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::engine::{Load, Recorded, CLIENT_TIMEOUT, TRANSPORT_ERROR};
use crate::RunOptions;

/// The origin's counters at one moment (Prometheus text format, summed over label sets).
#[derive(Debug, Clone, Default)]
pub struct MetricsSnapshot {
    text: String,
}

impl MetricsSnapshot {
    /// Reads `/metrics`; an unreachable endpoint (an edge) gives an empty snapshot.
    pub async fn scrape(client: &reqwest::Client, url: &str) -> Self {
        let text = match client.get(url).send().await {
            Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
            _ => String::new(),
        };
        MetricsSnapshot { text }
    }

    /// Whether anything was read.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// Sum of the samples of `name` whose labels include every `key="value"` in `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let (metric, rest) = match series.split_once('{') {
                    Some((m, rest)) => (m, rest),
                    None => (series, ""),
                };
                if metric != name {
                    return None;
                }
                let matches = labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
                matches.then(|| value.parse::<f64>().ok()).flatten()
            })
            .sum()
    }
}

/// Samples a process's resident set size twice a second while a run lasts.
#[derive(Debug)]
pub struct RssSampler {
    samples: Arc<Mutex<Vec<f64>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// `VmRSS` of `pid` in MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

impl RssSampler {
    pub fn start(pid: Option<u32>) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let task = pid.map(|pid| {
            let samples = samples.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(500));
                loop {
                    tick.tick().await;
                    let Some(mib) = rss_mib(pid) else { break };
                    if let Ok(mut s) = samples.lock() {
                        s.push(mib);
                    }
                }
            })
        });
        RssSampler { samples, task }
    }

    pub async fn finish(mut self) -> Option<Rss> {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let samples = self.samples.lock().ok()?.clone();
        let first = *samples.first()?;
        let last = *samples.last()?;
        let max = samples.iter().copied().fold(f64::MIN, f64::max);
        // Growth: the last quarter's mean against the first quarter's (after warm-up).
        let quarter = (samples.len() / 4).max(1);
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
        let growth = mean(&samples[samples.len() - quarter..]) - mean(&samples[..quarter]);
        Some(Rss {
            start_mib: first,
            end_mib: last,
            max_mib: max,
            growth_mib: growth,
            samples: samples.len(),
        })
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` times: `USER_HZ`, which Linux fixes at 100
/// for user space on every architecture it runs on (the kernel's own HZ is not exposed there).
const USER_HZ: f64 = 100.0;

/// CPU seconds (user + system, all threads) `pid` has used so far, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces, hence the last ')'): state is
    // field 3 of stat(5), utime 14 and stime 15, so indexes 11 and 12 here.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// Origin memory during a run.
#[derive(Debug, Clone, Serialize)]
pub struct Rss {
    pub start_mib: f64,
    pub end_mib: f64,
    pub max_mib: f64,
    /// Mean of the last quarter of samples minus the mean of the first quarter.
    pub growth_mib: f64,
    pub samples: usize,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| (us as f64 / 1000.0 * 100.0).round() / 100.0;
        Percentiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p95_ms: ms(h.value_at_quantile(0.95)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// One endpoint's figures.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointReport {
    pub name: String,
    #[serde(flatten)]
    pub latency: Percentiles,
    pub per_second: f64,
    /// Counts by HTTP status; `transport` and `timeout` when there was none.
    pub statuses: BTreeMap<String, u64>,
    /// Error answers by status and problem type.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub problems: BTreeMap<String, u64>,
    /// Share of `x-cache: hit` among answers that carried the header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x_cache_hit_ratio: Option<f64>,
}

/// Outcomes that are not a success, by kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Errors {
    pub conflict_409: u64,
    pub rate_limited_429: u64,
    pub shed_503: u64,
    /// 5xx other than 503.
    pub server_5xx: u64,
    /// 4xx other than 409 and 429.
    pub client_4xx: u64,
    pub transport: u64,
    pub timeout: u64,
    /// 503/429 answers without `Retry-After`.
    pub missing_retry_after: u64,
    /// 503 answers of the load shedder (`/problems/overloaded`), within `shed_503`.
    pub overloaded_503: u64,
}

/// A cache layer's hits and misses over the run (from the origin's counters).
#[derive(Debug, Clone, Serialize)]
pub struct CacheLayer {
    pub hits: f64,
    pub misses: f64,
    pub errors: f64,
    pub hit_ratio: Option<f64>,
}

/// One constant-rate stretch of an open-loop run.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub from_s: f64,
    pub to_s: f64,
    pub target_rate: f64,
    pub achieved_rate: f64,
    /// Requests answered with something other than 503/429.
    pub admitted: Percentiles,
    pub shed: u64,
    pub server_5xx: u64,
}

/// One second of the run, for the plot.
#[derive(Debug, Clone, Serialize)]
pub struct SecondReport {
    pub t: usize,
    pub ops_started: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub admitted_p99_ms: f64,
    pub shed: u64,
    pub server_5xx: u64,
}

/// Everything one run saw.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub workload: String,
    pub target: String,
    pub mode: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// Operations per second the schedule asked for (mean over the run; open loop).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_ops_per_s: Option<f64>,
    pub achieved_ops_per_s: f64,
    pub requests_per_s: f64,
    /// Successful (2xx) requests per second.
    pub ok_per_s: f64,
    pub duration_s: f64,
    pub ops_started: u64,
    pub ops_finished: u64,
    pub requests: u64,
    pub all: Percentiles,
    pub admitted: Percentiles,
    pub endpoints: Vec<EndpointReport>,
    pub errors: Errors,
    pub caches: BTreeMap<String, CacheLayer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_published_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shed_by_origin: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin_rss: Option<Rss>,
    /// CPU seconds the origin process used during the run (`/proc/<pid>/stat`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin_cpu_s: Option<f64>,
    /// `origin_cpu_s` per request answered, in microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin_cpu_us_per_request: Option<f64>,
    pub phases: Vec<PhaseReport>,
    pub timeline: Vec<SecondReport>,
    /// The workload ran out of prepared operations before the clock did.
    pub exhausted: bool,
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn status_name(status: u16) -> String {
    match status {
        TRANSPORT_ERROR => "transport".into(),
        CLIENT_TIMEOUT => "timeout".into(),
        s => s.to_string(),
    }
}

impl RunReport {
    pub fn build(
        options: &RunOptions,
        recorded: Recorded,
        before: MetricsSnapshot,
        after: MetricsSnapshot,
        rss: Option<Rss>,
        origin_cpu_s: Option<f64>,
    ) -> Self {
        let secs = recorded.elapsed.as_secs_f64().max(1e-9);
        let mut all = crate::engine::EndpointStats::default().latency_us;
        let mut admitted = all.clone();
        let mut errors = Errors::default();
        let mut ok = 0u64;
        let mut endpoints = Vec::new();
        for (name, stats) in &recorded.endpoints {
            let _ = all.add(&stats.latency_us);
            for (&status, &n) in &stats.statuses {
                match status {
                    200..=299 => ok += n,
                    409 => errors.conflict_409 += n,
                    429 => errors.rate_limited_429 += n,
                    503 => errors.shed_503 += n,
                    500..=599 => errors.server_5xx += n,
                    400..=499 => errors.client_4xx += n,
                    TRANSPORT_ERROR => errors.transport += n,
                    CLIENT_TIMEOUT => errors.timeout += n,
                    _ => {}
                }
            }
            errors.missing_retry_after += stats.missing_retry_after;
            errors.overloaded_503 += stats
                .problems
                .get("503 /problems/overloaded")
                .copied()
                .unwrap_or(0);
            let cached = stats.cache_hits + stats.cache_misses;
            endpoints.push(EndpointReport {
                name: (*name).to_owned(),
                latency: Percentiles::of(&stats.latency_us),
                per_second: round2(stats.latency_us.len() as f64 / secs),
                statuses: stats
                    .statuses
                    .iter()
                    .map(|(s, n)| (status_name(*s), *n))
                    .collect(),
                problems: stats.problems.clone(),
                x_cache_hit_ratio: (cached > 0)
                    .then(|| round2(stats.cache_hits as f64 / cached as f64 * 100.0) / 100.0),
            });
        }
        for second in &recorded.timeline {
            let _ = admitted.add(&second.admitted_us);
        }
        let mut caches = BTreeMap::new();
        if !after.is_empty() {
            for layer in ["l1", "l1-local", "l2"] {
                let delta = |result: &str| {
                    after.sum(
                        "cache_requests_total",
                        &[("layer", layer), ("result", result)],
                    ) - before.sum(
                        "cache_requests_total",
                        &[("layer", layer), ("result", result)],
                    )
                };
                let (hits, misses, errs) = (delta("hit"), delta("miss"), delta("error"));
                caches.insert(
                    layer.to_owned(),
                    CacheLayer {
                        hits,
                        misses,
                        errors: errs,
                        hit_ratio: (hits + misses + errs > 0.0)
                            .then(|| round2(hits / (hits + misses + errs) * 100.0) / 100.0),
                    },
                );
            }
        }
        let counter_delta =
            |name: &str| (!after.is_empty()).then(|| after.sum(name, &[]) - before.sum(name, &[]));
        let events = counter_delta("outbox_relay_published_total").map(|n| round2(n / secs));
        let shed_by_origin = counter_delta("http_requests_shed_total");
        let (mode, concurrency) = match &options.load {
            Load::Open { .. } => ("open", None),
            Load::Closed { concurrency, .. } => ("closed", Some(*concurrency)),
        };
        let target_ops_per_s = options
            .load
            .planned_ops()
            .map(|n| round2(n as f64 / options.load.duration().as_secs_f64().max(1e-9)));
        let phases = match &options.load {
            Load::Open { phases } => {
                let mut from = 0.0;
                phases
                    .iter()
                    .map(|p| {
                        let to = from + p.secs;
                        let mut h = crate::engine::EndpointStats::default().latency_us;
                        let (mut shed, mut server, mut started) = (0, 0, 0);
                        for (t, s) in recorded.timeline.iter().enumerate() {
                            if (t as f64) >= from && (t as f64) < to {
                                let _ = h.add(&s.admitted_us);
                                shed += s.shed;
                                server += s.server_errors;
                                started += s.ops_started;
                            }
                        }
                        let report = PhaseReport {
                            from_s: from,
                            to_s: to,
                            target_rate: p.rate,
                            achieved_rate: round2(started as f64 / p.secs.max(1e-9)),
                            admitted: Percentiles::of(&h),
                            shed,
                            server_5xx: server,
                        };
                        from = to;
                        report
                    })
                    .collect()
            }
            Load::Closed { .. } => Vec::new(),
        };
        let timeline = recorded
            .timeline
            .iter()
            .enumerate()
            .map(|(t, s)| SecondReport {
                t,
                ops_started: s.ops_started,
                p50_ms: round2(s.all_us.value_at_quantile(0.5) as f64 / 1000.0),
                p99_ms: round2(s.all_us.value_at_quantile(0.99) as f64 / 1000.0),
                admitted_p99_ms: round2(s.admitted_us.value_at_quantile(0.99) as f64 / 1000.0),
                shed: s.shed,
                server_5xx: s.server_errors,
            })
            .collect();
        RunReport {
            workload: options.workload.name().to_owned(),
            target: options.base_url.clone(),
            mode: mode.to_owned(),
            concurrency,
            target_ops_per_s,
            achieved_ops_per_s: round2(recorded.ops_finished as f64 / secs),
            requests_per_s: round2(all.len() as f64 / secs),
            ok_per_s: round2(ok as f64 / secs),
            duration_s: round2(secs),
            ops_started: recorded.ops_started,
            ops_finished: recorded.ops_finished,
            requests: all.len(),
            all: Percentiles::of(&all),
            admitted: Percentiles::of(&admitted),
            endpoints,
            errors,
            caches,
            events_published_per_s: events,
            shed_by_origin,
            origin_rss: rss,
            origin_cpu_s: origin_cpu_s.map(|c| (c * 1000.0).round() / 1000.0),
            origin_cpu_us_per_request: origin_cpu_s
                .filter(|_| !all.is_empty())
                .map(|c| round2(c * 1e6 / all.len() as f64)),
            phases,
            timeline,
            exhausted: recorded.exhausted,
        }
    }

    /// The run as markdown: a summary line and one table row per endpoint.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let target = self
            .target_ops_per_s
            .map(|t| format!("target {t:.0} ops/s, "))
            .unwrap_or_default();
        let conc = self
            .concurrency
            .map(|c| format!("concurrency {c}, "))
            .unwrap_or_default();
        out.push_str(&format!(
            "### `{}` ({} loop, {conc}{target}{:.1} s) against {}\n\n",
            self.workload, self.mode, self.duration_s, self.target
        ));
        out.push_str(&format!(
            "Achieved {:.1} ops/s, {:.1} req/s ({:.1} 2xx/s); all requests p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms. \
             Errors: 409 {}, 429 {}, 503 {}, other 5xx {}, other 4xx {}, transport {}, timeout {}.\n",
            self.achieved_ops_per_s,
            self.requests_per_s,
            self.ok_per_s,
            self.all.p50_ms,
            self.all.p95_ms,
            self.all.p99_ms,
            self.all.max_ms,
            self.errors.conflict_409,
            self.errors.rate_limited_429,
            self.errors.shed_503,
            self.errors.server_5xx,
            self.errors.client_4xx,
            self.errors.transport,
            self.errors.timeout,
        ));
        let mut extras = Vec::new();
        for (layer, c) in &self.caches {
            if let Some(r) = c.hit_ratio {
                extras.push(format!("{} hit ratio {r:.2}", layer.to_uppercase()));
            }
        }
        if let Some(e) = self.events_published_per_s {
            extras.push(format!("events published {e:.0}/s"));
        }
        if let Some(rss) = &self.origin_rss {
            extras.push(format!(
                "origin RSS {:.0} → {:.0} MiB (max {:.0}, growth {:+.1})",
                rss.start_mib, rss.end_mib, rss.max_mib, rss.growth_mib
            ));
        }
        if let Some(us) = self.origin_cpu_us_per_request {
            extras.push(format!("origin CPU {us:.0} µs per request"));
        }
        if !extras.is_empty() {
            out.push_str(&format!("{}.\n", extras.join("; ")));
        }
        let mut problems: BTreeMap<&str, u64> = BTreeMap::new();
        for e in &self.endpoints {
            for (p, n) in &e.problems {
                *problems.entry(p).or_insert(0) += n;
            }
        }
        if !problems.is_empty() {
            let list: Vec<String> = problems.iter().map(|(p, n)| format!("{p}: {n}")).collect();
            out.push_str(&format!(
                "Error answers by problem type: {}; 503/429 without Retry-After: {}.\n",
                list.join(", "),
                self.errors.missing_retry_after
            ));
        }
        out.push_str("\n| endpoint | count | /s | p50 ms | p95 ms | p99 ms | max ms | statuses | x-cache hit |\n");
        out.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |\n");
        for e in &self.endpoints {
            let statuses: Vec<String> = e
                .statuses
                .iter()
                .map(|(s, n)| format!("{s}: {n}"))
                .collect();
            out.push_str(&format!(
                "| {} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |\n",
                e.name,
                e.latency.count,
                e.per_second,
                e.latency.p50_ms,
                e.latency.p95_ms,
                e.latency.p99_ms,
                e.latency.max_ms,
                statuses.join(", "),
                e.x_cache_hit_ratio
                    .map(|r| format!("{r:.2}"))
                    .unwrap_or_else(|| "–".into()),
            ));
        }
        if self.phases.len() > 1 {
            out.push_str("\n| phase | target ops/s | achieved | admitted p50 ms | admitted p99 ms | 503/429 | other 5xx |\n");
            out.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
            for p in &self.phases {
                out.push_str(&format!(
                    "| {:.0}–{:.0} s | {:.0} | {:.0} | {:.2} | {:.2} | {} | {} |\n",
                    p.from_s,
                    p.to_s,
                    p.target_rate,
                    p.achieved_rate,
                    p.admitted.p50_ms,
                    p.admitted.p99_ms,
                    p.shed,
                    p.server_5xx
                ));
            }
        }
        out
    }
}
