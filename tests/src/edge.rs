//! Edge harness: a real origin, the Upstash REST gateway and an edge worker in a real Wasm
//! runtime — Cloudflare's workerd (through miniflare) or the Spin component under
//! `wasmtime serve` — wired together on free local ports.
//!
//! The workers must be built first (`scripts/edge.sh build`); a missing artifact fails the
//! test with a message saying so, it never skips. Each stack has its own database (from
//! `#[sqlx::test]`), its own origin Redis prefix and its own edge key prefix, so stacks run in
//! parallel against the shared Redis. The origin listens on a fixed port chosen at start, so
//! a test can stop it and start it again where the edge expects it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use crate::{spawn_app_with, Reply, TestApp, TestResult, AUDIENCE, ISSUER, JWT_SECRET};

/// The token the gateway accepts (and the edge and origin present).
pub const GATEWAY_TOKEN: &str = "edge-test-upstash-token";

/// Which runtime runs the edge worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// `edge/cloudflare` in workerd (miniflare).
    Cloudflare,
    /// `edge/spin` under `wasmtime serve`.
    Spin,
}

impl Runtime {
    /// Both runtimes, for tests that run one scenario on each.
    pub const ALL: [Runtime; 2] = [Runtime::Cloudflare, Runtime::Spin];

    /// The `x-edge-runtime` the worker reports.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Cloudflare => "cloudflare",
            Runtime::Spin => "spin",
        }
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// The `wasmtime` binary: `WASMTIME`, else the one `scripts/edge.sh` installs, else `PATH`.
fn wasmtime() -> PathBuf {
    if let Some(p) = std::env::var_os("WASMTIME") {
        return PathBuf::from(p);
    }
    let local = repo_root().join(".dev/edge-tools/wasmtime");
    if local.exists() {
        return local;
    }
    PathBuf::from("wasmtime")
}

/// `wasmtime serve`'s limits, set deliberately (the same in `scripts/edge.sh`; README, "Edge
/// limits and build"): at most 400 requests in the component at once — the rest wait for a
/// slot; without the cap a burst of 1,100 failed instantiation past the pool's limits with an
/// HTML 500 page. The pooling allocator holds 1,000 component instances and 10,000 core
/// instances (one instance of this component takes several core instances: at the default
/// 1,000, 250 concurrent requests already failed). An instance serves up to 10,000 requests,
/// one at a time, and is kept 10 s when idle, so its edge (configuration, blocked clients)
/// outlives one request.
pub const WASMTIME_SERVE_LIMITS: &[&str] = &[
    "-O",
    "pooling-allocator=y,pooling-total-component-instances=1000,pooling-total-core-instances=10000,pooling-total-memories=2000,pooling-total-tables=4000,pooling-total-stacks=1000",
    "--max-concurrent-requests",
    "400",
    "--max-instance-reuse-count",
    "10000",
    "--idle-instance-timeout",
    "10s",
];

/// A port nobody listens on right now (bound, read, released).
/// The header through which a test plays the platform's client address: Cloudflare's
/// `CF-Connecting-IP` (miniflare keeps one the client sends; Cloudflare's edge overwrites
/// it) and Spin's `spin-client-addr` (`wasmtime serve` sets none, so the client's arrives;
/// Spin appends its own after the client's and the SDK keeps the last).
pub fn platform_address(runtime: Runtime, ip: &str) -> (&'static str, String) {
    match runtime {
        Runtime::Cloudflare => ("cf-connecting-ip", ip.to_owned()),
        Runtime::Spin if ip.contains(':') => ("spin-client-addr", format!("[{ip}]:50000")),
        Runtime::Spin => ("spin-client-addr", format!("{ip}:50000")),
    }
}

