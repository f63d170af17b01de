//! `loadgen` command line: `run` one workload, or build the `summary` of several runs with
//! each figure as a ratio to the box's ceilings (`limits.sh` output).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use loadgen::{summary, Load, RunOptions, WorkloadKind};

#[derive(Parser)]
#[command(about = "Open-loop load generator and benchmark report for the Booking & Pricing API")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs one workload and writes <out>.json and <out>.md (and <out>.svg with --plot).
    Run(RunArgs),
    /// Combines runs written by `run` into report.json and report.md with ratios to ceilings.
    Summary(SummaryArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Base URL of the API: an origin, or an edge in front of it.
    #[arg(
        long,
        env = "LOADGEN_BASE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    base_url: String,
    /// Where the origin's Prometheus metrics are (default: <base-url>/metrics).
    #[arg(long)]
    metrics_url: Option<String>,
    #[arg(long, value_enum, default_value = "mixed")]
    workload: WorkloadKind,
    /// Open loop: operations started per second (the burst's base rate).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Seconds to run (for burst: the whole run, the step sits in its middle third).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Closed loop with this many workers instead of a schedule.
    #[arg(long)]
    closed: Option<usize>,
    /// Burst: the step's factor over the base rate.
    #[arg(long, default_value_t = 5.0)]
    burst_factor: f64,
    /// The origin's process id: its RSS is sampled from /proc.
    #[arg(long)]
    origin_pid: Option<u32>,
    /// Distinct users (Zipf-skewed).
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Quotes prepared for a closed-loop holds run.
    #[arg(long, default_value_t = 6000)]
    prepared_holds: usize,
    /// Bound on requests in flight (open loop).
    #[arg(long, default_value_t = 2048)]
    max_in_flight: usize,
    /// Client timeout per request, milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Output path without extension (default: target/bench/<workload>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write the latency-over-time plot (<out>.svg).
    #[arg(long)]
    plot: bool,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
struct SummaryArgs {
    /// `limits.sh` output ("name value unit" lines); without it, no ratios.
    #[arg(long)]
    limits: Option<PathBuf>,
    /// Directory to write report.json and report.md into.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Free text recorded with the report (e.g. the load average).
    #[arg(long, default_value = "")]
    note: String,
    /// Run files written by `loadgen run` (<name>.json).
    runs: Vec<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run(args).await,
        Command::Summary(args) => {
            let md = summary::write(&args.runs, args.limits.as_deref(), &args.out, &args.note)?;
            println!("{md}");
            Ok(())
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let load = match (args.closed, args.workload) {
        (Some(concurrency), _) => Load::Closed {
            concurrency,
            duration: Duration::from_secs_f64(args.duration),
        },
        (None, WorkloadKind::Burst) => {
            let third = args.duration / 3.0;
            Load::burst(args.rate, args.burst_factor, third, third, third)
        }
        (None, _) => Load::constant(args.rate, args.duration),
    };
    let mut options = RunOptions::new(&args.base_url, args.workload, load);
    options.metrics_url = args.metrics_url;
    options.origin_pid = args.origin_pid;
    options.users = args.users;
    options.prepared_holds = args.prepared_holds;
    options.max_in_flight = args.max_in_flight;
    options.timeout = Duration::from_millis(args.timeout_ms);
    options.seed = args.seed;
    options.progress = !args.quiet;
    let report = loadgen::run(&options).await?;
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from("target/bench").join(args.workload.name()));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let json = out.with_extension("json");
    std::fs::write(&json, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("write {}", json.display()))?;
    let md = report.markdown();
    std::fs::write(out.with_extension("md"), &md)?;
    if args.plot {
        loadgen::plot::latency_svg(&report, &out.with_extension("svg"))?;
    }
    println!("{md}");
    eprintln!("loadgen: wrote {}", json.display());
    Ok(())
}
