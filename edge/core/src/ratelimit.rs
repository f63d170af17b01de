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
//! **Across regions.** Each region's edges count in their own Upstash database. With
//! `EDGE_SHARE_LIMITS=true` the script also counts each spend in the region's outbox, which
//! the region's origin copies to the other regions' databases every 100 ms, and the limiter's
//! clock runs a little behind in each later region (`domain::ratelimit::shared` has the why
//! and the bound on the overshoot). Still one request.
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

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;

use domain::api_key::{KeyRefusal, Plan, Published};
use domain::ratelimit::{decide, Bucket, Burst, Decision, RateLimit};
use serde_json::Value;
use sha1::{Digest, Sha1};

use crate::upstash::{arg, as_u64, RedisError, Upstash};

/// KEYS: prev₁, curr₁, bucket₁, prev₂, curr₂, bucket₂, …, then the generation keys g₁ … gₖ,
/// then the deny-list hashes d₁ … dₘ (one per region, `domain::deny::hash_key`), then the API
/// key hashes a₁ … aₐ (one per region, `domain::api_key::hash_key`; none without a key).
///
/// ARGV: now_ms, n (the number of limits), then per limit its limit, burst capacity (0: no
/// burst, the bucket key is not touched), refill interval in ms, window in ms and elapsed ms
/// of the current window; then the cache key's head and tail (an empty head: no cache read);
/// then m, f and the f deny-list fields that would deny this request
/// (`domain::deny::candidates`); then a, the presented key's hash and the request's origin;
/// then, when limits are shared across regions, the outbox's key, the length of the key
/// prefix and the outbox's lifetime in ms ([`Outbox`]; absent or empty: not shared).
///
/// 1. The deny list: the fields sent, plus `k:<key id>` when a presented key's plan (below)
///    is found. If any hash holds one whose expiry (ms, `0`: none) has not passed, the script
///    returns `{{}, {}, false, field, false, plan}` and counts nothing.
/// 2. The API key, when one is presented: its plan (`domain::api_key::Published`, the first
///    hash that has it, read before the deny list; also returned with a denial, so the edge
///    learns the key's id and remembers a denied key). Unknown, revoked, expired or used from an
///    origin it does not allow:
///    `{{}, {}, false, false, word, plan}` (`domain::api_key::KeyRefusal::word`), nothing
///    counted. Otherwise the last two limits are the key's per-minute (with its burst) and
///    per-day limits, taken from the plan (the edge sends placeholders: it may not know the
///    plan yet).
/// 3. The limits: `{state, gens, entry, false, false, plan}`: per limit prev, curr (as read
///    before this request) and the bucket's tokens and refill clock after refilling (0, 0
///    without a burst); when every limit had room, the generations (`"0"` for a missing one)
///    and the entry stored under `head .. concat(gens, ".") .. tail` (nil when absent or when
///    no read was asked for); `plan` is the key's (nil without a key).
///
/// 4. When the limits are shared across regions, every spend (a counter incremented, a token
///    taken) is also counted in the outbox, one field per key (`domain::ratelimit::shared`):
///    the region's origin copies them to the other regions' databases.
///
/// The bucket is `domain::ratelimit::Bucket` (a hash, `t` tokens and `r` the refill clock;
/// no key is a full bucket); a request the window refuses spends a token, and only then is
/// the bucket written, with an expiry at the moment it would be full again. Timestamps are
/// 13-digit integers and every product below stays under 2⁵³ (`domain::api_key` bounds a
/// day's limit for that): exact in Lua's doubles and in `%.14g`, the format numbers are sent
/// to Redis in.
pub const SCRIPT: &str = r"
local now = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local a = 3 + 5 * n
local m = tonumber(ARGV[a + 2])
local f = tonumber(ARGV[a + 3])
local ka = tonumber(ARGV[a + 4 + f])
local ng = #KEYS - 3 * n - m - ka
local plan = false
local p = {}
if ka > 0 then
  local field = ARGV[a + 5 + f]
  for j = #KEYS - ka + 1, #KEYS do
    plan = redis.call('HGET', KEYS[j], field)
    if plan then break end
  end
  if plan then
    for word in string.gmatch(plan, '%S+') do p[#p + 1] = word end
  end
end
local fields = {}
for i = 1, f do fields[i] = ARGV[a + 3 + i] end
if p[2] then fields[#fields + 1] = 'k:' .. p[2] end
if m > 0 and #fields > 0 then
  for j = 3 * n + ng + 1, 3 * n + ng + m do
    local vals = redis.call('HMGET', KEYS[j], unpack(fields))
    for i = 1, #fields do
      if vals[i] then
        local t = tonumber(vals[i])
        if t and (t == 0 or t > now) then return {{}, {}, false, fields[i], false, plan} end
      end
    end
  end
end
local L = {}
for i = 1, n do
  local b = 3 + 5 * (i - 1)
  L[i] = {tonumber(ARGV[b]), tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]),
          tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])}
