//! Private PostgreSQL, Redis and Kafka-protocol broker for the fault-injection runs.
//!
//! The fault harness kills and restarts its dependencies, so it must never touch the machine's
//! shared services: each run starts its own PostgreSQL cluster (`initdb` into a temporary
//! directory, as the `postgres` user when run as root, which initdb refuses), its own
//! `redis-server`, and its own tansu broker with a temporary data directory, all on loopback
//! ports of the harness's range (18400–18499). Dropping a value stops what it started.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::TestResult;

/// Waits until something accepts TCP connections on `port` (or `within` passes).
pub async fn wait_port(port: u16, within: Duration) -> TestResult {
    let deadline = Instant::now() + within;
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing listens on 127.0.0.1:{port} after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn run(cmd: &mut Command) -> TestResult {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn is_root() -> bool {
    std::env::var("USER").is_ok_and(|u| u == "root")
        || Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0"))
}

/// A PostgreSQL cluster of our own.
#[derive(Debug)]
pub struct PrivatePg {
    pub dir: PathBuf,
    pub port: u16,
}

impl PrivatePg {
    fn pg(&self, args: &[&str]) -> Command {
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]);
            c
        } else {
            Command::new("env")
        };
        cmd.args(args);
        cmd
    }

    /// `initdb` into `dir` (trust auth, fsync off) and start on `port`.
    pub async fn start(dir: &Path, port: u16) -> TestResult<Self> {
        let pg = PrivatePg {
            dir: dir.to_owned(),
            port,
        };
        std::fs::create_dir_all(dir)?;
        if is_root() {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir))?;
        }
        let d = dir.to_string_lossy().into_owned();
        run(&mut pg.pg(&[
            "initdb",
            "-D",
            &d,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]))?;
        pg.up().await?;
        Ok(pg)
    }

    /// Starts the (stopped) cluster and waits until it accepts connections.
    pub async fn up(&self) -> TestResult {
        let d = self.dir.to_string_lossy().into_owned();
        let opts = format!(
            "-p {} -k {d} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port
        );
        run(&mut self.pg(&[
            "pg_ctl",
            "-D",
            &d,
            "-o",
            &opts,
            "-l",
            &format!("{d}/log"),
            "-w",
            "start",
        ]))?;
        wait_port(self.port, Duration::from_secs(20)).await
    }

    /// Stops the cluster (fast: open transactions roll back).
    pub fn down(&self) -> TestResult {
        let d = self.dir.to_string_lossy().into_owned();
        run(&mut self.pg(&["pg_ctl", "-D", &d, "-m", "fast", "-w", "stop"]))
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let d = self.dir.to_string_lossy().into_owned();
        let _ = self
            .pg(&["pg_ctl", "-D", &d, "-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `redis-server` of our own, without persistence.
#[derive(Debug)]
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub async fn start(port: u16) -> TestResult<Self> {
        let mut r = PrivateRedis { port, child: None };
        r.up().await?;
        Ok(r)
    }

    pub async fn up(&mut self) -> TestResult {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start redis-server")?;
        self.child = Some(child);
        wait_port(self.port, Duration::from_secs(10)).await
    }

    /// SIGKILL: everything in it is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A tansu broker of our own (SQLite storage in a temporary directory).
#[derive(Debug)]
pub struct PrivateBroker {
    pub port: u16,
    pub dir: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
}

/// Topics the origin's relay publishes to.
pub const TOPICS: [&str; 9] = [
    "booking.created",
    "booking.confirmed",
    "booking.started",
    "booking.completed",
    "booking.cancelled",
    "booking.failed",
    "booking.extended",
    "vehicle.reserved",
    "vehicle.released",
];

impl PrivateBroker {
    pub async fn start(dir: &Path, port: u16) -> TestResult<Self> {
        let bin = std::env::var_os("TANSU_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo/bin/tansu")
            });
        anyhow::ensure!(
            bin.exists(),
            "{} not found: run scripts/broker.sh once",
            bin.display()
        );
        std::fs::create_dir_all(dir)?;
        let mut b = PrivateBroker {
            port,
            dir: dir.to_owned(),
            bin,
            child: None,
        };
        b.up().await?;
        for topic in TOPICS {
            let _ = Command::new(&b.bin)
                .args(["topic", "create", topic, "--broker"])
                .arg(format!("tcp://127.0.0.1:{port}"))
                .args(["--partitions", "3"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        Ok(b)
    }

    pub async fn up(&mut self) -> TestResult {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("tansu.log"))?;
        let child = Command::new(&self.bin)
            .current_dir(&self.dir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start tansu")?;
        self.child = Some(child);
        wait_port(self.port, Duration::from_secs(20)).await
    }

    /// SIGKILL (tansu 0.6 mishandles SIGTERM; a crash is the fault we want anyway).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // SIGINT first: a clean stop (see scripts/broker.sh).
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            std::thread::sleep(Duration::from_millis(500));
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An origin process (the release or debug binary), so it can be SIGKILLed.
#[derive(Debug)]
pub struct OriginProcess {
    pub port: u16,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

/// The origin binary built by `cargo build -p origin` (ORIGIN_BIN overrides).
pub fn origin_bin() -> PathBuf {
    std::env::var_os("ORIGIN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/origin"))
}

/// Fails unless [`origin_bin`] exists and is newer than every source it is built from: a test
/// of the binary must not pass (or fail) on yesterday's build. `cargo build --workspace --bins`
/// (CI's build step, `scripts/test.sh`) makes it current.
pub fn ensure_origin_bin_is_current() -> TestResult {
    let bin = origin_bin();
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .with_context(|| {
            format!(
                "{} not found: cargo build --workspace --bins",
                bin.display()
            )
        })?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut stack: Vec<PathBuf> = [
        "origin/src",
        "origin/Cargo.toml",
        "shared/domain/src",
        "shared/inference-api/src",
        "migrations",
        "Cargo.lock",
    ]
    .iter()
    .map(|p| root.join(p))
    .collect();
    while let Some(path) = stack.pop() {
        let meta = std::fs::metadata(&path).with_context(|| format!("stat {}", path.display()))?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        } else if meta.modified()? > built {
            bail!(
                "{} is older than {}: cargo build --workspace --bins",
                bin.display(),
                path.display()
            );
        }
    }
    Ok(())
}

impl OriginProcess {
    pub async fn start(port: u16, env: Vec<(String, String)>, log: PathBuf) -> TestResult<Self> {
        let mut o = OriginProcess {
            port,
            env,
            log,
            child: None,
        };
        o.up().await?;
        Ok(o)
    }

    pub async fn up(&mut self) -> TestResult {
        let bin = origin_bin();
        anyhow::ensure!(
            bin.exists(),
            "{} not found: cargo build -p origin",
            bin.display()
        );
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(bin)
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("BIND_ADDR", format!("127.0.0.1:{}", self.port))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start the origin")?;
        self.child = Some(child);
        wait_port(self.port, Duration::from_secs(30)).await
    }

    /// SIGTERM: asks for a graceful stop (see `origin/src/startup.rs`); [`Self::wait_exit`]
    /// then tells how it ended.
    pub fn terminate(&self) -> TestResult {
        let child = self.child.as_ref().context("the origin is not running")?;
        run(Command::new("kill").args(["-TERM", &child.id().to_string()]))
    }

    /// Waits (bounded) for the process to exit; its exit status.
    pub async fn wait_exit(&mut self, within: Duration) -> TestResult<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().context("the origin is not running")?;
        loop {
            if let Some(status) = child.try_wait().context("wait for the origin")? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("the origin did not exit within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The file the process logs to (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// SIGKILL: no graceful shutdown, in-flight requests die with it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for OriginProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
