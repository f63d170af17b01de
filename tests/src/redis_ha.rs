//! A private Redis Cluster (3 masters + 3 replicas) or Sentinel set (master, replica, three
//! sentinels), started by `scripts/redis-ha.sh` (the steps an operator runs), for the
//! failover tests (`tests/api/redis_ha.rs`) and the api subset run on a cluster.
//!
//! Ports are free ones the kernel hands out; everything lives in a temporary directory that
//! [`Drop`] stops and removes.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::TestResult;

/// The master set the sentinels watch (the script's default).
pub const SENTINEL_MASTER: &str = "bp";

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/redis-ha.sh")
}

/// `n` ports nothing listens on now (all held until all are chosen, so none repeats).
fn free_ports(n: usize) -> TestResult<Vec<u16>> {
    let held = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").context("find a free port"))
        .collect::<Result<Vec<_>, _>>()?;
    held.iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect::<TestResult<Vec<_>>>()
}

fn run_script(args: &[String]) -> TestResult {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("run scripts/redis-ha.sh")?;
    if !out.status.success() {
        bail!(
            "scripts/redis-ha.sh {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    pub id: String,
    pub port: u16,
    /// A master that is not marked failed.
    pub master: bool,
    /// A replica's master (`-` for a master).
    pub master_id: String,
    /// The slot ranges it serves (masters).
    pub slots: Vec<(u16, u16)>,
}

/// A running topology; stopped and removed on drop.
#[derive(Debug)]
pub struct RedisHa {
    pub dir: PathBuf,
    /// Cluster: the six nodes. Sentinel: the master, then the replica, as started.
    pub ports: Vec<u16>,
    /// Sentinel: the three sentinels (empty for a cluster).
    pub sentinel_ports: Vec<u16>,
}

impl RedisHa {
    fn dir() -> PathBuf {
        std::env::temp_dir().join(format!("redis-ha-{}", uuid::Uuid::new_v4().simple()))
    }

    /// A fresh 6-node cluster (about 2 s).
    pub fn cluster() -> TestResult<Self> {
        let ports = free_ports(12)?;
        let ha = RedisHa {
            dir: Self::dir(),
            ports: ports[..6].to_vec(),
            sentinel_ports: Vec::new(),
        };
        let mut args = vec!["cluster".to_owned(), ha.dir.to_string_lossy().into_owned()];
        args.extend((0..6).map(|i| format!("{}:{}", ports[i], ports[i + 6])));
        run_script(&args)?;
        Ok(ha)
    }

    /// A fresh master + replica + three sentinels (about 5 s: the sentinels find each other).
    pub fn sentinel() -> TestResult<Self> {
        let ports = free_ports(5)?;
        let ha = RedisHa {
            dir: Self::dir(),
            ports: ports[..2].to_vec(),
            sentinel_ports: ports[2..].to_vec(),
        };
        let mut args = vec!["sentinel".to_owned(), ha.dir.to_string_lossy().into_owned()];
        args.extend(ports.iter().map(u16::to_string));
        run_script(&args)?;
        Ok(ha)
    }

    /// `REDIS_URL` for the origin: the cluster's nodes, or the sentinels.
    pub fn origin_url(&self) -> String {
        let ports = if self.sentinel_ports.is_empty() {
            &self.ports
        } else {
            &self.sentinel_ports
        };
        ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// One node's URL.
    pub fn node_url(port: u16) -> String {
        format!("redis://127.0.0.1:{port}")
    }

    /// SIGKILLs the server on `port` (its pid file is the script's).
    pub fn kill(&self, port: u16) -> TestResult {
        let pidfile = self.dir.join(format!("redis-{port}.pid"));
        let pid = std::fs::read_to_string(&pidfile)
            .with_context(|| format!("read {}", pidfile.display()))?;
        let status = Command::new("kill")
            .arg("-9")
            .arg(pid.trim())
            .status()
            .context("kill")?;
        anyhow::ensure!(status.success(), "kill -9 {} failed", pid.trim());
        Ok(())
    }

    /// The port of the master the sentinels name now.
    pub async fn sentinel_master_port(&self) -> TestResult<u16> {
        let port = *self.sentinel_ports.first().context("not a sentinel set")?;
        let mut conn = crate::test_redis::connect(&Self::node_url(port)).await?;
        let addr: Vec<String> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(SENTINEL_MASTER)
            .query_async(&mut conn)
            .await?;
        addr.get(1)
            .context("no master address")?
            .parse()
            .context("master port")
    }

    /// Every node of the cluster as `CLUSTER NODES` on `via` lists it.
    pub async fn cluster_nodes(via: u16) -> TestResult<Vec<ClusterNode>> {
        let mut conn = crate::test_redis::connect(&Self::node_url(via)).await?;
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut conn)
            .await?;
        nodes
            .lines()
            .map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                anyhow::ensure!(f.len() >= 8, "CLUSTER NODES line: {line}");
                let port = f[1]
                    .split('@')
                    .next()
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| p.parse().ok())
                    .context("node address")?;
                let flags: Vec<&str> = f[2].split(',').collect();
                let slots = f[8..]
                    .iter()
                    .filter_map(|r| {
                        let mut ends = r.split('-').map(|s| s.parse::<u16>().ok());
                        let lo = ends.next()??;
                        Some((lo, ends.next().flatten().unwrap_or(lo)))
                    })
                    .collect();
                Ok(ClusterNode {
                    id: f[0].to_owned(),
                    port,
                    master: flags.contains(&"master") && !flags.iter().any(|f| f.contains("fail")),
                    master_id: f[3].to_owned(),
                    slots,
                })
            })
            .collect()
    }

    /// The cluster's live masters as `(port, first slot)`, from `CLUSTER NODES` on `via`.
    pub async fn cluster_masters(via: u16) -> TestResult<Vec<(u16, Option<u32>)>> {
        Ok(Self::cluster_nodes(via)
            .await?
            .into_iter()
            .filter(|n| n.master)
            .map(|n| (n.port, n.slots.first().map(|(lo, _)| u32::from(*lo))))
            .collect())
    }

    /// What an operator would look at when a failover did not happen: `CLUSTER NODES` (a
    /// cluster) or `INFO replication` (a sentinel set) as `via` sees it, and the last lines of
    /// every server's log.
    pub fn diagnosis(&self, via: u16) -> String {
        let view: &[&str] = if self.sentinel_ports.is_empty() {
            &["cluster", "nodes"]
        } else {
            &["info", "replication"]
        };
        let seen = Command::new("redis-cli")
            .args(["-p", &via.to_string()])
            .args(view)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|e| format!("redis-cli: {e}"));
        let mut out = format!("{} via {via}:\n{seen}", view.join(" ").to_uppercase());
        let mut logs: Vec<_> = std::fs::read_dir(&self.dir)
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        logs.retain(|p| p.extension().is_some_and(|e| e == "log"));
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(12).collect();
            out.push_str(&format!("--- {}\n", log.display()));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Waits until `f` holds, polling every 50 ms, for at most `within`.
    pub async fn wait_until<F, Fut>(what: &str, within: Duration, mut f: F) -> TestResult
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = TestResult<bool>>,
    {
        let deadline = std::time::Instant::now() + within;
        loop {
            if f().await.unwrap_or(false) {
                return Ok(());
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "{what}: not within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for RedisHa {
    fn drop(&mut self) {
        let _ = run_script(&["stop".to_owned(), self.dir.to_string_lossy().into_owned()]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