end
if ka > 0 then
  if not plan then return {{}, {}, false, false, 'unknown', false} end
  if p[8] ~= '0' then return {{}, {}, false, false, 'revoked', plan} end
  local exp = tonumber(p[7])
  if exp > 0 and exp <= now then return {{}, {}, false, false, 'expired', plan} end
  if #p > 9 then
    local origin = ARGV[a + 6 + f]
    local ok = false
    for i = 10, #p do if p[i] == origin then ok = true end end
    if not ok then return {{}, {}, false, false, 'origin', plan} end
  end
  L[n - 1][1], L[n - 1][2], L[n - 1][3] = tonumber(p[3]), tonumber(p[4]), tonumber(p[5])
  L[n][1], L[n][2], L[n][3] = tonumber(p[6]), 0, 1
end
local out = {}
local pay = {}
local room = true
for i = 1, n do
  local lim, cap, every, w, e = L[i][1], L[i][2], L[i][3], L[i][4], L[i][5]
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
if not room then return {out, {}, false, false, false, plan} end
local box = ARGV[a + 7 + f]
if box == '' then box = nil end
local plen = tonumber(ARGV[a + 8 + f] or '0')
for i = 1, n do
  if pay[i] == 1 then
    redis.call('INCR', KEYS[3 * i - 1])
    redis.call('PEXPIRE', KEYS[3 * i - 1], 2 * L[i][4])
    if box then
      redis.call('HINCRBY', box, 'w ' .. (2 * L[i][4]) .. ' 0 ' .. string.sub(KEYS[3 * i - 1], plen + 1), 1)
    end
  else
    local cap, every = L[i][2], L[i][3]
    local left = out[4 * i - 1] - 1
    local at = out[4 * i]
    redis.call('HSET', KEYS[3 * i], 't', left, 'r', at)
    redis.call('PEXPIRE', KEYS[3 * i], math.max(1, at + (cap - left) * every - now))
    if box then
      redis.call('HINCRBY', box, 'b ' .. cap .. ' ' .. every .. ' ' .. string.sub(KEYS[3 * i], plen + 1), 1)
    end
  end
