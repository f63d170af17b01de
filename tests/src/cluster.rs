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

    /// `initdb` into `dir` (trust auth) and start on `port`, with `fsync=on` so a crash
    /// ([`Self::crash`]) is survived by WAL replay, as in production.
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
            "-p {} -k {d} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200",
            self.port
        );
        let started = run(&mut self.pg(&[
            "pg_ctl",
            "-D",
            &d,
            "-o",
            &opts,
            "-l",
            &format!("{d}/log"),
            "-w",
            "start",
        ]));
        if let Err(e) = started {
            let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(8).collect();
            bail!("{e:#}\nlog tail (newest first):\n{}", tail.join("\n"));
        }
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

    /// The postmaster's pid (first line of `postmaster.pid`).
    pub fn postmaster_pid(&self) -> TestResult<u32> {
        let text = std::fs::read_to_string(self.dir.join("postmaster.pid"))
            .context("read postmaster.pid")?;
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .context("postmaster.pid has no pid")
    }

    /// A machine crash: `kill -9` of the postmaster and every backend at once (no shutdown
    /// checkpoint, shared memory abandoned); waits until the port is closed. [`Self::up`]
    /// then starts with crash recovery (WAL replay), which [`Self::recoveries_logged`]
    /// finds in the log.
    pub async fn crash(&self) -> TestResult {
        let pid = self.postmaster_pid()?;
        // Frozen first, so it forks no backend between the listing and the kill (an orphan
        // still attached to the shared memory would stop the restart).
        run(Command::new("kill").args(["-STOP", &pid.to_string()]))?;
        let children = Command::new("ps")
            .args(["-o", "pid=", "--ppid", &pid.to_string()])
            .output()
            .context("list the postmaster's children")?;
        let mut pids = vec![pid.to_string()];
        pids.extend(
            String::from_utf8_lossy(&children.stdout)
                .split_whitespace()
                .map(str::to_owned),
        );
        // A backend may have exited meanwhile: kill's status is not the point, the port is.
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(&pids)
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_ok()
        {
            if Instant::now() > deadline {
                bail!("PostgreSQL still listens 10 s after kill -9");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The postmaster was reparented when pg_ctl daemonised it; until its new parent reaps
        // it, it is a zombie whose pid still "exists", and a new postmaster would refuse to
        // start over its postmaster.pid. Wait for the reaping; past that, the stale lock file
        // (all processes are dead) is removed, as an operator would after a crash.
        let deadline = Instant::now() + Duration::from_secs(5);
        while process_state(pid).is_some() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if process_state(pid).is_some() {
            std::fs::remove_file(self.dir.join("postmaster.pid"))
                .context("remove the crashed postmaster's lock file")?;
        }
        Ok(())
    }

    /// How many times the log says the server started after a crash ("database system was
    /// interrupted" / "not properly shut down; automatic recovery in progress").
    pub fn recoveries_logged(&self) -> usize {
        std::fs::read_to_string(self.dir.join("log"))
            .map(|l| l.matches("automatic recovery in progress").count())
            .unwrap_or(0)
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

    /// The running process's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How the process ended, if it has ended by itself (it is then no longer running: a later
    /// call answers `None` until [`Self::up`] starts it again).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A tansu broker of our own (SQLite storage in a temporary directory; with
/// [`PrivateBroker::start_on_tmpfs`], a small tmpfs of its own that [`PrivateBroker::fill_disk`]
/// can fill).
#[derive(Debug)]
pub struct PrivateBroker {
    pub port: u16,
    pub dir: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
    /// Whether `dir` is a tmpfs this value mounted (unmounted on drop).
    mounted: bool,
}

/// The file [`PrivateBroker::fill_disk`] writes until the device is full.
const FILLER: &str = "filler";

/// Topics the origin's relay publishes to.
pub const TOPICS: [&str; 13] = [
    "booking.created",
    "booking.confirmed",
    "booking.started",
    "booking.completed",
    "booking.cancelled",
    "booking.failed",
    "booking.extended",
    "booking.rescheduled",
    "vehicle.reserved",
    "vehicle.released",
    "vehicle.blocked",
    "vehicle.unblocked",
    "waitlist.available",
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
            mounted: false,
        };
        b.up().await?;
        b.create_topics();
        Ok(b)
    }

    /// Like [`Self::start`], with the data directory on a tmpfs of `size_mb` (needs root:
    /// `mount`), so the disk can be made full.
    pub async fn start_on_tmpfs(dir: &Path, port: u16, size_mb: u32) -> TestResult<Self> {
        std::fs::create_dir_all(dir)?;
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(dir))?;
        let mut b = match Self::start(dir, port).await {
            Ok(b) => b,
            Err(e) => {
                let _ = Command::new("umount").arg(dir).status();
                return Err(e);
            }
        };
        b.mounted = true;
        Ok(b)
    }

    /// Fills the data directory's device: a file grown until the write fails with "no space
    /// left on device". Returns the bytes written.
    pub fn fill_disk(&self) -> TestResult<u64> {
        use std::io::Write;
        anyhow::ensure!(self.mounted, "fill_disk needs start_on_tmpfs");
        let mut f = std::fs::File::create(self.dir.join(FILLER)).context("create the filler")?;
        let chunk = vec![0xA5u8; 1 << 20];
        let mut written = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => return Err(e).context("fill the broker's disk"),
            }
        }
        // Small leftovers too, byte-sized.
        while f.write(&[0u8; 512]).is_ok_and(|n| n > 0) {
            written += 512;
        }
        Ok(written)
    }

    /// Frees what [`Self::fill_disk`] took.
    pub fn free_disk(&self) -> TestResult {
        match std::fs::remove_file(self.dir.join(FILLER)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).context("remove the filler"),
        }
    }

    /// Whether the broker process is still running (a disk-full may have ended it).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().is_ok_and(|s| s.is_none()))
    }

    /// The running process's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How the process ended, if it has ended by itself (it is then no longer running: a later
    /// call answers `None` until [`Self::up`] starts it again).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }

    fn create_topics(&self) {
        let (b, port) = (self, self.port);
        for topic in TOPICS {
            let _ = Command::new(&b.bin)
                .args(["topic", "create", topic, "--broker"])
                .arg(format!("tcp://127.0.0.1:{port}"))
                .args(["--partitions", "3"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
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
        wait_port(self.port, Duration::from_secs(20)).await?;
        index_tansu_headers(&self.dir.join("tansu.db")).await
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
        if self.mounted {
            let _ = Command::new("umount").arg(&self.dir).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The index tansu 0.6.0's SQLite schema lacks: its `header` table has none, and a fetch looks
/// up each record's headers by `(topition, offset_id)`, so every record read scanned every
/// header of the broker — reading a topic back was quadratic (about 130 events/s with a few
/// thousand events, 6/s with 44,000). `scripts/broker.sh` adds the same index to the shared
/// broker. Done with the `sqlite3` shell (which `scripts/broker.sh` installs) because the
/// storage schema is tansu's and there is nothing to configure in it; SQLite re-plans tansu's
/// prepared statements on the schema change. Idempotent; waits until tansu made its schema.
pub async fn index_tansu_headers(db: &Path) -> TestResult {
    const SQL: &str =
        "create index if not exists header_topition_offset_id on header (topition, offset_id);";
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new("sqlite3")
            .args(["-cmd", ".timeout 10000"])
            .arg(db)
            .arg(SQL)
            .output()
            .context("run sqlite3 (scripts/broker.sh installs it)")?;
        if out.status.success() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "index tansu's header table in {}: {}",
                db.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        // "no such table: header": tansu has not made its schema yet.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `x-request-id` prefix of the requests the harness itself sends an origin (its health
/// probes): a test that matches the origin's request log against its clients' requests skips
/// these.
pub const HARNESS_REQUEST_ID_PREFIX: &str = "harness-";

/// An origin process (the release or debug binary), so it can be SIGKILLed.
#[derive(Debug)]
pub struct OriginProcess {
    pub port: u16,
    env: Vec<(String, String)>,
    /// Added to `env` at the next [`OriginProcess::up`] (a clock skew's `LD_PRELOAD`).
    pub extra_env: Vec<(String, String)>,
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
            extra_env: Vec::new(),
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
        // A start may fail while a dependency is away (the origin exits when PostgreSQL does
        // not answer at start): retried until the deadline, as a supervisor would.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut child = self.spawn(&bin)?;
            let answered = Instant::now() + Duration::from_secs(15);
            // Up means serving HTTP, not only listening: the origin binds its port before it
            // connects to Redis, and a fault that starts in between (the dead-peer test goes
            // dead right after its first hold) would leave it listening and never serving.
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(1))
                .build()?;
            let health = format!("http://127.0.0.1:{}/healthz", self.port);
            loop {
                // Named so a test reading the origin's request log can tell the harness's probes
                // from its clients' requests (`HARNESS_REQUEST_ID_PREFIX`).
                let probe_id = format!("{HARNESS_REQUEST_ID_PREFIX}{}", uuid::Uuid::new_v4());
                if http
                    .get(&health)
                    .header("x-request-id", probe_id)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    self.child = Some(child);
                    return Ok(());
                }
                if child.try_wait().ok().flatten().is_some() || Instant::now() > answered {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if Instant::now() > deadline {
                bail!(
                    "the origin did not come up on 127.0.0.1:{} within 60 s (log: {})",
                    self.port,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn spawn(&self, bin: &Path) -> TestResult<Child> {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)?;
        Command::new(bin)
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(
                self.env
                    .iter()
                    .chain(&self.extra_env)
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .env("BIND_ADDR", format!("127.0.0.1:{}", self.port))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start the origin")
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

    /// The running process's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How the process ended, if it has ended by itself (it is then no longer running: a later
    /// call answers `None` until [`Self::up`] starts it again).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }

    /// SIGSTOP (`stop = true`) or SIGCONT: the process freezes mid-request, holding whatever
    /// it holds (connections, Redis locks), and wakes up where it was.
    pub fn signal_stop(&self, stop: bool) -> TestResult {
        let pid = self.pid().context("the origin is not running")?;
        let sig = if stop { "-STOP" } else { "-CONT" };
        run(Command::new("kill").args([sig, &pid.to_string()]))
    }
}

/// The state letter of `pid` in `/proc/<pid>/stat` (`T` when stopped by a signal).
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: the state follows the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

impl Drop for OriginProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
