//! The multi-layer cache of the pricing path, as the seed design lays it out:
//!
//! * **L1 — API responses**, 60 s: whole quotes, keyed by (user, vehicle, destination bay, the
//!   requested window as time bucket, promo code, membership tier). A hit answers without
//!   touching PostgreSQL at all.
//! * **L2 — intermediates**: the pricing context of a region and vehicle class (base rates,
//!   floor/ceiling, time-of-day rules, discount rules) for 5 min; risk scores (24 h) and the
//!   surge grid (15 min) join this layer with the pricing orchestrator.
//! * **L3** is PostgreSQL (and the external APIs).
//!
//! Each layer has its own Redis connection ([`RedisLink`]), so a burst of L1 traffic cannot
//! starve L2 lookups, and each degrades on its own: when Redis is down every lookup is a miss
//! and every write is skipped — the cache is an accelerator, never a dependency.
//!
//! **Invalidation is driven by committed changes.** L1 keys embed a per-vehicle generation
//! (`l1:gen:{<vehicle uuid>}`: tagged like the vehicle's lock, one Cluster slot per vehicle). After a booking change commits, the handler bumps the generation of
//! the vehicle it touched, which makes every cached quote of that vehicle unreachable at once
//! (they expire within 60 s). Bumping, rather than deleting keys, also closes the classic race
//! where a quote computed just before a booking is stored just after it: such an entry lands
//! under the old generation, where no reader looks. Quotes of other vehicles stay cached.
//! Should the process die between commit and bump, the 60 s TTL bounds the staleness, and a
//! stale quote can never double-book: the hold still meets the exclusion constraint.

use std::time::Duration;

use domain::ids::VehicleId;
use domain::pricing::{
    DiscountRule, HourOfWeekTable, PriceBreakdown, RateCard, TimeMultiplierRule,
};
use domain::quote_token::QuoteClaims;
use domain::region::Region;
use domain::vehicle::VehicleClass;
use domain::window::TimeWindow;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::app::pricing::{self, PricingContext, PricingError};
use crate::config::RedisConfig;
use crate::redis::link::RedisLink;
use crate::store;

mod local;

/// L1 time to live (the seed's 60 s).
pub(crate) const L1_TTL: Duration = Duration::from_secs(60);
/// L2 time to live of a pricing context (the seed's base-price 5 min).
pub(crate) const L2_PRICING_TTL: Duration = Duration::from_secs(300);

/// What L1 keeps of a quote: enough to answer v1 and v2 identically to the first time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedQuote {
    pub claims: QuoteClaims,
    pub breakdown: PriceBreakdown,
    pub token: String,
    /// The response bodies already encoded, per API version, filled by the first answer that
    /// needs one: an in-process hit then costs no serialisation at all. Never stored in Redis.
    #[serde(skip)]
    pub rendered: Rendered,
}

/// Encoded response bodies of a quote: index 0 for v1, 1 for v2.
#[derive(Debug, Clone, Default)]
pub struct Rendered(std::sync::Arc<[std::sync::OnceLock<axum::body::Bytes>; 2]>);

impl Rendered {
    /// The body of `slot`, encoded by `encode` the first time.
    pub fn get_or_init(
        &self,
        slot: usize,
        encode: impl FnOnce() -> axum::body::Bytes,
    ) -> axum::body::Bytes {
        match self.0.get(slot) {
            Some(cell) => cell.get_or_init(encode).clone(),
            None => encode(),
        }
    }
}

/// What identifies a quote request for L1.
#[derive(Debug, Clone, Copy)]
pub struct QuoteKey<'a> {
    pub user: &'a str,
    pub vehicle: &'a VehicleId,
    pub destination_bay: Option<uuid::Uuid>,
    pub window: &'a TimeWindow,
    pub promo_code: Option<&'a str>,
    pub membership: Option<&'a str>,
}

impl QuoteKey<'_> {
    /// The request's part of the L1 key: a hash of everything that identifies it (public for
    /// the micro-benchmark in `benches/cache_key.rs`).
    pub fn digest(&self) -> String {
        let text = format!(
            "{}|{}|{:?}|{}|{}|{}|{}",
            self.user,
            self.vehicle,
            self.destination_bay,
            self.window.start().timestamp(),
            self.window.end().timestamp(),
            self.promo_code.map(str::to_lowercase).unwrap_or_default(),
            self.membership.unwrap_or_default()
        );
        hex::encode(&Sha256::digest(text.as_bytes())[..16])
    }
}

/// The pricing context as L2 stores it (the hour-of-week table is rebuilt from its rules).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredContext {
    rate: RateCard,
    time_rules: Vec<TimeMultiplierRule>,
    discounts: Vec<DiscountRule>,
}