pub fn free_port() -> TestResult<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A running edge worker process.
#[derive(Debug)]
pub(crate) struct EdgeProcess {
    child: Child,
    /// Closing it tells the miniflare runner to dispose workerd and exit.
    stdin: Option<ChildStdin>,
    /// Every line the runtime wrote to its standard output (the access log is there).
    stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl EdgeProcess {
    pub(crate) async fn stop(mut self) {
        drop(self.stdin.take());
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

impl Drop for EdgeProcess {
    /// A test that fails (or panics) never calls `stop`, and `kill_on_drop` alone SIGKILLs only
    /// the runner: miniflare starts workerd detached (its own process group), so workerd
    /// outlived every failed test. Here the runner is asked to stop (stdin closed, SIGTERM: it
    /// disposes workerd) and given up to 3 s before `kill_on_drop` follows. Blocking, but only
    /// when a world is dropped without `stop`.
    fn drop(&mut self) {
        drop(self.stdin.take());
        let Some(pid) = self.child.id() else {
            return; // already reaped by `stop`
        };
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .stderr(Stdio::null())
            .status();
        for _ in 0..60 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Starts the edge in its runtime on a free port. The port is free when picked but may be
/// taken before the runtime binds it (another test's process picked it too): a runtime that
/// exits before it is healthy is started again on another port, up to three times.
pub(crate) async fn start_edge(
    runtime: Runtime,
    vars: &[(String, String)],
) -> TestResult<(EdgeProcess, String)> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match start_edge_on(runtime, vars, free_port()?).await {
            Ok(started) => return Ok(started),
            Err(StartError::Exited(why)) if attempt < 3 => {
                println!(
                    "[edge] {} exited before it was healthy ({why}); another port",
                    runtime.name()
                );
            }
            Err(StartError::Exited(why)) => {
                bail!("{} exited before it was healthy: {why}", runtime.name())
            }
            Err(StartError::Other(e)) => return Err(e),
        }
    }
}

enum StartError {
    /// The runtime's process ended before answering `/healthz` (e.g. its port was taken).
    Exited(String),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for StartError {
    fn from(e: anyhow::Error) -> Self {
        StartError::Other(e)
    }
}

async fn start_edge_on(
    runtime: Runtime,
    vars: &[(String, String)],
    port: u16,
) -> Result<(EdgeProcess, String), StartError> {
    let mut cmd = match runtime {
        Runtime::Spin => {
            let wasm = target_dir().join("wasm32-wasip2/release/edge_spin.wasm");
            if !wasm.exists() {
                return Err(StartError::Other(anyhow::anyhow!(
                    "{} is missing: build the edge workers first (scripts/edge.sh build)",
                    wasm.display()
                )));
            }
            let mut cmd = Command::new(wasmtime());
            cmd.args(["serve", "-S", "cli=y", "-S", "http=y"])
                .args(WASMTIME_SERVE_LIMITS)
                // `perfmap` for the edge benchmark's profile: names the component's compiled
                // functions for `perf` (/tmp/perf-<pid>.map), at no cost once compiled.
                .args(
                    std::env::var("EDGE_WASMTIME_PROFILE")
                        .ok()
                        .map(|p| format!("--profile={p}")),
                )
                .arg("--addr")
                .arg(format!("127.0.0.1:{port}"));
            for (k, v) in vars {
                cmd.arg("--env").arg(format!("{k}={v}"));
            }
            cmd.arg(wasm);
            cmd
        }
        Runtime::Cloudflare => {
            let dir = repo_root().join("edge/cloudflare");
            for needed in [
                "build/index.js",
                "build/index_bg.wasm",
                "node_modules/miniflare",
            ] {
                if !dir.join(needed).exists() {
                    return Err(StartError::Other(anyhow::anyhow!(
                        "edge/cloudflare/{needed} is missing: build the edge workers first \
                         (scripts/edge.sh build)"
                    )));
                }
            }
            let bindings: serde_json::Map<String, Value> = vars
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            let mut cmd = Command::new("node");
            cmd.arg(dir.join("run.mjs"))
                .env("EDGE_PORT", port.to_string())
                .env("EDGE_BINDINGS", Value::Object(bindings).to_string());
            cmd
        }
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start the {} edge", runtime.name()))?;
    let stdin = child.stdin.take();
    let captured = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    if let Some(stdout) = child.stdout.take() {
        // Drain the runtime's output (into the test's output, and kept for the test to read)
        // so it never blocks on a pipe.
        let captured = captured.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                println!("[edge] {line}");
                if let Ok(mut all) = captured.lock() {
                    all.push(line);
                }
            }
        });
    }
    let base = format!("http://127.0.0.1:{port}");
    let mut process = EdgeProcess {
        child,
        stdin,
        stdout: captured,
    };
    let client = reqwest::Client::new();
    for _ in 0..300 {
        if let Ok(r) = client.get(format!("{base}/healthz")).send().await {
            if r.status() == StatusCode::OK {
                return Ok((process, base));
            }
        }
        if let Ok(Some(status)) = process.child.try_wait() {
            return Err(StartError::Exited(status.to_string()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    process.stop().await;
    Err(StartError::Other(anyhow::anyhow!(
        "{} did not become healthy at {base}",
        runtime.name()
    )))
}

/// Origin + gateway + edge, and a client for the edge.
#[derive(Debug)]
pub struct EdgeStack {
    pub runtime: Runtime,
    /// The edge's base URL.
    pub base: String,
    pub client: reqwest::Client,
    /// The origin (None while stopped).
    pub origin: Option<TestApp>,
    pub pool: PgPool,
    pub gateway: Option<upstash_gateway::Running>,
    /// The edge's Redis key prefix (rate-limit counters, cache entries, generations).
    pub edge_prefix: String,
    origin_overrides: Vec<(String, String)>,
    /// The variables the edge was started with (a benchmark starts another edge alike).
    pub edge_vars: Vec<(String, String)>,
    edge: Option<EdgeProcess>,
}

impl EdgeStack {
    /// Starts a stack with default edge settings.
    pub async fn start(pool: PgPool, runtime: Runtime) -> TestResult<Self> {
        Self::start_with(pool, runtime, &[]).await
    }

    /// Starts a stack with extra edge variables (e.g. a short quote TTL).
    pub async fn start_with(
        pool: PgPool,
        runtime: Runtime,
        edge_vars: &[(&str, &str)],
    ) -> TestResult<Self> {
        Self::start_full(pool, runtime, edge_vars, &[]).await
    }

    /// Starts a stack with extra edge variables and origin variables. The origin accepts
    /// only requests signed by an edge (`EDGE_SIGNING_KEYS` = the suite's key, no
    /// `ORIGIN_ALLOW_DIRECT`) unless `origin_vars` say otherwise, and the edge signs with
    /// that key: every scenario through the edge proves the edge signs.
    pub async fn start_full(
        pool: PgPool,
        runtime: Runtime,
        edge_vars: &[(&str, &str)],
        origin_vars: &[(&str, &str)],
    ) -> TestResult<Self> {
        let redis_url = crate::test_redis::shared_url();
        let gateway = upstash_gateway::start(
            tokio::net::TcpListener::bind("127.0.0.1:0").await?,
            &redis_url,
            GATEWAY_TOKEN,
        )
        .await?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let edge_prefix = format!("test:edge:{id}:");
        let origin_port = free_port()?;
        let origin_url = format!("http://127.0.0.1:{origin_port}");
        let origin_overrides: Vec<(String, String)> = vec![
            ("BIND_ADDR".into(), format!("127.0.0.1:{origin_port}")),
            ("REDIS_KEY_PREFIX".into(), format!("test:{id}:")),
            ("EDGE_CACHE_REST_URL".into(), gateway.url()),
            ("EDGE_CACHE_REST_TOKEN".into(), GATEWAY_TOKEN.into()),
            ("EDGE_CACHE_KEY_PREFIX".into(), edge_prefix.clone()),
            (
                "EDGE_SIGNING_KEYS".into(),
                format!(
                    "{}={}",
                    crate::edge_signing::EDGE_KID,
                    crate::edge_signing::EDGE_KEY
                ),
            ),
            ("ORIGIN_ALLOW_DIRECT".into(), "0".into()),
        ];
        let mut origin_overrides = origin_overrides;
        for (k, v) in origin_vars {
            origin_overrides.retain(|(name, _)| name != k);
            origin_overrides.push(((*k).to_owned(), (*v).to_owned()));
        }
        let mut stack = EdgeStack {
            runtime,
            base: String::new(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            origin: None,
            pool,
            gateway: Some(gateway),
            edge_prefix: edge_prefix.clone(),
            origin_overrides,
            edge_vars: Vec::new(),
            edge: None,
        };
        stack.start_origin().await?;
        let mut vars: Vec<(String, String)> = [
            ("EDGE_REGION", "EUW"),
            ("ORIGIN_EUW_URL", origin_url.as_str()),
            ("ORIGIN_EUN_URL", origin_url.as_str()),
            ("UPSTASH_REDIS_REST_TOKEN", GATEWAY_TOKEN),
            ("EDGE_KEY_PREFIX", edge_prefix.as_str()),
            ("JWT_ISSUER", ISSUER),
            ("JWT_AUDIENCE", AUDIENCE),
            ("JWT_HS256_SECRET", JWT_SECRET),
            ("EDGE_ORIGIN_TIMEOUT_MS", "3000"),
            // The gateway and the origin share the test's one-thread runtime, and CI runs
            // several stacks at once on two cores: under a test's 200 parallel requests a
            // 1 s deadline (production's) measured the box, fired, and the edge failed open,
            // which turns a counting test into a no-op (it detects that and fails). No edge
            // test is about this deadline; production's default stays 1 s.
            ("EDGE_REDIS_TIMEOUT_MS", "10000"),
            ("EDGE_SIGNING_KID", crate::edge_signing::EDGE_KID),
            ("EDGE_SIGNING_KEY", crate::edge_signing::EDGE_KEY),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        vars.push((
            "UPSTASH_REDIS_REST_URL".into(),
            stack.gateway.as_ref().map(|g| g.url()).unwrap_or_default(),
        ));
        for (k, v) in edge_vars {
            vars.retain(|(name, _)| name != k);
            vars.push(((*k).to_owned(), (*v).to_owned()));
        }
        stack.edge_vars = vars.clone();
        match start_edge(runtime, &vars).await {
            Ok((process, base)) => {
                stack.edge = Some(process);
                stack.base = base;
                Ok(stack)
            }
            Err(e) => {
                let _ = stack.stop().await;
                Err(e)
            }
        }
    }

    /// Starts (or restarts) the origin on its fixed port, on the same database.
    pub async fn start_origin(&mut self) -> TestResult {
        let overrides: Vec<(&str, &str)> = self
            .origin_overrides
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        // The port was free a moment ago; a restart may race its release: retry briefly.
        let mut last = None;
        for _ in 0..20 {
            match spawn_app_with(self.pool.clone(), &overrides).await {
                Ok(app) => {
                    self.origin = Some(app);
                    return Ok(());
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("origin did not start")))
    }

    /// Replaces the origin's variables for its next start (e.g. another `EDGE_SIGNING_KEYS`
    /// for a key rotation); [`EdgeStack::stop_origin`] and [`EdgeStack::start_origin`] apply
    /// them.
    pub fn set_origin_var(&mut self, name: &str, value: &str) {
        self.origin_overrides.retain(|(k, _)| k != name);
        self.origin_overrides
            .push((name.to_owned(), value.to_owned()));
    }

    /// Starts the edge again with some variables changed (e.g. another signing key): the
    /// old edge process stops first, the new one gets a new port ([`EdgeStack::base`]).
    pub async fn restart_edge(&mut self, changed: &[(&str, &str)]) -> TestResult {
        if let Some(edge) = self.edge.take() {
            edge.stop().await;
        }
        for (k, v) in changed {
            self.edge_vars.retain(|(name, _)| name != k);
            self.edge_vars.push(((*k).to_owned(), (*v).to_owned()));
        }
        let (process, base) = start_edge(self.runtime, &self.edge_vars).await?;
        self.edge = Some(process);
        self.base = base;
        Ok(())
    }

    /// Stops the origin (the edge keeps running).
    pub async fn stop_origin(&mut self) -> TestResult {
        if let Some(app) = self.origin.take() {
            app.stop().await?;
        }
        Ok(())
    }

    /// The running origin.
    pub fn origin(&self) -> TestResult<&TestApp> {
        self.origin.as_ref().context("origin is stopped")
    }

    /// Requests the origin has served so far, excluding `/metrics` itself (Prometheus
    /// `http_requests_total`, summed over routes and statuses).
    pub async fn origin_requests(&self) -> TestResult<u64> {
        let origin = self.origin()?;
        let text = origin
            .client
            .get(format!("{}/metrics", origin.base))
            .send()
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with("http_requests_total{") && !l.contains("route=\"/metrics\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum())
    }

    /// Requests the Upstash gateway has served (rate-limit scripts, cache reads and writes).
    pub fn redis_requests(&self) -> u64 {
        self.gateway
            .as_ref()
            .map_or(0, upstash_gateway::Running::requests_served)
    }

    /// The lines the edge runtime has written to its standard output so far.
    pub fn edge_stdout(&self) -> Vec<String> {
        self.edge
            .as_ref()
            .and_then(|e| e.stdout.lock().ok().map(|l| l.clone()))
            .unwrap_or_default()
    }

    /// The edge's access lines so far: every JSON object with `"target":"access"` in its
    /// standard output (a runtime may prefix the line, e.g. `wasmtime serve`'s `stdout [0] ::`).
    pub fn edge_access_lines(&self) -> Vec<Value> {
        self.edge_stdout()
            .iter()
            .filter_map(|line| {
                let json = &line[line.find('{')?..];
                serde_json::from_str::<Value>(json).ok()
            })
            .filter(|v| v["target"] == "access")
            .collect()
    }

    /// The edge process's id (node running miniflare, or wasmtime).
    pub fn edge_pid(&self) -> Option<u32> {
        self.edge.as_ref().and_then(|e| e.child.id())
    }

    /// Commands the Upstash gateway has run, by upper-case name (`EVALSHA`, `SET`, …).
    pub fn redis_commands(&self) -> std::collections::BTreeMap<String, u64> {
        self.gateway
            .as_ref()
            .map(upstash_gateway::Running::command_counts)
            .unwrap_or_default()
    }

    /// Sends a request to the edge with optional token, JSON body and extra headers.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> TestResult<Reply> {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.context("send to edge")?;
        Reply::read(resp).await
    }

    /// GET through the edge.
    pub async fn get(&self, path: &str, token: Option<&str>) -> TestResult<Reply> {
        self.send(reqwest::Method::GET, path, token, None, &[])
            .await
    }

    /// POST JSON through the edge with an optional Idempotency-Key.
    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: &Value,
        key: Option<&str>,
    ) -> TestResult<Reply> {
        let headers: Vec<(&str, &str)> = key.map(|k| ("idempotency-key", k)).into_iter().collect();
        self.send(reqwest::Method::POST, path, token, Some(body), &headers)
            .await
    }

    /// DELETE through the edge with an optional Idempotency-Key.
    pub async fn delete(
        &self,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
    ) -> TestResult<Reply> {
        let headers: Vec<(&str, &str)> = key.map(|k| ("idempotency-key", k)).into_iter().collect();
        self.send(reqwest::Method::DELETE, path, token, None, &headers)
            .await
    }

    /// Stops the edge, the origin and the gateway; removes the edge's Redis keys.
    pub async fn stop(mut self) -> TestResult {
        if let Some(edge) = self.edge.take() {
            edge.stop().await;
        }
        self.stop_origin().await?;
        if let Some(gw) = self.gateway.take() {
            gw.stop().await;
        }
        let _ =
            crate::test_redis::delete_prefix(&crate::test_redis::shared_url(), &self.edge_prefix)
                .await;
        Ok(())
    }
}

/// Reads a header of a reply as a string.
pub fn header<'r>(reply: &'r Reply, name: &str) -> Option<&'r str> {
    reply.headers.get(name).and_then(|v| v.to_str().ok())
}

/// A TCP proxy in front of the origin that can be told to stop answering: in "hang" mode it
/// accepts connections and never replies (a slow origin, as the edge's timeout sees it) and
/// drops the connections it was forwarding, so a pooled connection cannot slip through.
#[derive(Debug)]
pub struct HangProxy {
    pub addr: std::net::SocketAddr,
    upstream: std::sync::Arc<std::sync::Mutex<Option<std::net::SocketAddr>>>,
    hang: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl HangProxy {
    /// Starts the proxy; it forwards once [`HangProxy::forward_to`] names the origin.
    pub async fn start() -> TestResult<Self> {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let upstream = std::sync::Arc::new(std::sync::Mutex::new(None));
        let hang = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (up, hg, cs) = (upstream.clone(), hang.clone(), conns.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let target = up.lock().ok().and_then(|u| *u);
                let hanging = hg.load(Ordering::SeqCst);
                let conn = tokio::spawn(async move {
                    if hanging {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        return;
                    }
                    let Some(target) = target else { return };
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                if let Ok(mut list) = cs.lock() {
                    list.push(conn.abort_handle());
                }
            }
        });
        Ok(HangProxy {
            addr,
            upstream,
            hang,
            conns,
            task,
        })
    }

    /// The proxy's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Forwards new connections to `base` (`http://127.0.0.1:port`).
    pub fn forward_to(&self, base: &str) -> TestResult {
        let addr: std::net::SocketAddr = base
            .trim_start_matches("http://")
            .parse()
            .context("origin address")?;
        if let Ok(mut u) = self.upstream.lock() {
            *u = Some(addr);
        }
        Ok(())
    }

    /// From now on: accept, never answer; drop the connections being forwarded.
    pub fn hang(&self) {
        self.hang.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut list) = self.conns.lock() {
            for c in list.drain(..) {
                c.abort();
            }
        }
    }
}

impl HangProxy {
    /// Forwards again (after [`HangProxy::hang`]); the hanging connections are dropped.
    pub fn resume(&self) {
        self.hang.store(false, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut list) = self.conns.lock() {
            for c in list.drain(..) {
                c.abort();
            }
        }
    }
}

impl Drop for HangProxy {
    fn drop(&mut self) {
        self.task.abort();
        if let Ok(mut list) = self.conns.lock() {
            for c in list.drain(..) {
                c.abort();
            }
        }
    }
}

/// An origin alone that publishes to the edges' Upstash (the deny list, API keys, cache
/// generations) through a real gateway into the shared Redis, under a key prefix of its own.
#[derive(Debug)]
pub struct PublishingOrigin {
    pub app: TestApp,
    pub gateway: upstash_gateway::Running,
    /// The edges' key prefix the origin publishes under.
    pub edge_prefix: String,
}

impl PublishingOrigin {
    pub async fn spawn(pool: PgPool) -> TestResult<Self> {
        let gateway = upstash_gateway::start(
            tokio::net::TcpListener::bind("127.0.0.1:0").await?,
            &crate::test_redis::shared_url(),
            GATEWAY_TOKEN,
        )
        .await?;
        let edge_prefix = format!("test:edge:{}:", uuid::Uuid::new_v4().simple());
        let app = spawn_app_with(
            pool,
            &[
                ("EDGE_CACHE_REST_URL", gateway.url().as_str()),
                ("EDGE_CACHE_REST_TOKEN", GATEWAY_TOKEN),
                ("EDGE_CACHE_KEY_PREFIX", edge_prefix.as_str()),
            ],
        )
        .await?;
        Ok(PublishingOrigin {
            app,
            gateway,
            edge_prefix,
        })
    }

    /// Stops the origin and the gateway and removes what was published.
    pub async fn stop(self) -> TestResult {
        crate::test_redis::delete_prefix(&crate::test_redis::shared_url(), &self.edge_prefix)
            .await?;
        self.app.stop().await?;
        self.gateway.stop().await;
        Ok(())
    }
}
