//! Per-user and per-IP rate limits: one atomic Redis round trip, plus an in-isolate memory of
//! identifiers already blocked.
//!
//! The algorithm is the sliding-window counter of `domain::ratelimit` (two fixed-window counts,
//! the previous one weighted by how much of it still overlaps the sliding window). The Lua
//! script below makes the decision *and* the increment atomic, for every limit of the request
//! at once: it reads each limit's two counters, and only if every limit still has room does it
//! increment every current counter (a request refused by one limit does not consume another's
//! budget, and a client hammering a closed limit does not push its own reset further out). It
//! returns the counts it read; the edge feeds them to `domain::ratelimit::sliding_window`,
//! whose integer formula is the script's, to get the same decision plus the numbers for the
//! `RateLimit-*` and `Retry-After` headers.
//!
//! Windows are numbered by the edge clock (`now / window`), so the counter keys of all edges
//! in the world agree as long as their clocks do (Cloudflare's and NTP-synced hosts' do, to
//! well under the 60 s window).
//!
//! **Blocked cache.** A client that got a 429 is remembered in the isolate until its
//! `Retry-After` passes, and its next requests are refused without a Redis call — a flood from
//! one client costs nothing downstream. Cloudflare keeps an isolate alive across requests;
//! Spin and `wasmtime serve` instantiate per request, where the memory is simply empty and
//! every request asks Redis (still correct, just not free).
//!
//! If Upstash is unreachable the request is let through (fail open) and the failure logged:
//! rate limiting protects capacity, it is not worth an outage.

use std::cell::RefCell;
use std::collections::HashMap;

use domain::ratelimit::{sliding_window, Decision, RateLimit};
use serde_json::Value;
use sha1::{Digest, Sha1};

use crate::upstash::{arg, as_u64, RedisError, Upstash};

/// KEYS: prev₁, curr₁, prev₂, curr₂, … ARGV: window_ms, elapsed_ms, limit₁, limit₂, …
/// Returns prev₁, curr₁, prev₂, curr₂, … as read before this request.
pub const SCRIPT: &str = r"
local w = tonumber(ARGV[1])
local e = tonumber(ARGV[2])
local n = #KEYS / 2
local out = {}
local room = true
for i = 1, n do
  local prev = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
  local curr = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
  local lim = tonumber(ARGV[2 + i])
  if prev * (w - e) + curr * w + w > lim * w then room = false end
  out[2 * i - 1] = prev
  out[2 * i] = curr
end
if room then
  for i = 1, n do
    redis.call('INCR', KEYS[2 * i])
    redis.call('PEXPIRE', KEYS[2 * i], 2 * w)
  end
end
return out
";

/// The script's SHA-1, for `EVALSHA`.
pub fn script_sha() -> String {
    hex::encode(Sha1::digest(SCRIPT.as_bytes()))
}

/// What is being limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject {
    User,
    Ip,
}

impl Subject {
    fn slug(self) -> &'static str {
        match self {
            Subject::User => "user",
            Subject::Ip => "ip",
        }
    }
}

/// One limit to apply to one identifier.
#[derive(Debug, Clone)]
pub struct Check {
    pub subject: Subject,
    pub id: String,
    pub limit: RateLimit,
}

/// The combined outcome: the decision that binds (the blocked one, else the one with the
/// fewest remaining requests).
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub decision: Decision,
    pub limit: RateLimit,
    /// Whether the answer came from the in-isolate blocked cache.
    pub from_memory: bool,
}

/// Identifiers known to be blocked until a time (ms since the epoch), per isolate.
#[derive(Debug, Default)]
pub struct BlockedCache {
    until: RefCell<HashMap<(Subject, String), u64>>,
}

/// Upper bound on remembered identifiers, so a spray of addresses cannot grow the map without
/// limit; expired entries are dropped first, then everything (the cache is an optimisation).
const MAX_BLOCKED: usize = 10_000;

impl BlockedCache {
    fn blocked(&self, check: &Check, now_ms: u64) -> Option<u64> {
        let map = self.until.borrow();
        map.get(&(check.subject, check.id.clone()))
            .copied()
            .filter(|until| *until > now_ms)
    }