/// The L2 key of a pricing context, before the layer's prefix (`l2:pricing:EUW:suv`): the same
/// text as when the class was a string, so contexts cached by the previous release are found
/// (and invalidated) under the same keys.
fn pricing_entry(region: Region, class: VehicleClass) -> String {
    format!("l2:pricing:{}:{}", region.code(), class.as_str())
}

fn count(layer: &'static str, kind: &'static str, result: &'static str) {
    metrics::counter!("cache_requests_total", "layer" => layer, "kind" => kind, "result" => result)
        .increment(1);
}

/// The L1 and L2 layers, each on its own connection, and L1's in-process front.
#[derive(Debug, Clone)]
pub(crate) struct Caches {
    l1: RedisLink,
    l2: RedisLink,
    /// `None` when `L1_LOCAL_TTL_MS=0`. Behind an `Arc`: the state is cloned per request.
    local: Option<std::sync::Arc<local::Local>>,
}

impl Caches {
    /// Opens one connection per layer; `local_ttl` is how long this process trusts a vehicle's
    /// generation (`L1_LOCAL_TTL_MS`; zero turns the in-process layer off).
    pub(crate) async fn connect(config: &RedisConfig, local_ttl: Duration) -> anyhow::Result<Self> {
        Ok(Caches {
            l1: RedisLink::connect(config).await?,
            l2: RedisLink::connect(config).await?,
            local: local::Local::new(local_ttl, L1_TTL).map(std::sync::Arc::new),
        })
    }

    /// Each layer's connection, for its health probe (the `redis_probe` job).
    pub(crate) fn links(&self) -> [&RedisLink; 2] {
        [&self.l1, &self.l2]
    }

    fn gen_key(&self, vehicle: &VehicleId) -> String {
        self.l1
            .key(&format!("l1:gen:{{{}}}", vehicle.uuid.simple()))
    }

    /// The generation quotes of `vehicle` are stored under: the vehicle's own counter plus the
    /// pricing-wide one (bumped by pricing admin changes, see [`Caches::invalidate_all_quotes`]).
    /// Both only ever grow, so their sum changes whenever either is bumped and never returns
    /// to an earlier value.
    async fn generation(&self, vehicle: &VehicleId) -> Option<u64> {
        if let Some(generation) = self.local.as_ref().and_then(|l| l.generation(vehicle)) {
            return Some(generation);
        }
        let epoch = self.local.as_ref().map(|l| l.epoch());
        let keys = [self.gen_key(vehicle), self.l1.key("l1:gen:pricing")];
        let generation = self
            .l1
            .run("l1 generation", |mut c| async move {
                c.mget::<_, Vec<Option<u64>>>(&keys).await
            })
            .await
            .ok()
            .map(|g| g.into_iter().flatten().sum())?;
        if let (Some(local), Some(epoch)) = (&self.local, epoch) {
            local.remember_generation(*vehicle, generation, epoch);
        }
        Some(generation)
    }

    fn quote_key(&self, key: &QuoteKey<'_>, generation: u64) -> String {
        self.l1.key(&format!(
            "l1:q:{}:{generation}:{}",
            key.vehicle,
            key.digest()
        ))
    }

    /// L1 lookup. Returns the cached quote and, on a miss, the generation to store under
    /// (`None` when Redis is unusable: do not store).
    pub(crate) async fn get_quote(
        &self,
        key: &QuoteKey<'_>,
    ) -> (Option<std::sync::Arc<CachedQuote>>, Option<u64>) {
        let Some(generation) = self.generation(key.vehicle).await else {
            count("l1", "quote", "error");
            return (None, None);
        };
        let redis_key = self.quote_key(key, generation);
        if let Some(local) = &self.local {
            if let Some(quote) = local.quote(&redis_key) {
                count("l1", "quote", "hit");
                count("l1-local", "quote", "hit");
                return (Some(quote), Some(generation));
            }
            count("l1-local", "quote", "miss");
        }
        let lookup_key = redis_key.clone();
        let raw = self
            .l1
            .run("l1 get", |mut c| async move {
                c.get::<_, Option<Vec<u8>>>(redis_key).await
            })
            .await;
        match raw {
            Ok(Some(bytes)) => match serde_json::from_slice::<CachedQuote>(&bytes) {
                Ok(quote) => {
                    count("l1", "quote", "hit");
                    let quote = std::sync::Arc::new(quote);
                    if let Some(local) = &self.local {
                        local.store_quote(lookup_key, quote.clone());
                    }
                    (Some(quote), Some(generation))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable L1 entry; recomputing");
                    count("l1", "quote", "miss");
                    (None, Some(generation))
                }
            },
            Ok(None) => {
                count("l1", "quote", "miss");
                (None, Some(generation))
            }
            Err(_) => {
                count("l1", "quote", "error");
                (None, None)
            }
        }
    }

