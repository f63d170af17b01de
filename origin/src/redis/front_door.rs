//! The front door's Redis work, in one round trip: the replay check of an edge signature and
//! the origin's own per-user limit.
//!
//! **Replays.** A signature that verified (`domain::edge_auth`) is remembered with
//! `SET {prefix}edge-sig:[{<user tag>}:]<sig> 1 NX EX 120`: the first request with it sets the key, a second
//! one within 120 s finds it and is refused. 120 s is the whole ±60 s window, so a signature
//! is remembered for as long as it could verify. Every origin instance of a region shares its
//! Redis, so a request replayed to another pod of the region is refused too; a replay to the
//! *other* region's origin is not caught here, but the signature names the edge's region and
//! the request's target, and the other region's origin answers another region's data with 421.
//!
//! **Per-user limit** (`ORIGIN_USER_LIMIT_PER_MIN`, default 1000 = 10× the edges' 100): the
//! edges' sliding-window counter (`domain::ratelimit`), with its integer formula in the script.
//! It is a second line, not the first: it catches a client that reaches several edges at
//! once (each edge region counts alone) or a misconfigured edge, coarsely. A refused request
//! does not count (the script increments only when there is room).
//!
//! Both checks are one `EVALSHA` (redis-rs sends the script itself after a `NOSCRIPT`), so an
//! edge-signed request costs the origin one Redis round trip for the two. A replay is
//! refused before the limit is looked at: it costs nothing else.
//!
//! **Redis down** (the link's degraded mode, [`crate::redis::link`]): both checks are skipped
//! and the request goes on — signatures are still checked for key, MAC and the ±60 s window,
//! only the replay memory is gone; a replayed request within its minute would then be served
//! again. The architecture lets every Redis use degrade this way (PostgreSQL decides
//! bookings: a replayed POST meets its Idempotency-Key, a replayed hold its used quote), and
//! refusing all traffic while Redis restarts would turn a cache outage into an API outage.
//! Counted in `origin_front_door_total{result="redis-down"}`.

use std::sync::LazyLock;

use domain::ratelimit::{sliding_window, Decision, RateLimit};
use sha2::{Digest, Sha256};

use crate::redis::link::{RedisLink, Unavailable};

/// KEYS: [the replay key when ARGV[1] == '1'], then the user's previous and current window
/// counters when ARGV[3] > 0. ARGV: replay flag, replay TTL (s), limit, window (ms), elapsed
/// in the window (ms). Returns `{replayed, prev, curr}` (counts as read, before this request).
const SCRIPT: &str = r"
local k = 1
if ARGV[1] == '1' then
  if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then return {1, 0, 0} end
  k = 2
end
local lim = tonumber(ARGV[3])
if lim == 0 then return {0, 0, 0} end
local w = tonumber(ARGV[4])
local e = tonumber(ARGV[5])
local prev = tonumber(redis.call('GET', KEYS[k]) or '0')
local curr = tonumber(redis.call('GET', KEYS[k + 1]) or '0')
if prev * (w - e) + curr * w + w <= lim * w then
  redis.call('INCR', KEYS[k + 1])
  redis.call('PEXPIRE', KEYS[k + 1], 2 * w)
end
return {0, prev, curr}
";

static FRONT_DOOR: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SCRIPT));

/// What the front door decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing to check, or every check passed.
    Pass,
    /// The signature was seen before within its window.
    Replayed,
    /// The user is over the origin's limit.
    Limited {
        decision: Decision,
        limit: RateLimit,
    },
}

/// The front door's Redis side: one per origin, cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct FrontDoor {
    redis: RedisLink,
    /// `None`: the per-user limit is off (`ORIGIN_USER_LIMIT_PER_MIN=0`).
    limit: Option<RateLimit>,
}

impl FrontDoor {
    pub(crate) fn new(redis: RedisLink, user_limit_per_min: u32) -> Self {
        let limit = (user_limit_per_min > 0).then_some(RateLimit {
            limit: user_limit_per_min,
            window_ms: 60_000,
        });
        FrontDoor { redis, limit }
    }

    /// Refuses a replayed signature (`sig`, when the request carried one) and applies the
    /// per-user limit (`user`, when the token verified), at `now_ms`, in one round trip.
    pub(crate) async fn check(
        &self,
        sig: Option<&str>,
        user: Option<&str>,
        now_ms: u64,
    ) -> Result<Verdict, Unavailable> {
        let limited = self.limit.zip(user);
        if sig.is_none() && limited.is_none() {
            return Ok(Verdict::Pass);
        }
        // In a Redis Cluster one script's keys must share a slot: with a user, every key
        // carries the user's hash tag (a replayed request carries the same token, so it finds
        // the same key); without one, the signature's key is alone.
        let tag = limited.map(|(_, user)| user_tag(user));
        let mut invocation = FRONT_DOOR.prepare_invoke();
        match sig {
            Some(sig) => {
                let key = match &tag {
                    Some(tag) => format!("edge-sig:{{{tag}}}:{sig}"),
                    None => format!("edge-sig:{sig}"),
                };
                invocation.key(self.redis.key(&key));
                invocation.arg("1").arg(domain::edge_auth::REPLAY_TTL_SECS);
            }
            None => {
                invocation.arg("0").arg(0);
            }
        }
        let (window_ms, elapsed) = match limited {
            Some((limit, _)) => {
                let window = now_ms / limit.window_ms;
                let tag = tag.as_deref().unwrap_or_default();
                invocation.key(self.user_key(tag, window.saturating_sub(1)));
                invocation.key(self.user_key(tag, window));
                invocation.arg(limit.limit);
                (limit.window_ms, now_ms % limit.window_ms)
            }
            None => {
                invocation.arg(0);
                (60_000, 0)
            }
        };
        invocation.arg(window_ms).arg(elapsed);
        let (replayed, prev, curr): (i64, u64, u64) = self
            .redis
            .run("front door", |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        if replayed == 1 {
            return Ok(Verdict::Replayed);
        }
        if let Some((limit, _)) = limited {
            let decision = sliding_window(&limit, prev, curr, elapsed);
            if !decision.allowed {
                return Ok(Verdict::Limited { decision, limit });
            }
        }
        Ok(Verdict::Pass)
    }

    /// A user's counter for one window, under the user's tag ([`user_tag`]).
    fn user_key(&self, tag: &str, window: u64) -> String {
        self.redis.key(&format!("rl:user:{{{tag}}}:{window}"))
    }
}

/// A user's hash tag: the id hashed, as at the edge, so user ids stay out of key listings and
/// no `sub` can break the key's shape (or its `{}`).
fn user_tag(user: &str) -> String {
    hex::encode(&Sha256::digest(user.as_bytes())[..12])
}
