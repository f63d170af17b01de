//! Per-user and per-IP rate limits and the edge-cache read: one Upstash request per cached
//! read, plus an in-isolate memory of identifiers already blocked.
//!
//! The algorithm is the sliding-window counter of `domain::ratelimit` (two fixed-window counts,
//! the previous one weighted by how much of it still overlaps the sliding window). The Lua
//! script below makes the decision *and* the increment atomic, for every limit of the request
//! at once: it reads each limit's two counters (and burst bucket), and only if every limit
//! still has room does it increment every current counter or spend a token (a request refused
//! by one limit does not consume another's budget, and a client hammering a closed limit does
//! not push its own reset further out). It returns what it read; the edge feeds that to
//! `domain::ratelimit::decide`, whose integer formulas are the script's, to get the same
//! decision plus the numbers for the `RateLimit-*` and `Retry-After` headers.
//!
//! **One round trip per cached read.** When the request is allowed, the same script reads the
//! cache generations the route depends on, assembles the entry's key from them (the key embeds
//! the generations, see [`crate::cache`]) and returns the entry: a cache hit is exactly one
//! Upstash request (`EVALSHA`; only the first use on a Redis costs a second one, `NOSCRIPT`
//! → `EVAL`, which also caches the script), a miss costs one more (the store). A refused
//! request reads no generation and no entry. The entry's key is not declared in `KEYS`
//! because it is only known inside the script; Upstash (and a single Redis) accept that, a
//! Redis Cluster would not — every key here is built with the same prefix for that reason.
//!
//! **Burst allowance.** Beside each window a token bucket (`domain::ratelimit::burst`) pays
//! for requests the window refuses, so a client can burst to five times its rate for
//! `EDGE_RATE_LIMIT_BURST_SECS` seconds. The same script reads each limit's bucket (one
//! `HMGET`, in the same `EVALSHA`), lets the window pay when it can and the bucket otherwise,
//! and writes the bucket only when a token is spent; the edge feeds what the script read to
//! `domain::ratelimit::decide` for the same decision and the headers. Still one request.
//!
//! Windows are numbered by the edge clock (`now / window`), so the counter keys of all edges
//! in the world agree as long as their clocks do (Cloudflare's and NTP-synced hosts' do, to
//! well under the 60 s window).
//!
//! **Blocked cache.** A client that got a 429 is remembered in the isolate until its
//! `Retry-After` passes, and its next requests are refused without a Redis call — a flood from
//! one client costs nothing downstream. Cloudflare keeps an isolate alive across requests;
//! the Spin component keeps its edge for as long as the host reuses the instance
//! (`wasmtime serve --max-instance-reuse-count`); a host that instantiates per request starts
//! with an empty memory and asks Redis (still correct, just not free).
//!
//! If Upstash is unreachable the request is let through (fail open) and the failure logged:
//! rate limiting protects capacity, it is not worth an outage.

use std::cell::RefCell;
use std::collections::HashMap;

use domain::ratelimit::{decide, Bucket, Burst, Decision, RateLimit};
use serde_json::Value;
use sha1::{Digest, Sha1};

use crate::upstash::{arg, as_u64, RedisError, Upstash};

/// KEYS: prev₁, curr₁, bucket₁, prev₂, curr₂, bucket₂, …, then the generation keys g₁ … gₖ,
/// then the deny-list hashes d₁ … dₘ (one per region, `domain::deny::hash_key`).
/// ARGV: window_ms, elapsed_ms, now_ms, n (the number of limits), then per limit its limit,
/// burst capacity (0: no burst, the bucket key is not touched) and refill interval in ms,
/// then the cache key's head and tail (an empty head: no cache read), then m and the deny-list
/// fields that would deny this request (`domain::deny::candidates`).
/// First the deny list: if any hash holds a field whose expiry (ms, `0`: none) has not passed,
/// the script returns `{{}, {}, false, field}` and counts nothing.
/// Otherwise it returns `{state, gens, entry}`: per limit prev, curr (as read before this request) and
/// the bucket's tokens and refill clock after refilling (0, 0 without a burst); when every
/// limit had room, the generations (`"0"` for a missing one) and the entry stored under
/// `head .. concat(gens, ".") .. tail` (nil when absent or when no read was asked for).
///
/// The bucket is `domain::ratelimit::Bucket` (a hash, `t` tokens and `r` the refill clock;
/// no key is a full bucket); a request the window refuses spends a token, and only then is
/// the bucket written, with an expiry at the moment it would be full again. Timestamps are
/// 13-digit integers: exact in Lua's doubles and in `%.14g`, the format numbers are sent to
/// Redis in.
pub const SCRIPT: &str = r"
local w = tonumber(ARGV[1])
local e = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local m = tonumber(ARGV[7 + 3 * n] or '0')
local ng = #KEYS - m
if m > 0 and #ARGV > 7 + 3 * n then
  local fields = {}
  for i = 8 + 3 * n, #ARGV do fields[#fields + 1] = ARGV[i] end
  for j = ng + 1, #KEYS do
    local vals = redis.call('HMGET', KEYS[j], unpack(fields))
    for i = 1, #fields do
      if vals[i] then
        local t = tonumber(vals[i])
        if t and (t == 0 or t > now) then return {{}, {}, false, fields[i]} end
      end
    end
  end