    /// Stores a quote under the generation read before computing it.
    pub(crate) async fn put_quote(
        &self,
        key: &QuoteKey<'_>,
        generation: u64,
        quote: &std::sync::Arc<CachedQuote>,
    ) {
        let Ok(bytes) = serde_json::to_vec(&**quote) else {
            return;
        };
        let redis_key = self.quote_key(key, generation);
        if let Some(local) = &self.local {
            local.store_quote(redis_key.clone(), quote.clone());
        }
        let _ = self
            .l1
            .run("l1 set", |mut c| async move {
                c.set_ex::<_, _, ()>(redis_key, bytes, L1_TTL.as_secs())
                    .await
            })
            .await;
    }

    /// Makes every cached quote of `vehicle` unreachable: called after a committed change.
    pub(crate) async fn invalidate_vehicle(&self, vehicle: &VehicleId) {
        let key = self.gen_key(vehicle);
        let bumped = self
            .l1
            .run("l1 invalidate", |mut c| async move {
                // One round trip: the bump and, so the counter outlives every entry of the
                // previous generation, its expiry.
                let (generation,): (u64,) = redis::pipe()
                    .incr(&key, 1)
                    .expire(&key, (L1_TTL.as_secs() * 10) as i64)
                    .ignore()
                    .query_async(&mut c)
                    .await?;
                Ok(generation)
            })
            .await;
        // After the bump: this process's next lookup reads the new generation.
        if let Some(local) = &self.local {
            local.forget_vehicle(vehicle);
        }
        match bumped {
            Ok(_) => metrics::counter!("cache_invalidations_total", "layer" => "l1").increment(1),
            Err(e) => {
                tracing::warn!(error = %e, %vehicle, "L1 invalidation failed; entries expire within 60 s")
            }
        }
    }

    /// Makes every cached quote of every vehicle unreachable at once (a pricing change: the
    /// rates, rules or multipliers any quote was computed with may have changed).
    pub(crate) async fn invalidate_all_quotes(&self) {
        let key = self.l1.key("l1:gen:pricing");
        let bumped = self
            .l1
            .run("l1 invalidate all", |mut c| async move {
                c.incr::<_, _, u64>(&key, 1).await
            })
            .await;
        if let Some(local) = &self.local {
            local.forget_all();
        }
        match bumped {
            Ok(_) => {
                metrics::counter!("cache_invalidations_total", "layer" => "l1_all").increment(1)
            }
            Err(e) => {
                tracing::warn!(error = %e, "L1 invalidation failed; entries expire within 60 s")
            }
        }
    }

    /// The pricing-wide generation (0 when unset; `None` when Redis is unusable).
    pub(crate) async fn pricing_epoch(&self) -> Option<u64> {
        let key = self.l1.key("l1:gen:pricing");
        self.l1
            .run("l1 pricing epoch", |mut c| async move {
                c.get::<_, Option<u64>>(key).await
            })
            .await
            .ok()
            .map(|g| g.unwrap_or(0))
    }

    /// Reads a JSON intermediate from L2 (`kind` labels the metric); `None` on a miss, an
    /// unreadable entry or Redis down. Used by the pricing orchestrator for risk scores (24 h),
    /// surge grids (15 min) and previous-quote totals.
    pub(crate) async fn l2_get_json<T: serde::de::DeserializeOwned>(
        &self,
        kind: &'static str,
        key: &str,
    ) -> Option<T> {
        let key = self.l2.key(key);
        let raw = self
            .l2
            .run("l2 get", |mut c| async move {
                c.get::<_, Option<Vec<u8>>>(key).await
            })
            .await;
        match raw {
            Ok(Some(bytes)) => match serde_json::from_slice(&bytes) {
                Ok(v) => {
                    count("l2", kind, "hit");
                    Some(v)
                }
                Err(_) => {
                    count("l2", kind, "miss");
                    None
                }
            },
            Ok(None) => {
                count("l2", kind, "miss");
                None
            }
            Err(_) => {
                count("l2", kind, "error");
                None
            }
        }
    }

    /// Stores a JSON intermediate in L2 for `ttl` (best effort).
    pub(crate) async fn l2_put_json<T: Serialize>(&self, key: &str, value: &T, ttl: Duration) {
        let Ok(bytes) = serde_json::to_vec(value) else {
            return;
        };
        let key = self.l2.key(key);
        let _ = self
            .l2
            .run("l2 set", |mut c| async move {
                c.set_ex::<_, _, ()>(key, bytes, ttl.as_secs().max(1)).await
            })
            .await;
    }

