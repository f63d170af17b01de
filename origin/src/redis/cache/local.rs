//! The in-process front of L1 and L2: recently seen quotes, vehicle generations and pricing
//! contexts in this process's memory, so a repeated quote costs no Redis round trip at all and
//! a search no round trip per (region, class) it prices.
//!
//! Why: a cached quote through Redis is two round trips (the vehicle's generation, then the
//! entry) plus JSON decoding; on a 2-core box the syscalls and context switches of those round
//! trips, on both sides, are most of the cost of a hit. Here a hit is two hash lookups.
//!
//! What keeps it right — the same generation scheme as Redis L1 (see `cache.rs`):
//! * Entries are keyed by the full L1 key, generation included, so an entry can only be found
//!   through the generation it was stored under.
//! * The generation of a vehicle is remembered for at most `L1_LOCAL_TTL_MS` (default 1 s).
//!   A booking change *in this process* forgets it at once (after bumping it in Redis), so
//!   this process's next quote reads the new one. A change made by *another* origin instance is
//!   seen here within `L1_LOCAL_TTL_MS`: that is the staleness this layer adds, and it is
//!   harmless for correctness — a quote offered for a window taken a moment ago still meets the
//!   exclusion constraint when someone tries to hold it (409), exactly as a quote issued just
//!   before the booking would.
//! * A reader that fetched a generation from Redis while an invalidation ran must not store the
//!   old value after the invalidation forgot it: every invalidation bumps `epoch`, and a reader
//!   re-checks the epoch *after* storing and forgets its own store if it moved.
//! * Pricing contexts (rate card, time rules, discounts of a region and class; L2's
//!   `l2:pricing:*`) are kept for the same `L1_LOCAL_TTL_MS`. A pricing change in this process
//!   forgets them at once (with the same epoch guard); one made through another instance is
//!   seen here within `L1_LOCAL_TTL_MS`, and quotes are safe meanwhile because a pricing change
//!   also bumps the pricing-wide quote generation, which this layer trusts for the same time.
//!   Searches show indicative prices; a second of lag there is what any cache of them would add.
//! * Bounded: `moka` (a concurrent TinyLFU cache) caps entries (`MAX_QUOTES`) and expires them
//!   (the L1 TTL), so memory stays flat under any key distribution.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use domain::ids::VehicleId;
use domain::region::Region;
use domain::vehicle::VehicleClass;
use moka::sync::Cache;

use super::CachedQuote;
use crate::app::pricing::PricingContext;

/// At most this many quotes are kept in process (~2 KiB each: ~20 MiB).
const MAX_QUOTES: u64 = 10_000;

/// The in-process layer; cheap to clone (shared maps).
#[derive(Clone)]
pub(super) struct Local {
    quotes: Cache<String, Arc<CachedQuote>>,
    generations: Cache<VehicleId, u64>,
    pricing: Cache<(Region, VehicleClass), Arc<PricingContext>>,
    epoch: Arc<AtomicU64>,
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local")
            .field("quotes", &self.quotes.entry_count())
            .finish_non_exhaustive()
    }
}

impl Local {
    /// `None` when `generation_ttl` is zero (the layer is off).
    pub(super) fn new(generation_ttl: Duration, quote_ttl: Duration) -> Option<Self> {
        if generation_ttl.is_zero() {
            return None;
        }
        Some(Local {
            quotes: Cache::builder()
                .max_capacity(MAX_QUOTES)
                .time_to_live(quote_ttl)
                .build(),
            generations: Cache::builder()
                .max_capacity(MAX_QUOTES)
                .time_to_live(generation_ttl)
                .build(),
            // A few regions × classes; the bound only guards against a misconfiguration.
            pricing: Cache::builder()
                .max_capacity(256)
                .time_to_live(generation_ttl)
                .build(),
            epoch: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The generation remembered for `vehicle`, if still fresh.
    pub(super) fn generation(&self, vehicle: &VehicleId) -> Option<u64> {
        self.generations.get(vehicle)
    }

    /// The epoch to pass to [`Local::remember_generation`] (read it *before* asking Redis).
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Remembers a generation read from Redis, unless an invalidation ran since `epoch`.
    pub(super) fn remember_generation(&self, vehicle: VehicleId, generation: u64, epoch: u64) {
        if self.epoch.load(Ordering::SeqCst) != epoch {
            return;
        }
        self.generations.insert(vehicle, generation);
        if self.epoch.load(Ordering::SeqCst) != epoch {
            // An invalidation raced this store: it may have forgotten before we stored.
            self.generations.invalidate(&vehicle);
        }
    }

    /// Forgets `vehicle`'s generation (after it was bumped in Redis).
    pub(super) fn forget_vehicle(&self, vehicle: &VehicleId) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.generations.invalidate(vehicle);
    }

    /// Forgets every generation and pricing context (after a pricing-wide bump).
    pub(super) fn forget_all(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.generations.invalidate_all();
        self.pricing.invalidate_all();
    }

    /// The pricing context remembered for (`region`, `class`), if still fresh.
    pub(super) fn pricing(
        &self,
        region: Region,
        class: VehicleClass,
    ) -> Option<Arc<PricingContext>> {
        self.pricing.get(&(region, class))
    }

    /// Remembers a pricing context read from L2 or PostgreSQL, unless an invalidation ran since
    /// `epoch` (read it before the read, as for generations).
    pub(super) fn remember_pricing(
        &self,
        region: Region,
        class: VehicleClass,
        ctx: Arc<PricingContext>,
        epoch: u64,
    ) {
        if self.epoch.load(Ordering::SeqCst) != epoch {
            return;
        }
        self.pricing.insert((region, class), ctx);
        if self.epoch.load(Ordering::SeqCst) != epoch {
            self.pricing.invalidate(&(region, class));
        }
    }

    /// Forgets `region`'s pricing contexts of `classes` (after a pricing change).
    pub(super) fn forget_pricing(&self, region: Region, classes: &[VehicleClass]) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        for class in classes {
            self.pricing.invalidate(&(region, *class));
        }
    }

    pub(super) fn quote(&self, key: &str) -> Option<Arc<CachedQuote>> {
        self.quotes.get(key)
    }

    pub(super) fn store_quote(&self, key: String, quote: Arc<CachedQuote>) {
        self.quotes.insert(key, quote);
    }
}
