//! Redis over Upstash's REST protocol, spoken by hand through [`Platform::fetch`].
//!
//! Why by hand: `upstash-redis-rs` 0.1.2 does not build for wasm32 on stable Rust (it needs a
//! nightly feature) and its futures are `Send`-bound, which JavaScript futures are not. The
//! protocol is small: `POST <url>` with a JSON array `["SET","k","v","PX","60000"]` and
//! `Authorization: Bearer <token>` answers `{"result": …}` or `{"error": "…"}`; `POST
//! <url>/pipeline` with an array of such arrays answers an array of those objects, in order,
//! in one round trip (not a transaction: each command succeeds or fails on its own).

use serde_json::Value;

use crate::platform::{FetchError, Outbound, Platform};

/// Why a Redis call failed. The edge degrades on any of these (fails open on rate limits,
/// treats the cache as a miss), so the variants only matter for logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisError {
    #[error("upstash unreachable: {0}")]
    Unreachable(#[from] FetchError),
    #[error("upstash answered HTTP {0}")]
    Http(u16),
    #[error("upstash sent an unreadable body")]
    Body,
    /// Redis itself refused the command (`{"error": "…"}`), e.g. `NOSCRIPT`.
    #[error("redis error: {0}")]
    Command(String),
}

/// One Upstash REST endpoint.
#[derive(Debug, Clone)]
pub struct Upstash<'c> {
    pub url: &'c str,
    pub token: &'c str,
    pub timeout_ms: u64,
}

fn result_of(item: Value) -> Result<Value, RedisError> {
    match item {
        Value::Object(mut map) => {
            if let Some(Value::String(e)) = map.remove("error") {
                return Err(RedisError::Command(e));
            }
            map.remove("result").ok_or(RedisError::Body)
        }
        _ => Err(RedisError::Body),
    }
}

/// A command argument: Upstash takes strings and numbers alike.
pub fn arg(s: impl Into<String>) -> Value {
    Value::String(s.into())
}

impl Upstash<'_> {
    async fn post(&self, p: &impl Platform, path: &str, body: &Value) -> Result<Value, RedisError> {
        let response = p
            .fetch(Outbound {
                method: "POST".into(),
                url: format!("{}{path}", self.url),
                headers: vec![
                    ("authorization".into(), format!("Bearer {}", self.token)),
                    ("content-type".into(), "application/json".into()),
                ],
                body: serde_json::to_vec(body).map_err(|_| RedisError::Body)?,
                timeout_ms: self.timeout_ms,
            })
            .await?;
        // Upstash answers a refused command with 400 and an `{"error"}` body: read it.
        let parsed: Value = serde_json::from_slice(&response.body)
            .map_err(|_| RedisError::Http(response.status))?;
        if response.status >= 500 || response.status == 401 {
            return Err(RedisError::Http(response.status));
        }
        Ok(parsed)
    }

    /// Runs one command.
    pub async fn command(&self, p: &impl Platform, cmd: Vec<Value>) -> Result<Value, RedisError> {
        let reply = self.post(p, "", &Value::Array(cmd)).await?;
        result_of(reply)
    }

    /// Runs several commands in one round trip; one result per command, in order.
    pub async fn pipeline(
        &self,
        p: &impl Platform,
        cmds: Vec<Vec<Value>>,
    ) -> Result<Vec<Result<Value, RedisError>>, RedisError> {
        let body = Value::Array(cmds.into_iter().map(Value::Array).collect());
        match self.post(p, "/pipeline", &body).await? {
            Value::Array(items) => Ok(items.into_iter().map(result_of).collect()),
            other => Err(match result_of(other) {
                Err(e) => e,
                Ok(_) => RedisError::Body,
            }),
        }
    }
}

/// Reads an integer reply (Upstash sends integers as numbers, `GET` values as strings).
pub fn as_u64(v: &Value) -> u64 {
    match v {
        Value::Number(n) => n.as_u64().unwrap_or(0),
        Value::String(s) => s.parse().unwrap_or(0),
        _ => 0,
    }
}