    fn pricing_key(&self, region: Region, class: VehicleClass) -> String {
        self.l2.key(&pricing_entry(region, class))
    }

    /// The pricing context of a region and class: this process's memory (for
    /// `L1_LOCAL_TTL_MS`), else L2, else PostgreSQL (then stored in L2).
    pub(crate) async fn pricing(
        &self,
        db: &PgPool,
        region: Region,
        class: VehicleClass,
    ) -> Result<PricingContext, PricingError> {
        let Some(local) = &self.local else {
            return self.pricing_shared(db, region, class).await;
        };
        if let Some(ctx) = local.pricing(region, class) {
            count("l2-local", "pricing", "hit");
            return Ok(PricingContext::clone(&ctx));
        }
        count("l2-local", "pricing", "miss");
        let epoch = local.epoch();
        let ctx = self.pricing_shared(db, region, class).await?;
        local.remember_pricing(region, class, std::sync::Arc::new(ctx.clone()), epoch);
        Ok(ctx)
    }

    /// The pricing context from L2, else PostgreSQL (then stored in L2).
    async fn pricing_shared(
        &self,
        db: &PgPool,
        region: Region,
        class: VehicleClass,
    ) -> Result<PricingContext, PricingError> {
        let key = self.pricing_key(region, class);
        let cached = self
            .l2
            .run("l2 get", |mut c| async move {
                c.get::<_, Option<Vec<u8>>>(key).await
            })
            .await;
        if let Ok(Some(bytes)) = &cached {
            if let Ok(stored) = serde_json::from_slice::<StoredContext>(bytes) {
                if let Ok(time_table) = HourOfWeekTable::from_rules(&stored.time_rules) {
                    count("l2", "pricing", "hit");
                    return Ok(PricingContext {
                        rate: stored.rate,
                        time_table,
                        time_rules: stored.time_rules,
                        discounts: stored.discounts,
                    });
                }
            }
        }
        count(
            "l2",
            "pricing",
            if cached.is_ok() { "miss" } else { "error" },
        );
        let mut conn = db.acquire().await?;
        let ctx = pricing::context(&mut conn, region, class).await?;
        drop(conn);
        if cached.is_ok() {
            self.store_pricing(region, class, &ctx).await;
        }
        Ok(ctx)
    }

    async fn store_pricing(&self, region: Region, class: VehicleClass, ctx: &PricingContext) {
        let stored = StoredContext {
            rate: ctx.rate.clone(),
            time_rules: ctx.time_rules.clone(),
            discounts: ctx.discounts.clone(),
        };
        let Ok(bytes) = serde_json::to_vec(&stored) else {
            return;
        };
        let key = self.pricing_key(region, class);
        let _ = self
            .l2
            .run("l2 set", |mut c| async move {
                c.set_ex::<_, _, ()>(key, bytes, L2_PRICING_TTL.as_secs())
                    .await
            })
            .await;
    }

    /// Drops a region's pricing contexts (after a pricing change).
    pub(crate) async fn invalidate_pricing(&self, region: Region, classes: &[VehicleClass]) {
        let keys: Vec<String> = classes
            .iter()
            .map(|c| self.pricing_key(region, *c))
            .collect();
        if keys.is_empty() {
            return;
        }
        let _ = self
            .l2
            .run("l2 invalidate", |mut c| async move {
                c.del::<_, ()>(keys).await
            })
            .await;
        // After the delete: a reader that got the old entry from L2 before it went must not
        // keep it here (the epoch bump makes its store a no-op).
        if let Some(local) = &self.local {
            local.forget_pricing(region, classes);
        }
    }

    /// Cache warming at start: loads every served region's pricing contexts into L2.
    pub(crate) async fn warm(&self, db: &PgPool, regions: &[Region]) -> anyhow::Result<usize> {
        let pairs = store::pricing::priced_classes(db, regions).await?;
        let mut warmed = 0;
        for (region, class) in pairs {
            let mut conn = db.acquire().await?;
            let ctx = pricing::context(&mut conn, region, class)
                .await
                .map_err(|e| anyhow::anyhow!("warm {region} {class}: {e}"))?;
            drop(conn);
            self.store_pricing(region, class, &ctx).await;
            warmed += 1;
        }
        Ok(warmed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pricing_context_keys_name_the_region_code_and_the_lower_case_class() {
        assert_eq!(
            pricing_entry(Region::Euw, VehicleClass::Suv),
            "l2:pricing:EUW:suv"
        );
        assert_eq!(
            pricing_entry(Region::Eun, VehicleClass::Premium),
            "l2:pricing:EUN:premium"
        );
    }
}
