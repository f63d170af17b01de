//! An Upstash-REST-compatible gateway in front of a real Redis, for development and tests.
//!
//! The edge speaks Redis only through Upstash's REST API (see `edge/core/src/upstash.rs`).
//! Upstash's own local server cannot be installed here, so this gateway speaks the same
//! protocol to the same Redis the rest of the stack uses — the edge cannot tell the
//! difference, and the tests run against real Redis semantics (Lua scripts, TTLs), not a fake:
//!
//! * `POST /` with a JSON array `["SET","k","v"]` → `{"result": …}` or, when Redis refuses
//!   the command, HTTP 400 with `{"error": "…"}`;
//! * `POST /pipeline` with an array of such arrays → an array of those objects, in order;
//! * `Authorization: Bearer <token>` is required: anything else is 401
//!   `{"error": "Unauthorized"}`, as Upstash answers;
//! * `GET /stats` (not Upstash's; same token) → `{"requests": n, "commands": {"EVALSHA": n, …}}`:
//!   HTTP requests served and commands run by name, so tests and benchmarks can count what
//!   the edge costs in Upstash requests (in process: [`Running::requests_served`] and
//!   [`Running::command_counts`]).
//!
//! Scripts with Upstash's `#!lua flags=allow-key-locking` shebang (as `@upstash/ratelimit`
//! sends) run with that flag removed, which Redis does not know: an `EVALSHA` of the original
//! script's SHA is run as an `EVAL` of the script without it.
//!
//! Result shapes follow Upstash: nil → `null`, integers → numbers, bulk strings → strings,
//! arrays → arrays, simple strings (`OK`) → strings. Arguments may be strings or numbers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use redis::aio::ConnectionManager;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// Shared by every request: a multiplexed, self-reconnecting Redis connection and the token.
#[derive(Clone)]
struct Gateway {
    redis: ConnectionManager,
    token: String,
    /// Authorized HTTP requests served (a test can tell whether the edge called Redis).
    served: Arc<AtomicU64>,
    /// Commands run, by upper-case name (a pipeline counts each of its commands).
    commands: Commands,
    scripts: Scripts,
}

type Commands = Arc<Mutex<BTreeMap<String, u64>>>;

/// Scripts seen with Upstash-only shebang flags: the original's SHA-1 → the script as run.
type Scripts = Arc<Mutex<std::collections::HashMap<String, String>>>;

/// Removes `allow-key-locking` from a `#!lua flags=…` shebang; `None` if there is none.
fn without_upstash_flags(script: &str) -> Option<String> {
    let (first, rest) = script.split_once('\n').unwrap_or((script, ""));
    let flags = first.strip_prefix("#!lua")?.trim().strip_prefix("flags=")?;
    if !flags.split(',').any(|f| f == "allow-key-locking") {
        return None;
    }
    let kept: Vec<&str> = flags
        .split(',')
        .filter(|f| *f != "allow-key-locking" && !f.is_empty())
        .collect();
    let shebang = if kept.is_empty() {
        "#!lua".to_owned()
    } else {
        format!("#!lua flags={}", kept.join(","))
    };
    Some(format!("{shebang}\n{rest}"))
}

/// Rewrites a script command for Redis (see the module docs).
fn upstash_script(scripts: &Scripts, args: &Value) -> Option<Value> {
    let Value::Array(parts) = args else {
        return None;
    };
    let name = parts.first()?.as_str()?.to_ascii_uppercase();
    let body = parts.get(1)?.as_str()?;
    let script = match name.as_str() {
        "EVAL" | "EVAL_RO" => {
            let stripped = without_upstash_flags(body)?;
            let sha = redis::Script::new(body).get_hash().to_owned();
            if let Ok(mut map) = scripts.lock() {
                map.insert(sha, stripped.clone());
            }
            stripped
        }
        "EVALSHA" | "EVALSHA_RO" => scripts
            .lock()
            .ok()?
            .get(&body.to_ascii_lowercase())?
            .clone(),
        _ => return None,
    };
    let mut out = vec![Value::String("EVAL".into()), Value::String(script)];
    out.extend(parts.iter().skip(2).cloned());
    Some(Value::Array(out))
}

fn count(commands: &Commands, args: &Value) {
    let name = match args {
        Value::Array(parts) => parts.first().and_then(Value::as_str).unwrap_or("?"),
        _ => "?",
    };
    if let Ok(mut map) = commands.lock() {
        *map.entry(name.to_ascii_uppercase()).or_insert(0) += 1;
    }
}

