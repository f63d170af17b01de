//! Redis helpers for tests: a private `redis-server` a test may kill and restart, and cleanup
//! of one app's keys on the shared server.
//!
//! Tests share the machine's Redis (127.0.0.1:6379) and their databases hold the same demo
//! vehicle ids, so every app gets its own key prefix (`test:<uuid>:`) and removes its keys when
//! it stops. A test that needs to take Redis *down* starts its own server instead.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

/// The server the suite shares, unless `REDIS_URL` says otherwise.
pub fn shared_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Opens a connection with short timeouts (the server may be gone).
pub async fn connect(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url).context("redis url")?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .with_context(|| format!("connect to {url}"))
}

/// The sum of the integer values of every key matching `pattern` (missing: 0): e.g. a
/// limiter's counters across its windows.
pub async fn sum_counters(
    conn: &redis::aio::MultiplexedConnection,
    pattern: &str,
) -> redis::RedisResult<u64> {
    use redis::AsyncCommands;
    let mut conn = conn.clone();
    let keys: Vec<String> = conn.keys(pattern).await?;
    let mut total = 0u64;
    for key in keys {
        total += conn.get::<_, Option<u64>>(key).await?.unwrap_or(0);
    }
    Ok(total)
}

/// A connection to `url` whatever its topology, as the origin makes one: a comma-separated
/// list is a Redis Cluster's seed nodes (`E2E_REDIS_CLUSTER`), routed by slot.
pub async fn connect_any(url: &str) -> anyhow::Result<origin::redis::link::Conn> {
    use origin::redis::link::Conn;
    if url.contains(',') {
        let client = redis::cluster::ClusterClient::builder(url.split(',').map(str::trim))
            .connection_timeout(Duration::from_millis(500))
            .response_timeout(Duration::from_secs(2))
            .build()
            .context("cluster urls")?;
        let conn = client
            .get_async_connection()
            .await
            .with_context(|| format!("connect to the cluster at {url}"))?;
        return Ok(Conn::Cluster(conn));
    }
    let client = redis::Client::open(url).context("redis url")?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    let conn = redis::aio::ConnectionManager::new_with_config(client, config)
        .await
        .with_context(|| format!("connect to {url}"))?;
    Ok(Conn::Node(conn))
}

/// Deletes every key under `prefix`; returns how many. On a cluster (a comma-separated `url`)
/// every master is scanned.
pub async fn delete_prefix(url: &str, prefix: &str) -> anyhow::Result<usize> {
    let mut deleted = 0;
    for node in url.split(',').map(str::trim) {
        let mut conn = connect(node).await?;
        if url.contains(',') {
            let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut conn).await?;
            if !matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master") {
                continue;
            }
        }
        deleted += delete_prefix_on(&mut conn, prefix).await?;
    }
    Ok(deleted)
}

async fn delete_prefix_on(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> anyhow::Result<usize> {
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .context("scan keys")?;
        // One key per DEL (a cluster node refuses a DEL across slots), one round trip.
        if !keys.is_empty() {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.del(key).ignore();
            }
            pipe.query_async::<()>(conn).await.context("delete keys")?;
        }
        deleted += keys.len();
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

/// A private `redis-server` (no persistence) on a fixed port; killed on drop.
#[derive(Debug)]
pub struct TestRedis {
    pub port: u16,
    child: Option<Child>,
}

/// Reads the hash `key` until `ok` holds, for at most 5 s (what an origin publishes to the
/// edges' Upstash arrives in the background, after the change's answer).
pub async fn hash_until(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    ok: impl Fn(&std::collections::HashMap<String, String>) -> bool,
) -> anyhow::Result<std::collections::HashMap<String, String>> {
    let start = std::time::Instant::now();
    loop {
        let hash: std::collections::HashMap<String, String> =
            redis::AsyncCommands::hgetall(conn, key).await?;
        if ok(&hash) {
            return Ok(hash);
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(5),
            "{key} never reached the expected state: {hash:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind a free port")?;
    Ok(listener.local_addr()?.port())
}

impl TestRedis {
    /// Starts a server on a free port and waits until it answers.
    pub async fn start() -> anyhow::Result<Self> {
        let mut server = TestRedis {
            port: free_port()?,
            child: None,
        };
        server.restart().await?;
        Ok(server)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: no goodbye to clients) and waits for it to end.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("kill redis-server")?;
            child.wait().context("wait for redis-server")?;
        }
        Ok(())
    }

    /// (Re)starts the server on the same port, empty, and waits until it answers PING.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill()?;
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start redis-server (is it installed?)")?;
        self.child = Some(child);
        for _ in 0..100 {
            if let Ok(mut conn) = connect(&self.url()).await {
                if redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
                {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("redis-server on port {} did not answer", self.port)
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
