//! A private primary, streaming replica and PgBouncer, started by `scripts/replica.sh` (the
//! same steps an operator runs), for the replica tests (`tests/api/replica.rs`).
//!
//! Ports are free ones the kernel hands out (never the fault suite's 18420–18439); the data
//! directories live in a temporary directory that [`Drop`] stops and removes.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::TestResult;

/// The database the script creates and PgBouncer pools (`booking`, `booking_replica`).
pub const DB: &str = "booking";

/// A primary, its replica and PgBouncer in front of both.
#[derive(Debug)]
pub struct Topology {
    pub dir: PathBuf,
    pub primary_port: u16,
    pub replica_port: u16,
    pub bouncer_port: u16,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/replica.sh")
}

/// Three ports nothing listens on now (the kernel's choices for port 0, all held until all
/// are chosen, so no two are the same).
fn free_ports() -> TestResult<[u16; 3]> {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").context("find a free port");
    let held = [bind()?, bind()?, bind()?];
    Ok([
        held[0].local_addr()?.port(),
        held[1].local_addr()?.port(),
        held[2].local_addr()?.port(),
    ])
}

fn run_script(args: &[&str]) -> TestResult {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("run scripts/replica.sh")?;
    if !out.status.success() {
        bail!(
            "scripts/replica.sh {} failed (PgBouncer comes from Debian's `pgbouncer` package; \
             the script installs it with apt-get when missing):\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Topology {
    /// Starts a fresh topology (about 5 s: initdb, pg_basebackup, three servers).
    pub fn start() -> TestResult<Self> {
        let dir = std::env::temp_dir().join(format!("replica-{}", uuid::Uuid::new_v4().simple()));
        let [primary_port, replica_port, bouncer_port] = free_ports()?;
        let t = Topology {
            dir,
            primary_port,
            replica_port,
            bouncer_port,
        };
        let d = t.dir.to_string_lossy().into_owned();
        run_script(&[
            "start",
            &d,
            &t.primary_port.to_string(),
            &t.replica_port.to_string(),
            &t.bouncer_port.to_string(),
        ])?;
        Ok(t)
    }

    /// The primary, directly (migrations, seeding, the tests' own checks).
    pub fn primary_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{DB}", self.primary_port)
    }

    /// The replica, directly (pausing replay, pg_stat_activity).
    pub fn replica_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{DB}", self.replica_port)
    }

    /// The primary's pool through PgBouncer.
    pub fn bouncer_primary_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{DB}", self.bouncer_port)
    }

    /// The replica's pool through PgBouncer.
    pub fn bouncer_replica_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{DB}_replica",
            self.bouncer_port
        )
    }

    /// PgBouncer's admin console.
    pub fn bouncer_admin_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/pgbouncer",
            self.bouncer_port
        )
    }

    /// A small pool on `url`.
    pub async fn pool(url: &str) -> TestResult<PgPool> {
        PgPoolOptions::new()
            .max_connections(4)
            .connect(url)
            .await
            .with_context(|| format!("connect to {url}"))
    }

    /// The origin's configuration for this topology: both pools through PgBouncer, the
    /// session locks and migrations straight to the primary.
    pub fn origin_env(&self) -> Vec<(String, String)> {
        vec![
            ("DATABASE_URL".into(), self.bouncer_primary_url()),
            ("DATABASE_READ_URL".into(), self.bouncer_replica_url()),
            ("DATABASE_SESSION_URL".into(), self.primary_url()),
        ]
    }

    /// Stops (`stop`) or starts one server: `primary` or `replica`.
    pub fn node(&self, which: &str, action: &str) -> TestResult {
        run_script(&["node", &self.dir.to_string_lossy(), which, action])
    }

    /// Queries PgBouncer's `SHOW STATS` (simple protocol: the admin console has no other)
    /// for a database's total query count.
    pub async fn bouncer_queries(&self, database: &str) -> TestResult<i64> {
        let out = Command::new("psql")
            .args([
                "-X",
                "-A",
                "-t",
                "-F",
                "|",
                &self.bouncer_admin_url(),
                "-c",
                "SHOW STATS",
            ])
            .stdin(Stdio::null())
            .output()
            .context("psql SHOW STATS")?;
        anyhow::ensure!(
            out.status.success(),
            "SHOW STATS failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Columns: database|total_xact_count|total_query_count|...
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines() {
            let cols: Vec<&str> = line.split('|').collect();
            if cols.first() == Some(&database) {
                return cols
                    .get(2)
                    .and_then(|c| c.trim().parse().ok())
                    .context("SHOW STATS: total_query_count");
            }
        }
        Ok(0)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["stop", &self.dir.to_string_lossy()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