end
local out = {}
local pay = {}
local room = true
for i = 1, n do
  local lim = tonumber(ARGV[2 + 3 * i])
  local cap = tonumber(ARGV[3 + 3 * i])
  local every = tonumber(ARGV[4 + 3 * i])
  local prev = tonumber(redis.call('GET', KEYS[3 * i - 2]) or '0')
  local curr = tonumber(redis.call('GET', KEYS[3 * i - 1]) or '0')
  local tokens, at = 0, 0
  if cap > 0 then
    local b = redis.call('HMGET', KEYS[3 * i], 't', 'r')
    tokens, at = cap, now
    if b[1] and b[2] then
      tokens, at = tonumber(b[1]), tonumber(b[2])
      local k = 0
      if now > at then k = math.floor((now - at) / every) end
      tokens = math.min(cap, tokens + k)
      if tokens >= cap then at = now else at = at + k * every end
    end
  end
  if prev * (w - e) + curr * w + w <= lim * w then
    pay[i] = 1
  elseif tokens > 0 then
    pay[i] = 2
  else
    room = false
  end
  out[4 * i - 3] = prev
  out[4 * i - 2] = curr
  out[4 * i - 1] = tokens
  out[4 * i] = at
end
if not room then return {out, {}, false} end
for i = 1, n do
  if pay[i] == 1 then
    redis.call('INCR', KEYS[3 * i - 1])
    redis.call('PEXPIRE', KEYS[3 * i - 1], 2 * w)
  else
    local cap = tonumber(ARGV[3 + 3 * i])
    local every = tonumber(ARGV[4 + 3 * i])
    local left = out[4 * i - 1] - 1
    local at = out[4 * i]
    redis.call('HSET', KEYS[3 * i], 't', left, 'r', at)
    redis.call('PEXPIRE', KEYS[3 * i], math.max(1, at + (cap - left) * every - now))
  end
end
local gens = {}
for j = 3 * n + 1, ng do
  gens[#gens + 1] = redis.call('GET', KEYS[j]) or '0'
end
local entry = false
local head = ARGV[5 + 3 * n]
if head and head ~= '' then
  entry = redis.call('GET', head .. table.concat(gens, '.') .. ARGV[6 + 3 * n])
end
return {out, gens, entry}
";

/// The script's SHA-1, for `EVALSHA`: computed once per isolate or instance.
pub fn script_sha() -> &'static str {
    static SHA: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SHA.get_or_init(|| hex::encode(Sha1::digest(SCRIPT.as_bytes())))
}

/// A cache read to do in the rate-limit round trip: the generation keys the route depends
/// on, and the key around them.
#[derive(Debug, Clone)]
pub struct CacheRead {
    pub gen_keys: Vec<String>,
    pub key: crate::cache::KeyParts,
}

/// The deny-list lookup riding on the same script: each region's hash, and the fields that
/// would deny this request (`domain::deny::candidates`). Empty: no lookup.
#[derive(Debug, Clone, Default)]
pub struct DenyRead {
    pub keys: Vec<String>,
    pub fields: Vec<String>,
}

/// What the cache read found: the generations (as stored, `"0"` when missing), the entry's
/// key they give, and the entry's text, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheFound {
    pub gens: Vec<String>,
    pub key: String,
    pub entry: Option<String>,
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
    /// Its burst allowance (`domain::ratelimit::burst`); `None`: the window alone.
    pub burst: Option<Burst>,
}

/// The combined outcome: the decision that binds (the blocked one, else the one with the
/// fewest remaining requests).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub decision: Decision,
    pub limit: RateLimit,
    pub burst: Option<Burst>,
    /// Whether the answer came from the in-isolate blocked cache.
    pub from_memory: bool,
    /// The deny-list field that refused the request (`n:<network>` or `u:<user>`): the
    /// answer is then 403 whatever the limits say.
    pub denied: Option<String>,
}