/// A running gateway; dropping the handle does not stop it, [`Running::stop`] does.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    served: Arc<AtomicU64>,
    commands: Commands,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Authorized requests (single commands and pipelines) served so far.
    pub fn requests_served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }

    /// Commands run so far, by upper-case name (`EVALSHA`, `SET`, …).
    pub fn command_counts(&self) -> BTreeMap<String, u64> {
        self.commands.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Stops serving and waits for the server task.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

fn to_json(v: redis::Value) -> Value {
    use redis::Value as R;
    match v {
        R::Nil => Value::Null,
        R::Int(i) => json!(i),
        R::BulkString(bytes) => Value::String(String::from_utf8_lossy(&bytes).into_owned()),
        R::SimpleString(s) => Value::String(s),
        R::Okay => Value::String("OK".into()),
        R::Array(items) | R::Set(items) => Value::Array(items.into_iter().map(to_json).collect()),
        R::Double(d) => json!(d.to_string()),
        R::Boolean(b) => json!(i64::from(b)),
        R::Map(pairs) => Value::Array(
            pairs
                .into_iter()
                .flat_map(|(k, v)| [to_json(k), to_json(v)])
                .collect(),
        ),
        other => Value::String(format!("{other:?}")),
    }
}

fn command(args: &Value) -> Result<redis::Cmd, String> {
    let Value::Array(parts) = args else {
        return Err("ERR command must be a JSON array".into());
    };
    let mut parts = parts.iter().map(|p| match p {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err("ERR arguments must be strings or numbers".to_owned()),
    });
    let name = parts
        .next()
        .ok_or_else(|| "ERR empty command".to_owned())??;
    let mut cmd = redis::cmd(&name);
    for part in parts {
        cmd.arg(part?);
    }
    Ok(cmd)
}

async fn run(gw: &Gateway, args: &Value) -> (StatusCode, Value) {
    let mut redis = gw.redis.clone();
    let rewritten = upstash_script(&gw.scripts, args);
    let cmd = match command(rewritten.as_ref().unwrap_or(args)) {
        Ok(cmd) => cmd,
        Err(e) => return (StatusCode::BAD_REQUEST, json!({ "error": e })),
    };
    match cmd.query_async::<redis::Value>(&mut redis).await {
        Ok(v) => (StatusCode::OK, json!({ "result": to_json(v) })),
        Err(e) => {
            // Redis' own error text ("NOSCRIPT No matching script…"), as Upstash relays it.
            let text = match (e.code(), e.detail()) {
                (Some(code), Some(detail)) => format!("{code} {detail}"),
                _ => e.to_string(),
            };
            (StatusCode::BAD_REQUEST, json!({ "error": text }))
        }
    }
}

fn authorized(gw: &Gateway, headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t == gw.token)
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({ "error": "Unauthorized" })),
    )
        .into_response()
}

fn parse(body: &Bytes) -> Result<Value, Box<Response>> {
    serde_json::from_slice(body).map_err(|_| {
        Box::new(
            (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": "ERR failed to parse command" })),
            )
                .into_response(),
        )
    })
}

async fn single(State(gw): State<Gateway>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&gw, &headers) {
        return unauthorized();
    }
    gw.served.fetch_add(1, Ordering::SeqCst);
    let args = match parse(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    count(&gw.commands, &args);
    let (status, value) = run(&gw, &args).await;
    (status, Json(value)).into_response()
}

async fn pipeline(State(gw): State<Gateway>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&gw, &headers) {
        return unauthorized();
    }
    gw.served.fetch_add(1, Ordering::SeqCst);
    let cmds = match parse(&body) {
        Ok(Value::Array(cmds)) => cmds,
        Ok(_) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": "ERR pipeline must be an array of commands" })),
            )
                .into_response()
        }
        Err(r) => return *r,
    };
    let mut out = Vec::with_capacity(cmds.len());
    for cmd in &cmds {
        count(&gw.commands, cmd);
        out.push(run(&gw, cmd).await.1);
    }
    Json(Value::Array(out)).into_response()
}

async fn stats(State(gw): State<Gateway>, headers: HeaderMap) -> Response {
    if !authorized(&gw, &headers) {
        return unauthorized();
    }
    let commands = gw.commands.lock().map(|m| m.clone()).unwrap_or_default();
    Json(json!({
        "requests": gw.served.load(Ordering::SeqCst),
        "commands": commands,
    }))
    .into_response()
}

/// The gateway's routes.
fn router(gw: Gateway) -> Router {
    Router::new()
        .route("/", post(single))
        .route("/pipeline", post(pipeline))
        .route("/stats", get(stats))
        .with_state(gw)
}

/// Connects to `redis_url` and serves on `listener` until stopped.
pub async fn start(listener: TcpListener, redis_url: &str, token: &str) -> anyhow::Result<Running> {
    let client = redis::Client::open(redis_url).context("parse REDIS_URL")?;
    let redis = ConnectionManager::new(client)
        .await
        .context("connect to Redis")?;
    let addr = listener.local_addr().context("gateway address")?;
    let served = Arc::new(AtomicU64::new(0));
    let commands = Commands::default();
    let app = router(Gateway {
        redis,
        token: token.to_owned(),
        served: served.clone(),
        commands: commands.clone(),
        scripts: Scripts::default(),
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "upstash gateway stopped");
        }
    });
    Ok(Running {
        addr,
        served,
        commands,
        stop,
        task,
    })
}