end
if box and redis.call('PTTL', box) < 0 then redis.call('PEXPIRE', box, ARGV[a + 9 + f]) end
local gens = {}
for j = 3 * n + 1, 3 * n + ng do
  gens[#gens + 1] = redis.call('GET', KEYS[j]) or '0'
end
local entry = false
local head = ARGV[a]
if head and head ~= '' then
  entry = redis.call('GET', head .. table.concat(gens, '.') .. ARGV[a + 1])
end
return {out, gens, entry, false, false, plan}
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

/// An API key presented with the request (`X-Api-Key`): each region's key hash, the secret's
/// hash (`domain::api_key::secret_hash`) and the request's `Origin` (empty: none).
#[derive(Debug, Clone)]
pub struct KeyRead {
    pub keys: Vec<String>,
    pub hash: String,
    pub origin: String,
}

/// Where the script counts what it spends for the other regions (`EDGE_SHARE_LIMITS`,
/// `domain::ratelimit::shared`): this region's outbox and the key prefix to leave out of
/// the fields.
#[derive(Debug, Clone)]
pub struct Outbox {
    pub key: String,
    pub prefix_len: usize,
}

impl Outbox {
    /// The outbox of the edges of `region` whose keys start with `prefix`.
    pub fn new(prefix: &str, region: domain::region::Region) -> Self {
        Outbox {
            key: domain::ratelimit::shared::outbox_key(prefix, region),
            prefix_len: prefix.len(),
        }
    }

    /// Appends the script's outbox arguments to a [`command`].
    pub fn append_to(&self, cmd: &mut Vec<Value>) {
        cmd.push(arg(self.key.as_str()));
        cmd.push(arg(self.prefix_len.to_string()));
        cmd.push(arg(domain::ratelimit::shared::OUTBOX_TTL_MS.to_string()));
    }
}

/// The key's two checks, appended after the request's others: its per-minute limit (with its
/// burst) and its per-day limit. Without the plan (not yet seen by this isolate) the limits
/// are placeholders: the script takes the real ones from the plan it reads, and so does
/// [`apply`] from the plan the script returns.
pub fn key_checks(hash: &str, plan: Option<&Plan>) -> [Check; 2] {
    let plan = plan.copied().unwrap_or(Plan {
        per_minute: 1,
        per_day: 1,
        burst_secs: 0,
    });
    [
        Check {
            subject: Subject::Key,
            id: hash.to_owned(),
            limit: plan.minute(),
            burst: plan.burst(),
        },
        Check {
            subject: Subject::KeyDay,
            id: hash.to_owned(),
            limit: plan.day(),
            burst: None,
        },
    ]
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
    /// An API key's per-minute limit (by the secret's hash).
    Key,
    /// An API key's per-day limit.
    KeyDay,
}

impl Subject {
    fn slug(self) -> &'static str {
        match self {
            Subject::User => "user",
            Subject::Ip => "ip",
            Subject::Key => "key",
            Subject::KeyDay => "keyday",
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
    /// Why the presented API key cannot be used, if it cannot (nothing was counted).
    pub key_refused: Option<KeyRefusal>,
    /// The presented key, as published, when the script read it.
    pub key: Option<Published>,
}

/// Identifiers known to be blocked until a time (ms since the epoch), per isolate.
#[derive(Debug, Default)]
pub struct BlockedCache {
    until: RefCell<HashMap<(Subject, String), u64>>,
    /// Deny-list fields seen to deny, until when (ms). Kept for [`DENIED_MEMORY_MS`] only, so
    /// an entry ops remove stops refusing within that time.
    denied: RefCell<HashMap<String, u64>>,
    /// API keys (by hash) seen refused, with why and until when (ms): kept for
    /// [`DENIED_MEMORY_MS`], so a flood of bad keys costs nothing and a new key works soon.
    refused_keys: RefCell<HashMap<String, (KeyRefusal, u64)>>,
    /// API keys' plans as last read (by hash), so a key blocked in memory is answered with
    /// its own limits in the headers. Only ever a hint: the script reads the plan each time.
    plans: RefCell<HashMap<String, Published>>,
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

    fn refused_key(&self, hash: &str, now_ms: u64) -> Option<KeyRefusal> {
        let map = self.refused_keys.borrow();
        map.get(hash)
            .filter(|(_, until)| *until > now_ms)
            .map(|(why, _)| *why)
    }

    fn remember_refused_key(&self, hash: &str, why: KeyRefusal, now_ms: u64) {
        let mut map = self.refused_keys.borrow_mut();
        if map.len() >= MAX_BLOCKED {
            map.retain(|_, (_, until)| *until > now_ms);
            if map.len() >= MAX_BLOCKED {
                map.clear();
            }
        }
        map.insert(hash.to_owned(), (why, now_ms + DENIED_MEMORY_MS));
    }

    fn plan(&self, hash: &str) -> Option<Plan> {
        self.plans.borrow().get(hash).map(|p| p.plan)
    }

    /// The deny-list field of a key seen before (`k:<key id>`), if its plan was read.
    fn key_field(&self, hash: &str) -> Option<String> {
        self.plans
            .borrow()
            .get(hash)
            .map(|p| format!("{}{}", domain::deny::KEY_FIELD_PREFIX, p.key_id))
    }

    fn remember_plan(&self, hash: &str, published: &Published) {
        let mut map = self.plans.borrow_mut();
        if map.len() >= MAX_BLOCKED {
            map.clear();
        }
        map.insert(hash.to_owned(), published.clone());
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
        // A key is remembered briefly whatever its wait: its revocation (a 401) must reach
        // every isolate within seconds, not after a day's window.
        let until_ms = match check.subject {
            Subject::Key | Subject::KeyDay => until_ms.min(now_ms + DENIED_MEMORY_MS),
            _ => until_ms,
        };
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

fn counter_key(prefix: &str, check: &Check, window: u64) -> String {
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

/// The script's command for `checks` at `now_ms`: `EVALSHA sha numkeys KEYS… ARGV…` (see
/// [`SCRIPT`]). With a `key`, the last two checks are its [`key_checks`]. Public so that a test
/// can run it against a real Redis and hold the script to `domain::ratelimit::decide`.
pub fn command(
    prefix: &str,
    checks: &[Check],
    read: Option<&CacheRead>,
    deny: &DenyRead,
    key: Option<&KeyRead>,
    now_ms: u64,
) -> Vec<Value> {
    let gen_keys = read.map_or(&[][..], |r| &r.gen_keys[..]);
    // No field (and no key, whose id may be denied), no lookup: the hashes are not read.
    let deny_keys = if deny.fields.is_empty() && key.is_none() {
        &[][..]
    } else {
        &deny.keys[..]
    };
    let key_keys = key.map_or(&[][..], |k| &k.keys[..]);
    let key_count = checks.len() * 3 + gen_keys.len() + deny_keys.len() + key_keys.len();
    // EVALSHA sha numkeys KEYS… ARGV…
    let mut cmd = Vec::with_capacity(3 + key_count + 10 + 5 * checks.len() + deny.fields.len());
    cmd.push(arg("EVALSHA"));
    cmd.push(arg(script_sha()));
    cmd.push(arg(key_count.to_string()));
    for check in checks {
        let index = now_ms / check.limit.window_ms.max(1);
        cmd.push(arg(counter_key(prefix, check, index.saturating_sub(1))));
        cmd.push(arg(counter_key(prefix, check, index)));
        cmd.push(arg(bucket_key(prefix, check)));
    }
    cmd.extend(gen_keys.iter().map(|k| arg(k.as_str())));
    cmd.extend(deny_keys.iter().map(|k| arg(k.as_str())));
    cmd.extend(key_keys.iter().map(|k| arg(k.as_str())));
    cmd.push(arg(now_ms.to_string()));
    cmd.push(arg(checks.len().to_string()));
    for check in checks {
        let (capacity, refill_ms) = check.burst.map_or((0, 1), |b| (b.capacity, b.refill_ms));
        let window_ms = check.limit.window_ms.max(1);
        cmd.push(arg(check.limit.limit.to_string()));
        cmd.push(arg(capacity.to_string()));
        cmd.push(arg(refill_ms.to_string()));
        cmd.push(arg(window_ms.to_string()));
        cmd.push(arg((now_ms % window_ms).to_string()));
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
    cmd.push(arg(deny.fields.len().to_string()));
    cmd.extend(deny.fields.iter().map(|f| arg(f.as_str())));
    cmd.push(arg(key_keys.len().to_string()));
    cmd.push(arg(key.map_or("", |k| k.hash.as_str())));
    cmd.push(arg(key.map_or("", |k| k.origin.as_str())));
    cmd
}

/// Applies the deny list, the presented API key (`key`: its plan's limits join `checks`) and
/// `checks` at `now_ms` and, when they allow the request, does `read` in the same Upstash
/// request; with an `outbox`, what it spends is shared with the other regions.
#[allow(clippy::too_many_arguments)]
pub async fn apply(
    p: &impl crate::platform::Platform,
    redis: &Upstash<'_>,
    prefix: &str,
    outbox: Option<&Outbox>,
    blocked: &BlockedCache,
    checks: &[Check],
    read: Option<&CacheRead>,
    deny: &DenyRead,
    key: Option<&KeyRead>,
    now_ms: u64,
) -> Result<(Outcome, Option<CacheFound>), RedisError> {
    let Some(first) = checks.first() else {
        return Err(RedisError::Body);
    };
    let window_ms = first.limit.window_ms.max(1);
    let refused = |denied: Option<String>,
                   key_refused: Option<KeyRefusal>,
                   key: Option<Published>,
                   from_memory: bool| Outcome {
        decision: Decision {
            allowed: false,
            remaining: 0,
            retry_after_ms: 0,
            reset_ms: window_ms - now_ms % window_ms,
        },
        limit: first.limit,
        burst: first.burst,
        from_memory,
        denied,
        key_refused,
        key,
    };
    // Denied a moment ago (by the request's own fields, or a key seen before by its id):
    // refuse without a round trip.
    if let Some(field) = blocked.denied_field(&deny.fields, now_ms).or_else(|| {
        let field = key.and_then(|k| blocked.key_field(&k.hash))?;
        blocked.denied_field(std::slice::from_ref(&field), now_ms)
    }) {
        return Ok((refused(Some(field), None, None, true), None));
    }
    // A key refused a moment ago: the same.
    if let Some(why) = key.and_then(|k| blocked.refused_key(&k.hash, now_ms)) {
        return Ok((refused(None, Some(why), None, true), None));
    }
    // The request's checks, and the key's after them (copied only when there is a key).
    let mut all: Cow<'_, [Check]> = Cow::Borrowed(checks);
    if let Some(k) = key {
        let mut with_key = checks.to_vec();
        with_key.extend(key_checks(&k.hash, blocked.plan(&k.hash).as_ref()));
        all = Cow::Owned(with_key);
    }
    // Blocked in memory: refuse without a round trip.
    for check in all.iter() {
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
                key_refused: None,
                key: None,
            };
            return Ok((outcome, None));
        }
    }
    let mut cmd = command(prefix, &all, read, deny, key, now_ms);
    if let Some(outbox) = outbox {
        outbox.append_to(&mut cmd);
    }
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
    let published = match parts.get(5) {
        Some(Value::String(plan)) => Some(Published::decode(plan).ok_or(RedisError::Body)?),
        _ => None,
    };
    if let Some(Value::String(field)) = parts.get(3) {
        // A denied key's plan names its id: its next requests are refused from memory too.
        if let (Some(k), Some(p)) = (key, published.as_ref()) {
            blocked.remember_plan(&k.hash, p);
        }
        blocked.remember_denied(field, now_ms);
        return Ok((refused(Some(field.clone()), None, None, false), None));
    }
    if let (Some(k), Some(Value::String(word))) = (key, parts.get(4)) {
        let why = KeyRefusal::from_word(word).ok_or(RedisError::Body)?;
        blocked.remember_refused_key(&k.hash, why, now_ms);
        return Ok((refused(None, Some(why), published, false), None));
    }
    if let Some(k) = key {
        // The key's limits as the script applied them: from the plan it read.
        let published = published.as_ref().ok_or(RedisError::Body)?;
        blocked.remember_plan(&k.hash, published);
        let all = all.to_mut();
        let n = all.len();
        let [minute, day] = key_checks(&k.hash, Some(&published.plan));
        all[n - 2] = minute;
        all[n - 1] = day;
    }
    let mut parts = parts.into_iter();
    let state: Vec<u64> = match parts.next() {
        Some(Value::Array(items)) => items.iter().map(as_u64).collect(),
        _ => return Err(RedisError::Body),
    };
    if state.len() != all.len() * 4 {
        return Err(RedisError::Body);
    }

    // The script's decision, again, with the numbers for the headers: the same rule
    // (`domain::ratelimit::decide`) on the state the script read.
    let mut binding: Option<Outcome> = None;
    for (check, s) in all.iter().zip(state.chunks_exact(4)) {
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
                key_refused: None,
                key: published.clone(),
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