/// Identifiers known to be blocked until a time (ms since the epoch), per isolate.
#[derive(Debug, Default)]
pub struct BlockedCache {
    until: RefCell<HashMap<(Subject, String), u64>>,
    /// Deny-list fields seen to deny, until when (ms). Kept for [`DENIED_MEMORY_MS`] only, so
    /// an entry ops remove stops refusing within that time.
    denied: RefCell<HashMap<String, u64>>,
}

/// How long the isolate remembers a denying field: a denied client's flood costs no Upstash
/// request, and a removal reaches every isolate within this time.
pub const DENIED_MEMORY_MS: u64 = 3_000;

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

    fn denied_field(&self, fields: &[String], now_ms: u64) -> Option<String> {
        let map = self.denied.borrow();
        if map.is_empty() {
            return None;
        }
        fields
            .iter()
            .find(|f| map.get(*f).is_some_and(|until| *until > now_ms))
            .cloned()
    }

    fn remember_denied(&self, field: &str, now_ms: u64) {
        let mut map = self.denied.borrow_mut();
        if map.len() >= MAX_BLOCKED {
            map.retain(|_, until| *until > now_ms);
            if map.len() >= MAX_BLOCKED {
                map.clear();
            }
        }
        map.insert(field.to_owned(), now_ms + DENIED_MEMORY_MS);
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

fn hashed_id(check: &Check) -> String {
    // Identifiers are hashed into the key: user ids and addresses stay out of Redis key
    // listings, and arbitrary bytes in a `sub` cannot break the key's shape.
    hex::encode(&<sha2::Sha256 as Digest>::digest(check.id.as_bytes())[..12])
}

fn key(prefix: &str, check: &Check, window: u64) -> String {
    format!(
        "{prefix}rl:{}:{}:{window}",
        check.subject.slug(),
        hashed_id(check)
    )
}

/// The burst bucket's key: one per identifier, not per window.
fn bucket_key(prefix: &str, check: &Check) -> String {
    format!("{prefix}rlb:{}:{}", check.subject.slug(), hashed_id(check))
}

/// The script's command for `checks` (all with the same window) at `now_ms`:
/// `EVALSHA sha numkeys KEYS… ARGV…` (see [`SCRIPT`]). Public so that a test can run it
/// against a real Redis and hold the script to `domain::ratelimit::decide`.
pub fn command(
    prefix: &str,
    checks: &[Check],
    read: Option<&CacheRead>,
    deny: &DenyRead,
    now_ms: u64,
) -> Vec<Value> {
    let window_ms = checks.first().map_or(1, |c| c.limit.window_ms.max(1));
    let index = now_ms / window_ms;
    let elapsed = now_ms % window_ms;
    let gen_keys = read.map_or(&[][..], |r| &r.gen_keys[..]);
    // No field, no lookup: the hashes are not read.
    let deny_keys = if deny.fields.is_empty() {
        &[][..]
    } else {
        &deny.keys[..]
    };
    let key_count = checks.len() * 3 + gen_keys.len() + deny_keys.len();
    // EVALSHA sha numkeys KEYS… ARGV…
    let mut cmd = Vec::with_capacity(3 + key_count + 7 + 3 * checks.len() + deny.fields.len());
    cmd.push(arg("EVALSHA"));
    cmd.push(arg(script_sha()));
    cmd.push(arg(key_count.to_string()));
    for check in checks {
        cmd.push(arg(key(prefix, check, index.saturating_sub(1))));
        cmd.push(arg(key(prefix, check, index)));
        cmd.push(arg(bucket_key(prefix, check)));
    }
    cmd.extend(gen_keys.iter().map(|k| arg(k.as_str())));
    cmd.extend(deny_keys.iter().map(|k| arg(k.as_str())));
    cmd.push(arg(window_ms.to_string()));
    cmd.push(arg(elapsed.to_string()));
    cmd.push(arg(now_ms.to_string()));
    cmd.push(arg(checks.len().to_string()));
    for check in checks {
        let (capacity, refill_ms) = check.burst.map_or((0, 1), |b| (b.capacity, b.refill_ms));
        cmd.push(arg(check.limit.limit.to_string()));
        cmd.push(arg(capacity.to_string()));
        cmd.push(arg(refill_ms.to_string()));
    }
    match read {
        Some(r) => {
            cmd.push(arg(r.key.head.as_str()));
            cmd.push(arg(r.key.tail.as_str()));
        }
        None => {
            cmd.push(arg(""));
            cmd.push(arg(""));
        }
    }
    cmd.push(arg(deny_keys.len().to_string()));
    if !deny_keys.is_empty() {
        cmd.extend(deny.fields.iter().map(|f| arg(f.as_str())));
    }
    cmd
}

/// Applies the deny list and `checks` (all with the same window) at `now_ms` and, when they
/// allow the request, does `read` in the same Upstash request.
#[allow(clippy::too_many_arguments)]
pub async fn apply(
    p: &impl crate::platform::Platform,
    redis: &Upstash<'_>,
    prefix: &str,
    blocked: &BlockedCache,
    checks: &[Check],
    read: Option<&CacheRead>,
    deny: &DenyRead,
    now_ms: u64,
) -> Result<(Outcome, Option<CacheFound>), RedisError> {
    let Some(first) = checks.first() else {
        return Err(RedisError::Body);
    };
    let window_ms = first.limit.window_ms.max(1);
    let denied = |field: String, from_memory: bool| Outcome {
        decision: Decision {
            allowed: false,
            remaining: 0,
            retry_after_ms: 0,
            reset_ms: window_ms - now_ms % window_ms,
        },
        limit: first.limit,
        burst: first.burst,
        from_memory,
        denied: Some(field),
    };
    // Denied a moment ago: refuse without a round trip.
    if let Some(field) = blocked.denied_field(&deny.fields, now_ms) {
        return Ok((denied(field, true), None));
    }
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
                burst: check.burst,
                from_memory: true,
                denied: None,
            };
            return Ok((outcome, None));
        }
    }
    let mut cmd = command(prefix, checks, read, deny, now_ms);
    let reply = match redis.command(p, cmd.clone()).await {
        Err(RedisError::Command(e)) if e.starts_with("NOSCRIPT") => {
            // First use on this Redis: send the script itself (which also caches it).
            cmd[0] = arg("EVAL");
            cmd[1] = arg(SCRIPT);
            redis.command(p, cmd).await?
        }
        other => other?,
    };
    let Value::Array(parts) = reply else {
        return Err(RedisError::Body);
    };
    if let Some(Value::String(field)) = parts.get(3) {
        blocked.remember_denied(field, now_ms);
        return Ok((denied(field.clone(), false), None));
    }
    let mut parts = parts.into_iter();
    let state: Vec<u64> = match parts.next() {
        Some(Value::Array(items)) => items.iter().map(as_u64).collect(),
        _ => return Err(RedisError::Body),
    };
    if state.len() != checks.len() * 4 {
        return Err(RedisError::Body);
    }

    // The script's decision, again, with the numbers for the headers: the same rule
    // (`domain::ratelimit::decide`) on the state the script read.
    let mut binding: Option<Outcome> = None;
    for (check, s) in checks.iter().zip(state.chunks_exact(4)) {
        let bucket = check.burst.map(|_| Bucket {
            tokens: s[2],
            refilled_at_ms: s[3],
        });
        let decision = decide(
            &check.limit,
            check.burst.as_ref(),
            s[0],
            s[1],
            now_ms,
            bucket,
        )
        .decision;
        if !decision.allowed {
            blocked.remember(check, now_ms + decision.retry_after_ms.max(1), now_ms);
        }
        // The binding limit: a refusal over an allowance (of two refusals the later retry),
        // else the fewest remaining.
        let better = match &binding {
            None => true,
            Some(b) => match (b.decision.allowed, decision.allowed) {
                (true, false) => true,
                (false, false) => decision.retry_after_ms > b.decision.retry_after_ms,
                (true, true) => decision.remaining < b.decision.remaining,
                (false, true) => false,
            },
        };
        if better {
            binding = Some(Outcome {
                decision,
                limit: check.limit,
                burst: check.burst,
                from_memory: false,
                denied: None,
            });
        }
    }
    let outcome = binding.ok_or(RedisError::Body)?;
    let found = match (read, outcome.decision.allowed, parts.next(), parts.next()) {
        (Some(r), true, Some(Value::Array(gens)), entry) => {
            let gens: Vec<String> = gens
                .into_iter()
                .map(|g| match g {
                    Value::String(s) => s,
                    other => as_u64(&other).to_string(),
                })
                .collect();
            if gens.len() != r.gen_keys.len() {
                return Err(RedisError::Body);
            }
            let entry = match entry {
                Some(Value::String(s)) => Some(s),
                _ => None,
            };
            Some(CacheFound {
                key: crate::cache::key(&r.key, &gens),
                gens,
                entry,
            })
        }
        _ => None,
    };
    Ok((outcome, found))
}