    fn remember(&self, check: &Check, until_ms: u64, now_ms: u64) {
        let mut map = self.until.borrow_mut();
        if map.len() >= MAX_BLOCKED {
            map.retain(|_, until| *until > now_ms);
            if map.len() >= MAX_BLOCKED {
                map.clear();
            }
        }
        map.insert((check.subject, check.id.clone()), until_ms);
    }
}

fn key(prefix: &str, check: &Check, window: u64) -> String {
    // Identifiers are hashed into the key: user ids and addresses stay out of Redis key
    // listings, and arbitrary bytes in a `sub` cannot break the key's shape.
    let id = hex::encode(&<sha2::Sha256 as Digest>::digest(check.id.as_bytes())[..12]);
    format!("{prefix}rl:{}:{id}:{window}", check.subject.slug())
}

/// Applies `checks` (all with the same window) at `now_ms`.
pub async fn apply(
    p: &impl crate::platform::Platform,
    redis: &Upstash<'_>,
    prefix: &str,
    blocked: &BlockedCache,
    checks: &[Check],
    extra: Vec<Vec<Value>>,
    now_ms: u64,
) -> Result<(Outcome, Vec<Result<Value, RedisError>>), RedisError> {
    let Some(first) = checks.first() else {
        return Err(RedisError::Body);
    };
    let window_ms = first.limit.window_ms.max(1);
    // Blocked in memory: refuse without a round trip.
    for check in checks {
        if let Some(until) = blocked.blocked(check, now_ms) {
            let decision = Decision {
                allowed: false,
                remaining: 0,
                retry_after_ms: until - now_ms,
                reset_ms: window_ms - now_ms % window_ms,
            };
            let outcome = Outcome {
                decision,
                limit: check.limit,
                from_memory: true,
            };
            return Ok((outcome, Vec::new()));
        }
    }
    let index = now_ms / window_ms;
    let elapsed = now_ms % window_ms;
    let mut keys = Vec::with_capacity(checks.len() * 2);
    for check in checks {
        keys.push(arg(key(prefix, check, index.saturating_sub(1))));
        keys.push(arg(key(prefix, check, index)));
    }
    let mut tail = vec![arg(keys.len().to_string())];
    tail.extend(keys);
    tail.push(arg(window_ms.to_string()));
    tail.push(arg(elapsed.to_string()));
    tail.extend(checks.iter().map(|c| arg(c.limit.limit.to_string())));

    // The script and the caller's extra reads (cache generations) share one round trip.
    let pipeline = |script: Vec<Value>| {
        let mut cmd = script;
        cmd.extend(tail.iter().cloned());
        let mut cmds = vec![cmd];
        cmds.extend(extra.iter().cloned());
        cmds
    };
    let mut results = redis
        .pipeline(p, pipeline(vec![arg("EVALSHA"), arg(script_sha())]))
        .await?;
    if matches!(results.first(), Some(Err(RedisError::Command(e))) if e.starts_with("NOSCRIPT")) {
        // First use on this Redis: send the script itself (which also caches it).
        results = redis
            .pipeline(p, pipeline(vec![arg("EVAL"), arg(SCRIPT)]))
            .await?;
    }
    let mut results = results.into_iter();
    let counts = results.next().ok_or(RedisError::Body)??;
    let counts: Vec<u64> = match counts {
        Value::Array(items) => items.iter().map(as_u64).collect(),
        _ => return Err(RedisError::Body),
    };
    if counts.len() != checks.len() * 2 {
        return Err(RedisError::Body);
    }

    let mut binding: Option<Outcome> = None;
    for (i, check) in checks.iter().enumerate() {
        let decision = sliding_window(&check.limit, counts[2 * i], counts[2 * i + 1], elapsed);
        if !decision.allowed {
            blocked.remember(check, now_ms + decision.retry_after_ms.max(1), now_ms);
        }
        let better = match &binding {
            None => true,
            Some(b) => {
                (b.decision.allowed && !decision.allowed)
                    || (b.decision.allowed == decision.allowed
                        && decision.remaining < b.decision.remaining)
            }
        };
        if better {
            binding = Some(Outcome {
                decision,
                limit: check.limit,
                from_memory: false,
            });
        }
    }
    let outcome = binding.ok_or(RedisError::Body)?;
    Ok((outcome, results.collect()))
}
